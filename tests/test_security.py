"""No value reaches a shell unquoted; files honour the umask."""
import json
import os
import stat
import subprocess

import pytest

from conftest import VENV_BIN, run_hpctrain, write_job

HOSTILE = "we ird 'q\" ;$(touch PWNED) `touch PWNED2`;x"


@pytest.mark.slow
@pytest.mark.parametrize("backend,launcher", [("horovod", "mpirun"), ("horovod", "horovodrun"),
                                              ("multiworker", "local")])
def test_hostile_names_pass_through_launchers_untouched(tmp_path, mnist_h5, backend, launcher):
    folder = tmp_path / HOSTILE
    folder.mkdir()
    job = write_job(folder / f"{HOSTILE}.toml", name="hostile", data={"path": str(mnist_h5), "split": "holdout"},
                    model={"name": "lenet5"},
                    train={"batch_size": 16, "epochs": 1, "steps_per_epoch": 2, "validation": False},
                    output={"dir": str(folder / "run"), "tensorboard": False})
    run_hpctrain("launch", "-n", 2, job, "--backend", backend, "--launcher", launcher, cwd=tmp_path, check=True)
    assert json.loads((folder / "run" / "timing.json").read_text())["world_size"] == 2
    assert not list(tmp_path.rglob("PWNED*")) and not (VENV_BIN.parent.parent / "PWNED").exists()


def test_print_shows_a_command_a_shell_would_run_unchanged(tmp_path):
    proc = run_hpctrain("launch", "-n", 2, f"{HOSTILE}.toml", "--backend", "horovod", "--print", cwd=tmp_path)
    # The spec does not exist, so the command is refused before anything is printed or run.
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    job = tmp_path / f"{HOSTILE}.toml"
    job.write_text((VENV_BIN.parent.parent / "jobs" / "cnn_mnist.toml").read_text())
    line = run_hpctrain("launch", "-n", 2, job, "--backend", "horovod", "--print", cwd=tmp_path, check=True).stdout
    echoed = subprocess.run(["bash", "-c", f"printf '%s\\n' {line.split(' -m hpctrain train ', 1)[1]}"],
                            capture_output=True, text=True, cwd=tmp_path, check=True).stdout.splitlines()
    assert echoed[0] == str(job)
    assert not list(tmp_path.glob("PWNED*"))


@pytest.mark.slow
def test_outputs_follow_the_umask(tmp_path, mnist_h5):
    job = write_job(tmp_path / "job.toml", name="umask", data={"path": str(mnist_h5), "split": "holdout"},
                    model={"name": "lenet5"},
                    train={"batch_size": 16, "epochs": 1, "steps_per_epoch": 2},
                    output={"dir": str(tmp_path / "run")})
    subprocess.run(["bash", "-c", f'umask 027 && exec "{VENV_BIN}/hpctrain" train "{job}"'], check=True,
                   capture_output=True)
    files = [p for p in (tmp_path / "run").rglob("*")]
    assert len(files) > 10
    for path in files:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert not mode & 0o007, f"{path} is {oct(mode)} under umask 027"
