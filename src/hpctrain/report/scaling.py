"""`hpctrain report RUN_DIR... -o OUT`: how much faster is N workers than 1, and is it worth it.

Reads each run's timing.json (hpctrain.train.timing.Timing) and metrics.jsonl and writes OUT/report.md,
report.csv, report.json and plots. Runs are compared only when they differ in nothing but the worker
count; otherwise they fall into separate groups, each reported on its own, never mixed.

- weak scaling (per-worker batch fixed):  efficiency = throughput(N) / (N/N0 x throughput(N0))
- strong scaling (global batch fixed):    the same ratio; it equals time(N0) / (N/N0 x time(N)) there
N0 is the smallest worker count of the group (1 when a 1-worker run is given).
"""
import csv
import io
import json
from pathlib import Path

from hpctrain.atomic import write_text
from hpctrain.errors import UserError
from hpctrain.rundir import RunDir
from hpctrain.train.timing import Timing


def load_run(run_dir):
    run = RunDir(run_dir)
    timing = Timing.read(run)
    if timing is None:
        raise UserError(f"{run.path} is not a finished run (no {run.timing.name})")
    if not timing.complete:
        raise UserError(f"{run.path} was stopped before its end (continue it with --resume)")
    rows = run.history()
    return {"run": str(run.path), "timing": timing, "final": rows[-1] if rows else {}}


def group(runs):
    """Runs grouped by everything but the worker count, in first-seen order."""
    groups = {}
    for run in runs:
        groups.setdefault(run["timing"].comparison_key(), []).append(run)
    return list(groups.values())


def _mode(runs):
    per_worker = {r["timing"].per_worker_batch for r in runs}
    global_ = {r["timing"].global_batch for r in runs}
    if len(per_worker) == 1:
        return "weak"
    if len(global_) == 1:
        return "strong"
    raise UserError("runs of " + runs[0]["timing"].job + " change both the per-worker and the global batch "
                    f"({sorted(per_worker)} / {sorted(global_)}); compare weak or strong scaling, not both")


def table(runs):
    """One row per run of a group, sorted by worker count, with speedup and efficiency."""
    runs = sorted(runs, key=lambda r: r["timing"].world_size)
    sizes = [r["timing"].world_size for r in runs]
    if len(set(sizes)) != len(sizes):
        raise UserError(f"two runs of {runs[0]['timing'].job} have the same worker count {sizes}: "
                        "give one run per worker count")
    mode = _mode(runs)
    base = runs[0]["timing"]
    base_tp = (base.throughput or {}).get("samples_per_s")
    rows = []
    for r in runs:
        t = r["timing"]
        tp = t.throughput or {}
        n = t.world_size
        speedup = tp.get("samples_per_s") / base_tp if base_tp and tp.get("samples_per_s") else None
        epochs = t.epoch_times or []
        rows.append({
            "workers": n, "nodes": t.nodes, "global_batch": t.global_batch,
            "samples_per_s": tp.get("samples_per_s"), "ci95": tp.get("samples_per_s_ci95"),
            "speedup": speedup,
            "efficiency": speedup / (n / base.world_size) if speedup else None,
            "epoch_time": sum(epochs[1:]) / len(epochs[1:]) if len(epochs) > 1 else (epochs[0] if epochs else None),
            "train_time": t.train_time, "time_to_target": t.target_seconds,
            "final": {k: v for k, v in r["final"].items() if k != "epoch"}, "run": r["run"],
        })
    return mode, rows


def build(run_dirs):
    runs = [load_run(d) for d in run_dirs]
    if not runs:
        raise UserError("no runs given")
    report = []
    for runs_of_group in group(runs):
        mode, rows = table(runs_of_group)
        t = runs_of_group[0]["timing"]
        report.append({"job": t.job, "backend": t.backend, "model": t.model, "mode": mode,
                       "per_worker_batch": sorted({r["timing"].per_worker_batch for r in runs_of_group}),
                       "target": (t.target or {}).get("metric"), "target_value": (t.target or {}).get("value"),
                       "environment": t.environment or {}, "rows": rows})
    return report


