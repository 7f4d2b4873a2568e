"""hpctrain: train U-Net and CNN models data-parallel with TensorFlow, and measure how they scale."""
from hpctrain import compat  # noqa: F401  (its settings hold before TensorFlow or h5py load)

__version__ = "0.1.0"
