"""Every benchmark keeps running: a quick smoke run of each, at the smallest settings, checks that it
ends well and prints its table. The figures themselves are measured by running the scripts in full."""
import re
import subprocess
import sys

import pytest

from hpctrain.report import scaling

from conftest import ROOT

pytestmark = pytest.mark.slow
NUMBER = r"[0-9]+\.[0-9]+"


def run(script, *args, timeout=600):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def rows(text, first):
    """The table rows that start with `| first`."""
    return [line for line in text.splitlines() if line.startswith(f"| {first}")]


def test_pipeline():
    out = run("pipeline.py", "--seconds", 0.3, "--pack-files", 40, "--pack-rounds", 1)
    assert re.search(rf"raw h5py reads .* {NUMBER} samples/s", out)
    for case in ("Pillow decoding alone", "libpng decoding alone", "decoding \\+ hashes \\+ HDF5 writes",
                 "pack images"):
        assert re.search(rf"\n    {case} +{NUMBER} \({NUMBER}-{NUMBER}\)", out), case
    assert re.search(rf"hpctrain, in memory, augmentation .* {NUMBER} samples/s", out)
    assert re.search(rf"\(5\) pack synthetic-em, .* {NUMBER} samples/s", out)


def test_scaling_cpu():
    # steps enough that the side-by-side runs' measured steps overlap in time (lockstep)
    out = run("scaling_cpu.py", "--models", "cnn", "--steps", 40, "--repeats", 1, "--backends", "multiworker")
    labels = [row.split("|")[2].strip() for row in rows(out, "cnn")]
    assert labels == ["1 worker", "side by side (2 x 1 worker)", "multiworker (2 processes)",
                      "side by side, in lockstep (each step the slower one's)"]
    assert re.search(r"\| 100\.0 % \| +\| \|$", rows(out, "cnn")[-1])  # of lockstep; no exchange bound
    assert re.search(rf"\| multiworker \(2 processes\) \| 2 \| .* \| {NUMBER}-{NUMBER} % \| {NUMBER} % \|$", out, re.M)


def test_lockstep_takes_the_slower_step_at_each_moment():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import lockstep

    def run_of(times, warmup=0):
        return {"step_times": times, "first_step_at": 100.0, "warmup_steps": warmup, "global_batch": 1}

    assert lockstep([run_of([1.0] * 4), run_of([1.0] * 4)]) == pytest.approx(2.0)  # never waiting: side by side
    # one run at twice the other's step: in lockstep both go at the slower pace, 2 samples per 2 s
    assert lockstep([run_of([1.0] * 4), run_of([2.0] * 2)]) == pytest.approx(1.0)
    # a slow step of 3 s in the second run holds the first one up meanwhile: 3 lockstep steps in 5 s
    assert lockstep([run_of([1.0] * 6, warmup=1), run_of([1.0, 3.0, 1.0, 1.0], warmup=1)]) == pytest.approx(2 * 3 / 5)


def test_startup():
    out = run("startup.py", "--repeat", 1)
    backends = [row.split("|")[1].strip() for row in rows(out, "") if not row.startswith("| backend")]
    assert sorted(backends) == ["horovod", "horovod", "mirrored", "multiworker"]  # mpirun and horovodrun


def test_fault_latency():
    out = run("fault_latency.py")
    ended = rows(out, "horovod") + rows(out, "multiworker")
    assert len(ended) == 3 and all(int(row.split("|")[4]) != 0 for row in ended)  # the killed job failed


def test_training_efficiency():
    out = run("training_efficiency.py", "--filters", 4, "--tile", 64, "--batch", 1, "--steps", 7,  # 5 warm-up
              "--repeats", 1)
    assert re.search(rf"sgemm peak .* {NUMBER} GFLOP/s", out)
    assert len(rows(out, "plain tf_keras fit")) == 1 and len(rows(out, "hpctrain train")) == 1


def test_mpi_flavours():
    out = run("mpi_flavours.py", ROOT / ".venv", "--steps", 10, "--repeats", 1)
    [row] = rows(out, str(ROOT / ".venv"))  # resolved: the environment's own folder
    assert "Open MPI" in row and row.endswith("| 1.00 |")


def test_faults_multinode():
    out = run("faults_multinode.py", "--repeats", 1, "--launchers", "mpirun", "--faults", "node killed",
              "--steps", 16)  # enough that the side-by-side runs' measured steps overlap in time
    [fault] = rows(out, "mpirun")
    assert fault.split("|")[5].strip() not in ("0", "None") and fault.endswith("| 0 |")  # failed, nothing left
    assert len(rows(out, "2 nodes x 1 worker")) == 1 and len(rows(out, "side by side")) == 2
    assert rows(out, "side by side, in lockstep")[0].endswith("| 100.0 % |")
    bound = re.search(r"exchange of the gradient set alone \(([\d.]+) MB.*-> 2-node bound ([\d.]+) %", out)
    assert bound and float(bound[1]) > 1 and 0 < float(bound[2]) < 100, out[-1000:]


def test_time_to_accuracy(tmp_path):
    out = run("time_to_accuracy.py", "--job", "jobs/cnn_mnist.toml", "--seeds", 1, "--set", "train.epochs=1",
              "--set", "train.steps_per_epoch=4", "--set", "distribute.lr_scaling=sqrt", "--runs", tmp_path,
              "1", "2")
    assert [row.split("|")[1].strip() for row in rows(out, "")[1:]] == ["1", "2"]
    assert re.search(r"\| 2 \| [0-9.]+ \([0-9.]+-[0-9.]+\) \| not reached \|", out)
    assert rows(out, "2 ")[0].endswith("| - | not reached |")  # no speedup, of the medians or per seed
    [group] = scaling.build([tmp_path / "c0-s1", tmp_path / "c1-s1"])  # 1 worker under the backend too
    assert group["backend"] == "horovod" and [r["workers"] for r in group["rows"]] == [1, 2]


def test_breakdown_check():
    out = run("breakdown_check.py", "--workers", 2, "--rounds", 1, "--calls", 2, "--set", "train.epochs=1",
              "--set", "train.steps_per_epoch=6")
    [row] = rows(out, "2 ")
    share, seconds = r"[+-][0-9.]+ % \([+-][0-9.]+ to [+-][0-9.]+\)", r"-?[0-9.]+ \(-?[0-9.]+--?[0-9.]+\) s"
    assert re.fullmatch(rf"\| 2 \| {share} \| {share} \| {seconds} \| {seconds} \| {share} \|", row), row
    assert re.search(rf"2 workers: input -?{NUMBER}, compute {NUMBER}, exchange {NUMBER}", out)


def test_rare_foreground():
    out = run("rare_foreground.py", "--epochs", 1, "--seeds", 1, "--slices", 10, "--size", 32)
    assert [row.split("|")[1].strip() for row in rows(out, "")][1:] == [
        "crossentropy", "crossentropy+dice", "weighted_crossentropy"]
    assert re.search(rf"\| weighted_crossentropy \| {NUMBER} \({NUMBER}-{NUMBER}\) \|", out)


def test_predict_shaped():
    out = run("predict_shaped.py", "--rates", "1gbit", "--steps", 8, "--repeats", 1, "--compressions", "fp16")
    assert len(rows(out, "1gbit")) == 1
    assert re.search(rf"\| 1gbit \| {NUMBER} \| fp16 \| [0-9]+ \| [0-9]+ \| [+-]{NUMBER} %", out)
