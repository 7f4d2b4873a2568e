"""hpctrain: train U-Net and CNN models data-parallel with TensorFlow, and measure how they scale."""

__version__ = "0.1.0"
