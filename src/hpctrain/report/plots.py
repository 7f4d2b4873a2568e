"""Scaling plots: throughput against workers with the ideal line, and parallel efficiency."""
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
    if rows:
        ax.plot(n, [tp[0] * k / n[0] for k in n], "--", color="gray", label="ideal")
    ax.set(xlabel="workers", ylabel="samples/s", title=title, xticks=n)
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
