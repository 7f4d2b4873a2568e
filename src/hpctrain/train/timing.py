"""timing.json and curves.png of a run: what the scaling report reads. `Timing` defines timing.json's
fields, once.

Throughput is global samples per second of each training step after the warm-up steps; its spread is
reported as the standard deviation of the per-step figures and the 95 % interval of their mean
(1.96 sigma / sqrt(n); Horovod's synthetic benchmark states 1.96 sigma, the spread of single steps).
"""
import dataclasses
import json
import os
import platform
import socket
from typing import ClassVar

import numpy as np
import psutil

from hpctrain import __version__, compat, optimizers
from hpctrain.atomic import atomic_output, write_text
from hpctrain.errors import UserError
from hpctrain.train import breakdown


@dataclasses.dataclass
class Timing:
    """One run's figures, as timing.json holds them."""
    complete: bool              # False: a signal stopped the run (continue it with --resume)
    attempts: int               # runs of the job that made these figures (1 + resumptions)
    job: str
    model: str
    parameters: int
    dataset: str
    split: str
    tile: int | None
    backend: str
    world_size: int             # data-parallel replicas
    processes: int
    nodes: int
    per_worker_batch: int
    global_batch: int
    lr_scaling: str             # the rule used (lr_scaling "auto" resolved for the optimizer)
    precision: str
    xla: bool
    steps_per_epoch: int
    epochs: int
    warmup_steps: int
    throughput: dict | None     # throughput_stats()
    step_times: list
    epoch_times: list
    train_time: float
    wall_time: float
    first_step_at: float | None  # Unix time of the first training step
    startup_seconds: float | None  # from this process's start to the first step
    target: dict                # {"metric", "value", "reached": {"epoch", "seconds", "value"} or None}
    environment: dict
    accumulate_steps: int = 1   # micro-batches of per_worker_batch per update (global_batch counts them all)
    seed: int | None = None     # train.seed
    validation_shards: int = 1  # processes that split the validation samples (1: each scored all of them)
    gradient_tensors: int | None = None  # trainable variables: the tensors each update exchanges
    breakdown: dict | None = None  # where a step's time goes (hpctrain.train.breakdown.summary); None: not measured
    compression: str = "none"   # distribute.compression of the gradient exchange
    scaling: str = "weak"       # distribute.scaling: weak (batch_size per worker) or strong (one global batch)

    # Runs of one comparison differ in nothing but the worker count and what follows from it.
    SCALED: ClassVar = ("world_size", "processes", "nodes", "per_worker_batch", "global_batch", "steps_per_epoch")
    # split and seed: repeats of one comparison
    COMPARED: ClassVar = ("job", "model", "parameters", "dataset", "tile", "backend", "precision", "xla",
                          "lr_scaling", "compression", "scaling", "epochs", "warmup_steps", "accumulate_steps")
    # How an update of the global batch is computed, not what it is: runs that differ in nothing else (and the
    # worker count) take the same steps to a target at the same global batch (the learning rate follows it).
    EXECUTION: ClassVar = ("backend", "accumulate_steps", "scaling")

    def comparison_key(self):
        return tuple((k, json.dumps(getattr(self, k))) for k in self.COMPARED)

    @property
    def target_seconds(self):
        reached = (self.target or {}).get("reached")
        return reached["seconds"] if reached else None

    @classmethod
    def from_dict(cls, data, source="timing.json"):
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in data and f.default is dataclasses.MISSING]
        if missing:
            raise UserError(f"{source} lacks {', '.join(missing)}")
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    @classmethod
    def read(cls, run_dir):
        """The Timing of a run folder (RunDir), or None when it has no timing.json."""
        path = run_dir.timing
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path}: {e}") from None
        return cls.from_dict(data, str(path))

    def write(self, run_dir):
        write_text(run_dir.timing, json.dumps(dataclasses.asdict(self), indent=2))


def throughput_stats(step_times, global_batch, warmup):
    times = np.asarray(step_times[warmup:] if len(step_times) > warmup else step_times, dtype=float)
    if times.size == 0:
        return None
    per_step = global_batch / times
    return {"samples_per_s": float(global_batch * times.size / times.sum()),
            "samples_per_s_step_mean": float(per_step.mean()),
            "samples_per_s_step_std": float(per_step.std()),
            "samples_per_s_ci95": float(1.96 * per_step.std() / np.sqrt(per_step.size)),
            "step_time_mean": float(times.mean()), "step_time_median": float(np.median(times)),
            "steps_measured": int(times.size)}


