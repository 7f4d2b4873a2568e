"""Models by name: `build(spec.model, input_shape, num_classes)`."""
from hpctrain.models.cnn import build_lenet5, build_mnist_cnn
from hpctrain.models.unet import build_unet

SEGMENTATION = {"unet"}


def build(model_spec, input_shape, num_classes):
    """A tf_keras model for a ModelSpec; the dataset gives input shape and class count."""
    if model_spec.name == "unet":
        return build_unet(input_shape, model_spec.depth, model_spec.filters, model_spec.output, model_spec.dropout)
    if model_spec.name == "mnist_cnn":
        return build_mnist_cnn(input_shape, num_classes, model_spec.dropout)
    return build_lenet5(input_shape, num_classes)
