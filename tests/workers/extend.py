"""Worker for tests/test_extending.py: a toy backend and a toy model, each defined in this one file the
way a new one would be added to hpctrain, then the hpctrain command itself (`extend.py train JOB ...`).
Prints what the loop asked of the backend as its last line."""
import json
import sys

from pydantic import Field

from hpctrain import cli, compat, models, tasks
from hpctrain.distribute import backends


class CountingBackend(backends.Backend):
    """One process that counts what the loop asks of it (its class statement registers it)."""
    name = "counting"
    asked = {"wrap_optimizer": 0, "distribute": 0, "callbacks": 0}

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


class TinySettings(models.Settings):
    units: int = Field(8, ge=1)


def build_tiny(settings, input_shape, num_classes, input_dtype):
    from hpctrain.models.pixels import stack

    L = compat.keras().layers
    return stack([L.Flatten(), L.Dense(settings.units, activation="relu", name="features"),
                  L.Dense(num_classes, activation="softmax", dtype="float32")], input_shape, input_dtype, "tiny")


models.register(models.Model("tiny", tasks.CLASSIFICATION, TinySettings, build_tiny))

if __name__ == "__main__":
    code = cli.main(sys.argv[1:])
    print("asked " + json.dumps(CountingBackend.asked), flush=True)
    sys.exit(code)
