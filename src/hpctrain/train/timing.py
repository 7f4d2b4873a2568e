"""timing.json and curves.png of a run: what the scaling report reads.

Throughput is global samples per second of each training step after the warm-up steps; its spread is
reported as the standard deviation and the 95 % interval of the mean (1.96 sigma / sqrt(n)), the way
Horovod's synthetic benchmark states it.
"""
import json
import os
import platform
import socket

import numpy as np
import psutil

from hpctrain import __version__, compat
from hpctrain.atomic import atomic_output, write_text


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


def environment(backend):
    tf = compat.tf()
    env = {"hpctrain": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
           "keras": compat.keras().__version__, "host": socket.gethostname(),
           "gpus": len(tf.config.list_physical_devices("GPU")), "cpus_available": len(os.sched_getaffinity(0)),
           "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
           "launcher": backend.cluster.launcher, "job_id": backend.cluster.job_id}
    if backend.name == "horovod":
        import horovod

        env["horovod"] = horovod.__version__
    return env


def summary(timer, spec, backend, steps_per_epoch, wall, model, complete=True, earlier=None):
    """timing.json's content. `complete`: False when a signal stopped the run; its resumption passes the
    stopped attempt's timing as `earlier`, so the figures cover every step of the run."""
    global_batch = spec.train.batch_size * backend.replicas
    if earlier:
        timer.step_times = earlier["step_times"] + timer.step_times
        timer.epoch_times = earlier["epoch_times"] + timer.epoch_times
        wall += earlier["wall_time"]
        timer.target_reached = (earlier.get("target") or {}).get("reached") or timer.target_reached
    return {
        "complete": complete, "attempts": (earlier or {}).get("attempts", 0) + 1,
        "job": spec.name, "model": spec.model.name, "parameters": int(model.count_params()),
        "dataset": str(spec.data.path), "split": spec.data.split, "tile": spec.data.tile,
        "backend": backend.name, "world_size": backend.replicas, "processes": backend.size,
        "nodes": backend.cluster.num_nodes, "per_worker_batch": spec.train.batch_size,
        "global_batch": global_batch, "lr_scaling": spec.distribute.lr_scaling,
        "precision": spec.train.precision, "xla": spec.train.xla,
        "steps_per_epoch": steps_per_epoch, "epochs": spec.train.epochs, "warmup_steps": spec.train.warmup_steps,
        "throughput": throughput_stats(timer.step_times, global_batch, spec.train.warmup_steps),
        "step_times": timer.step_times, "epoch_times": timer.epoch_times,
        "train_time": float(sum(timer.epoch_times)), "wall_time": float(wall),
        # Unix time of the first training step, and seconds from this process's start to it.
        "first_step_at": timer.first_step_at,
        "startup_seconds": timer.first_step_at - psutil.Process().create_time() if timer.first_step_at else None,
        "target": {"metric": spec.train.target_metric, "value": spec.train.target_value,
                   "reached": timer.target_reached},
        "environment": environment(backend),
    }


def write(run_dir, report):
    write_text(run_dir / "timing.json", json.dumps(report, indent=2))


def read(run_dir):
    path = run_dir / "timing.json"
    return json.loads(path.read_text()) if path.is_file() else None


def unfinished(run_dir):
    """The timing of a run a signal stopped, or None."""
    report = read(run_dir)
    return report if report and report.get("complete") is False else None


def plot_curves(run_dir):
    """curves.png: loss and every other logged metric per epoch, training and validation side by side."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines()]
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
    with atomic_output(run_dir / "curves.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
