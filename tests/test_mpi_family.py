"""hpctrain with an MPI of the MPICH family, for real: PyPI's MPICH wheel and mpi4py in a venv of their own
($HPCTRAIN_MPICH_VENV, or built here from PyPI). Ranks started by MPICH's mpiexec see themselves through
detect(); mpirun_command() builds Hydra's options and its job runs; each family is told from its
`mpirun --version`; `hpctrain env` warns when the mpirun on PATH is not the MPI that mpi4py and Horovod use."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hpctrain.envinfo import install_prefix
from hpctrain.errors import UserError
from hpctrain.launch import local

from conftest import ROOT, run_hpctrain

pytestmark = pytest.mark.slow

MPICH_PACKAGES = ("mpich==5.0.2", "mpi4py==4.1.2", "python-hostlist==2.3.0")

# Run by every rank (argv: a folder): where MPI and detect() say it stands, and a sum over all ranks (one
# job, not singletons), written to rank<N>.json in the folder (mpiexec's merged stdout can split lines).
PROBE = """
import json, os, sys
from mpi4py import MPI
from hpctrain.distribute import cluster
c, world = cluster.detect(), MPI.COMM_WORLD
result = {"rank": world.rank, "size": world.size, "sum": world.allreduce(world.rank + 1),
          "library": MPI.Get_library_version().splitlines()[0], "module": os.path.basename(MPI.__file__),
          "cluster": [c.launcher, c.rank, c.size, c.local_rank, c.local_size, c.node_rank, c.num_nodes],
          "probe": os.environ.get("HPCTRAIN_PROBE")}
with open(os.path.join(sys.argv[1], f"rank{world.rank}.json"), "w") as f:
    json.dump(result, f)
"""


@pytest.fixture(scope="session")
def mpich_venv(tmp_path_factory):
    """A venv holding PyPI's MPICH (bin/mpiexec, lib/libmpi.so.12), mpi4py and python-hostlist."""
    given = os.environ.get("HPCTRAIN_MPICH_VENV")
    venv = Path(given) if given else tmp_path_factory.mktemp("mpich") / "venv"
    if not given:
        for cmd in ([sys.executable, "-m", "venv", str(venv)],
                    [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *MPICH_PACKAGES]):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=540)
            if proc.returncode != 0:
                pytest.fail(f"cannot make the MPICH venv ({shlex.join(cmd)}):\n{proc.stdout}{proc.stderr}")
    missing = [p for p in ("bin/python", "bin/mpiexec", "bin/mpirun") if not (venv / p).exists()]
    if missing:
        pytest.fail(f"{venv} is no MPICH venv: it lacks {', '.join(missing)}")
    return venv


def rank_env(venv, **extra):
    """The environment of a job in the MPICH venv, with hpctrain importable from the source tree."""
    return {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(ROOT / "src"), **extra}


def assert_one_mpich_job(folder, n, probe=None):
    results = [json.loads(p.read_text()) for p in sorted(folder.glob("rank*.json"))]
    assert sorted(r["rank"] for r in results) == list(range(n))
    for r in results:
        assert r["size"] == n and r["sum"] == n * (n + 1) // 2
        assert r["library"].startswith("MPICH Version:") and ".mpich." in r["module"]
        assert r["cluster"] == ["mpiexec", r["rank"], n, r["rank"], n, 0, 1]  # one node: local = global
        assert r["probe"] == probe


