"""Models by name. Each model module declares a `Model` entry: its task, its own settings (the
`[model.<name>]` table of a job spec) and how to build it; nothing outside a model's module names it.
`register` adds one (a test adds a toy). Every model takes integer pixels as the dataset stores them
and scales them to [0, 1] itself (models/pixels.py); importing this package loads no TensorFlow."""
from dataclasses import dataclass
from typing import Callable

from pydantic import BaseModel, ConfigDict

from hpctrain.registry import Registry


class Settings(BaseModel):
    """Base of a model's own settings: unknown keys are refused."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass(frozen=True)
class Model:
    name: str
    task: object                    # an hpctrain.tasks.Task
    settings: type[Settings]        # its [model.<name>] table
    build: Callable                 # (settings, input_shape, num_classes, input_dtype) -> tf_keras model
    fully_convolutional: bool = False  # any image size: tiles train, whole images validate and predict
    example_side: int = 28          # input side of `train --dry-run` without a dataset
    size_multiple: Callable = lambda settings: 1  # image sides must be multiples of this

    def input_shape(self, image_shape, tile=None):
        """The Keras input shape for images (H, W, C) of a dataset, trained on tiles if given."""
        if self.fully_convolutional:
            return (None, None, image_shape[2])
        return ((tile, tile) if tile else tuple(image_shape[:2])) + (image_shape[2],)

    def inference_tile(self, settings, height, width, training_tile=None):
        """None to predict whole images; else the tile side for overlapping tiles."""
        step = self.size_multiple(settings)
        if not self.fully_convolutional or (height % step == 0 and width % step == 0):
            return None
        return training_tile or step * 16


MODELS = Registry("model")
register, get = MODELS.add, MODELS.named


def build(model_spec, input_shape, num_classes=None, input_dtype="uint8"):
    """The tf_keras model of a job spec's model section, for the dataset's input shape, pixel type and class count
    (None: the model's own default, e.g. to size it without data)."""
    entry = get(model_spec.name)
    if num_classes is None:
        return entry.build(model_spec.settings, input_shape, input_dtype=input_dtype)
    return entry.build(model_spec.settings, input_shape, num_classes, input_dtype)


from hpctrain.models import cnn, unet  # noqa: E402, F401  (they register themselves)
