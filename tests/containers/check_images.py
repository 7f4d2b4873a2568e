"""Checks inside the built images localhost/hpctrain-cpu and localhost/hpctrain-gpu (containers/build.sh ...
--engine podman). Not part of the normal test run (pytest collects test_*.py only): `make test-containers` builds
both images and runs this file, or, with the images built,

    CONTAINERS_CONF=tests/containers/containers.conf pytest tests/containers/check_images.py

Folders go in as Apptainer binds them: at the same path, the job's data read-only. No GPU here: the GPU image is
checked for what it was built with and for libraries that resolve, never run on a GPU.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpctrain.rundir import RunDir

pytestmark = pytest.mark.containers

ROOT = Path(__file__).resolve().parents[2]
ENGINE = os.environ.get("HPCTRAIN_ENGINE", "podman")
sys.path.insert(0, str(ROOT / "benchmarks"))


def image(flavour):
    name = f"localhost/hpctrain-{flavour}"
    if shutil.which(ENGINE) is None:
        pytest.fail(f"{ENGINE} is not on PATH (make test-containers installs it)", pytrace=False)
    if subprocess.run([ENGINE, "image", "inspect", name], capture_output=True).returncode:
        pytest.fail(f"no image {name}: containers/build.sh {flavour} --engine {ENGINE} builds it", pytrace=False)
    return name


def run(flavour, *argv, binds=(), entrypoint=None, env=None, check=True):
    cmd = [ENGINE, "run", "--rm", "--network", "host"]
    for path, mode in binds:
        cmd += ["-v", f"{path}:{path}:{mode}"]
    cmd += [f"-e{k}={v}" for k, v in (env or {}).items()]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    proc = subprocess.run([*cmd, image(flavour), *map(str, argv)], capture_output=True, text=True, timeout=1800)
    if check and proc.returncode:
        pytest.fail(f"{' '.join(cmd)} ... {' '.join(map(str, argv))} failed ({proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", pytrace=False)
    return proc


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_env_reports_the_locked_stack(flavour):
    from test_containers import project_pins

    info = json.loads(run(flavour, "env", "--json").stdout)
    pins, text = project_pins(), json.dumps(info)
    assert pins["tensorflow"] in text and pins["horovod"] in text, text[:2000]
    assert info["mpi"]["vendor"] == "Open MPI", info["mpi"]


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_the_images_own_checks_pass(flavour):
    out = run(flavour, flavour, "test", entrypoint="/opt/hpctrain/src/containers/recipe.sh").stdout
    assert out.count("allreduce 3.0") == 2, out
    if flavour == "gpu":
        assert "[X] NCCL" in out and "[X] MPI" in out and "[X] Gloo" in out, out


def test_gpu_image_libraries_resolve():
    """tests/gpu_build/check_gpu_build.py, the check of `make test-gpu-build`, run on the image's venv."""
    tests = ROOT / "tests" / "gpu_build"
    proc = run("gpu", "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--noconftest", "-W",
               "ignore::pytest.PytestUnknownMarkWarning", tests / "check_gpu_build.py",
               binds=[(tests, "ro"), (ROOT / "install", "ro")], entrypoint="/opt/hpctrain/venv/bin/python",
               env={"HPCTRAIN_GPU_VENV": "/opt/hpctrain/venv", "PYTHONDONTWRITEBYTECODE": "1"}, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout, proc.stdout[-2000:]


def test_cpu_image_trains_the_cnn_on_two_ranks_as_the_host_does(tmp_path):
    """The same deterministic 2-rank Horovod training through the image's mpirun and through the host's venv:
    the same accuracy (benchmarks/mpi_flavours.py, whose smoke run this is)."""
    import mpi_flavours

    image("cpu")
    job = mpi_flavours.job_file(tmp_path, steps=20)
    host = mpi_flavours.run(Path(sys.prefix), job, tmp_path / "host")
    inside = mpi_flavours.run(f"{ENGINE}:localhost/hpctrain-cpu", job, tmp_path / "image")
    assert (tmp_path / "image" / "timing.json").exists()
    assert inside[0] == pytest.approx(host[0], abs=0.002), (inside, host)
    assert inside[1] > 0


HYBRID = """exec {engine} run --rm --network host --uts host --pid host --ipc host \\
  -e 'SLURM_*' -e 'PMIX_*' -e 'HPCTRAIN_*' \\
  -v "$PMIX_SERVER_TMPDIR:$PMIX_SERVER_TMPDIR" -v "$TMPDIR:$TMPDIR" -v {folder}:{folder} -v {data}:{data}:ro \\
  localhost/hpctrain-cpu train {job} --backend horovod"""


def test_hybrid_srun_pmix_starts_one_container_per_rank_on_each_node(nodes, mnist_h5, tmp_path):
    """The hybrid model of sites: the host's Slurm starts each rank (srun --mpi=pmix) as a container on its node,
    and the image's Open MPI talks to the host's PMIx server. Podman stands in for Apptainer with Apptainer's
    defaults: the host's network, hostname, process and IPC namespaces, the job's environment, /tmp-like folders
    bound in. Same accuracy as the same job on the host."""
    from conftest import VENV_BIN, write_job

    image("cpu")
    job = write_job(tmp_path / "hybrid.toml", name="hybrid", data={"path": str(mnist_h5), "split": "holdout"},
                    model={"name": "lenet5"},
                    train={"batch_size": 16, "epochs": 1, "steps_per_epoch": 20, "validation": False,
                           "deterministic": True, "seed": 7},
                    distribute={"lr_scaling": "none"}, output={"dir": str(tmp_path / "image"), "tensorboard": False})
    env = {**nodes.env, "PATH": f"{nodes.bin}{os.pathsep}{VENV_BIN}{os.pathsep}{nodes.env['PATH']}",
           "HPCTRAIN_INTERFACE": nodes.interface}
    srun = ["srun", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--mpi=pmix", "--kill-on-bad-exit=1"]
    script = HYBRID.format(engine=ENGINE, folder=tmp_path, data=mnist_h5.parent, job=job)
    proc = nodes.on("node1", *srun, "bash", "-c", script, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    inside = json.loads((tmp_path / "image" / "timing.json").read_text())
    assert inside["world_size"] == 2 and inside["environment"]["rank_hosts"] == ["node1", "node2"], inside

    host = nodes.on("node1", *srun, VENV_BIN / "hpctrain", "train", job, "--backend", "horovod", "--set",
                    f"output.dir={json.dumps(str(tmp_path / 'host'))}", env=env, timeout=900)
    assert host.returncode == 0, host.stderr[-3000:]
    image_run, host_run = (RunDir(tmp_path / r).history()[-1] for r in ("image", "host"))
    assert image_run["loss"] == pytest.approx(host_run["loss"], rel=1e-3), (image_run, host_run)
