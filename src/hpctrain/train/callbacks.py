"""Keras callbacks of the training loop. None of them asks which backend runs: collective work goes
through the Backend passed in."""
import json
import math
import signal
import time

from hpctrain import compat, optimizers
from hpctrain.atomic import atomic_output
from hpctrain.errors import TrainingFailed

keras = compat.keras()


class LearningRateSchedule(keras.callbacks.Callback):
    """The learning rate of each step: a linear warm-up from the 1-worker rate to the scaled rate over `warmup`
    steps (Goyal et al. 2017), then the scaled rate times train.lr_decay's factor (hpctrain.optimizers.DECAYS)
    of the steps done after the warm-up over those left until step `total`. Driven by the optimizer's own step
    counter, so a resumed run continues on the same curve."""

    def __init__(self, base_lr, scaled_lr, warmup, decay="none", total=None):
        super().__init__()
        self.base_lr, self.scaled_lr, self.warmup, self.total = base_lr, scaled_lr, warmup, total
        self.decay = optimizers.DECAYS[decay] if total is not None and total > warmup else None  # None: held

    def rate(self, step):
        if step < self.warmup:
            return self.base_lr + (self.scaled_lr - self.base_lr) * step / self.warmup
        if self.decay is None:
            return self.scaled_lr
        return self.scaled_lr * self.decay(min(1.0, (step - self.warmup) / (self.total - self.warmup)))

    def apply(self, optimizer, step):
        keras.backend.set_value(optimizer.learning_rate, self.rate(step))

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step <= self.warmup or self.decay is not None:
            self.apply(self.model.optimizer, step)


class GracefulStop(keras.callbacks.Callback):
    """SIGTERM or SIGUSR1 (Slurm's warning before the time limit) ends training after the current step.
    The ranks agree on the step every `sync_every` steps and at the end of each epoch (a signal may reach
    them at different times; one agreement costs a small allreduce);
    the state left is saved by the Checkpointer."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, backend, sync_every=1):
        super().__init__()
        self.backend, self.sync_every = backend, sync_every
        self.received = None   # signal number seen by this process
        self.stopped_at = None  # (epoch, steps done in that epoch) when the ranks agreed to stop
        self.epoch = 0

    def on_train_begin(self, logs=None):
        self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        self.received = signum

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.sync_every and batch + 1 != self.params.get("steps"):
            return
        if self.backend.allreduce(1.0 if self.received else 0.0, "max") > 0:
            self.stopped_at = (self.epoch, batch + 1)
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        for s, handler in self._old.items():
            signal.signal(s, handler)


class StepTimer(keras.callbacks.Callback):
    """Wall time of every training step and epoch, and when the target metric was first reached (then
    training ends there with `stop`: every rank sees the same reduced metric, so all stop together)."""

    def __init__(self, target_metric=None, target_value=None, stop=False):
        super().__init__()
        self.target_metric, self.target_value, self.stop = target_metric, target_value, stop
        self.step_times, self.epoch_times, self.target_reached = [], [], None
        self.start = self.first_step_at = None
        self.breakdown = None  # every rank's hpctrain.train.breakdown measurement, when one was made
        self.breakdown_seconds = None  # the wall time this rank spent on it

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        self._step_start = time.perf_counter()
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def on_train_batch_end(self, batch, logs=None):
        self.step_times.append(time.perf_counter() - self._step_start)

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.epoch_times.append(now - self._epoch_start)
        value = (logs or {}).get(self.target_metric)
        if self.target_reached is None and value is not None and _reached(self.target_metric, value, self.target_value):
            self.target_reached = {"epoch": epoch + 1, "seconds": now - self.start, "value": float(value)}
            self.model.stop_training = self.stop


def _reached(metric, value, target):
    lower_is_better = "loss" in metric or "error" in metric
    return value <= target if lower_is_better else value >= target


class FailOnNonFinite(keras.callbacks.Callback):
    """A NaN or Inf loss stops training with an error naming the step; the last good checkpoint stays."""

    def __init__(self):
        super().__init__()
        self.bad_step = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad_step = (self._epoch + 1, batch + 1, float(loss))
            self.model.stop_training = True


def save(manager):
    """One checkpoint; a full disk or a write error becomes an error naming the folder (the previous
    checkpoint stays: the manager switches to the new one only after it is complete)."""
    try:
        return manager.save()
    except compat.tf().errors.OpError as e:
        raise TrainingFailed(f"cannot write a checkpoint in {manager.directory}: "
                             f"{e.message.splitlines()[0]}") from None


class Checkpointer(keras.callbacks.Callback):
    """Saves checkpoints/last every `every` epochs and when training stops early, and checkpoints/best
    when the monitored metric improves. Every worker calls save (tf.distribute needs it); only the
    chief's folder is the run's."""

    def __init__(self, state, last, best, every=1, monitor="val_loss", stopper=None, nonfinite=None):
        super().__init__()
        self.state, self.last, self.best, self.every = state, last, best, every
        self.monitor, self.stopper, self.nonfinite = monitor, stopper, nonfinite

    def on_epoch_end(self, epoch, logs=None):
        if self.nonfinite is not None and self.nonfinite.bad_step:
            return  # never save a model that produced a non-finite loss
        if self.stopper is not None and self.stopper.stopped_at:
            save(self.last)
            return
        value = (logs or {}).get(self.monitor)
        if value is not None and math.isfinite(value):
            best = float(self.state.best.numpy())
            if math.isnan(best) or _reached(self.monitor, value, best) and value != best:
                self.state.best.assign(value)
                save(self.best)
        if (epoch + 1) % self.every == 0:
            save(self.last)


class MetricsLog(keras.callbacks.Callback):
    """metrics.csv and metrics.jsonl of a RunDir, one row per epoch, rewritten atomically after every epoch."""

    def __init__(self, run_dir, history=()):
        super().__init__()
        self.run_dir, self.rows = run_dir, list(history)

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        with atomic_output(self.run_dir.metrics_csv) as tmp:
            tmp.write_text("\n".join([",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys)
                                                         for r in self.rows]) + "\n")
        with atomic_output(self.run_dir.metrics_jsonl) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
