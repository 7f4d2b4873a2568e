"""Data parallelism is exact: N workers with batch B equal 1 worker with batch N x B, on every backend,
validation shared among them scores what one worker scores, and every backend trains the real models end
to end with only the chief writing outputs."""
import json

import numpy as np
import pytest

from conftest import assert_user_error, run_hpctrain, write_job

pytestmark = pytest.mark.slow

BACKENDS = [("horovod", "mpirun"), ("horovod", "horovodrun"), ("multiworker", "local"), ("mirrored", None)]


def lenet_job(tmp_path, mnist_h5, name, batch):
    return write_job(
        tmp_path / f"{name}.toml", name=name,
        data={"path": str(mnist_h5), "split": "holdout"},
        model={"name": "lenet5"},
        train={"optimizer": "adam", "learning_rate": 1e-3, "batch_size": batch, "epochs": 2, "steps_per_epoch": 3,
               "deterministic": True, "seed": 7},
        distribute={"lr_scaling": "none"},
        output={"dir": str(tmp_path / name), "tensorboard": False})


def final_weights(run_dir):
    from hpctrain.evaluate.run import load_model

    return load_model(run_dir)[1].get_weights()


@pytest.fixture(scope="module")
def single_worker_run(tmp_path_factory, mnist_h5):
    tmp_path = tmp_path_factory.mktemp("single")
    run_hpctrain("train", lenet_job(tmp_path, mnist_h5, "one", 40), check=True)
    return tmp_path / "one"


@pytest.mark.parametrize("backend,launcher", BACKENDS)
def test_two_workers_equal_one_worker_with_double_batch(tmp_path, mnist_h5, single_worker_run, backend, launcher):
    job = lenet_job(tmp_path, mnist_h5, "two", 20)  # 2000 val samples: 50 full batches of 20 per replica
    args = ["launch", "-n", 2, job, "--backend", backend] + (["--launcher", launcher] if launcher else [])
    proc = run_hpctrain(*args, check=True)
    assert "validation uses" not in proc.stdout and "split evenly" not in proc.stdout
    timing = json.loads((tmp_path / "two" / "timing.json").read_text())
    assert timing["world_size"] == 2 and timing["global_batch"] == 40 and timing["backend"] == backend
    assert timing["validation_shards"] == (1 if backend == "mirrored" else 2)  # mirrored: one process
    # Each process validated its half (mirrored: each replica); the reduced scores are the whole split's.
    logged = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
              for run in (single_worker_run, tmp_path / "two")]
    for row_one, row_two in zip(*logged, strict=True):
        for key in ("val_loss", "val_accuracy"):
            assert row_two[key] == pytest.approx(row_one[key], rel=1e-5), (key, row_one, row_two)
    one, two = final_weights(single_worker_run), final_weights(tmp_path / "two")
    initial = final_weights_of_fresh_model()
    assert any(not np.allclose(a, b) for a, b in zip(one, initial)), "training did not change the weights"
    for a, b in zip(one, two):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


ACCUMULATING = [("none", None, 1), ("horovod", "mpirun", 2), ("multiworker", "local", 2)]


