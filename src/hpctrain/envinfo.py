"""`hpctrain env`: the software stack, devices and scheduler context, for bug reports and job logs."""
import ctypes
import json
import os
import platform
import re
import shutil
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from hpctrain import __version__, compat
from hpctrain.errors import UserError
from hpctrain.launch import local as launch

# Variables from these families are shown; any whose name looks like a secret never is.
_ENV_PREFIXES = ("SLURM_", "OMPI_", "PMIX_", "PMI_", "MPI_LOCAL", "I_MPI_", "MPIR_CVAR_", "HYDRA_", "HOROVOD_",
                 "TF_", "CUDA_", "NCCL_", "OMP_", "MKL_", "HDF5_", "HPCTRAIN_", "APPTAINER_", "SINGULARITY_")
_SECRET = re.compile(r"TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|AUTH|PRIVATE|(^|_)KEY($|_)|COOKIE",
                     re.IGNORECASE)


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def scheduler_variables(environ=None):
    environ = os.environ if environ is None else environ
    return {k: v for k, v in sorted(environ.items())
            if k.startswith(_ENV_PREFIXES) and not k.startswith("TF_CLI_") and not _SECRET.search(k)}


def _horovod():
    try:
        import horovod

        hvd = compat.horovod_keras()
    except ImportError as e:
        return {"version": None, "error": str(e)}
    return {
        "version": horovod.__version__,
        # Horovod's own "built" probes tick PyTorch wrongly; its TensorFlow ops just loaded.
        "frameworks": {"tensorflow": True},
        "controllers": {"mpi": hvd.mpi_built(), "gloo": hvd.gloo_built()},
        "tensor_ops": {"nccl": hvd.nccl_built() > 0, "mpi": hvd.mpi_built(), "gloo": hvd.gloo_built(),
                       "ddl": hvd.ddl_built(), "ccl": hvd.ccl_built()},
        "gpu": {"cuda": hvd.cuda_built(), "rocm": hvd.rocm_built()},
    }


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def install_prefix(path):
    """The installation an MPI file belongs to: the directory above its bin/ or lib/ (also lib/<multiarch>/,
    lib/release/), e.g. /usr for /usr/lib/x86_64-linux-gnu/libmpi.so.40 and for /usr/bin/mpirun."""
    folder = Path(os.path.realpath(path)).parent
    for candidate in (folder, folder.parent):
        if candidate.name in ("bin", "lib", "lib64"):
            return str(candidate.parent)
    return str(folder)


def libmpi_of(module_file):
    """The libmpi that a loaded extension module takes MPI's functions from: {path, prefix, abi, library},
    or None if it has none. dlsym on the module's own handle searches the libraries it was linked with."""
    try:
        module = ctypes.CDLL(module_file, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)  # loaded already: its handle
        get_version = module.MPI_Get_library_version
        dladdr = ctypes.CDLL(None).dladdr  # glibc's
    except (OSError, AttributeError):
        return None
    info = _DlInfo()
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    if not dladdr(ctypes.cast(get_version, ctypes.c_void_p), ctypes.byref(info)) or not info.dli_fname:
        return None
    path = os.path.realpath(os.fsdecode(info.dli_fname))
    text, length = ctypes.create_string_buffer(8192), ctypes.c_int()  # MPI_MAX_LIBRARY_VERSION_STRING <= 8192
    get_version.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]
    get_version(text, ctypes.byref(length))  # one of the calls MPI allows before MPI_Init
    # mpi4py's own test of a libmpi's ABI: Open MPI's exports ompi_mpi_comm_self, the MPICH family's do not.
    abi = "openmpi" if hasattr(module, "ompi_mpi_comm_self") else "mpich"
    return {"path": path, "prefix": install_prefix(path), "abi": abi,
            "library": text.value.decode(errors="replace").strip().splitlines()[0]}


def _mpi4py():
    import mpi4py

    mpi4py.rc.initialize = False  # reading the library version needs no MPI_Init
    mpi4py.rc.finalize = False
    from mpi4py import MPI

    name, (major, minor, micro) = MPI.get_vendor()
    parts = os.path.basename(MPI.__file__).split(".")  # MPI.openmpi.cpython-311-x86_64-linux-gnu.so
    return {"mpi4py": mpi4py.__version__, "vendor": name, "version": f"{major}.{minor}.{micro}",
            "library": MPI.Get_library_version().replace("\0", "").strip().splitlines()[0],
            "abi": parts[1] if len(parts) > 3 else None,  # the extension variant mpi4py loaded
            "libmpi": libmpi_of(MPI.__file__)}


