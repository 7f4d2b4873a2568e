"""`hpctrain report RUN_DIR... -o OUT`: how much faster is N workers than 1, and is it worth it.

Reads each run's timing.json (hpctrain.train.timing.Timing) and metrics.jsonl and writes OUT/report.md,
report.csv, report.json and plots. Runs are compared only when they differ in nothing but the worker
count and the repeat (fold and seed, `hpctrain cv`); otherwise they fall into separate groups, each
reported on its own, never mixed. The repeats of a worker count give its mean and standard deviation.

- weak scaling (per-worker batch fixed):  efficiency = throughput(N) / (N/N0 x throughput(N0))
- strong scaling (global batch fixed):    the same ratio; it equals time(N0) / (N/N0 x time(N)) there
N0 is the smallest worker count of the group (1 when a 1-worker run is given).
"""
import csv
import io
import json
import re
import statistics
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
    """Runs grouped by everything but the worker count and the repeat (split, seed), in first-seen order."""
    groups = {}
    for run in runs:
        groups.setdefault(run["timing"].comparison_key(), []).append(run)
    return list(groups.values())


def _mode(runs):
    per_worker = {r["timing"].per_worker_batch for r in runs}
    global_ = {r["timing"].global_batch for r in runs}
    if runs[0]["timing"].scaling == "strong":  # distribute.scaling, one in a group (Timing.COMPARED)
        return "strong"
    if len(per_worker) == 1:
        return "weak"
    if len(global_) == 1:
        return "strong"
    raise UserError("runs of " + runs[0]["timing"].job + " change both the per-worker and the global batch "
                    f"({sorted(per_worker)} / {sorted(global_)}); compare weak or strong scaling, not both")


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _repeat(r):
    t = r["timing"]
    reached = (t.target or {}).get("reached")
    steps = reached["epoch"] * t.steps_per_epoch if reached else None
    epochs = t.epoch_times or [None]
    return {"split": t.split, "seed": t.seed, "run": r["run"],
            "samples_per_s": (t.throughput or {}).get("samples_per_s"),
            "epoch_time": statistics.fmean(epochs[1:]) if len(epochs) > 1 else epochs[0],  # the first: compilation
            "train_time": t.train_time, "epoch_times": t.epoch_times, "time_to_target": t.target_seconds,
            "steps_to_target": steps, "breakdown": t.breakdown,
            "final": {k: v for k, v in r["final"].items() if k != "epoch"}}


def _breakdown(measured):
    """The median over repeats of each part of the step (seconds) and of the probe's and the run's step."""
    if not measured:
        return None
    parts = {k: statistics.median(b["seconds"][k] for b in measured) for k in measured[0]["seconds"]}
    steps = {k: statistics.median(b[k] for b in measured if b[k] is not None) if any(b[k] for b in measured)
             else None for k in ("step", "run_step")}
    return {"seconds": parts, **steps}


def _ratio(a, b):
    return a / b if a and b else None