def test_two_rank_mpi4py_job_under_mpich_mpiexec(mpich_venv, tmp_path):
    proc = subprocess.run([str(mpich_venv / "bin" / "mpiexec"), "-n", "2", str(mpich_venv / "bin" / "python"),
                           "-c", PROBE, str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env=rank_env(mpich_venv))
    assert proc.returncode == 0, proc.stderr
    assert_one_mpich_job(tmp_path, 2)


def test_mpirun_command_for_mpich_runs_an_oversubscribed_job(mpich_venv, tmp_path):
    """hpctrain's own launcher in the MPICH venv: Hydra's options, more ranks than cores, the environment
    passed on (HPCTRAIN_PROBE), every rank in one job."""
    n = (os.cpu_count() or 1) + 1
    script = ("import json, sys\nfrom hpctrain.launch import local\n"
              f"argv = [sys.executable, '-c', {PROBE!r}, {str(tmp_path)!r}]\n"
              f"print(json.dumps(local.mpirun_command({n}, argv)), flush=True)\n"
              f"sys.exit(local.run({n}, argv, 'mpirun'))\n")
    proc = subprocess.run([str(mpich_venv / "bin" / "python"), "-c", script], capture_output=True, text=True,
                          timeout=300, env=rank_env(mpich_venv, HPCTRAIN_PROBE="passed on"))
    assert proc.returncode == 0, proc.stderr
    cmd = json.loads(proc.stdout.splitlines()[0])
    assert cmd == [str(mpich_venv / "bin" / "mpirun"), "-np", str(n), "-bind-to", "none", "-envall",
                   str(mpich_venv / "bin" / "python"), "-c", PROBE, str(tmp_path)]
    assert_one_mpich_job(tmp_path, n, probe="passed on")


def test_each_family_is_told_from_its_version_output(mpich_venv):
    version = subprocess.run([str(mpich_venv / "bin" / "python"), "-c",
                              "from importlib.metadata import version; print(version('mpich'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    for name in ("mpirun", "mpiexec"):
        assert local.launcher_family(str(mpich_venv / "bin" / name)) == (local.MPICH, version)
        # Debian's Open MPI names itself "mpirun (Open MPI) 4.1.4" and "mpiexec (OpenRTE) 4.1.4"
        family, ompi_version = local.launcher_family(f"/usr/bin/{name}")
        assert family is local.OPEN_MPI and ompi_version.split(".")[0] == "4"
    # the form of Intel MPI 2021's `mpiexec --version` (no Intel MPI here)
    intel = "Intel(R) MPI Library for Linux* OS, Version 2021.10 Build 20230619 (id: c2e19c2f3e)\nCopyright 2003-2023"
    assert local.family_of(intel) == (local.INTEL_MPI, "2021.10")
    assert local.INTEL_MPI.command("mpiexec", 2, ["a"], {"PATH": "/bin"}) == [
        "mpiexec", "-np", "2", "-genv", "I_MPI_PIN", "0", "-envall", "a"]
    assert local.family_of("mpiexec 1.2 of another family") == (None, None)


def test_an_unknown_launcher_is_a_one_line_user_error(tmp_path):
    fake = tmp_path / "mpirun"
    fake.write_text("#!/bin/sh\necho\necho 'mpirun 1.2 of another family'\necho 'more text'\n")
    fake.chmod(0o755)
    with pytest.raises(UserError) as error:
        local.launcher_family(str(fake))
    message = str(error.value)
    assert "\n" not in message and str(fake) in message and "'mpirun 1.2 of another family'" in message
    broken = tmp_path / "mpiexec"
    broken.write_text("not a program")  # not executable
    with pytest.raises(UserError, match=rf"^{re.escape(str(broken))} --version failed: .*Permission denied"):
        local.launcher_family(str(broken))


def test_env_warns_when_mpirun_on_path_is_mpich_but_mpi4py_uses_open_mpi(mpich_venv):
    path = f"{mpich_venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    info = json.loads(run_hpctrain("env", "--json", env={"PATH": path}, check=True).stdout)["mpi"]
    mpirun, libmpi = info["mpirun"], info["libmpi"]
    assert mpirun["path"] == str(mpich_venv / "bin" / "mpirun") and mpirun["family"] == "MPICH"
    assert info["vendor"] == "Open MPI" and info["abi"] == "openmpi" and libmpi["abi"] == "openmpi"
    assert info["horovod_libmpi"]["path"] == libmpi["path"]
    proc = run_hpctrain("env", env={"PATH": path}, check=True)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"warning: {info['mismatch']}"]
    assert lines[0].startswith(f"warning: mpirun on PATH ({mpich_venv / 'bin' / 'mpirun'}: MPICH ")
    assert f"is not the MPI that mpi4py/Horovod use (Open MPI v{info['version']}, {libmpi['path']})" in lines[0]
    assert lines[0].endswith("ranks may hang or start as N singletons")


def test_env_is_quiet_when_mpirun_on_path_is_the_mpi_of_mpi4py():
    proc = run_hpctrain("env", "--json", env={"PATH": "/usr/bin:/bin"}, check=True)
    info = json.loads(proc.stdout)["mpi"]
    assert info["mpirun"]["family"] == info["vendor"] == "Open MPI"
    assert info["mpirun"]["prefix"] == info["libmpi"]["prefix"] == install_prefix(info["libmpi"]["path"])
    assert info["mismatch"] is None and "warning" not in proc.stderr
