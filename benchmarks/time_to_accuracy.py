"""Time to accuracy: a job trained to its target metric at several worker counts and settings, over seeds.
Prints, per case, samples/s, time, epoch and samples seen (steps x global batch) to the target, the final
metric (medians and ranges over the seeds), the speedup of the median time to target against the first
case, and the speedup of each seed's time against the first case's with the same seed (median and range).

    .venv/bin/python benchmarks/time_to_accuracy.py [--job jobs/unet_isbi_cpu.toml] [--seeds 42,1,2]
        [--backend horovod] [--set KEY=VALUE ...] [--runs DIR] CASE [CASE ...]

A CASE is a worker count and optional spec overrides, e.g. `1`, `2`, `2:distribute.lr_scaling=sqrt` or
`2:distribute.lr_scaling=linear,distribute.warmup_epochs=0`. The job's data is the real ISBI 2012 (or
MNIST) file packed into a scratch folder unless --set data.path=... names one. Every worker has one core
of its own (HPCTRAIN_CORES_PER_WORKER=1): 1 and N workers compare like 1 and N GPUs. The cases run in
turn, seed after seed, so drift of the machine touches all of them alike. With --runs DIR the run folders
stay (DIR/c<case>-s<seed>) for `hpctrain report`: e.g. cases `1:train.accumulate_steps=K` measure the samples
to the target at K times the batch, from which `report --predict` predicts the time to target at K workers.
"""
import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from hpctrain import models, spec
from hpctrain.launch.sweep import toml_string

from common import ROOT, launch, pack_isbi, pack_mnist


def parse_case(text):
    count, _, overrides = text.partition(":")
    if not count.isdigit() or int(count) < 1:
        raise SystemExit(f"time_to_accuracy.py: case {text!r}: expected N or N:key=value,...")
    return int(count), [o for o in overrides.split(",") if o]


def train(job, workers, overrides, backend, out):
    """Trains one case; (samples/s, seconds, epoch and samples to target or None, final target metric)."""
    timing = launch(job, workers, backend, overrides, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    reached = timing["target"]["reached"] or {}
    samples = reached["epoch"] * timing["steps_per_epoch"] * timing["global_batch"] if reached else None
    return (timing["throughput"]["samples_per_s"], reached.get("seconds"), reached.get("epoch"), samples,
            rows[-1][timing["target"]["metric"]])


def packed_data(job, scratch):
    """A data.path override with the job's dataset packed from the real files in the repository."""
    kind = models.get(spec.load(job).model.name).task.name
    path = (pack_isbi if kind == "segmentation" else pack_mnist)(scratch)
    return f"data.path={toml_string(str(path))}"


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return "not reached"
    return f"{statistics.median(values):.4g} ({min(values):.4g}-{max(values):.4g})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--job", default="jobs/unet_isbi_cpu.toml")
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--backend", default="horovod")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--runs", type=Path, help="keep the run folders here (default: a scratch folder)")
    args = parser.parse_args()
    cases = [parse_case(c) for c in args.cases]
    seeds = [int(s) for s in args.seeds.split(",")]
    job = str(ROOT / args.job)
    with tempfile.TemporaryDirectory(prefix="hpctrain-tta-") as tmp:
        tmp = Path(tmp)
        common = ["train.breakdown_steps=0", *args.overrides]  # the probe after training changes no figure here
        if not any(o.startswith("data.path=") for o in common):
            common.insert(0, packed_data(job, tmp))
        results = {i: [] for i in range(len(cases))}
        for seed in seeds:
            for i, (workers, overrides) in enumerate(cases):
                out = (args.runs or tmp).resolve() / f"c{i}-s{seed}"
                result = train(job, workers, [*common, f"train.seed={seed}", *overrides], args.backend, out)
                results[i].append(result)
                print(f"seed {seed}, case {args.cases[i]}: {result}", file=sys.stderr, flush=True)
    target = spec.load(job, [o for o in args.overrides if not o.startswith("data.path=")]).train
    base = statistics.median([r[1] for r in results[0] if r[1] is not None] or [float("nan")])
    print(f"{args.job}, target {target.target_metric} >= {target.target_value}, seeds {args.seeds}, "
          f"common settings: {' '.join(args.overrides) or 'none'}; medians (ranges)\n")
    print(f"| case | samples/s | seconds to target | epoch | samples to target | final {target.target_metric} | "
          "speedup to target | per seed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for i, case in enumerate(args.cases):
        rs = results[i]
        times = [r[1] for r in rs if r[1] is not None]
        speedup = f"{base / statistics.median(times):.2f}" if times and len(times) == len(rs) else "-"
        paired = [first[1] / r[1] for first, r in zip(results[0], rs) if first[1] is not None and r[1] is not None]
        print(f"| {case} | {spread([r[0] for r in rs])} | {spread([r[1] for r in rs])} | "
              f"{spread([r[2] for r in rs])} | {spread([r[3] for r in rs])} | {spread([r[4] for r in rs])} | "
              f"{speedup} | {spread(paired)} |")


if __name__ == "__main__":
    main()