def environment(backend, rank_hosts=None):
    tf = compat.tf()
    return {"hpctrain": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": compat.keras().__version__, "backend_versions": backend.versions(), "host": socket.gethostname(),
            "rank_hosts": rank_hosts or [socket.gethostname()],  # the host of each process, in rank order
            "gpus": len(tf.config.list_physical_devices("GPU")), "cpus_available": len(os.sched_getaffinity(0)),
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "launcher": backend.cluster.launcher, "job_id": backend.cluster.job_id, "exchange": backend.exchange(),
            # the Keras policy train.precision chose here (hpctrain.train.precision): float32, mixed_bfloat16, ...
            "precision_policy": compat.keras().mixed_precision.global_policy().name}


def summary(timer, spec, backend, steps_per_epoch, wall, model, complete=True, earlier=None, rank_hosts=None,
            validation_shards=1):
    """The Timing of a run. `complete`: False when a signal stopped the run; its resumption passes the
    stopped attempt's Timing as `earlier`, so the figures cover every step of the run."""
    global_batch = spec.train.update_batch * backend.replicas
    if earlier:
        timer.step_times = earlier.step_times + timer.step_times
        timer.epoch_times = earlier.epoch_times + timer.epoch_times
        wall += earlier.wall_time
        timer.target_reached = (earlier.target or {}).get("reached") or timer.target_reached
    throughput = throughput_stats(timer.step_times, global_batch, spec.train.warmup_steps)
    return Timing(
        complete=complete, attempts=(earlier.attempts if earlier else 0) + 1,
        job=spec.name, model=spec.model.name, parameters=int(model.count_params()),
        dataset=str(spec.data.path), split=spec.data.split, tile=spec.data.tile,
        backend=backend.name, world_size=backend.replicas, processes=backend.size,
        nodes=backend.cluster.num_nodes, per_worker_batch=spec.train.batch_size,
        global_batch=global_batch, lr_scaling=optimizers.scaling_rule(spec.distribute.lr_scaling, spec.train.optimizer),
        precision=spec.train.precision, xla=spec.train.xla,
        steps_per_epoch=steps_per_epoch, epochs=spec.train.epochs, warmup_steps=spec.train.warmup_steps,
        throughput=throughput,
        step_times=timer.step_times, epoch_times=timer.epoch_times,
        train_time=float(sum(timer.epoch_times)), wall_time=float(wall),
        first_step_at=timer.first_step_at,
        startup_seconds=timer.first_step_at - psutil.Process().create_time() if timer.first_step_at else None,
        target={"metric": spec.train.target_metric, "value": spec.train.target_value,
                "reached": timer.target_reached},
        environment=environment(backend, rank_hosts), accumulate_steps=spec.train.accumulate_steps,
        seed=spec.train.seed, validation_shards=validation_shards, compression=spec.distribute.compression,
        scaling=spec.distribute.scaling,
        gradient_tensors=len(model.trainable_variables),
        breakdown=breakdown.summary(timer.breakdown, (throughput or {}).get("step_time_median"),
                                    spec.train.breakdown_steps, timer.breakdown_seconds) if timer.breakdown else None,
    )


def unfinished(run_dir):
    """The Timing of a run a signal stopped, or None."""
    timing = Timing.read(run_dir)
    return timing if timing and not timing.complete else None


def plot_curves(run_dir):
    """curves.png: loss and every other logged metric per epoch, training and validation side by side."""
    rows = run_dir.history()
    if not rows:
        return
    names = [k for k in rows[0] if k != "epoch" and not k.startswith("val_") and k != "learning_rate"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    epochs = [r["epoch"] for r in rows]
    for ax, name in zip(axes[0], names):
        ax.plot(epochs, [r.get(name) for r in rows], "o-", label="train")
        if any(f"val_{name}" in r for r in rows):
            ax.plot(epochs, [r.get(f"val_{name}") for r in rows], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_output(run_dir.curves) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
