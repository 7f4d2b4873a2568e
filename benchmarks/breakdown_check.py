"""The step-time breakdown checked: how close its measured step comes to the run's own, and what it costs.

    .venv/bin/python benchmarks/breakdown_check.py [--job jobs/cnn_mnist.toml] [--backend horovod]
        [--workers 1,2] [--calls 10] [--rounds 3] [--set KEY=VALUE ...]

Each worker count runs the job twice per round, with the breakdown on (`train.breakdown_steps = CALLS`) and
off (0), the order swapped every round so drift touches both alike; every worker has a core of its own
(HPCTRAIN_CORES_PER_WORKER=1), 1 worker too under the backend. Per worker count it prints, as medians
(ranges) over the rounds:
- the breakdown's step (its input + compute + exchange + other) against the run's median step;
- the samples/s of the run with the breakdown on against off, paired within each round (the probe runs
  after the last timed step, so this says whether it disturbs them);
- the wall time the probe adds to the run: as the run timed it (timing.json's breakdown.wall_seconds), and
  the difference of the runs' wall_time (on minus off), in seconds and as a share of the run without it.
The job's data is the real MNIST (or ISBI 2012) file packed into a scratch folder unless --set data.path=...
names one.
"""
import argparse
import statistics
import tempfile
from pathlib import Path

from hpctrain.launch.sweep import parse_counts
from time_to_accuracy import packed_data, spread

from common import launch


def train(job, backend, workers, calls, overrides, out):
    """timing.json of one run with `calls` breakdown calls of each kind (0: off)."""
    return launch(job, workers, backend, [*overrides, f"train.breakdown_steps={calls}"], out)


def percent(fractions):
    values = [100 * f for f in fractions]
    return f"{statistics.median(values):+.1f} % ({min(values):+.1f} to {max(values):+.1f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="jobs/cnn_mnist.toml")
    parser.add_argument("--backend", default="horovod")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    counts = parse_counts(args.workers)
    runs = {(n, on): [] for n in counts for on in (False, True)}
    with tempfile.TemporaryDirectory() as scratch:
        overrides = args.overrides
        if not any(o.startswith("data.path=") for o in overrides):
            overrides = [packed_data(args.job, Path(scratch)), *overrides]
        for r in range(args.rounds):
            for n in counts:
                for on in ((True, False) if r % 2 else (False, True)):
                    t = train(args.job, args.backend, n, args.calls if on else 0, overrides, Path(scratch) / "run")
                    runs[n, on].append(t)
                    print(f"round {r + 1}, {n} worker{'s' * (n > 1)}, breakdown {'on' if on else 'off'}: "
                          f"{t['throughput']['samples_per_s']:.1f} samples/s, wall {t['wall_time']:.1f} s", flush=True)
    print(f"\n{args.job}, {args.backend}, breakdown of {args.calls} calls per kind, "
          f"medians (ranges) of {args.rounds} rounds")
    print("| workers | breakdown step against the run's | samples/s on against off | probe's wall time "
          "| wall time on - off | of the run |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in counts:
        on, off = runs[n, True], runs[n, False]
        added = [a["wall_time"] - b["wall_time"] for a, b in zip(on, off)]
        faster = [a["throughput"]["samples_per_s"] / b["throughput"]["samples_per_s"] - 1 for a, b in zip(on, off)]
        print(f"| {n} | {percent([t['breakdown']['step_against_run'] for t in on])} | {percent(faster)} "
              f"| {spread([t['breakdown']['wall_seconds'] for t in on])} s | {spread(added)} s "
              f"| {percent([a / b['wall_time'] for a, b in zip(added, off)])} |")
    print("breakdown parts (ms), medians over the rounds: " + "; ".join(
        f"{n} worker{'s' * (n > 1)}: " + ", ".join(
            f"{part} {1000 * statistics.median(t['breakdown']['seconds'][part] for t in runs[n, True]):.1f}"
            for part in ("input", "compute", "exchange", "other")) for n in counts))


if __name__ == "__main__":
    main()
