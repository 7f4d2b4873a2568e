"""Faults: nothing hangs, nothing is lost, every error is clear. Real processes, real signals, a real
full disk (a small tmpfs; mounting needs root, which CI has)."""
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import VENV_BIN, assert_user_error, run_hpctrain, write_job

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def small_disk(path, size):
    """A tmpfs of `size` mounted at `path` for the duration of the block."""
    if os.geteuid() != 0:
        pytest.fail("the disk-full tests mount a tmpfs and need root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def lenet(tmp_path, mnist_h5, out, name="lenet", **train):
    settings = {"batch_size": 32, "epochs": 3, "steps_per_epoch": 10, "validation": False, **train}
    return write_job(tmp_path / f"{name}.toml", name=name, data={"path": str(mnist_h5), "split": "holdout"},
                     model={"name": "lenet5"}, train=settings, output={"dir": str(out), "tensorboard": False})


def restorable(run_dir):
    from hpctrain.evaluate.run import load_model

    weights = load_model(run_dir)[1].get_weights()
    return all(np.isfinite(w).all() for w in weights)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, mnist_h5):
    job = lenet(tmp_path, mnist_h5, tmp_path / "run", epochs=1)
    run_hpctrain("train", job, check=True)
    from hpctrain.train.checkpoint import latest

    good = latest(tmp_path / "run" / "checkpoints" / "last")
    proc = run_hpctrain("train", job, "--resume", "--set", "train.epochs=3", "--set", "train.learning_rate=1e12")
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "loss became nan at epoch 2, step" in line and "last good checkpoint" in line
    assert "Traceback" not in proc.stderr
    assert latest(tmp_path / "run" / "checkpoints" / "last") == good
    assert restorable(tmp_path / "run")