def table(runs):
    """One row per worker count of a group, sorted: the mean (and std) over its repeats (folds, seeds),
    with speedup and efficiency of throughput and of time to target against the smallest count."""
    by_count = {}
    for r in sorted(runs, key=lambda r: r["timing"].world_size):
        by_count.setdefault(r["timing"].world_size, []).append(r)
    for n, repeats in by_count.items():
        keys = [(r["timing"].split, r["timing"].seed) for r in repeats]
        if len(set(keys)) != len(keys):
            raise UserError(f"two runs of {repeats[0]['timing'].job} have the same worker count {n}, split and seed: "
                            "give one run per worker count (or per fold and seed)")
    mode = _mode(runs)
    rows = []
    for n, repeats in by_count.items():
        t = repeats[0]["timing"]
        each = [_repeat(r) for r in repeats]
        tp, tp_std = _mean_std([e["samples_per_s"] for e in each])
        single_ci = (t.throughput or {}).get("samples_per_s_ci95") if len(each) == 1 else None
        reached = [e["time_to_target"] for e in each if e["time_to_target"] is not None]
        to_target, to_target_std = _mean_std(reached) if len(reached) == len(each) else (None, None)
        steps, steps_std = _mean_std([e["steps_to_target"] for e in each]) if to_target is not None else (None, None)
        keys = sorted({k for e in each for k in e["final"]})
        finals = {k: _mean_std([e["final"].get(k) for e in each]) for k in keys}
        rows.append({
            "workers": n, "nodes": t.nodes, "global_batch": t.global_batch, "runs": len(each),
            "samples_per_s": tp, "ci95": single_ci if single_ci is not None else
            (1.96 * tp_std / len(each) ** 0.5 if tp_std is not None else None),
            "epoch_time": _mean_std([e["epoch_time"] for e in each])[0],
            "train_time": _mean_std([e["train_time"] for e in each])[0],
            "time_to_target": to_target, "time_to_target_std": to_target_std, "targets_reached": len(reached),
            "steps_to_target": steps, "steps_to_target_std": steps_std,
            "samples_to_target": steps * t.global_batch if steps is not None else None,
            "final": {k: m for k, (m, _) in finals.items()}, "final_std": {k: sd for k, (_, sd) in finals.items()},
            "repeats": each, "run": each[0]["run"] if len(each) == 1 else None,
            "breakdown": _breakdown([e["breakdown"] for e in each if e["breakdown"]]),
        })
    base = rows[0]
    for row in rows:
        row["speedup"] = _ratio(row["samples_per_s"], base["samples_per_s"])
        row["efficiency"] = _ratio(row["speedup"], row["workers"] / base["workers"])
        row["target_speedup"] = _ratio(base["time_to_target"], row["time_to_target"])
    return mode, rows


def build(run_dirs, predict=None):
    """The report of `run_dirs`; with `predict` (a report.predict.Request) each group's predicted rows."""
    runs = [load_run(d) for d in run_dirs]
    if not runs:
        raise UserError("no runs given")
    report = []
    for runs_of_group in group(runs):
        mode, rows = table(runs_of_group)
        t = runs_of_group[0]["timing"]
        report.append({"job": t.job, "backend": t.backend, "model": t.model, "mode": mode,
                       "settings": {k: getattr(t, k) for k in Timing.COMPARED},
                       "per_worker_batch": sorted({r["timing"].per_worker_batch for r in runs_of_group}),
                       "target": (t.target or {}).get("metric"), "target_value": (t.target or {}).get("value"),
                       "environment": t.environment or {}, "rows": rows})
        if predict:
            from hpctrain.report import predict as predict_mod

            report[-1]["prediction"] = predict_mod.for_group([r["timing"] for r in runs_of_group], rows, predict)
    if predict and not any(g["prediction"] for g in report):
        raise UserError("--predict needs a finished 1-worker run among the runs (its step time)")
    for g in report:  # groups of one job and backend are told apart by the settings they differ in
        peers = [h["settings"] for h in report if (h["job"], h["backend"]) == (g["job"], g["backend"])]
        differ = [k for k in Timing.COMPARED if len({json.dumps(h[k]) for h in peers}) > 1]
        g["variant"] = ", ".join(f"{k} {g['settings'][k]}" for k in differ)
        if g.get("prediction") and g["target"]:
            from hpctrain.report import predict as predict_mod

            predict_mod.add_time_to_target(g["prediction"], samples_to_target(report, g))
    return report


def samples_to_target(report, g):
    """{global batch: mean samples to the target} over the rows of every group that computes what `g` does
    (Timing.EXECUTION aside): its own N-worker runs and 1-worker runs accumulating N micro-batches alike."""
    def what(h):
        return {k: v for k, v in h["settings"].items() if k not in Timing.EXECUTION}

    runs = {}
    for h in report:
        if what(h) == what(g):
            for r in h["rows"]:
                if r["samples_to_target"] is not None:
                    runs.setdefault(r["global_batch"], []).extend([r["samples_to_target"]] * r["runs"])
    return {batch: statistics.fmean(samples) for batch, samples in runs.items()}


