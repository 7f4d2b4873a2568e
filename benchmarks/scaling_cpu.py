"""Weak scaling on this machine: 1 worker on 1 core against 2 workers on 1 core each, same per-worker
batch, for every backend, U-Net and MNIST CNN. Prints samples/s and efficiency = tp(2) / (2 x tp(1)).

    .venv/bin/python benchmarks/scaling_cpu.py [--steps 40] [--repeats 3] [--models unet,cnn]
        [--backends horovod,multiworker,mirrored]

Each worker is pinned to its own core (HPCTRAIN_CORES_PER_WORKER=1), with one TensorFlow thread. The
Horovod rows show hpctrain's defaults (Open MPI yield_when_idle=1, HOROVOD_CYCLE_TIME=2) beside plain
Open MPI/Horovod defaults (yield_when_idle=0, cycle time 1 ms). "side by side" is two independent
1-worker runs at once, one per core, that never communicate: the most two workers can get from this
machine (shared caches, memory bandwidth, the host under the VM), so each efficiency is also shown
against it, and against what those two runs would have made in lockstep (common.lockstep: each step as long
as the slower core's at that moment, the wait that no synchronous job escapes). With one core per worker the
gradient exchange cannot hide behind compute on another core, so for each multi-process backend the
exchange of the model's gradient set is also timed alone on the same 2 workers (`hpctrain bench allreduce`,
its wall and CPU time per step): the side-by-side step plus that cost bounds what the backend can reach here,
"exchange bound" from the wall time (nothing hidden) to the CPU time (all but the core's own work hidden), and
each run is shown against the CPU-time bound. The cases run in
turn, `--repeats` rounds, and each figure is the median of its rounds: throughput here drifts by several
percent from minute to minute.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from hpctrain import spec
from hpctrain.distribute import backends
from hpctrain.launch import local as launch

from common import HPCTRAIN, lockstep, pack_mnist, write_job

PLAIN_DEFAULTS = {"OMPI_MCA_mpi_yield_when_idle": "0", "HOROVOD_CYCLE_TIME": "1"}
SIDE_BY_SIDE = "side by side (2 x 1 worker)"
LOCKSTEP = "side by side, in lockstep (each step the slower one's)"

# (label, backend, launcher, workers, extra environment)
CASES = [
    ("1 worker", "none", "local", 1, {}),
    (SIDE_BY_SIDE, "none", None, 2, {}),
    ("horovod mpirun", "horovod", "mpirun", 2, {}),
    ("horovod mpirun, plain defaults", "horovod", "mpirun", 2, PLAIN_DEFAULTS),
    ("horovod horovodrun --gloo", "horovod", "horovodrun", 2, {}),
    ("multiworker (2 processes)", "multiworker", "local", 2, {}),
    ("mirrored (2 logical CPUs)", "mirrored", "local", 2, {}),
]


UNET_BATCH = 8


def unet_data(folder, steps):
    """The U-Net's synthetic data: samples for `steps` steps of 2 workers."""
    from hpctrain.data import synthetic

    return synthetic.pack(Path(folder) / "synth.h5", count=2 * UNET_BATCH * steps, size=128, seed=0)


def job_file(tmp, model, data, steps):
    if model == "unet":
        sections = dict(data={"path": str(data), "split": "all", "tile": 128},
                        model={"name": "unet", "unet": {"depth": 5, "filters": 16, "dropout": 0.0}}, batch=UNET_BATCH)
    else:
        sections = dict(data={"path": str(data), "split": "holdout"}, model={"name": "mnist_cnn"}, batch=64)
    batch = sections.pop("batch")
    return write_job(Path(tmp) / f"{model}.toml", name=f"bench_{model}", **sections,
                     train={"precision": "fp32", "batch_size": batch, "epochs": 1, "steps_per_epoch": steps,
                            "validation": False, "warmup_steps": 5},
                     distribute={"lr_scaling": "none"}, output={"dir": "unused", "tensorboard": False})


def timing_of(out):
    """timing.json of a run, which must have made the steps its spec asked for (its data holds them)."""
    timing = json.loads((Path(out) / "timing.json").read_text())
    asked = spec.load(Path(out) / "spec.toml").train.steps_per_epoch
    if timing["steps_per_epoch"] != asked:
        raise SystemExit(f"{out}: {timing['steps_per_epoch']} steps per epoch of the {asked} asked: the data holds "
                         "no more")
    return timing


def throughput(out):
    return timing_of(out)["throughput"]["samples_per_s"]


