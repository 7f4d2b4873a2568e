"""Scaling plots: throughput against workers with the ideal line (and the predicted curve), parallel
efficiency, where a step's time goes, the allreduce's bus bandwidth, the target metric against training
time, and the time to target, measured and predicted."""
import itertools

from hpctrain.atomic import atomic_output


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def plot_group(group, throughput_png, efficiency_png):
    plt = _pyplot()
    rows = [r for r in group["rows"] if r["samples_per_s"]]
    n = [r["workers"] for r in rows]
    title = f"{group['job']} ({group['backend']}, {group['mode']} scaling)"

    fig, ax = plt.subplots(figsize=(5, 3.8))
    tp = [r["samples_per_s"] for r in rows]
    ax.errorbar(n, tp, yerr=[r["ci95"] or 0 for r in rows], fmt="o-", capsize=3, label="measured")
    predicted = (group.get("prediction") or {}).get("rows", [])
    ticks = sorted(set(n) | {r["workers"] for r in predicted})
    if predicted:
        ax.plot([r["workers"] for r in predicted], [r["samples_per_s"] for r in predicted], "s:", label="predicted")
        ax.set(xscale="log", yscale="log")
    if rows:
        ax.plot(ticks, [tp[0] * k / n[0] for k in ticks], "--", color="gray", label="ideal")
    ax.set(xlabel="workers", ylabel="samples/s", title=title)
    ax.set_xticks(ticks, [str(k) for k in ticks])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, throughput_png)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.8))
    ax.plot(n, [100 * (r["efficiency"] or 0) for r in rows], "o-")
    ax.axhline(100, ls="--", color="gray")
    ax.set(xlabel="workers", ylabel="parallel efficiency (%)", title=title, xticks=n, ylim=(0, 110))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, efficiency_png)
    plt.close(fig)


def plot_breakdown(group, png):
    """A stacked bar per worker count: input wait, compute, exchange and other, in ms per step, with the
    run's own step time marked."""
    plt = _pyplot()
    rows = [r for r in group["rows"] if r["breakdown"]]
    fig, ax = plt.subplots(figsize=(5, 3.8))
    labels = [str(r["workers"]) for r in rows]
    bottom = [0.0] * len(rows)
    for part in ("input", "compute", "exchange", "other"):
        height = [max(0.0, 1e3 * r["breakdown"]["seconds"][part]) for r in rows]  # a negative part: overlap
        ax.bar(labels, height, bottom=bottom, label=part)
        bottom = [b + h for b, h in zip(bottom, height)]
    runs = [(label, 1e3 * r["breakdown"]["run_step"]) for label, r in zip(labels, rows) if r["breakdown"]["run_step"]]
    if runs:
        ax.plot(*zip(*runs), "k_", markersize=30, label="the run's step")
    ax.set(xlabel="workers", ylabel="ms per step", title=f"{group['job']} ({group['backend']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, png)
    plt.close(fig)


def plot_allreduce(curve, png):
    """Bus bandwidth against message size (log-log) of a `bench allreduce` result (predict.Bench.curve): the
    backend's collective, the plain MPI reference where it ran, the job's gradient set as a point."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.8))
    sizes = [r["bytes"] for r in curve["rows"]]
    ax.plot(sizes, [r["busbw_GBps"] for r in curve["rows"]], "o-", markersize=3, label=curve["collective"])
    if curve["reference"]:
        ax.plot(sizes, [r["reference_busbw_GBps"] for r in curve["rows"]], "s--", markersize=3,
                label=curve["reference"])
    if curve["gradient_set"]:
        g = curve["gradient_set"]
        ax.plot([g["bytes"]], [g["busbw_GBps"]], "k*", markersize=10, label="the job's gradient set")
    ax.set(xscale="log", yscale="log", xlabel="message bytes", ylabel="bus bandwidth (GB/s)",
           title=f"allreduce, {curve['workers']} workers")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, png)
    plt.close(fig)


def plot_target_curves(group, histories, png):
    """The target metric against wall-clock training time, every run of every worker count on one set of
    axes (a colour per count), with the target as a line. histories: {run folder: metrics.jsonl rows}."""
    plt = _pyplot()
    metric = group["target"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, row in enumerate(group["rows"]):
        for j, repeat in enumerate(row["repeats"]):
            rows = [r for r in histories[repeat["run"]] if metric in r]
            seconds = list(itertools.accumulate(repeat["epoch_times"]))[:len(rows)]
            ax.plot(seconds, [r[metric] for r in rows[:len(seconds)]], color=f"C{i}", alpha=0.8 if j else 1,
                    lw=1, label=f"{row['workers']} worker{'s' * (row['workers'] > 1)}" if not j else None)
    ax.axhline(group["target_value"], ls="--", color="gray", label="target")
    ax.set(xlabel="training time (s)", ylabel=metric, title=f"{group['job']}: {metric} against time")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, png)
    plt.close(fig)


def plot_time_to_target(group, png):
    """Time to the target against workers: each measured count (mean ± std over its runs) and the prediction
    (predict.add_time_to_target) as a dashed line, labelled as one."""
    plt = _pyplot()
    from matplotlib import ticker

    fig, ax = plt.subplots(figsize=(5, 3.8))
    measured = [r for r in group["rows"] if r["time_to_target"] is not None]
    ax.errorbar([r["workers"] for r in measured], [r["time_to_target"] for r in measured],
                yerr=[r["time_to_target_std"] or 0 for r in measured], fmt="o", capsize=3,
                label="measured (validation included)")
    predicted = [r for r in group["prediction"]["rows"] if r["time_to_target_s"]]
    ax.plot([r["workers"] for r in predicted], [r["time_to_target_s"] for r in predicted], "s--",
            label="predicted (training steps only)")
    ticks = sorted({r["workers"] for r in measured + predicted})
    ax.set(xscale="log", yscale="log", xlabel="workers", ylabel="time to target (s)",
           title=f"{group['job']}: {group['target']} >= {group['target_value']}")
    ax.set_xticks(ticks, [str(k) for k in ticks])
    ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, png)
    plt.close(fig)
