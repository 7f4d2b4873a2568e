"""Checkpoints: model, optimizer (whose step counter gives the data position), the best monitored value
and random-generator state in one tf.train.Checkpoint. tf.train.CheckpointManager writes each checkpoint
under a new name and then swaps its small index file atomically, so a crash leaves the previous
checkpoint intact. In a run folder: RunDir.last (newest) and RunDir.best (best monitored metric).
"""
from pathlib import Path

from hpctrain import compat
from hpctrain.errors import UserError
from hpctrain.rundir import RunDir


class TrainState:
    """What a run needs to continue exactly where it stopped. The data position follows from the
    optimizer's step counter; the best monitored value decides checkpoints/best."""

    def __init__(self, model, optimizer):
        tf = compat.tf()
        self.best = tf.Variable(float("nan"), dtype=tf.float64, trainable=False, name="best_metric")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, best=self.best,
                                              rng=random_generators(model))

    def manager(self, directory, max_to_keep=1):
        return compat.tf().train.CheckpointManager(self.checkpoint, str(directory), max_to_keep=max_to_keep)

    def restore(self, prefix):
        restore(self.checkpoint, prefix)


def random_generators(model):
    """The tf.random.Generator of each random layer (dropout), by layer name. tf_keras leaves them out of
    checkpoints on purpose; a run resumed without them would draw other dropout masks. They exist in
    deterministic mode (`enable_tf_random_generator`), else this is empty."""
    generators = {}
    for layer in model.submodules:
        generator = getattr(getattr(layer, "_random_generator", None), "_generator", None)
        if generator is not None:
            generators[layer.name] = generator
    return generators


def restore(checkpoint, prefix, partial=False):
    """Restores a tf.train.Checkpoint from a prefix; refuses one written for another model.
    `partial`: the prefix may hold more (e.g. optimizer state that inference does not need)."""
    try:
        status = checkpoint.restore(str(prefix))
        (status.expect_partial() if partial else status).assert_existing_objects_matched()
    except (AssertionError, ValueError) as e:
        raise UserError(f"checkpoint {prefix} does not fit this model: {str(e).splitlines()[0]}") from None
    except compat.tf().errors.OpError as e:
        raise UserError(f"cannot read checkpoint {prefix}: {e.message.splitlines()[0]}") from None


def latest(directory):
    """The newest checkpoint prefix in a folder, or None."""
    return compat.tf().train.latest_checkpoint(str(directory))


def find_run(path):
    """(RunDir, checkpoint prefix) for a run folder or a checkpoint prefix inside one."""
    path = Path(path)
    run = RunDir.containing(path)
    if run is None:
        raise UserError(f"{path} is neither a run folder (with spec.toml) nor a checkpoint inside one")
    if run.path == path:
        prefix = latest(run.best) or latest(run.last)
        if prefix is None:
            raise UserError(f"{path} holds no checkpoint")
        return run, prefix
    if not Path(f"{path}.index").is_file():
        raise UserError(f"{path} is not a checkpoint (no {path.name}.index)")
    return run, str(path)
