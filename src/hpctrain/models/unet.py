"""The U-Net of the ISBI 2012 membrane segmentation lecture code (Ronneberger et al. 2015, same padding).

Per level two 3x3 convolutions (ReLU, he_normal); 2x2 max-pooling down; nearest 2x upsampling + 2x2
convolution up, concatenated with the skip connection; dropout 0.5 at the bottom two levels; a 1x1
output layer.
Depth 5 with 64 base filters (64..1024) has 31.0 M parameters.
"""
import functools
from typing import Literal

from pydantic import Field

from hpctrain import compat, models, tasks
from hpctrain.errors import UserError
from hpctrain.models.pixels import pixel_input


class UNetSettings(models.Settings):
    depth: int = Field(5, ge=2, le=7)            # levels
    filters: int = Field(64, ge=1)               # filters of the first level, doubled per level
    output: Literal["sigmoid", "softmax"] = "sigmoid"
    dropout: float = Field(0.5, ge=0, lt=1)


@functools.cache
def upsample2x_layer():
    """The Keras layer class of UpSampling2D(2) (nearest) as a broadcast and a reshape: the same values,
    and XLA can compile its gradient (it has no kernel for ResizeNearestNeighborGrad, so `train.xla`
    failed with UpSampling2D). Made on first use, so that importing the model registry loads no Keras."""
    class Upsample2x(compat.keras().layers.Layer):
        def call(self, x):
            tf = compat.tf()
            static = [None if n is None else 2 * n for n in x.shape[1:3]]  # known sides stay known
            b, h, w = tf.unstack(tf.shape(x)[:3])
            c = x.shape[-1]
            x = tf.broadcast_to(x[:, :, None, :, None, :], [b, h, 2, w, 2, c])
            return tf.ensure_shape(tf.reshape(x, [b, 2 * h, 2 * w, c]), [None, *static, c])

    return Upsample2x


def build_unet(settings, input_shape=(256, 256, 1), num_classes=2, input_dtype="uint8"):
    """The U-Net: for 2 classes `settings.output` decides one sigmoid channel or a 2-class softmax; more
    classes take the softmax."""
    if num_classes != 2 and settings.output == "sigmoid":
        raise UserError(f"model.unet.output 'sigmoid' is for 2 classes; this dataset has {num_classes}: "
                        "set model.unet.output = 'softmax'")
    keras = compat.keras()
    layers = keras.layers
    depth, filters, dropout = settings.depth, settings.filters, settings.dropout

    def conv_block(x, n):
        for _ in range(2):
            x = layers.Conv2D(n, 3, activation="relu", padding="same", kernel_initializer="he_normal")(x)
        return x

    inputs, x = pixel_input(input_shape, input_dtype)
    skips = []
    for level in range(depth):
        x = conv_block(x, filters * 2 ** level)
        if level >= depth - 2 and dropout:
            x = layers.Dropout(dropout)(x)
        if level < depth - 1:
            skips.append(x)
            x = layers.MaxPooling2D(2)(x)
    for level in reversed(range(depth - 1)):
        n = filters * 2 ** level
        x = upsample2x_layer()()(x)
        x = layers.Conv2D(n, 2, activation="relu", padding="same", kernel_initializer="he_normal")(x)
        x = conv_block(layers.Concatenate()([skips[level], x]), n)
    classes, activation = (1, "sigmoid") if settings.output == "sigmoid" else (num_classes, "softmax")
    # float32 output keeps the loss numerically safe under mixed precision.
    outputs = layers.Conv2D(classes, 1, activation=activation, dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"unet_d{depth}_f{filters}")


models.register(models.Model("unet", tasks.SEGMENTATION, UNetSettings, build_unet, fully_convolutional=True,
                             example_side=256, size_multiple=lambda s: 2 ** (s.depth - 1)))