@pytest.mark.parametrize("backend,launcher,workers", ACCUMULATING)
def test_accumulated_micro_batches_equal_one_batch(tmp_path, mnist_h5, single_worker_run, backend, launcher, workers):
    """k micro-batches of B per update on N workers: the updates of 1 worker with batch N x k x B."""
    job = lenet_job(tmp_path, mnist_h5, "acc", 40 // (2 * workers))
    sets = ["--set", "train.accumulate_steps=2"]
    if workers == 1:
        run_hpctrain("train", job, *sets, check=True)
    else:
        run_hpctrain("launch", "-n", workers, job, "--backend", backend, "--launcher", launcher, *sets, check=True)
    timing = json.loads((tmp_path / "acc" / "timing.json").read_text())
    assert (timing["global_batch"], timing["accumulate_steps"], timing["steps_per_epoch"]) == (40, 2, 3)
    for a, b in zip(final_weights(single_worker_run), final_weights(tmp_path / "acc"), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_strong_scaling_splits_one_workers_batch_and_keeps_its_updates(tmp_path, mnist_h5, single_worker_run):
    """distribute.scaling = "strong": 2 workers split the batch of 40 and make the 1-worker run's updates;
    the learning rate stays that of 1 worker (lr_scaling sqrt would change it under weak scaling)."""
    job = lenet_job(tmp_path, mnist_h5, "strong", 40)
    run_hpctrain("launch", "-n", 2, job, "--backend", "horovod", "--set", 'distribute.scaling="strong"',
                 "--set", 'distribute.lr_scaling="sqrt"', check=True)
    timing = json.loads((tmp_path / "strong" / "timing.json").read_text())
    assert (timing["per_worker_batch"], timing["global_batch"], timing["scaling"]) == (20, 40, "strong")
    for a, b in zip(final_weights(single_worker_run), final_weights(tmp_path / "strong"), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    refused = run_hpctrain("scaling", job, "--workers", "1,3", "--backend", "horovod", "-o", tmp_path / "sweep",
                           "--set", 'distribute.scaling="strong"')
    assert_user_error(refused, "train.batch_size 40 does not split over 3 workers")
    assert not (tmp_path / "sweep").exists()
    refused = run_hpctrain("launch", "-n", 3, job, "--backend", "horovod", "--set", 'distribute.scaling="strong"',
                           "--set", f'output.dir="{tmp_path / "launch3"}"')
    assert_user_error(refused, "train.batch_size 40 does not split over 3 workers")
    assert not (tmp_path / "launch3").exists()  # refused before any worker started


def final_weights_of_fresh_model():
    from hpctrain import compat, models
    from hpctrain.spec import ModelSpec

    compat.keras().utils.set_random_seed(7)
    return models.build(ModelSpec(name="lenet5"), (28, 28, 1), 10).get_weights()


E2E = [("horovod", "mpirun"), ("multiworker", "local"), ("mirrored", None)]


@pytest.mark.parametrize("backend,launcher", E2E)
@pytest.mark.parametrize("model", ["unet", "mnist_cnn"])
def test_two_workers_train_real_data_and_only_the_chief_writes(tmp_path, mnist_h5, isbi_h5, model, backend, launcher):
    if model == "unet":
        data = {"path": str(isbi_h5), "split": "fold0", "tile": 128, "augment": {"enabled": True}}
        params, train = {"unet": {"depth": 3, "filters": 8}}, {"batch_size": 2, "steps_per_epoch": 3}
    else:
        data, params, train = {"path": str(mnist_h5), "split": "holdout"}, {}, {"batch_size": 32, "steps_per_epoch": 8}
    job = write_job(tmp_path / "job.toml", name="e2e", data=data, model={"name": model, **params},
                    train={"learning_rate": 1e-3, "epochs": 2, **train},
                    distribute={"warmup_epochs": 1.0}, output={"dir": str(tmp_path / "run")})
    args = ["launch", "-n", 2, job, "--backend", backend] + (["--launcher", launcher] if launcher else [])
    run_hpctrain(*args, check=True)
    run = tmp_path / "run"
    heartbeats = [".ranks"] if backend != "mirrored" else []  # every process of a multi-process job writes one
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["checkpoints", "curves.png", "metrics.csv", "metrics.jsonl", "model.json", "spec.toml", "tensorboard",
         "timing.json", *heartbeats])
    if heartbeats:
        assert sorted(p.name for p in (run / ".ranks").iterdir()) == ["0.json", "1.json"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all("val_loss" in r for r in rows)
    for sub in ("train", "validation"):  # one writer: one event file per folder
        assert len(list((run / "tensorboard" / sub).glob("events.out.tfevents.*"))) == 1
    for kind in ("last", "best"):
        assert len(list((run / "checkpoints" / kind).glob("*.index"))) == 1
    timing = json.loads((run / "timing.json").read_text())
    assert timing["world_size"] == 2 and timing["backend"] == backend
    assert not list(tmp_path.glob("**/.*.tmp")), "temporary files left behind"


def _rank_of(proc):
    """The worker rank of a process from its launcher's variables, or None."""
    import psutil

    try:
        env = proc.environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if "python" not in " ".join(proc.cmdline()[:1]) or "hpctrain" not in proc.cmdline():
        return None
    for name in ("OMPI_COMM_WORLD_RANK", "HOROVOD_RANK"):
        if name in env:
            return int(env[name])
    if "TF_CONFIG" in env:
        return json.loads(env["TF_CONFIG"])["task"]["index"]
    return None


@pytest.mark.parametrize("backend,launcher", [("horovod", "mpirun"), ("horovod", "horovodrun"),
                                              ("multiworker", "local")])
def test_a_killed_rank_ends_the_job_within_60_s(tmp_path, mnist_h5, backend, launcher):
    import contextlib
    import subprocess
    import time

    import psutil

    from conftest import VENV_BIN

    job = write_job(tmp_path / "job.toml", name="kill", data={"path": str(mnist_h5), "split": "holdout"},
                    model={"name": "lenet5"}, train={"batch_size": 16, "epochs": 1000, "validation": False},
                    output={"dir": str(tmp_path / "run"), "tensorboard": False})
    launcher_proc = subprocess.Popen([str(VENV_BIN / "hpctrain"), "launch", "-n", "2", str(job), "--backend", backend,
                                      "--launcher", launcher], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
    me = psutil.Process(launcher_proc.pid)
    deadline = time.monotonic() + 120
    while not (tmp_path / "run" / "metrics.jsonl").exists():  # training is under way
        assert launcher_proc.poll() is None and time.monotonic() < deadline, launcher_proc.stderr.read()
        time.sleep(0.1)
    descendants = me.children(recursive=True)
    workers = [p for p in descendants if _rank_of(p) is not None]
    victim = next(p for p in workers if _rank_of(p) == 1)
    victim.kill()
    killed = time.monotonic()
    try:
        code = launcher_proc.wait(timeout=60)
    finally:
        for p in [*descendants, me]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
    assert code != 0
    assert time.monotonic() - killed < 60
    err = launcher_proc.stderr.read()
    assert "worker 1" in err or "rank 1" in err or "exited" in err, err[-2000:]
    time.sleep(1)
    assert not [p for p in workers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "workers left behind"
