"""The software stack works end to end: real MPI jobs, real Horovod (MPI and Gloo), real tf_keras."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from hpctrain.launch import local as launch

from conftest import run_hpctrain

WORKER = Path(__file__).parent / "workers" / "stack_check.py"


def test_env_json_reports_the_stack():
    proc = run_hpctrain("env", "--json", env={"HPCTRAIN_API_TOKEN": "s3cr3t", "DB_PASSWORD": "hunter2",
                                               "SLURM_JOB_ID": "4242"}, check=True)
    info = json.loads(proc.stdout)
    assert info["tensorflow"]["version"] == "2.18.1"
    assert info["keras"]["flavour"].startswith("tf_keras") and info["keras"]["version"] == "2.18.0"
    hvd = info["horovod"]
    assert hvd["version"] == "0.28.1"
    assert hvd["frameworks"]["tensorflow"] and hvd["controllers"] == {"mpi": True, "gloo": True}
    assert info["mpi"]["vendor"] == "Open MPI" and info["mpi"]["mpi4py"] == "4.1.2"
    assert info["hdf5"]["h5py"] == "3.16.0" and info["hdf5"]["mpi"] is False
    assert info["devices"]["cpu_count"] >= 1 and info["devices"]["gpus"] == []
    assert info["environment"]["SLURM_JOB_ID"] == "4242"
    assert "s3cr3t" not in proc.stdout and "hunter2" not in proc.stdout


def test_env_text_is_readable():
    proc = run_hpctrain("env", check=True)
    assert "horovod:" in proc.stdout and "version: 0.28.1" in proc.stdout


def _collect(tmp_path, n):
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(n)]
    assert [r["rank"] for r in results] == list(range(n))
    assert all(r["size"] == n for r in results)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("launcher,check", [
    ("mpirun", "horovod_allreduce"),
    ("horovodrun", "horovod_allreduce"),
    ("mpirun", "mpi4py_allreduce"),
    ("mpirun", "horovod_on_mpi4py"),
])
def test_two_rank_allreduce(tmp_path, launcher, check):
    code = launch.run(2, [sys.executable, str(WORKER), check, str(tmp_path)], launcher)
    assert code == 0
    for r in _collect(tmp_path, 2):
        assert r["sum"] == [3.0, 20.0]  # (0+1) + (1+1), 10 + 10
        if check == "horovod_on_mpi4py":
            assert r["mpi_rank"] == r["rank"] and r["mpi_enabled"]


@pytest.mark.slow
def test_two_rank_keras_fit_keeps_weights_identical(tmp_path):
    code = launch.run(2, [sys.executable, str(WORKER), "keras_fit", str(tmp_path)], "mpirun")
    assert code == 0
    w0, w1 = (r["weights"] for r in _collect(tmp_path, 2))
    assert len(w0) == 4
    for a, b in zip(w0, w1):
        np.testing.assert_array_equal(np.array(a), np.array(b))
