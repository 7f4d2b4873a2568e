"""The models' first layers: integer pixels as the dataset stores them, scaled to [0, 1] on the device
(the input pipeline does no arithmetic, and a batch crosses to the GPU at a quarter of its float32 size)."""
import numpy as np

from hpctrain import compat


def pixel_input(shape, dtype="uint8"):
    """(Input of integer pixels, the same pixels scaled to [0, 1] in the model's compute type)."""
    layers = compat.keras().layers
    inputs = layers.Input(shape, dtype=dtype, name="pixels")
    return inputs, layers.Rescaling(1 / np.iinfo(dtype).max, name="unit_range")(inputs)


def stack(layers, input_shape, dtype, name):
    """A model of pixel_input followed by `layers` in order."""
    inputs, x = pixel_input(input_shape, dtype)
    for layer in layers:
        x = layer(x)
    return compat.keras().Model(inputs, x, name=name)
