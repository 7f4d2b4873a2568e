"""The Apptainer definitions (containers/*.def) and containers/build.sh.

No Apptainer or Singularity runtime exists on the machines these tests run on, so no image is built
or run here: the definitions are parsed (spython's Singularity recipe parser) and checked against the
project's pins, and build.sh is run against a fake `apptainer`. The one slow test runs the CPU image's
%test script on the host, whose stack is what the CPU image's install.sh makes, but not the image.
"""
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from spython.main.parse.parsers import SingularityParser

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS = ROOT / "containers"
BUILD = CONTAINERS / "build.sh"
KINDS = ("gpu", "cpu")
VENV = "/opt/hpctrain/venv"


def _norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def project_pins():
    """{package: version} of requirements.lock (Python 3.11's), with what only pyproject.toml pins (Horovod),
    hpctrain's version and the lock's Python. Every lock version lies in pyproject.toml's range."""
    lock = (ROOT / "requirements.lock").read_text()
    pins = {"python": re.search(r"for Python (3\.\d+)", lock.splitlines()[0]).group(1)}
    for line in lock.splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[_norm(name)] = version.strip()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert Version(pins["python"]) in SpecifierSet(project["requires-python"])
    for dep in map(Requirement, project["dependencies"]):
        version = pins.setdefault(_norm(dep.name), str(next(iter(dep.specifier)).version))
        assert Version(version) in dep.specifier, f"the lock's {dep.name} {version} is not in {dep.specifier}"
    pins["hpctrain"] = project["version"]
    return pins


def sections(kind):
    """{section name: its lines} of a definition, split where Apptainer splits: at lines starting with %."""
    found, name = {"header": []}, "header"
    for line in (CONTAINERS / f"hpctrain-{kind}.def").read_text().splitlines():
        match = re.match(r"%(\w+)", line)
        if match:
            name = match.group(1)
            found[name] = []
        else:
            found[name].append(line)
    return found


def recipe(kind):
    parser = SingularityParser(str(CONTAINERS / f"hpctrain-{kind}.def"))
    return parser.recipe[parser.active_layer]


def post_script(kind):
    """%post as shell text, continuation lines joined and its top-level NAME=value variables expanded."""
    text = "\n".join(sections(kind)["post"]).replace("\\\n", " ")
    variables = dict(re.findall(r"^\s*([A-Z_]+)=(\S+)\s*$", text, re.M))
    for name, value in variables.items():
        text = re.sub(r"\$\{?%s\}?" % name, value, text)
    return text, variables


def labels(kind):
    return dict(line.split(None, 1) for line in recipe(kind).labels)


@pytest.mark.parametrize("kind", KINDS)
def test_header_and_required_sections(kind):
    found = sections(kind)
    header = [line for line in found.pop("header") if line.strip() and not line.startswith("#")]
    assert header == ["Bootstrap: docker", f"From: {recipe(kind).fromHeader}"]
    required = {"labels", "help", "files", "environment", "post", "runscript", "test"}
    assert required <= set(found)
    assert [name for name in required if not any(line.strip() for line in found[name])] == []


@pytest.mark.parametrize("kind", KINDS)
def test_runscript_runs_hpctrain_and_environment_puts_it_on_the_path(kind):
    r = recipe(kind)
    assert r.cmd == 'exec hpctrain "$@"'
    env = dict(line.split("=", 1) for line in r.environ)
    assert env["PATH"].startswith(f"{VENV}/bin:") and env["PATH"].endswith(":$PATH")
    # hpctrain sets its TensorFlow, HDF5 and MPI settings itself (hpctrain.compat, the backends): not here too
    assert not {"TF_USE_LEGACY_KERAS", "HDF5_USE_FILE_LOCKING", "OMPI_MCA_mpi_yield_when_idle"} & set(env)


@pytest.mark.parametrize("kind", KINDS)
def test_files_copy_the_project_from_the_root(kind):
    copied = dict(line.split() for line in recipe(kind).files)
    assert {"pyproject.toml", "requirements.lock", "src"} <= set(copied)
    for source, dest in copied.items():
        assert (ROOT / source).exists(), source  # build.sh builds from the project root
        assert dest == f"/opt/hpctrain/src/{source}"


def test_cpu_image_is_made_by_install_sh():
    post, _ = post_script("cpu")
    calls = [line for line in post.splitlines() if "install.sh" in line]
    assert len(calls) == 1
    words = shlex.split(calls[0])
    assert words[-2:] == ["bash", "/opt/hpctrain/src/install.sh"]
    assert {"HPCTRAIN_NO_SLURM=1", f"HPCTRAIN_VENV={VENV}"} <= set(words)
    assert dict(line.split() for line in recipe("cpu").files)["install.sh"] == "/opt/hpctrain/src/install.sh"
    assert recipe("cpu").fromHeader in ("debian:12", "python:3.11-slim-bookworm")


