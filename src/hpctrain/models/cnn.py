"""Classic MNIST classifiers: the CNN of the TensorFlow MNIST lecture and LeNet-5."""
from hpctrain import compat
from hpctrain.models.pixels import stack


def build_mnist_cnn(input_shape=(28, 28, 1), classes=10, dropout=0.5, input_dtype="uint8"):
    """conv 32@5x5 - pool - conv 64@5x5 - pool - dense 1024 - dropout - dense 10 (softmax)."""
    L = compat.keras().layers
    return stack([
        L.Conv2D(32, 5, padding="same", activation="relu"), L.MaxPooling2D(2),
        L.Conv2D(64, 5, padding="same", activation="relu"), L.MaxPooling2D(2),
        L.Flatten(), L.Dense(1024, activation="relu", name="features"), L.Dropout(dropout),
        L.Dense(classes, activation="softmax", dtype="float32"),
    ], input_shape, input_dtype, "mnist_cnn")


def build_lenet5(input_shape=(28, 28, 1), classes=10, input_dtype="uint8"):
    """LeNet-5 on 32x32 (MNIST padded by 2): 6@5x5 - pool - 16@5x5 - pool - FC 120-100-10."""
    L = compat.keras().layers
    return stack([
        L.ZeroPadding2D(2 if input_shape[0] == 28 else 0),
        L.Conv2D(6, 5, activation="relu"), L.MaxPooling2D(2),
        L.Conv2D(16, 5, activation="relu"), L.MaxPooling2D(2),
        L.Flatten(), L.Dense(120, activation="relu"), L.Dense(100, activation="relu", name="features"),
        L.Dense(classes, activation="softmax", dtype="float32"),
    ], input_shape, input_dtype, "lenet5")
