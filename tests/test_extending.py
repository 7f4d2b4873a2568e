"""A new backend or model is one class or one entry in one place: the toy ones defined here train through
the normal `train` path (and the toy model is evaluated), with no other file of hpctrain changed."""
import numpy as np
import pytest
from pydantic import Field

from hpctrain import compat, models, spec, tasks
from hpctrain.distribute import backends
from hpctrain.evaluate import run as evaluation
from hpctrain.train import loop

pytestmark = pytest.mark.slow


class TinySettings(models.Settings):
    units: int = Field(8, ge=1)


def build_tiny(settings, input_shape, num_classes, input_dtype):
    from hpctrain.models.pixels import stack

    L = compat.keras().layers
    return stack([L.Flatten(), L.Dense(settings.units, activation="relu", name="features"),
                  L.Dense(num_classes, activation="softmax", dtype="float32")], input_shape, input_dtype, "tiny")


@pytest.fixture
def registered():
    """The toy backend (its class statement registers it) and model, removed again afterwards."""
    class CountingBackend(backends.Backend):
        """One process that counts what the loop asks of it."""
        name = "counting"

        def setup(self):
            super().setup()
            self.asked = {"wrap_optimizer": 0, "distribute": 0, "callbacks": 0}

        def wrap_optimizer(self, optimizer):
            self.asked["wrap_optimizer"] += 1
            return optimizer

        def distribute(self, dataset, per_replica_batch):
            self.asked["distribute"] += 1
            return dataset

        def callbacks(self):
            self.asked["callbacks"] += 1
            return []

        def versions(self):
            return {"counting": "1.0"}

    models.register(models.Model("tiny", tasks.CLASSIFICATION, TinySettings, build_tiny))
    yield CountingBackend
    models.MODELS.pop("tiny")
    backends.BACKENDS.pop(CountingBackend.name)


def test_a_toy_backend_and_a_toy_model_train_through_the_normal_path(tmp_path, mnist_h5, registered):
    path = spec.write(tmp_path / "job.toml", name="toy", data={"path": str(mnist_h5), "split": "holdout"},
                      model={"name": "tiny", "tiny": {"units": 16}},
                      train={"learning_rate": 1e-3, "batch_size": 64, "epochs": 2, "steps_per_epoch": 20},
                      distribute={"backend": "counting"}, output={"dir": str(tmp_path / "run"), "tensorboard": False})
    job = spec.load(path)
    backend = backends.create(job.distribute)
    assert isinstance(backend, registered)
    result = loop.train(job, backend=backend)

    assert backend.asked == {"wrap_optimizer": 1, "distribute": 2, "callbacks": 1}  # training and validation data
    assert (result.timing.backend, result.timing.model) == ("counting", "tiny")
    assert result.timing.environment["counting"] == "1.0"
    assert len(result.timing.step_times) == 40
    assert "[model.tiny]\nunits = 16" in (tmp_path / "run" / "spec.toml").read_text()
    scores = evaluation.evaluate(tmp_path / "run")
    assert scores["model"] == "tiny" and scores["n_images"] == 2000
    assert scores["accuracy"] > 0.5  # 40 steps of a 16-unit layer: far above the 0.1 of guessing
    assert np.asarray(scores["confusion_matrix"]).sum() == 2000
