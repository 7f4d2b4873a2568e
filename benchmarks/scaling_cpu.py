"""Weak scaling on this machine: 1 worker on 1 core against 2 workers on 1 core each, same per-worker
batch, for every backend, U-Net and MNIST CNN. Prints samples/s and efficiency = tp(2) / (2 x tp(1)).

    .venv/bin/python benchmarks/scaling_cpu.py [--steps 40] [--repeats 3] [--models unet,cnn]

Each worker is pinned to its own core (HPCTRAIN_CORES_PER_WORKER=1), with one TensorFlow thread. The
Horovod rows show hpctrain's defaults (Open MPI yield_when_idle=1, HOROVOD_CYCLE_TIME=2) beside plain
Open MPI/Horovod defaults (yield_when_idle=0, cycle time 1 ms). "side by side" is two independent
1-worker runs at once, one per core, that never communicate: the most two workers can get from this
machine (shared caches, memory bandwidth, the host under the VM), so each efficiency is also shown
against it. The cases run in turn, `--repeats` rounds, and each figure is the median of its rounds:
throughput here drifts by several percent from minute to minute.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import pack_mnist

from hpctrain.launch import local as launch

PLAIN_DEFAULTS = {"OMPI_MCA_mpi_yield_when_idle": "0", "HOROVOD_CYCLE_TIME": "1"}
SIDE_BY_SIDE = "side by side (2 x 1 worker)"

# (label, backend, launcher, processes, extra environment)
CASES = [
    ("1 worker", "none", "local", 1, {}),
    (SIDE_BY_SIDE, "none", None, 2, {}),
    ("horovod mpirun", "horovod", "mpirun", 2, {}),
    ("horovod mpirun, plain defaults", "horovod", "mpirun", 2, PLAIN_DEFAULTS),
    ("horovod horovodrun --gloo", "horovod", "horovodrun", 2, {}),
    ("multiworker (2 processes)", "multiworker", "local", 2, {}),
    ("mirrored (2 logical CPUs)", "mirrored", "local", 1, {}),
]


def job_file(tmp, model, data, steps):
    if model == "unet":
        body = (f'[data]\npath = "{data}"\nsplit = "all"\ntile = 128\n[model]\nname = "unet"\ndepth = 5\n'
                f'filters = 16\ndropout = 0.0\n[train]\nbatch_size = 8\n')
    else:
        body = f'[data]\npath = "{data}"\nsplit = "holdout"\n[model]\nname = "mnist_cnn"\n[train]\nbatch_size = 64\n'
    body += (f"epochs = 1\nsteps_per_epoch = {steps}\nvalidation = false\nwarmup_steps = 5\n"
             f'[distribute]\nlr_scaling = "none"\n[output]\ndir = "unused"\ntensorboard = false\n')
    path = Path(tmp) / f"{model}.toml"
    path.write_text(f'name = "bench_{model}"\n' + body)
    return path


def throughput(out):
    return json.loads((out / "timing.json").read_text())["throughput"]["samples_per_s"]


def run_case(job, out, label, backend, launcher, processes, env):
    """Samples per second of all workers together."""
    argv = [sys.executable, "-m", "hpctrain", "train", str(job), "--force", "--set", f"distribute.backend={backend}"]
    env = {**os.environ, **env, "HPCTRAIN_CORES_PER_WORKER": "1"}
    if label == SIDE_BY_SIDE:  # each its own run folder, on its own core
        procs = [subprocess.Popen([*argv, "--set", f"output.dir={out}-{core}"], env=env,
                                  stdout=subprocess.DEVNULL, preexec_fn=lambda core=core: os.sched_setaffinity(0, {core}))
                 for core in range(processes)]
        if any(p.wait() for p in procs):
            raise SystemExit(f"{label}: a run failed")
        return sum(throughput(Path(f"{out}-{core}")) for core in range(processes))
    argv += ["--set", f"output.dir={out}"] + (["--set", "distribute.devices=2"] if backend == "mirrored" else [])
    if launch.run(processes, argv, launcher, env=env):
        raise SystemExit(f"{label}: the run failed")
    return throughput(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="unet,cnn")
    args = parser.parse_args()
    from hpctrain.data import synthetic

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = {"unet": Path(tmp) / "synth.h5", "cnn": Path(tmp) / "mnist.h5"}
        synthetic.pack(data["unet"], count=256, size=128, seed=0)
        pack_mnist(tmp)
        for model in args.models.split(","):
            job = job_file(tmp, model, data[model], args.steps)
            runs = {label: [] for label, *_ in CASES}
            for round_ in range(args.repeats):
                for label, *case in CASES:
                    out = Path(tmp) / "run"
                    runs[label].append(run_case(job, out, label, *case))
                    print(f"{model:5} round {round_ + 1}  {label:34} {runs[label][-1]:8.1f} samples/s", flush=True)
            one, ceiling = statistics.median(runs["1 worker"]), statistics.median(runs[SIDE_BY_SIDE])
            for label, _, _, processes, _ in CASES:
                workers = 1 if label == "1 worker" else 2
                tp = statistics.median(runs[label])
                rows.append((model, label, workers, tp, min(runs[label]), max(runs[label]),
                             tp / (workers * one), tp / ceiling if workers == 2 else None))
    print(f"\nmedian of {args.repeats} rounds, {args.steps} steps each (5 warm-up)\n")
    print("| model | run | workers | samples/s | range | efficiency | of side by side |\n"
          "|---|---|---:|---:|---:|---:|---:|")
    for model, label, n, tp, low, high, eff, of_ceiling in rows:
        share = f"{100 * of_ceiling:.1f} %" if of_ceiling else ""
        print(f"| {model} | {label} | {n} | {tp:.1f} | {low:.1f}-{high:.1f} | {100 * eff:.1f} % | {share} |")


if __name__ == "__main__":
    main()
