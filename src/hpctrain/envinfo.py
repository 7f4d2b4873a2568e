"""`hpctrain env`: the software stack, devices and scheduler context, for bug reports and job logs."""
import json
import os
import platform
import re
import sys
from importlib import metadata

from hpctrain import __version__, compat

# Variables from these families are shown; any whose name looks like a secret never is.
_ENV_PREFIXES = ("SLURM_", "OMPI_", "PMIX_", "HOROVOD_", "TF_", "CUDA_", "NCCL_", "OMP_",
                 "MKL_", "HDF5_", "HPCTRAIN_", "APPTAINER_", "SINGULARITY_")
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


def _mpi():
    import mpi4py

    mpi4py.rc.initialize = False  # reading the library version needs no MPI_Init
    mpi4py.rc.finalize = False
    from mpi4py import MPI

    name, (major, minor, micro) = MPI.get_vendor()
    return {"mpi4py": mpi4py.__version__, "vendor": name, "version": f"{major}.{minor}.{micro}",
            "library": MPI.Get_library_version().replace("\0", "").strip().splitlines()[0]}


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
    print(json.dumps(info, indent=2) if as_json else "\n".join(format_text(info)))