def _horovod_libmpi():
    """The libmpi of Horovod's TensorFlow ops, or None (no Horovod, or built without MPI)."""
    try:
        import horovod.tensorflow
    except ImportError:
        return None
    ops = Path(horovod.tensorflow.__file__).with_name("mpi_lib" + sysconfig.get_config_var("EXT_SUFFIX"))
    return libmpi_of(str(ops))


def _mpirun():
    """The mpirun (else mpiexec) on PATH, as users and the Slurm templates start it, or None."""
    path = shutil.which("mpirun") or shutil.which("mpiexec")
    if path is None:
        return None
    try:
        family, version = launch.launcher_family(path)
    except UserError as e:
        return {"path": path, "family": None, "abi": None, "version": None, "prefix": install_prefix(path),
                "error": str(e)}
    return {"path": path, "family": family.name, "abi": family.abi, "version": version,
            "prefix": install_prefix(path)}


def mismatch(mpirun, libraries):
    """The warning when the mpirun on PATH is not the MPI of the libraries ({user: libmpi}), or None.
    Another ABI family or another installation prefix counts; a launcher of unknown family says nothing."""
    if not mpirun or not mpirun.get("family"):
        return None
    wrong = {user: lib for user, lib in libraries.items()
             if lib and (lib["abi"] != mpirun["abi"] or lib["prefix"] != mpirun["prefix"])}
    if not wrong:
        return None
    seen = list(dict.fromkeys(f"{' '.join(lib['library'].split(',')[0].split())}, {lib['path']}"
                              for lib in wrong.values()))
    return (f"mpirun on PATH ({mpirun['path']}: {mpirun['family']} {mpirun['version']}, prefix {mpirun['prefix']}) "
            f"is not the MPI that {'/'.join(wrong)} use{'s' if len(wrong) == 1 else ''} ({'; '.join(seen)}): "
            "ranks may hang or start as N singletons")


def _mpi():
    info = {**_mpi4py(), "horovod_libmpi": _horovod_libmpi(), "mpirun": _mpirun()}
    info["mismatch"] = mismatch(info["mpirun"], {"mpi4py": info["libmpi"], "Horovod": info["horovod_libmpi"]})
    return info


def _hdf5():
    import h5py

    return {"h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version, "mpi": bool(h5py.get_config().mpi)}


def collect():
    """Everything `hpctrain env` reports, as a JSON-ready dict."""
    tf = compat.tf()
    keras = compat.keras()
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {
        "hpctrain": __version__,
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "host": platform.node(),
        "tensorflow": {"version": tf.__version__, "built_with_cuda": tf.test.is_built_with_cuda()},
        "keras": {"flavour": "tf_keras (Keras 2)" if tf.keras.__name__.startswith("tf_keras") else tf.keras.__name__,
                  "version": keras.__version__},
        "horovod": _horovod(),
        "mpi": _mpi(),
        "hdf5": _hdf5(),
        "packages": {name: _version(name) for name in ("numpy", "tifffile", "scipy", "pillow", "pydantic")},
        "devices": {"gpus": gpus, "cpu_count": os.cpu_count(), "cpus_available": len(os.sched_getaffinity(0))},
        "threads": {"tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "environment": scheduler_variables(),
    }


def format_text(info, prefix=""):
    lines = []
    for key, value in info.items():
        if isinstance(value, dict):
            lines.append(f"{prefix}{key}:")
            lines.extend(format_text(value, prefix + "  "))
        else:
            shown = ", ".join(map(str, value)) if isinstance(value, list) else value
            lines.append(f"{prefix}{key}: {'none' if shown in (None, '') else shown}")
    return lines


def main(as_json=False):
    info = collect()
    if info["mpi"]["mismatch"]:
        print(f"warning: {info['mpi']['mismatch']}", file=sys.stderr)
    print(json.dumps(info, indent=2) if as_json else "\n".join(format_text(info)))
