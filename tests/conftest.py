"""Shared fixtures: the repository's real data and a helper that runs the hpctrain command."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["slurm_cluster", "node_cluster"]  # `slurm`: one private Slurm node; `nodes`: several

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def data_dir():
    return DATA


def run_hpctrain(*args, timeout=600, env=None, cwd=None, check=False):
    """Runs the real `hpctrain` console script; returns the CompletedProcess (text output)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([str(VENV_BIN / "hpctrain"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"hpctrain {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def assert_user_error(proc, *fragments):
    """A bad-input run: exit code 2, one line on stderr naming the problem, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="session")
def mnist_h5(tmp_path_factory):
    """The real MNIST t10k digits packed once per test session."""
    from hpctrain.data import mnist

    out = tmp_path_factory.mktemp("data") / "mnist.h5"
    mnist.pack(out, images=DATA / "mnist" / "t10k-images-idx3-ubyte.gz",
               labels=DATA / "mnist" / "t10k-labels-idx1-ubyte.gz")
    return out


@pytest.fixture(scope="session")
def isbi_h5(tmp_path_factory):
    """The real ISBI 2012 stacks packed once per test session."""
    from hpctrain.data import isbi

    out = tmp_path_factory.mktemp("data") / "isbi.h5"
    isbi.pack(out, volume=DATA / "isbi2012" / "train-volume.tif", labels=DATA / "isbi2012" / "train-labels.tif",
              test=DATA / "isbi2012" / "test-volume.tif")
    return out


def write_job(path, **sections):
    """Writes a job spec TOML from {section: {key: value}}. Its precision is fp32 unless given: the tests
    compare weights and scores to float32 tolerances (train.precision "auto" has tests of its own). The
    step-time breakdown is off unless given: it would add its calls to every run of the suite
    (tests/test_breakdown.py and test_extending.py run it)."""
    from hpctrain import spec

    sections["train"] = {"precision": "fp32", "breakdown_steps": 0, **sections.get("train", {})}
    return spec.write(path, **sections)


@pytest.fixture(autouse=True)
def _fast_tests_start_no_process(request, monkeypatch):
    """A test marked `fast` (make test-fast) fails if it starts a subprocess."""
    if request.node.get_closest_marker("fast"):
        from hpctrain import compat

        compat.tf()  # TensorFlow runs lscpu and uname when it first loads: before the guard
        def refuse(self, *args, **kwargs):
            raise AssertionError(f"a fast test started a subprocess: {args[:1]}")

        monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
