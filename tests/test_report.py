"""The scaling report's arithmetic on timing.json files written here: speedup, efficiency, and which runs
are compared (weak or strong scaling, never mixed)."""
import json

import pytest

from hpctrain.errors import UserError
from hpctrain.report import scaling
from hpctrain.train.timing import Timing, throughput_stats

pytestmark = pytest.mark.fast


def run(tmp_path, workers, samples_per_s, per_worker_batch=8, global_batch=None, backend="horovod", final=0.95,
        **extra):
    """A run folder whose timing.json says `workers` reached `samples_per_s`."""
    folder = tmp_path / (f"{backend}-w{workers}-b{per_worker_batch}-{extra.get('split', 'all')}-s{extra.get('seed')}"
                         f"-{extra.get('compression', 'none')}")
    folder.mkdir()
    timing = dict(complete=True, attempts=1, job="j", model="lenet5", parameters=10, dataset="d.h5", split="all",
                  tile=None, backend=backend, world_size=workers, processes=workers, nodes=1,
                  per_worker_batch=per_worker_batch, global_batch=global_batch or per_worker_batch * workers,
                  lr_scaling="none", precision="fp32", xla=False, steps_per_epoch=10, epochs=2, warmup_steps=0,
                  throughput={"samples_per_s": samples_per_s, "samples_per_s_ci95": 0.5},
                  step_times=[0.1] * 20, epoch_times=[3.0, 2.0, 2.0], train_time=7.0, wall_time=9.0,
                  first_step_at=None, startup_seconds=None,
                  target={"metric": "val_accuracy", "value": 0.9, "reached": {"epoch": 2, "seconds": 5.0}},
                  environment={})
    timing.update(extra)
    (folder / "timing.json").write_text(json.dumps(timing))
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 3, "val_accuracy": final}) + "\n")
    return folder


def test_weak_scaling_speedup_and_efficiency(tmp_path):
    [group] = scaling.build([run(tmp_path, 4, 72.0), run(tmp_path, 1, 20.0), run(tmp_path, 2, 38.0)])
    assert group["mode"] == "weak"
    rows = {r["workers"]: r for r in group["rows"]}
    assert [r["workers"] for r in group["rows"]] == [1, 2, 4]
    assert rows[2]["speedup"] == pytest.approx(1.9) and rows[2]["efficiency"] == pytest.approx(0.95)
    assert rows[4]["speedup"] == pytest.approx(3.6) and rows[4]["efficiency"] == pytest.approx(0.9)
    assert rows[1]["epoch_time"] == pytest.approx(2.0)  # the first epoch (warm-up, compilation) left out
    assert rows[1]["time_to_target"] == 5.0 and rows[1]["final"] == {"val_accuracy": 0.95}


def test_strong_scaling_is_measured_from_the_smallest_run(tmp_path):
    runs = [run(tmp_path, 2, 30.0, per_worker_batch=16, global_batch=32),
            run(tmp_path, 4, 54.0, per_worker_batch=8, global_batch=32)]
    [group] = scaling.build(runs)
    assert group["mode"] == "strong"
    four = group["rows"][1]
    assert four["speedup"] == pytest.approx(1.8) and four["efficiency"] == pytest.approx(0.9)  # 4/2 workers


def test_runs_that_differ_in_more_than_the_worker_count_are_reported_apart(tmp_path):
    groups = scaling.build([run(tmp_path, 1, 20.0), run(tmp_path, 2, 38.0),
                            run(tmp_path, 1, 20.0, backend="mirrored"), run(tmp_path, 2, 30.0, backend="mirrored")])
    assert [(g["backend"], [r["workers"] for r in g["rows"]]) for g in groups] == [("horovod", [1, 2]),
                                                                                   ("mirrored", [1, 2])]
    assert groups[1]["rows"][1]["efficiency"] == pytest.approx(0.75)


def test_runs_of_one_backend_with_and_without_compression_are_told_apart(tmp_path):
    groups = scaling.build([run(tmp_path, 1, 20.0), run(tmp_path, 2, 38.0),  # timing.json without the field
                            run(tmp_path, 1, 20.0, compression="fp16"), run(tmp_path, 2, 39.0, compression="fp16")])
    assert [g["variant"] for g in groups] == ["compression none", "compression fp16"]
    assert [scaling._slug(g) for g in groups] == ["j-horovod-compression-none", "j-horovod-compression-fp16"]
    assert "backend horovod, weak scaling (compression fp16)" in scaling.markdown(groups)
    assert "host ?, 0 GPUs, ? CPUs" in scaling.markdown(groups)
    [one_cpu] = scaling.build([run(tmp_path, 1, 20.0, backend="none", environment={"gpus": 1, "cpus_available": 1})])
    assert "1 GPU, 1 CPU;" in scaling.markdown([one_cpu])
    [alone] = scaling.build([run(tmp_path, 1, 20.0, backend="mirrored")])
    assert alone["variant"] == "" and scaling._slug(alone) == "j-mirrored"


