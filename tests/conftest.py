"""Shared fixtures: the repository's real data and a helper that runs the hpctrain command."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    lines = [line for line in proc.stderr.splitlines() if line.strip() and _not_tf_noise(line)]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _not_tf_noise(line):
    # TensorFlow 2.18's CUDA plugins log these at import even on CPU-only machines.
    return not any(s in line for s in ("Unable to register cu", "absl::InitializeLog", "cuda_", "E0000", "W0000",
                                       "oneDNN", "This TensorFlow binary", "rebuild TensorFlow", "cpu_feature_guard"))
