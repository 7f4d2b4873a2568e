"""Models by name: `build(spec.model, input_shape, num_classes, input_dtype)`. Every model takes integer
pixels as the dataset stores them and scales them to [0, 1] itself (models/pixels.py)."""
from hpctrain.models.cnn import build_lenet5, build_mnist_cnn
from hpctrain.models.unet import build_unet

SEGMENTATION = {"unet"}


def build(model_spec, input_shape, num_classes, input_dtype="uint8"):
    """A tf_keras model for a ModelSpec; the dataset gives input shape, pixel type and class count."""
    if model_spec.name == "unet":
        return build_unet(input_shape, model_spec.depth, model_spec.filters, model_spec.output, model_spec.dropout,
                          input_dtype)
    if model_spec.name == "mnist_cnn":
        return build_mnist_cnn(input_shape, num_classes, model_spec.dropout, input_dtype)
    return build_lenet5(input_shape, num_classes, input_dtype)