def corrupt_one_sample(src, dst, index):
    """A gzip-compressed copy of `src` whose sample `index` cannot be decompressed."""
    with h5py.File(src) as a, h5py.File(dst, "w") as b:
        for key, value in a.attrs.items():
            b.attrs[key] = value
        for name in a:
            if isinstance(a[name], h5py.Dataset):
                chunks = (1, *a[name].shape[1:]) if a[name].ndim > 1 else None
                b.create_dataset(name, data=a[name][()], chunks=chunks, compression="gzip" if chunks else None)
            else:
                a.copy(a[name], b)
        info = b["images"].id.get_chunk_info_by_coord((index, 0, 0))
    with open(dst, "r+b") as f:
        f.seek(info.byte_offset + info.size // 2)
        f.write(b"\xff" * max(4, info.size // 4))


@pytest.mark.parametrize("backend,launcher", [("horovod", "mpirun"), ("multiworker", "local")])
def test_an_error_on_one_rank_ends_the_whole_job(tmp_path, mnist_h5, backend, launcher):
    data = tmp_path / "corrupt.h5"
    corrupt_one_sample(mnist_h5, data, index=4321)
    job = write_job(tmp_path / "job.toml", name="corrupt", data={"path": str(data), "split": "all", "in_memory": False},
                    model={"name": "lenet5"}, train={"batch_size": 50, "epochs": 1, "validation": False},
                    output={"dir": str(tmp_path / "run"), "tensorboard": False})
    start = time.monotonic()
    proc = run_hpctrain("launch", "-n", 2, job, "--backend", backend, "--launcher", launcher, timeout=300)
    assert proc.returncode != 0
    assert time.monotonic() - start < 120  # includes start-up; the failure itself ends the job at once
    assert "failed" in proc.stderr and ("rank 0" in proc.stderr or "rank 1" in proc.stderr), proc.stderr[-3000:]


def test_killing_training_at_random_moments_never_breaks_the_last_checkpoint(tmp_path, mnist_h5):
    job = lenet(tmp_path, mnist_h5, tmp_path / "run", epochs=1000, steps_per_epoch=3)
    rng = random.Random(0)
    for attempt in range(3):
        args = [str(VENV_BIN / "hpctrain"), "train", str(job)] + (["--resume"] if attempt else [])
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "checkpoints" / "last" / "checkpoint").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(rng.uniform(0.5, 2.0))  # epochs of 3 steps: checkpoints are written all the time
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert restorable(tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(set(r) >= {"epoch", "loss"} for r in rows)


def test_disk_full_while_checkpointing_keeps_the_last_good_checkpoint(tmp_path, mnist_h5):
    # LeNet-5 with Adam: 0.77 MB per checkpoint. 2 MB hold the first epoch's "last" and "best"; the
    # next epoch's new checkpoint no longer fits beside them.
    with small_disk(tmp_path / "disk", "2000k") as disk:
        job = lenet(tmp_path, mnist_h5, disk / "run", epochs=5)
        proc = run_hpctrain("train", job)
        assert proc.returncode == 1, proc.stderr
        line = proc.stderr.strip().splitlines()[-1]
        assert "cannot write a checkpoint" in line and "No space left" in line, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert restorable(disk / "run")


def test_disk_full_while_packing_leaves_nothing(tmp_path, data_dir):
    with small_disk(tmp_path / "disk", "1m") as disk:
        proc = run_hpctrain("pack", "isbi", "--volume", data_dir / "isbi2012" / "train-volume.tif",
                            "--labels", data_dir / "isbi2012" / "train-labels.tif", "-o", disk / "isbi.h5")
        assert_user_error(proc, "isbi.h5")
        assert list(disk.iterdir()) == []


def test_disk_full_while_writing_a_report_leaves_only_whole_files(tmp_path, mnist_h5):
    run_hpctrain("train", lenet(tmp_path, mnist_h5, tmp_path / "run", epochs=1), check=True)
    with small_disk(tmp_path / "disk", "40k") as disk:
        proc = run_hpctrain("report", tmp_path / "run", "-o", disk / "report")
        assert_user_error(proc, "cannot write")
        for path in (disk / "report").iterdir():
            assert not path.name.startswith("."), f"temporary file left: {path}"
            if path.suffix == ".png":
                assert path.read_bytes()[-8:] == b"IEND\xaeB`\x82", f"truncated {path}"


def test_sigterm_during_pack_leaves_the_previous_file(tmp_path):
    out = tmp_path / "synth.h5"
    run_hpctrain("pack", "synthetic-em", "--count", 4, "--size", 64, "--seed", 1, "-o", out, check=True)
    before = out.read_bytes()
    proc = subprocess.Popen([str(VENV_BIN / "hpctrain"), "pack", "synthetic-em", "--count", "5000", "--size", "256",
                             "--seed", "2", "-o", str(out), "--force"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".synth.h5.*")):  # the temporary file exists: packing is under way
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth.h5"]
    run_hpctrain("verify", out, check=True)


def rank_pids(pattern):
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.parametrize("backend,launcher", [("horovod", "mpirun"), ("multiworker", "local")])
def test_a_frozen_rank_ends_the_job_within_the_stall_timeout_naming_it(tmp_path, mnist_h5, backend, launcher):
    """One of 2 ranks stopped with SIGSTOP mid-training: without the watchdog the job sat silent until its
    time limit. The surviving rank names the frozen one, and nothing of the job is left."""
    job = lenet(tmp_path, mnist_h5, tmp_path / "run", epochs=1000, steps_per_epoch=20)
    proc = subprocess.Popen([str(VENV_BIN / "hpctrain"), "launch", "-n", "2", str(job), "--backend", backend,
                             "--launcher", launcher, "--set", "distribute.stall_timeout=10"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marker = str(job)
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "run" / "metrics.jsonl").exists():  # an epoch has ended: training is under way
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.2)
        frozen = max(rank_pids(f"hpctrain train {marker}"))
        os.kill(frozen, signal.SIGSTOP)
        stopped = time.monotonic()
        _, err = proc.communicate(timeout=10 + 60)
        took = time.monotonic() - stopped
    finally:
        for pid in rank_pids(f"hpctrain train {marker}"):
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert took < 120, took  # it ends, not hangs (benchmarks/faults_multinode.py measures how fast)
    [rank] = [r["rank"] for r in map(json.loads, map(Path.read_text, (tmp_path / "run" / ".ranks").glob("*.json")))
              if r["pid"] == frozen]
    # hpctrain's watchdog names it; under tf.distribute TensorFlow's own heartbeat may notice first.
    watchdog = f"rank {rank} ({socket.gethostname()}, pid {frozen}) silent for"
    tensorflow = f"rank {rank} (localhost (127.0.0.1)) stopped responding (TensorFlow's heartbeat to it timed out)"
    assert any(watchdog in line or tensorflow in line for line in err.splitlines()), err[-3000:]
    assert "Traceback" not in err
    assert rank_pids(f"hpctrain train {marker}") == []
