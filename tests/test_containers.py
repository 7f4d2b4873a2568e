"""The image recipe (containers/recipe.sh), the Apptainer definitions and the Containerfile that call it, and
containers/build.sh, without building an image: the definitions are parsed (spython's Singularity recipe parser)
and checked against the project's pins, build.sh runs against stand-in engines, and the slow test runs the images'
own checks on the host's stack. The images themselves are built and checked by `make test-containers`
(tests/containers/check_images.py); no Apptainer runtime exists where these tests run.
"""
import os
import re
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


def containerfile():
    """(COPY sources, RUN lines, the BASE default) of containers/Containerfile."""
    lines = (CONTAINERS / "Containerfile").read_text().splitlines()
    copies = [src.rstrip("/") for line in lines if line.startswith("COPY ") for src in line.split()[1:-1]]
    runs = [line.removeprefix("RUN ").strip() for line in lines if line.startswith("RUN ")]
    base = next(line.split("=", 1)[1] for line in lines if line.startswith("ARG BASE="))
    return copies, runs, base


@pytest.mark.parametrize("kind", KINDS)
def test_definitions_and_containerfile_run_the_one_recipe(kind):
    """What an image holds is containers/recipe.sh: the definitions' %post and %test only call it, and the
    Containerfile copies the same files (so the two can never drift) and runs its two layers."""
    recipe_sh = "/opt/hpctrain/src/containers/recipe.sh"
    body = {name: [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
            for name, lines in sections(kind).items()}
    assert body["post"] == [f"{recipe_sh} {kind} install"]
    assert body["test"] == [f"{recipe_sh} {kind} test"]
    copies, runs, base = containerfile()
    assert sorted(copies) == sorted(dict(line.split() for line in recipe(kind).files))
    assert runs == [f'{recipe_sh} "${{FLAVOUR}}" deps', f'{recipe_sh} "${{FLAVOUR}}" install']
    assert base == f"docker.io/library/{recipe(kind).fromHeader}" == "docker.io/library/debian:12"


def test_the_recipe_is_install_sh_into_the_image_venv():
    text = (CONTAINERS / "recipe.sh").read_text()
    call = next(line for line in text.splitlines() if '/install.sh"' in line)
    assert "HPCTRAIN_NO_SLURM=1" in call and '--venv "$VENV"' in call and '"${flags[@]}"' in call
    assert f"VENV={VENV}" in text.splitlines() and "gpu) flags=(--gpu)" in text


@pytest.mark.parametrize("kind", KINDS)
def test_every_version_the_definition_names_is_the_projects(kind):
    pins = project_pins()
    found = {}
    for key, value in labels(kind).items():
        if key == "org.opencontainers.image.version":
            found["hpctrain"] = value
        elif key.startswith("hpctrain."):
            found[_norm(key.removeprefix("hpctrain."))] = value
    assert {"tensorflow", "tf-keras", "horovod", "mpi4py", "h5py", "hpctrain", "python"} <= set(found)
    assert {name: version for name, version in found.items() if pins.get(name) != version} == {}


@pytest.mark.slow
def test_cpu_recipe_checks_pass_on_the_host_stack():
    """The images' own checks (recipe.sh cpu test), run here, where install.sh made the stack the CPU image gets."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(CONTAINERS / "recipe.sh"), "cpu", "test"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "version: 0.28.1" in proc.stdout  # hpctrain env's Horovod line
    assert sorted(line for line in proc.stdout.splitlines() if "allreduce" in line) == [
        "rank 0: allreduce 3.0", "rank 1: allreduce 3.0"]


def _build(args, path, cwd=ROOT, **env):
    return subprocess.run(["/bin/bash", str(BUILD), *args], capture_output=True, text=True,
                          env={**os.environ, **env, "PATH": path}, cwd=cwd, timeout=30)


def _one_line(proc, *words):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("containers/build.sh: "), proc.stderr
    assert all(w in proc.stderr for w in words), proc.stderr


def test_build_sh_without_a_runtime_exits_2_with_one_line(tmp_path):
    proc = _build(["cpu"], str(tmp_path))  # an empty PATH: no apptainer, no singularity
    _one_line(proc, "apptainer", "singularity")
    assert proc.stdout == ""
    _one_line(_build(["cpu", "--engine", "podman"], str(tmp_path)), "podman is not on PATH")


@pytest.mark.parametrize("args, words", [([], ["usage"]), (["tpu"], ["unknown flavour 'tpu'"]),
                                         (["gpu", "a.sif"], ["unknown option a.sif"]),
                                         (["cpu", "--engine", "lxc"], ["unknown engine 'lxc'"]),
                                         (["cpu", "--engine"], ["--engine needs a value"])])
def test_build_sh_rejects_bad_arguments(tmp_path, args, words):
    _one_line(_build(args, str(tmp_path)), *words)


def _fake(tmp_path, name, script):
    fake = tmp_path / "bin" / name
    fake.parent.mkdir(exist_ok=True)
    fake.write_text("#!/bin/bash\n" + script)
    fake.chmod(0o755)
    return fake.parent


APPTAINER = """pwd > "$RECORD"; ls -A >> "$RECORD"; ls -A containers >> "$RECORD"
printf "%s\\n" "$@" >> "$RECORD"
echo sif > "${@: -2:1}"
"""


def test_build_sh_builds_the_sif_from_a_context_of_the_image_inputs_only(tmp_path):
    """With a stand-in `apptainer` that records its arguments and its working directory (the build context):
    the context holds the recipe's inputs and no venv; the SIF appears under its name only when done."""
    bin_ = _fake(tmp_path, "apptainer", APPTAINER)
    record, caller = tmp_path / "record", tmp_path / "my images"
    caller.mkdir()
    proc = _build(["gpu", "--out", "hpc train.sif"], f"{bin_}:/usr/bin:/bin", cwd=caller, RECORD=str(record))
    assert proc.returncode == 0, proc.stderr
    cwd, *lines = record.read_text().splitlines()
    assert not Path(cwd).exists()  # the context is gone afterwards
    top = {"containers", "install", "install.sh", "pyproject.toml", "requirements.lock", "requirements-gpu.lock", "src"}
    assert set(lines[:len(top)]) == top
    assert set(lines[len(top):len(top) + 3]) == {"Containerfile", "recipe.sh", "hpctrain-gpu.def"}
    argv = lines[len(top) + 3:]
    fakeroot = [] if os.geteuid() == 0 else ["--fakeroot"]
    assert argv[:-2] == ["build", *fakeroot] and argv[-1] == "containers/hpctrain-gpu.def"
    assert argv[-2].startswith(str(caller / "hpc train.sif.part-"))
    assert (caller / "hpc train.sif").read_text() == "sif\n"
    assert [p.name for p in caller.iterdir()] == ["hpc train.sif"]


PODMAN = """echo "$*" >> "$RECORD"
case $1 in
  build) [ -z "${FAIL_BUILD:-}" ] || { echo "Error: writing blob: no space left on device"; exit 125; } ;;
  run) [ -z "${FAIL_TEST:-}" ] || { echo "recipe.sh: Horovod is built without NCCL" >&2; exit 1; } ;;
  image) [ "$2" = inspect ] && [ "${*: -1}" = localhost/hpctrain-cpu:latest ] && echo 123 ;;
  save) echo archive > "$3" ;;
esac
"""


@pytest.mark.parametrize("fail, code", [("", 0), ("FAIL_TEST", 1), ("FAIL_BUILD", 2)])
def test_build_sh_names_the_image_only_after_its_checks_pass(tmp_path, fail, code):
    """podman: built under a temporary tag, the recipe's checks run in it, then tagged; a failed check or a full
    disk leaves no image under the final name (the temporary one is removed) and no half-written archive."""
    bin_ = _fake(tmp_path, "podman", PODMAN)
    record, archive = tmp_path / "record", tmp_path / "img.tar"
    proc = _build(["cpu", "--engine", "podman", "--save", str(archive)], f"{bin_}:/usr/bin:/bin",
                  RECORD=str(record), **({fail: "1"} if fail else {}))
    assert proc.returncode == code, proc.stderr
    calls = [line.split() for line in record.read_text().splitlines()]
    verbs = [c[0] for c in calls]
    building = next(c[c.index("-t") + 1] for c in calls if c[0] == "build")
    assert building.startswith("localhost/hpctrain-cpu:building-")
    assert calls[-1] == ["rmi", "-f", building]
    if fail == "FAIL_BUILD":
        _one_line(proc, "no space left on device")
        assert verbs == ["build", "rmi"]
    elif fail:
        assert verbs == ["build", "run", "rmi"] and "Horovod is built without NCCL" in proc.stdout  # engine output
    else:
        assert verbs == ["build", "run", "tag", "save", "image", "rmi"]
        assert calls[2] == ["tag", building, "localhost/hpctrain-cpu:latest"]
        assert calls[3][:2] == ["save", "-o"] and calls[3][2].startswith(f"{archive}.part-")
        assert archive.read_text() == "archive\n"
        assert "localhost/hpctrain-cpu (123 bytes)" in proc.stdout
    if "run" in verbs:
        assert next(c for c in calls if c[0] == "run")[-3:] == [building, "cpu", "test"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bin", "record", *(["img.tar"] if not fail else [])])
