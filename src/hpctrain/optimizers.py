"""The optimizers of train.optimizer, and how the learning rate follows the global batch.

distribute.lr_scaling multiplies the 1-worker rate by a function of N, the growth of the global batch over
one worker's train.batch_size (the workers x accumulate_steps; under strong scaling accumulate_steps alone):
"linear" (x N, Goyal et al. 2017), "sqrt" (x sqrt(N)), "none"; "auto" takes the optimizer's own rule below.
The warm-up ramps from the 1-worker rate to the scaled one; after it, train.lr_decay shapes the rate until the
last step (hpctrain.train.callbacks.LearningRateSchedule).
"""
import math
from typing import NamedTuple

from hpctrain import compat

SCALING = {"linear": lambda n: n, "sqrt": lambda n: n ** 0.5, "none": lambda n: 1}
# train.lr_decay: the factor on the rate when a fraction `done` of the steps after the warm-up is done
# (none: the rate is held; cosine: Loshchilov & Hutter 2017)
DECAYS = {"none": None, "cosine": lambda done: 0.5 * (1 + math.cos(math.pi * done))}
AUTO_WARMUP_EPOCHS = 2.0  # the ramp when neither distribute.warmup_epochs nor warmup_steps is set


class Optimizer(NamedTuple):
    make: object     # learning rate -> tf_keras optimizer
    auto_rule: str   # the SCALING rule of lr_scaling = "auto"


def _keras():
    return compat.keras().optimizers


OPTIMIZERS = {
    "adam": Optimizer(lambda lr: _keras().Adam(lr), "sqrt"),
    "sgd": Optimizer(lambda lr: _keras().SGD(lr), "linear"),
    "momentum": Optimizer(lambda lr: _keras().SGD(lr, momentum=0.9), "linear"),
}


def make(name, learning_rate):
    return OPTIMIZERS[name].make(learning_rate)


def scaling_rule(setting, optimizer):
    """The SCALING rule that lr_scaling `setting` means for `optimizer`."""
    return OPTIMIZERS[optimizer].auto_rule if setting == "auto" else setting


def scaled_learning_rate(base, growth, setting, optimizer):
    return base * SCALING[scaling_rule(setting, optimizer)](growth)