def _fmt(v, digits=2):
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown(report):
    lines = ["# Scaling report", ""]
    for g in report:
        env = g["environment"]
        lines += [f"## {g['job']}: {g['model']}, backend {g['backend']}, {g['mode']} scaling", "",
                  f"Per-worker batch {', '.join(map(str, g['per_worker_batch']))}; "
                  f"TensorFlow {env.get('tensorflow', '?')}"
                  + "".join(f", {name} {version}" for name, version in env.get("backend_versions", {}).items())
                  + f"; host {env.get('host', '?')}, {env.get('gpus', 0)} GPUs, {env.get('cpus_available', '?')} CPUs"
                  + (f"; target {g['target']} >= {g['target_value']}" if g["target"] else ""), "",
                  "| workers | nodes | global batch | samples/s | ±95 % | speedup | efficiency | epoch s | "
                  "train s | to target s |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in g["rows"]:
            lines.append("| " + " | ".join([str(r["workers"]), str(r["nodes"]), str(r["global_batch"]),
                                            _fmt(r["samples_per_s"], 1), _fmt(r["ci95"], 1), _fmt(r["speedup"]),
                                            _fmt(r["efficiency"]), _fmt(r["epoch_time"], 1),
                                            _fmt(r["train_time"], 1), _fmt(r["time_to_target"], 1)]) + " |")
        finals = [(r["workers"], r["final"]) for r in g["rows"] if r["final"]]
        if finals:
            keys = sorted({k for _, f in finals for k in f})
            lines += ["", "Final metrics:", "", "| workers | " + " | ".join(keys) + " |",
                      "|---:|" + "---:|" * len(keys)]
            lines += [f"| {n} | " + " | ".join(_fmt(f.get(k), 4) for k in keys) + " |" for n, f in finals]
        lines += ["", f"![throughput]({_slug(g)}-throughput.png) ![efficiency]({_slug(g)}-efficiency.png)", ""]
    return "\n".join(lines)


def _slug(g):
    return f"{g['job']}-{g['backend']}"


def csv_text(report):
    buf = io.StringIO()
    fields = ["job", "backend", "mode", "workers", "nodes", "global_batch", "samples_per_s", "ci95", "speedup",
              "efficiency", "epoch_time", "train_time", "time_to_target", "run"]
    writer = csv.DictWriter(buf, fields, extrasaction="ignore")
    writer.writeheader()
    for g in report:
        for r in g["rows"]:
            writer.writerow({"job": g["job"], "backend": g["backend"], "mode": g["mode"], **r})
    return buf.getvalue()


def missing_runs(run_dirs):
    """The run folders without a finished timing.json: failed, cancelled, stopped or never started."""
    def finished(d):
        try:
            timing = Timing.read(RunDir(d))
        except UserError:
            return False
        return timing is not None and timing.complete
    return [d for d in run_dirs if not finished(d)]


def write(run_dirs, out, allow_missing=False):
    """Builds the report of `run_dirs` into folder `out`; returns the report.md path. With `allow_missing`
    (a report queued after a sweep) runs without timing.json are named in report.md instead of failing it."""
    from hpctrain.report.plots import plot_group

    missing = missing_runs(run_dirs) if allow_missing else []
    finished = [d for d in run_dirs if d not in missing]
    report = build(finished) if finished or not missing else []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for g in report:
        plot_group(g, out / f"{_slug(g)}-throughput.png", out / f"{_slug(g)}-efficiency.png")
    write_text(out / "report.json", json.dumps(report, indent=2))
    write_text(out / "report.csv", csv_text(report))
    text = markdown(report)
    if missing:
        text += "\n## Runs without results\n\n" + "".join(
            f"- {d}: no timing.json (the run failed, was cancelled or never started; see its job log)\n"
            for d in missing)
    write_text(out / "report.md", text)
    return out / "report.md"
