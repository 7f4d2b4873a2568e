"""Repeated runs: `hpctrain cv` (and `scaling`/`submit` with --folds and --seeds) trains each fold x seed,
and the report gives the mean and spread per worker count; bad folds and seeds stop before any training."""
import json

import pytest

from hpctrain.errors import UserError
from hpctrain.launch import sweep

from conftest import assert_user_error, run_hpctrain, write_job


def unet_job(tmp_path, isbi_h5):
    return write_job(
        tmp_path / "tiny.toml", name="tiny",
        data={"path": str(isbi_h5), "split": "fold0", "tile": 64},
        model={"name": "unet", "unet": {"depth": 2, "filters": 4}},
        train={"learning_rate": 1e-3, "batch_size": 2, "epochs": 2, "steps_per_epoch": 2, "seed": 5,
               "target_metric": "val_loss", "target_value": 100.0},
        output={"dir": str(tmp_path / "unused"), "tensorboard": False})


@pytest.mark.fast
def test_worker_counts_are_sorted_once_and_positive():
    assert sweep.parse_counts("64,8,8") == [8, 64]
    for bad, why in (("0,8", "needs positive"), ("-1", "needs positive"), ("", "needs positive"),
                     ("8,x", "takes worker counts"), ("1.5", "takes worker counts")):
        with pytest.raises(UserError, match=f"^--predict {why}"):
            sweep.parse_counts(bad, "--predict")


@pytest.mark.fast
@pytest.mark.parametrize("text,folds", [("0-4", [0, 1, 2, 3, 4]), ("0,2,3", [0, 2, 3]), ("3", [3]),
                                        ("1-2,4", [1, 2, 4])])
def test_folds_are_ranges_or_lists(text, folds):
    assert sweep.parse_folds(text) == folds


@pytest.mark.fast
@pytest.mark.parametrize("text", ["", "a", "2-x", "-1", "0,,-3"])
def test_bad_folds_are_refused(text):
    with pytest.raises(UserError, match="^--folds takes fold numbers like 0-4"):
        sweep.parse_folds(text)


@pytest.mark.fast
def test_each_fold_and_seed_is_a_run_of_its_own(tmp_path, isbi_h5):
    plan = sweep.plan(unet_job(tmp_path, isbi_h5), [1, 2], tmp_path / "cv", "horovod", folds=[0, 3], seeds=2)
    assert [(r.workers, r.repeat) for r in plan.runs] == [
        (n, f"fold{f}-seed{s}") for n in (1, 2) for f in (0, 3) for s in (5, 6)]
    run = plan.runs[-1]
    assert run.run_dir == (tmp_path / "cv" / "w2" / "fold3-seed6").resolve()
    assert {'data.split="fold3"', "train.seed=6"} <= set(run.overrides)
    assert [r.repeat for r in sweep.plan(unet_job(tmp_path, isbi_h5), [1], tmp_path / "s", seeds=1).runs] == ["seed5"]
    with pytest.raises(UserError, match=r"^--folds 5,7: .*isbi.h5 has fold0, fold1, fold2, fold3, fold4$"):
        sweep.plan(unet_job(tmp_path, isbi_h5), [1], tmp_path / "cv", folds=[0, 5, 7])
    with pytest.raises(UserError, match="^--seeds takes how many seeds to run"):
        sweep.parse_seeds(0)


@pytest.mark.slow
def test_cv_trains_every_fold_and_seed_and_reports_mean_and_spread(tmp_path, isbi_h5):
    out = tmp_path / "cv"
    proc = run_hpctrain("cv", unet_job(tmp_path, isbi_h5), "--folds", "1-2", "--seeds", 2, "-o", out, check=True)
    runs = sorted(p.parent.name for p in out.glob("w1/*/timing.json"))
    assert runs == ["fold1-seed5", "fold1-seed6", "fold2-seed5", "fold2-seed6"]
    timing = json.loads((out / "w1" / "fold2-seed6" / "timing.json").read_text())
    assert (timing["split"], timing["seed"]) == ("fold2", 6)
    [group] = json.loads((out / "report" / "report.json").read_text())
    [row] = group["rows"]
    assert row["runs"] == 4 and row["time_to_target_std"] is not None and row["final_std"]["val_loss"] > 0
    assert "mean ± std over the runs" in proc.stdout and "| 1 | fold2 | 6 |" in proc.stdout
    assert (out / "report" / f"tiny-{group['backend']}-target.png").stat().st_size > 10_000  # val_loss over time


@pytest.mark.slow
def test_bad_folds_and_seeds_stop_before_any_training(tmp_path, isbi_h5):
    job = unet_job(tmp_path, isbi_h5)
    assert_user_error(run_hpctrain("cv", job, "--folds", "4-6", "-o", tmp_path / "cv"), "--folds 5,6:", "has fold0")
    assert_user_error(run_hpctrain("cv", job, "--folds", "0", "--seeds", 0, "-o", tmp_path / "cv"), "--seeds")
    assert_user_error(run_hpctrain("scaling", job, "--folds", "x", "-o", tmp_path / "cv"), "--folds takes")
    assert not (tmp_path / "cv").exists()
    dry = run_hpctrain("submit", job, "--gpus", "1,2", "--folds", "0-1", "--cpu", "--dry-run", "-o", tmp_path / "s",
                       check=True).stdout
    assert dry.splitlines()[0].startswith("# hpctrain submit --dry-run: 4 training jobs")
    assert "--job-name=tiny-w2-fold1" in dry and "fold1" in dry.split("--job-name=tiny-report")[1]