def _count(n, thing):
    return f"{n} {thing}" + ("" if n == 1 else "s")


def _fmt(v, digits=2, std=None):
    if v is None:
        return "-"
    text = f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    return f"{text} ± {std:.{digits}f}" if std is not None else text


def markdown(report):
    lines = ["# Scaling report", ""]
    for g in report:
        env = g["environment"]
        repeated = any(r["runs"] > 1 for r in g["rows"])
        lines += [f"## {g['job']}: {g['model']}, backend {g['backend']}, {g['mode']} scaling"
                  + (f" ({g['variant']})" if g["variant"] else ""), "",
                  f"Per-worker batch {', '.join(map(str, g['per_worker_batch']))}; "
                  f"TensorFlow {env.get('tensorflow', '?')}"
                  + "".join(f", {name} {version}" for name, version in env.get("backend_versions", {}).items())
                  + f"; host {env.get('host', '?')}, {_count(env.get('gpus', 0), 'GPU')}, "
                  + _count(env.get('cpus_available', '?'), 'CPU')
                  + (f"; target {g['target']} >= {g['target_value']}" if g["target"] else "")
                  + ("; mean ± std over the runs (folds, seeds) of each worker count" if repeated else ""), "",
                  "| workers | nodes | runs | global batch | samples/s | ±95 % | speedup | efficiency | epoch s | "
                  "train s | to target s | steps to target | speedup to target |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in g["rows"]:
            to_target = _fmt(r["time_to_target"], 1, r["time_to_target_std"])
            if r["time_to_target"] is None and r["targets_reached"]:
                to_target = f"{r['targets_reached']} of {r['runs']} reached"
            lines.append("| " + " | ".join([
                str(r["workers"]), str(r["nodes"]), str(r["runs"]), str(r["global_batch"]),
                _fmt(r["samples_per_s"], 1), _fmt(r["ci95"], 1), _fmt(r["speedup"]), _fmt(r["efficiency"]),
                _fmt(r["epoch_time"], 1), _fmt(r["train_time"], 1), to_target,
                _fmt(r["steps_to_target"], 0, r["steps_to_target_std"]), _fmt(r["target_speedup"])]) + " |")
        finals = [r for r in g["rows"] if r["final"]]
        if finals:
            keys = sorted({k for r in finals for k in r["final"]})
            lines += ["", "Final metrics" + (" (mean ± std)" if repeated else "") + ":", "",
                      "| workers | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
            lines += [f"| {r['workers']} | " + " | ".join(_fmt(r["final"].get(k), 4, r["final_std"].get(k))
                                                         for k in keys) + " |" for r in finals]
        if repeated:
            lines += ["", "Each run:", "", "| workers | split | seed | samples/s | to target s | final " +
                      (g["target"] or "") + " | run |", "|---:|---|---:|---:|---:|---:|---|"]
            lines += [f"| {r['workers']} | {e['split']} | {_fmt(e['seed'])} | {_fmt(e['samples_per_s'], 1)} | "
                      f"{_fmt(e['time_to_target'], 1)} | {_fmt(e['final'].get(g['target']), 4)} | {e['run']} |"
                      for r in g["rows"] for e in r["repeats"]]
        measured = [r for r in g["rows"] if r["breakdown"]]
        lines += _breakdown_lines(measured)
        if g.get("prediction"):
            from hpctrain.report import predict as predict_mod

            lines += ["", predict_mod.markdown(g["prediction"])]
        elif "prediction" in g:
            lines += ["", "Not predicted: no finished 1-worker run of this backend and these settings."]
        lines += ["", " ".join(f"![{alt}]({_slug(g)}-{name}.png)" for name, alt in _plots(g).items()), ""]
    return "\n".join(lines)


def _plots(g):
    """The group's plots, those its runs have data for: file name suffix -> caption."""
    plots = {"throughput": "throughput", "efficiency": "efficiency"}
    if g["target"]:
        plots["target"] = f"{g['target']} against time"
    if any(r["breakdown"] for r in g["rows"]):
        plots["breakdown"] = "where the time goes"
    if (g.get("prediction") or {}).get("allreduce"):
        plots["allreduce"] = "allreduce bus bandwidth"
    if any(r.get("time_to_target_s") for r in (g.get("prediction") or {}).get("rows", [])):
        plots["time_to_target"] = "time to target, measured and predicted"
    return plots


def _breakdown_lines(rows):
    if not rows:
        return []
    lines = ["", "Where a step's time goes (ms; the median over the ranks and the repeats, measured after the last "
             "step: hpctrain.train.breakdown):", "",
             "| workers | input wait | compute | exchange | other | step (sum) | the run's step | sum vs run |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = r["breakdown"]
        against = f"{100 * (b['step'] / b['run_step'] - 1):+.1f} %" if b["run_step"] else "-"
        parts = " | ".join(f"{1e3 * b['seconds'][k]:.1f}" for k in ("input", "compute", "exchange", "other"))
        lines.append(f"| {r['workers']} | {parts} | {1e3 * b['step']:.1f} | "
                     f"{_fmt(b['run_step'] and 1e3 * b['run_step'], 1)} | {against} |")
    return lines


def _slug(g):
    return "-".join([g["job"], g["backend"], *re.findall(r"[\w.]+", g["variant"])])


def csv_text(report):
    buf = io.StringIO()
    fields = ["job", "backend", "mode", "workers", "nodes", "runs", "global_batch", "samples_per_s", "ci95", "speedup",
              "efficiency", "epoch_time", "train_time", "time_to_target", "time_to_target_std", "steps_to_target",
              "target_speedup", "variant", "run"]
    writer = csv.DictWriter(buf, fields, extrasaction="ignore")
    writer.writeheader()
    for g in report:
        for r in g["rows"]:
            writer.writerow({"job": g["job"], "backend": g["backend"], "mode": g["mode"], "variant": g["variant"], **r})
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


def write(run_dirs, out, allow_missing=False, predict=None):
    """Builds the report of `run_dirs` into folder `out`; returns the report.md path. With `allow_missing`
    (a report queued after a sweep) runs without timing.json are named in report.md instead of failing it."""
    from hpctrain.report.plots import (
        plot_allreduce,
        plot_breakdown,
        plot_group,
        plot_target_curves,
        plot_time_to_target,
    )

    missing = missing_runs(run_dirs) if allow_missing else []
    finished = [d for d in run_dirs if d not in missing]
    report = build(finished, predict) if finished or not missing else []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for g in report:
        plots = _plots(g)
        path = {name: out / f"{_slug(g)}-{name}.png" for name in plots}
        plot_group(g, path["throughput"], path["efficiency"])
        if "breakdown" in plots:
            plot_breakdown(g, path["breakdown"])
        if "allreduce" in plots:
            plot_allreduce(g["prediction"]["allreduce"], path["allreduce"])
        if "time_to_target" in plots:
            plot_time_to_target(g, path["time_to_target"])
        if "target" in plots:
            runs = [e["run"] for r in g["rows"] for e in r["repeats"]]
            plot_target_curves(g, {run: RunDir(run).history() for run in runs}, path["target"])
    write_text(out / "report.json", json.dumps(report, indent=2))
    write_text(out / "report.csv", csv_text(report))
    text = markdown(report)
    if missing:
        text += "\n## Runs without results\n\n" + "".join(
            f"- {d}: no timing.json (the run failed, was cancelled or never started; see its job log)\n"
            for d in missing)
    write_text(out / "report.md", text)
    return out / "report.md"
