"""The GPU build check: a venv made by `./install.sh --gpu` holds a CUDA TensorFlow and a Horovod with NCCL whose
libraries all resolve the way a user's process resolves them. No GPU needed; not part of the normal test run
(pytest collects test_*.py only): `make test-gpu-build`, or

    HPCTRAIN_GPU_VENV=/tmp/hpctrain-gpu-venv pytest -s tests/gpu_build/check_gpu_build.py

How the libraries are found, which the checks mirror: TensorFlow 2.18 links no CUDA library; it dlopens them
(libcudart.so.12, libcublas.so.12, libcudnn.so.9, libnccl.so.2, ...) through the RUNPATH of its own libraries,
$ORIGIN/../nvidia/<package>/lib, so no LD_LIBRARY_PATH is needed. Horovod's mpi_lib*.so needs
libtensorflow_framework.so.2 and libtensorflow_cc.so.2, which `import tensorflow` has loaded before Horovod loads,
and libnccl.so.2, which it finds through its own RUNPATH ($ORIGIN/../../nvidia/nccl/lib, set by install/gpu.sh);
its CUDA runtime calls bind to TensorFlow's libcudart stubs. Each check runs in the venv's python, in an
environment without LD_LIBRARY_PATH or LD_PRELOAD.
"""
import json
import os
import re
import struct
import subprocess
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu_build

# The driver's libraries: on the GPU nodes, not in any wheel (libcuda.so.1 is what TensorFlow asks first).
DRIVER_LIBS = {"libcuda.so.1", "libnvidia-ml.so.1"}
CUDA_LIB = re.compile(r"^lib(cuda|cudart|cublas|cublasLt|cudnn\w*|cufft\w*|curand|cusolver\w*|cusparse|nccl|nvrtc\S*|"
                      r"nvJitLink|cupti|nvperf\w*|nvfatbin)\.so")


@cache
def venv() -> Path:
    value = os.environ.get("HPCTRAIN_GPU_VENV")
    if not value:
        pytest.fail("HPCTRAIN_GPU_VENV is not set: point it at a venv made by `./install.sh --venv DIR --gpu` "
                    "(make test-gpu-build does both)", pytrace=False)
    path = Path(value)
    if not (path / "bin" / "python").exists():
        pytest.fail(f"HPCTRAIN_GPU_VENV={value} is not a venv (no bin/python)", pytrace=False)
    return path


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH")}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_USE_LEGACY_KERAS": "1"}


def run(*argv, env=None, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600,
                          env=env or clean_env())
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}",
                    pytrace=False)
    return proc


def python(code: str) -> dict:
    """Runs code in the venv's python; its last stdout line is JSON."""
    out = run(venv() / "bin" / "python", "-c", code).stdout
    return json.loads(out.strip().splitlines()[-1])


@cache
def site() -> dict:
    """Where TensorFlow, Horovod and the nvidia wheels are, and what `import tensorflow` has loaded."""
    return python("""
import json, os, sysconfig, tensorflow as tf
info = tf.sysconfig.get_build_info()
maps = sorted({line.split()[-1] for line in open("/proc/self/maps") if ".so" in line.split()[-1]})
print(json.dumps({"site": sysconfig.get_paths()["purelib"], "tf": os.path.dirname(tf.__file__),
                  "version": tf.__version__, "cuda": tf.test.is_built_with_cuda(), "info": dict(info),
                  "loaded": maps}))
""")


def needed_runpath(lib: Path) -> tuple[list[str], list[str]]:
    out = run("readelf", "-d", "-W", lib).stdout
    needed = re.findall(r"\(NEEDED\).*\[(.+)\]", out)
    runpath = [p for m in re.findall(r"\((?:RUNPATH|RPATH)\).*\[(.+)\]", out) for p in m.split(":")]
    return needed, runpath


def tf_search_dirs() -> list[Path]:
    """The folders TensorFlow dlopens CUDA libraries from: the nvidia/ entries of its libraries' RUNPATHs."""
    tf = Path(site()["tf"])
    dirs = []
    for lib in (tf / "libtensorflow_framework.so.2", tf / "libtensorflow_cc.so.2",
                tf / "python" / "_pywrap_tensorflow_internal.so"):
        for entry in needed_runpath(lib)[1]:
            path = Path(os.path.normpath(entry.replace("$ORIGIN", str(lib.parent))))
            if "nvidia" in path.parts and path.is_dir() and path not in dirs:
                dirs.append(path)
    return dirs


def ldd(lib: Path, library_path: list[Path]) -> dict[str, str]:
    """soname -> resolved path (or 'not found'), as the loader resolves lib with LD_LIBRARY_PATH=library_path."""
    env = {**clean_env(), "LD_LIBRARY_PATH": ":".join(map(str, library_path))}
    out = run("ldd", lib, env=env).stdout
    return {m[0]: m[1].strip() for m in re.findall(r"^\s*(\S+) => (.+?)(?: \(0x[0-9a-f]+\))?$", out, re.M)}