def test_gpu_image_builds_horovod_with_nccl_against_the_locked_stack():
    post, variables = post_script("gpu")
    first = next(line.strip() for line in sections("gpu")["post"] if line.strip() and not line.strip().startswith("#"))
    assert first.startswith("OMPI_VERSION="), "the Open MPI version is the first setting of %post"
    assert labels("gpu")["hpctrain.openmpi"] == variables["OMPI_VERSION"]
    configure = next(line for line in post.splitlines() if "./configure" in line)
    assert "--with-pmix" in configure and "--with-slurm" in configure
    assert f'-m venv "{VENV}"' in post
    assert '-r "/opt/hpctrain/src/requirements.lock"' in post  # every pin from the lock itself
    horovod = next(line for line in post.splitlines() if "install" in line and "horovod==" in line)
    for setting in ("HOROVOD_GPU_OPERATIONS=NCCL", "HOROVOD_WITH_TENSORFLOW=1", "HOROVOD_WITH_MPI=1",
                    "HOROVOD_WITH_GLOO=1"):
        assert setting in horovod.split(), setting
    assert "--no-build-isolation" in horovod  # built against the installed TensorFlow
    assert "hvd.nccl_built()" in post


def test_gpu_base_image_is_tensorflow_of_the_pinned_minor_version():
    image, tag = recipe("gpu").fromHeader.split(":")
    assert image == "tensorflow/tensorflow" and tag.endswith("-gpu")
    pinned = project_pins()["tensorflow"]
    assert tag.split(".")[:2] == pinned.split(".")[:2], (tag, pinned)


@pytest.mark.parametrize("kind", KINDS)
def test_every_version_the_definition_names_is_the_projects(kind):
    pins = project_pins()
    found = {}
    for key, value in labels(kind).items():
        if key == "org.opencontainers.image.version":
            found["hpctrain"] = value
        elif key.startswith("hpctrain.") and key != "hpctrain.openmpi":
            found[_norm(key.removeprefix("hpctrain."))] = value
    post, variables = post_script(kind)
    for name, value in variables.items():
        if name.endswith("_VERSION") and _norm(name.removesuffix("_VERSION")) in pins:
            found[_norm(name.removesuffix("_VERSION"))] = value
    for name, version in re.findall(r"([A-Za-z0-9_.-]+)(?:\[[\w,-]+\])?==([0-9][\w.]*)", post):
        found[_norm(name)] = version
    assert {"tensorflow", "tf-keras", "horovod", "mpi4py", "h5py", "hpctrain", "python"} <= set(found)
    assert {name: version for name, version in found.items() if pins.get(name) != version} == {}


@pytest.mark.parametrize("kind", KINDS)
def test_test_section_checks_hpctrain_and_a_two_rank_allreduce(kind):
    lines = [line.strip() for line in sections(kind)["test"] if line.strip()]
    assert "hpctrain env" in lines
    mpirun = shlex.split(next(line for line in lines if line.startswith("mpirun ")))
    assert {"--allow-run-as-root", "--oversubscribe"} <= set(mpirun)
    assert mpirun[mpirun.index("-np") + 1] == "2"
    code = mpirun[mpirun.index("-c") + 1]
    compile(code, f"{kind} %test", "exec")
    assert "hvd.allreduce" in code and "== 3.0" in code


@pytest.mark.slow
def test_cpu_test_section_passes_on_the_host_stack(tmp_path):
    """The CPU image's %test, run as a script here, where install.sh made the same stack the image gets."""
    script = tmp_path / "test.sh"
    script.write_text("set -e\n" + "\n".join(sections("cpu")["test"]) + "\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "version: 0.28.1" in proc.stdout  # hpctrain env's Horovod line
    assert sorted(line for line in proc.stdout.splitlines() if "allreduce" in line) == [
        "rank 0: allreduce 3.0", "rank 1: allreduce 3.0"]


def _build(args, path, cwd=ROOT, **env):
    return subprocess.run(["/bin/bash", str(BUILD), *args], capture_output=True, text=True,
                          env={**os.environ, **env, "PATH": path}, cwd=cwd, timeout=30)


def test_build_sh_without_a_runtime_exits_2_with_one_line(tmp_path):
    proc = _build(["cpu"], str(tmp_path))  # an empty PATH: no apptainer, no singularity
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1
    assert "apptainer" in proc.stderr and "singularity" in proc.stderr


@pytest.mark.parametrize("args", [[], ["tpu"], ["gpu", "a.sif", "extra"]])
def test_build_sh_rejects_bad_arguments(tmp_path, args):
    proc = _build(args, str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.startswith("usage: containers/build.sh gpu|cpu")


def test_build_sh_calls_the_builder_from_the_project_root(tmp_path):
    """With a stand-in `apptainer` that records its arguments: quoting, output path and working directory."""
    fake = tmp_path / "bin" / "apptainer"
    fake.parent.mkdir()
    fake.write_text('#!/bin/bash\npwd > "$RECORD"\nprintf "%s\\n" "$@" >> "$RECORD"\n')
    fake.chmod(0o755)
    record, caller = tmp_path / "record", tmp_path / "my images"
    caller.mkdir()
    proc = _build(["gpu", "hpc train.sif"], f"{fake.parent}:/usr/bin:/bin", cwd=caller, RECORD=str(record))
    assert proc.returncode == 0, proc.stderr
    cwd, *argv = record.read_text().splitlines()
    fakeroot = [] if os.geteuid() == 0 else ["--fakeroot"]
    assert cwd == str(ROOT)
    assert argv == ["build", *fakeroot, str(caller / "hpc train.sif"), str(CONTAINERS / "hpctrain-gpu.def")]