def run_case(job, out, label, backend, launcher, workers, env):
    """Samples per second of all workers together; side by side also what its runs give in lockstep."""
    argv = [sys.executable, "-m", "hpctrain", "train", str(job), "--force", "--set", f"distribute.backend={backend}"]
    env = {**os.environ, **env, "HPCTRAIN_CORES_PER_WORKER": "1"}
    if label == SIDE_BY_SIDE:  # each its own run folder, on its own core
        procs = [subprocess.Popen([*argv, "--set", f"output.dir={out}-{core}"], env=env,
                                  stdout=subprocess.DEVNULL,
                                  preexec_fn=lambda core=core: os.sched_setaffinity(0, {core}))
                 for core in range(workers)]
        if any(p.wait() for p in procs):
            raise SystemExit(f"{label}: a run failed")
        timings = [timing_of(f"{out}-{core}") for core in range(workers)]
        return sum(t["throughput"]["samples_per_s"] for t in timings), lockstep(timings)
    launcher, processes, overrides = backends.BACKENDS[backend].local_plan(workers, launcher)
    for item in [f"output.dir={out}", *overrides]:
        argv += ["--set", item]
    if launch.run(processes, argv, launcher, env=env):
        raise SystemExit(f"{label}: the run failed")
    return throughput(out), None


def exchange_cost(job, backend, launcher, env):
    """(wall, CPU) seconds per exchange of the job's gradient set alone on the case's 2 workers."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "allreduce.json"
        proc = subprocess.run([HPCTRAIN, "bench", "allreduce", str(job), "--backend", backend, "-n", "2", "--launcher",
                               launcher, "-b", "4", "-e", "4", "--repeats", "8", "-o", str(out)],
                              env={**os.environ, **env, "HPCTRAIN_CORES_PER_WORKER": "1"}, capture_output=True,
                              text=True)
        if proc.returncode:
            raise SystemExit(f"bench allreduce ({backend}, {launcher}) failed: {proc.stderr[-2000:]}")
        grads = json.loads(out.read_text())["gradient_set"]
    return grads["time_s"], grads["cpu_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="unet,cnn")
    parser.add_argument("--backends", default="horovod,multiworker,mirrored",
                        help="the backends to run beside the 1-worker and side-by-side runs")
    args = parser.parse_args()
    chosen = args.backends.split(",")
    if unknown := set(chosen) - {backend for _, backend, *_ in CASES}:
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    cases = [case for case in CASES if case[1] in ("none", *chosen)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = {"unet": unet_data(tmp, args.steps), "cnn": pack_mnist(tmp)}
        for model in args.models.split(","):
            job = job_file(tmp, model, data[model], args.steps)
            runs = {label: [] for label, *_ in cases}
            in_lockstep = []
            for round_ in range(args.repeats):
                for label, *case in cases:
                    out = Path(tmp) / "run"
                    samples_per_s, locked = run_case(job, out, label, *case)
                    runs[label].append(samples_per_s)
                    in_lockstep += [locked] if locked else []
                    print(f"{model:5} round {round_ + 1}  {label:34} {samples_per_s:8.1f} samples/s"
                          + (f" ({locked:.1f} in lockstep)" if locked else ""), flush=True)
            one, ceiling = statistics.median(runs["1 worker"]), statistics.median(runs[SIDE_BY_SIDE])
            locked = statistics.median(in_lockstep) if in_lockstep else None  # None: no round overlapped
            step = 2 * spec.load(job).train.batch_size / ceiling  # a worker's step, side by side
            for label, backend, launcher, workers, env in cases:
                tp = statistics.median(runs[label])
                bound = None
                if backend in ("horovod", "multiworker"):
                    wall, cpu = exchange_cost(job, backend, launcher, env)
                    bound = (step / (step + wall), step / (step + cpu))
                    print(f"{model:5} {label:34} exchange alone {1e3 * wall:.1f} ms wall, {1e3 * cpu:.1f} ms CPU "
                          f"against a {1e3 * step:.1f} ms step", flush=True)
                rows.append((model, label, workers, tp, min(runs[label]), max(runs[label]),
                             tp / (workers * one), tp / ceiling if workers == 2 else None, bound,
                             tp / locked if workers == 2 and locked else None))
            if locked:
                rows.append((model, LOCKSTEP, 2, locked, min(in_lockstep), max(in_lockstep), locked / (2 * one),
                             locked / ceiling, None, 1.0))
    print(f"\nmedian of {args.repeats} rounds, {args.steps} steps each (5 warm-up)\n")
    print("| model | run | workers | samples/s | range | efficiency | of side by side | of lockstep | exchange bound | "
          "of the CPU bound |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model, label, n, tp, low, high, eff, of_ceiling, bound, of_locked in rows:
        locked = f"{100 * of_locked:.1f} %" if of_locked else "-"
        share = f"{100 * of_ceiling:.1f} % | {locked}" if of_ceiling else " |"
        limit = f"{100 * bound[0]:.1f}-{100 * bound[1]:.1f} % | {100 * of_ceiling / bound[1]:.1f} %" if bound else " |"
        print(f"| {model} | {label} | {n} | {tp:.1f} | {low:.1f}-{high:.1f} | {100 * eff:.1f} % | {share} | {limit} |")


if __name__ == "__main__":
    main()
