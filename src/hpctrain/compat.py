"""The one place where TensorFlow 2.18, Keras 2 (tf_keras) and Horovod 0.28.1 are made to fit.

`import hpctrain` imports this module first, and every hpctrain module that needs TensorFlow
imports it through `tf()`, so the settings below are in force before TensorFlow or h5py is first
loaded, in every process of every launcher, and users (or images, or job scripts) never set them:

- TF_USE_LEGACY_KERAS=1 makes `tf.keras` the Keras 2 of the tf_keras package. Keras 3 breaks
  Horovod ('Variable' object has no attribute 'ref') and MultiWorkerMirroredStrategy
  ('PerReplica ... unsupported type').
- Horovod's Keras callbacks import the top-level `keras` module, which is Keras 3 here;
  `horovod_keras()` imports them with `keras` bound to tf_keras.
- HDF5_USE_FILE_LOCKING=FALSE: hpctrain opens HDF5 read-only from many ranks, and file locks
  fail or hang on Lustre and NFS.
"""
import contextlib
import os
import sys
import tempfile

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")


# What TensorFlow 2.18 logs on every start of a machine without a GPU: the CUDA plugins registering
# twice, cuInit failing, CPU instruction notes. Dropped; anything else it logs is passed on.
_START_NOISE = ("Unable to register cu", "absl::InitializeLog", "failed call to cuInit", "cpu_feature_guard",
                "This TensorFlow binary is optimized", "rebuild TensorFlow", "oneDNN custom operations")


@contextlib.contextmanager
def quiet_native_logs():
    """Filters what native code writes to stderr inside the block: the start-up noise above, and the
    info/warning lines that absl prints before TF_CPP_MIN_LOG_LEVEL takes effect (honouring that level)."""
    level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") or 0)
    hidden = "IW"[:level]
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not any(n in line for n in _START_NOISE) and not (line[:1] in hidden and line[1:5].isdigit()):
                    sys.stderr.write(line)
            sys.stderr.flush()


def tf():
    """TensorFlow, imported with the settings above and without its start-up noise."""
    if "tensorflow" not in sys.modules:
        with quiet_native_logs():
            import tensorflow

            tensorflow.config.list_physical_devices("GPU")  # cuInit happens here
            tensorflow.get_logger().setLevel("ERROR")
    return sys.modules["tensorflow"]


def keras():
    """Keras 2 (tf_keras), the Keras every hpctrain model is built with."""
    tf()
    import tf_keras

    return tf_keras


def horovod_keras():
    """`horovod.tensorflow.keras`, its `import keras` resolved to tf_keras."""
    if "horovod.tensorflow.keras" not in sys.modules:
        saved = sys.modules.get("keras")
        sys.modules["keras"] = keras()
        try:
            import horovod.tensorflow.keras  # noqa: F401
        finally:
            if saved is None:
                del sys.modules["keras"]
            else:
                sys.modules["keras"] = saved
    return sys.modules["horovod.tensorflow.keras"]


def op_error_line(error, hosts=()):
    """One line that says what a TensorFlow OpError means, not where it surfaced ("Graph execution error:").
    A peer that TensorFlow's coordination service lost is named as the rank (task index) it was."""
    import re

    lost = re.search(r"task:(\d+) heartbeat timeout", error.message)
    if lost:
        rank = int(lost[1])
        host = f" ({_host_of(hosts[rank].rsplit(':', 1)[0])})" if rank < len(hosts) else ""
        return f"rank {rank}{host} stopped responding (TensorFlow's heartbeat to it timed out)"
    cut = re.search(r"(Read|Write|Connect) error \[([\d.]+)\]:\d+: ([^\n\[]+)", error.message)  # Gloo's pairs
    if cut:
        return f"lost the connection to {_host_of(cut[2])}: {cut[1].lower()} error: {cut[3].strip()}"
    lines = [line.strip() for line in error.message.splitlines()
             if line.strip() and not line.strip().startswith(("Graph execution error", "Detected at node", "File "))]
    return f"{type(error).__name__}: {(lines or ['(no message)'])[-1][:500]}"


def _host_of(address):
    """'node2 (10.1.0.12)' for an IPv4 address the host names know, else the address or name as it is."""
    import ipaddress
    import socket

    try:
        ipaddress.IPv4Address(address)
        return f"{socket.gethostbyaddr(address)[0]} ({address})"
    except (ValueError, OSError):
        return address