def check_resolved(lib: Path, library_path: list[Path], allowed_missing=frozenset()) -> list[str]:
    """Problems of lib: a library not found, or a CUDA library from outside the venv."""
    problems = []
    for name, where in ldd(lib, library_path).items():
        if where == "not found":
            if name not in allowed_missing:
                problems.append(f"{lib.name}: {name} not found")
        elif CUDA_LIB.match(name) and not os.path.realpath(where).startswith(str(venv().resolve())):
            problems.append(f"{lib.name}: {name} resolves outside the venv, to {where}")
    return problems


def test_tensorflow_is_a_cuda_build():
    s = site()
    print(f"\nTensorFlow {s['version']}: built with CUDA {s['info'].get('cuda_version')}, cuDNN "
          f"{s['info'].get('cudnn_version')}, for {' '.join(s['info'].get('cuda_compute_capabilities', []))}")
    assert s["cuda"], "tf.test.is_built_with_cuda() is False"
    assert s["info"]["cuda_version"].startswith("12."), s["info"]
    wheels = python("""
import importlib.metadata as m, json
print(json.dumps(sorted(f"{d.metadata['Name']}=={d.version}" for d in m.distributions()
                        if d.metadata["Name"].lower().startswith("nvidia-"))))
""")
    print("nvidia wheels: " + ", ".join(wheels))
    assert any(w.startswith("nvidia-nccl-cu12==") for w in wheels), \
        f"no nvidia-nccl-cu12 in {venv()} (pip install -r requirements-gpu.lock): {wheels}"


def test_horovod_check_build_lists_nccl_mpi_gloo():
    out = run(venv() / "bin" / "horovodrun", "--check-build").stdout
    print("\n" + out.strip())
    sections, current = {}, None
    for line in out.splitlines():
        if line.strip().endswith(":"):
            current = sections.setdefault(line.strip().rstrip(":"), {})
        elif (m := re.match(r"\s*\[(X| )\] (\w+)", line)) and current is not None:
            current[m[2]] = m[1] == "X"
    assert sections["Available Frameworks"]["TensorFlow"], out
    assert sections["Available Controllers"]["MPI"] and sections["Available Controllers"]["Gloo"], out
    ops = sections["Available Tensor Operations"]
    assert ops["NCCL"] and ops["MPI"] and ops["Gloo"], out


HOROVOD_PROCESS = """
import json
import tensorflow
import horovod.tensorflow as hvd
hvd.init()
maps = sorted({line.split()[-1] for line in open("/proc/self/maps") if ".so" in line.split()[-1]})
print(json.dumps({"nccl": hvd.nccl_built(), "cuda": hvd.cuda_built(), "mpi": hvd.mpi_built(),
                  "gloo": hvd.gloo_built(), "size": hvd.size(), "maps": maps}))
"""


def cuda_libraries_mapped(env: dict) -> tuple[dict, list[str], list[str]]:
    """What a user's process does: import TensorFlow, then Horovod. Returns its facts, the CUDA libraries it
    maps, and those of them from outside the venv."""
    out = run(venv() / "bin" / "python", "-c", HOROVOD_PROCESS, env=env).stdout
    r = json.loads(out.strip().splitlines()[-1])
    cuda_maps = [m for m in r["maps"] if CUDA_LIB.match(Path(m).name)]
    outside = [m for m in cuda_maps if not os.path.realpath(m).startswith(str(venv().resolve()))]
    return r, cuda_maps, outside


def test_horovod_loads_the_wheels_nccl():
    r, cuda_maps, outside = cuda_libraries_mapped(clean_env())
    print(f"\nhorovod.tensorflow: nccl_built={r['nccl']} cuda_built={r['cuda']} mpi_built={r['mpi']} "
          f"gloo_built={r['gloo']} size={r['size']}; CUDA libraries mapped:\n  " + "\n  ".join(cuda_maps))
    assert r["nccl"] and r["cuda"] and r["mpi"] and r["gloo"], r
    assert any(Path(m).name == "libnccl.so.2" for m in cuda_maps), cuda_maps
    assert not outside, f"CUDA libraries loaded from outside the venv: {outside}"


def test_horovod_with_this_shells_library_path():
    """LD_LIBRARY_PATH (e.g. of a CUDA or NCCL module loaded at run time) comes before every RUNPATH: the
    process then loads that CUDA instead of the wheels' (a mix TensorFlow was not built for)."""
    library_path = os.environ.get("LD_LIBRARY_PATH")
    if not library_path:
        pytest.skip("LD_LIBRARY_PATH is not set in this shell")
    _, cuda_maps, outside = cuda_libraries_mapped({**clean_env(), "LD_LIBRARY_PATH": library_path})
    print(f"\nwith LD_LIBRARY_PATH={library_path}:\n  " + "\n  ".join(cuda_maps))
    assert not outside, (f"with LD_LIBRARY_PATH={library_path} a user's process loads {outside} instead of the "
                         "wheels' libraries: unset it (module unload cuda/nccl) before running")


