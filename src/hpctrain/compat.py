"""The one place where TensorFlow 2.18, Keras 2 (tf_keras) and Horovod 0.28.1 are made to fit.

Every hpctrain module that needs TensorFlow imports it through `tf()`, so the settings below
are in force before TensorFlow is first loaded and users never have to set them:

- TF_USE_LEGACY_KERAS=1 makes `tf.keras` the Keras 2 of the tf_keras package. Keras 3 breaks
  Horovod ('Variable' object has no attribute 'ref') and MultiWorkerMirroredStrategy
  ('PerReplica ... unsupported type').
- Horovod's Keras callbacks import the top-level `keras` module, which is Keras 3 here;
  `horovod_keras()` imports them with `keras` bound to tf_keras.
- HDF5_USE_FILE_LOCKING=FALSE: hpctrain opens HDF5 read-only from many ranks, and file locks
  fail or hang on Lustre and NFS.
"""
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")


def tf():
    """TensorFlow, imported with the settings above."""
    import tensorflow

    return tensorflow


def keras():
    """Keras 2 (tf_keras), the Keras every hpctrain model is built with."""
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