def test_mixed_weak_and_strong_runs_and_repeated_counts_are_refused(tmp_path):
    with pytest.raises(UserError, match="change both the per-worker and the global batch"):
        scaling.build([run(tmp_path, 1, 20.0, per_worker_batch=8), run(tmp_path, 2, 30.0, per_worker_batch=16)])
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(UserError, match="same worker count"):
        scaling.build([run(tmp_path, 2, 20.0), run(again, 2, 21.0)])


def test_repeats_over_folds_and_seeds_give_mean_and_std_per_worker_count(tmp_path):
    def target(epoch, seconds):
        return {"metric": "val_accuracy", "value": 0.9, "reached": {"epoch": epoch, "seconds": seconds}}

    runs = [run(tmp_path, 1, 20.0, split="fold0", seed=1, target=target(4, 40.0), final=0.90),
            run(tmp_path, 1, 22.0, split="fold1", seed=1, target=target(6, 60.0), final=0.92),
            run(tmp_path, 2, 38.0, split="fold0", seed=1, target=target(4, 20.0), final=0.89),
            run(tmp_path, 2, 40.0, split="fold1", seed=1, target=target(8, 30.0), final=0.91)]
    [group] = scaling.build(runs)  # folds are repeats of one comparison, not separate groups
    one, two = group["rows"]
    assert (one["runs"], two["runs"]) == (2, 2)
    assert one["samples_per_s"] == pytest.approx(21.0) and two["speedup"] == pytest.approx(39.0 / 21.0)
    assert one["time_to_target"] == pytest.approx(50.0) and one["time_to_target_std"] == pytest.approx(14.142, abs=1e-3)
    assert two["target_speedup"] == pytest.approx(2.0)  # 50 s against 25 s
    assert one["steps_to_target"] == pytest.approx(50.0)  # epochs 4 and 6 of 10 steps
    assert two["samples_to_target"] == pytest.approx(60.0 * 16)
    assert two["final"]["val_accuracy"] == pytest.approx(0.90) and two["final_std"]["val_accuracy"] == pytest.approx(
        0.01414, abs=1e-4)
    text = scaling.markdown([group])
    assert "| 2 | 1 | 2 | 16 | 39.0 |" in text and "25.0 ± 7.1" in text and "0.9000 ± 0.0141" in text
    assert "| 2 | fold1 | 1 | 40.0 | 30.0 | 0.9100 |" in text  # each run listed
    partly = run(tmp_path, 4, 70.0, split="fold0", seed=2, target={"metric": "val_accuracy", "value": 0.9,
                                                                   "reached": None})
    [group] = scaling.build(runs + [partly, run(tmp_path, 4, 72.0, split="fold1", seed=2)])
    assert group["rows"][2]["time_to_target"] is None and group["rows"][2]["targets_reached"] == 1
    assert "1 of 2 reached" in scaling.markdown([group])


def test_stopped_and_incomplete_runs_are_named(tmp_path):
    stopped = run(tmp_path, 2, 30.0, complete=False)
    with pytest.raises(UserError, match="stopped before its end"):
        scaling.build([stopped])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "timing.json").write_text(json.dumps({"complete": True}))
    with pytest.raises(UserError, match="lacks attempts"):
        scaling.build([broken])
    assert scaling.missing_runs([stopped, broken, tmp_path / "never"]) == [stopped, broken, tmp_path / "never"]


def test_throughput_statistics_leave_out_the_warm_up():
    stats = throughput_stats([5.0, 5.0, 0.5, 0.5, 0.25, 0.25], global_batch=10, warmup=2)
    assert stats["samples_per_s"] == pytest.approx(40 / 1.5)  # all samples over all time, after warm-up
    assert stats["samples_per_s_step_mean"] == pytest.approx(30.0)
    assert stats["samples_per_s_step_std"] == pytest.approx(10.0)
    assert stats["samples_per_s_ci95"] == pytest.approx(1.96 * 10.0 / 2)
    assert stats["steps_measured"] == 4
    assert throughput_stats([], 10, 2) is None


def test_timing_fields_are_defined_once():
    fields = set(Timing.__dataclass_fields__)
    assert set(Timing.SCALED) <= fields and set(Timing.COMPARED) <= fields
    assert not set(Timing.SCALED) & set(Timing.COMPARED)