def test_horovod_library_resolves():
    """mpi_lib*.so with no LD_LIBRARY_PATH but the folders of what `import tensorflow` has already loaded."""
    libs = sorted((Path(site()["site"]) / "horovod" / "tensorflow").glob("mpi_lib*.so"))
    assert libs, "no horovod/tensorflow/mpi_lib*.so"
    preloaded = sorted({Path(p).parent for p in site()["loaded"] if Path(p).name.startswith("libtensorflow")})
    problems = []
    for lib in libs:
        needed, runpath = needed_runpath(lib)
        print(f"\n{lib.name}: NEEDED {' '.join(needed)}\n  RUNPATH {':'.join(runpath)}")
        venv_paths = (str(venv()), str(venv().resolve()))
        assert not [p for p in runpath if p.startswith(venv_paths)], f"RUNPATH names the build venv: {runpath}"
        for name, where in ldd(lib, preloaded).items():
            print(f"  {name} => {where}")
        problems += check_resolved(lib, preloaded)
    assert not problems, "\n".join(problems)


def test_horovod_has_cuda_kernels_for_tensorflows_gpus():
    """The fat binary in mpi_lib*.so: SASS for each of TensorFlow's architectures (and PTX for the newest)."""
    lib = next((Path(site()["site"]) / "horovod" / "tensorflow").glob("mpi_lib*.so"))
    images = fatbin_images(lib)
    print(f"\n{lib.name} .nv_fatbin: " + ", ".join(f"{kind} sm_{arch}" for kind, arch in images))
    wanted = {int(a.split("_")[1]) for a in site()["info"]["cuda_compute_capabilities"]}
    assert wanted <= {arch for kind, arch in images if kind == "elf"}, (wanted, images)


def test_tensorflow_cuda_libraries_resolve():
    """Every library of the nvidia wheels, found the way TensorFlow finds them (its RUNPATH folders)."""
    dirs = tf_search_dirs()
    print("\nTensorFlow's CUDA search folders (RUNPATH of libtensorflow_framework/_cc, _pywrap_tensorflow_internal):")
    for d in dirs:
        print(f"  {d}")
    assert dirs, "no nvidia/*/lib folder of TensorFlow's RUNPATHs exists (nvidia-* wheels not installed?)"
    tf = Path(site()["tf"])
    libs = [tf / "libtensorflow_framework.so.2", tf / "libtensorflow_cc.so.2",
            tf / "python" / "_pywrap_tensorflow_internal.so"]
    libs += sorted(p for p in (Path(site()["site"]) / "nvidia").glob("*/lib/lib*.so*") if p.is_file())
    problems = []
    for lib in libs:
        found = check_resolved(lib, dirs, allowed_missing=DRIVER_LIBS)
        missing = sorted(n for n, w in ldd(lib, dirs).items() if w == "not found")
        print(f"  {lib.relative_to(site()['site'])}: {'ok' if not found else 'PROBLEM'}"
              + (f" (driver: {', '.join(missing)})" if missing else ""))
        problems += found
    assert not problems, "\n".join(problems)


def fatbin_images(lib: Path) -> list[tuple[str, int]]:
    """(kind, sm) of each image in the .nv_fatbin section: the fat binary container (magic 0xBA55ED50) that
    nvcc's fatbinary and libnvfatbin write; cuobjdump -lelf -lptx lists the same."""
    out = run("readelf", "-W", "-S", lib).stdout
    m = re.search(r"\.nv_fatbin\s+\S+\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)", out)
    assert m, f"{lib.name} has no .nv_fatbin section (no CUDA kernels)"
    offset, size = int(m[1], 16), int(m[2], 16)
    with open(lib, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    images, pos = [], 0
    while pos + 16 <= len(data):
        magic, _, header, body = struct.unpack_from("<IHHQ", data, pos)
        if magic != 0xBA55ED50:
            pos += 8
            continue
        entry, end = pos + header, pos + header + body
        while entry < end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, entry)
            arch = struct.unpack_from("<I", data, entry + 28)[0]
            images.append(({1: "ptx", 2: "elf"}.get(kind, str(kind)), arch))
            entry += entry_header + payload
        pos = end
    return images


def test_without_a_cuda_12_compiler_the_build_is_refused_in_one_line():
    """Last: gpu_build_env clears the venv's build-time CUDA root (cuda/) before it looks for a compiler."""
    root = Path(__file__).resolve().parents[2]
    env = {**clean_env(), "PATH": "/usr/bin:/bin", "HPCTRAIN_CUDA_CLANG": "/nowhere/clang++-19"}
    env.pop("HOROVOD_CUDA_HOME", None)
    proc = run("bash", "-c", f'source "{root}/install/gpu.sh" && gpu_build_env "{venv()}/bin/python"',
               env=env, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert "no CUDA 12 compiler: module load cuda/12.x (nvcc), or apt-get install clang-19" in lines[0]
