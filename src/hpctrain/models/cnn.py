"""Classic MNIST classifiers: the CNN of the TensorFlow MNIST lecture and LeNet-5."""
from pydantic import Field

from hpctrain import compat, models, tasks
from hpctrain.models.pixels import stack


class MnistCnnSettings(models.Settings):
    dropout: float = Field(0.5, ge=0, lt=1)


def build_mnist_cnn(settings, input_shape=(28, 28, 1), classes=10, input_dtype="uint8"):
    """conv 32@5x5 - pool - conv 64@5x5 - pool - dense 1024 - dropout - dense 10 (softmax)."""
    L = compat.keras().layers
    return stack([
        L.Conv2D(32, 5, padding="same", activation="relu"), L.MaxPooling2D(2),
        L.Conv2D(64, 5, padding="same", activation="relu"), L.MaxPooling2D(2),
        L.Flatten(), L.Dense(1024, activation="relu", name="features"), L.Dropout(settings.dropout),
        L.Dense(classes, activation="softmax", dtype="float32"),
    ], input_shape, input_dtype, "mnist_cnn")


class LeNet5Settings(models.Settings):
    pass


def build_lenet5(settings, input_shape=(28, 28, 1), classes=10, input_dtype="uint8"):
    """LeNet-5 on 32x32 (MNIST padded by 2): 6@5x5 - pool - 16@5x5 - pool - FC 120-100-10."""
    L = compat.keras().layers
    return stack([
        L.ZeroPadding2D(2 if input_shape[0] == 28 else 0),
        L.Conv2D(6, 5, activation="relu"), L.MaxPooling2D(2),
        L.Conv2D(16, 5, activation="relu"), L.MaxPooling2D(2),
        L.Flatten(), L.Dense(120, activation="relu"), L.Dense(100, activation="relu", name="features"),
        L.Dense(classes, activation="softmax", dtype="float32"),
    ], input_shape, input_dtype, "lenet5")


models.register(models.Model("mnist_cnn", tasks.CLASSIFICATION, MnistCnnSettings, build_mnist_cnn))
models.register(models.Model("lenet5", tasks.CLASSIFICATION, LeNet5Settings, build_lenet5))
