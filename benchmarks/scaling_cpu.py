"""Weak scaling on this machine: 1 worker on 1 core against 2 workers on 1 core each, same per-worker
batch, for every backend, U-Net and MNIST CNN. Prints samples/s and efficiency = tp(2) / (2 x tp(1)).

    .venv/bin/python benchmarks/scaling_cpu.py [--steps 40] [--models unet,cnn]

Each worker is pinned to its own core (HPCTRAIN_CORES_PER_WORKER=1), with one TensorFlow thread. The Horovod rows show hpctrain's defaults (Open MPI yield_when_idle=1,
HOROVOD_CYCLE_TIME=10) beside plain Open MPI/Horovod defaults (yield_when_idle=0, cycle time 1 ms).
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import pack_mnist

from hpctrain.distribute import launch

PLAIN_DEFAULTS = {"OMPI_MCA_mpi_yield_when_idle": "0", "HOROVOD_CYCLE_TIME": "1"}

# (label, backend, launcher, processes, extra environment)
CASES = [
    ("1 worker", "none", "local", 1, {}),
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


def run_case(job, tmp, label, backend, launcher, processes, env):
    out = Path(tmp) / label.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
    overrides = ["--set", f"output.dir={out}", "--set", f"distribute.backend={backend}"]
    if backend == "mirrored":
        overrides += ["--set", "distribute.devices=2"]
    argv = [sys.executable, "-m", "hpctrain", "train", str(job), *overrides]
    code = launch.run(processes, argv, launcher, env={**env, "HPCTRAIN_CORES_PER_WORKER": "1"})
    if code:
        raise SystemExit(f"{label}: exit code {code}")
    timing = json.loads((out / "timing.json").read_text())
    return timing["throughput"]["samples_per_s"], timing["throughput"]["samples_per_s_ci95"], timing


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--models", default="unet,cnn")
    args = parser.parse_args()
    from hpctrain.data import synthetic

    with tempfile.TemporaryDirectory() as tmp:
        data = {"unet": Path(tmp) / "synth.h5", "cnn": Path(tmp) / "mnist.h5"}
        synthetic.pack(data["unet"], count=256, size=128, seed=0)
        pack_mnist(tmp)
        rows = []
        for model in args.models.split(","):
            job = job_file(tmp, model, data[model], args.steps)
            base = None
            for label, *case in CASES:
                tp, ci, timing = run_case(job, tmp, f"{model} {label}", *case)
                base = base or tp
                eff = tp / (timing["world_size"] * base)
                rows.append((model, label, timing["world_size"], tp, ci, eff))
                print(f"{model:5} {label:34} workers {timing['world_size']}  {tp:8.1f} ± {ci:5.1f} samples/s  "
                      f"efficiency {100 * eff:5.1f} %", flush=True)
    print("\n| model | run | workers | samples/s | ±95 % | efficiency |\n|---|---|---:|---:|---:|---:|")
    for model, label, n, tp, ci, eff in rows:
        print(f"| {model} | {label} | {n} | {tp:.1f} | {ci:.1f} | {100 * eff:.1f} % |")


if __name__ == "__main__":
    main()
