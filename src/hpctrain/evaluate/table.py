"""A terminal table of a metrics dict (`hpctrain evaluate`)."""


def format_table(metrics):
    """A fixed-width text table of a metrics dict: per-class values (dict entries, with their `<key>_mean`
    in a mean row), then the other scalars, then the confusion matrix if there is one."""
    per_class = {k: v for k, v in metrics.items() if isinstance(v, dict)}
    means = {f"{k}_mean" for k in per_class}
    lines = []
    if per_class:
        names = list(next(iter(per_class.values())))
        width = max(len(n) for n in [*names, "class"]) + 2
        cols = [max(len(k) + 2, 10) for k in per_class]
        lines.append("class".ljust(width) + "".join(k.rjust(w) for k, w in zip(per_class, cols)))
        for name in names:
            lines.append(name.ljust(width) + "".join(_fmt(v.get(name)).rjust(w)
                                                     for v, w in zip(per_class.values(), cols)))
        if means & metrics.keys():
            lines.append("mean".ljust(width) + "".join(_fmt(metrics.get(f"{k}_mean", "")).rjust(w)
                                                       for k, w in zip(per_class, cols)))
        lines.append("")
    scalars = {k: v for k, v in metrics.items() if k not in means and isinstance(v, (int, float))}
    width = max((len(k) for k in scalars), default=0) + 2
    lines += [k.ljust(width) + _fmt(v) for k, v in scalars.items()]
    if "confusion_matrix" in metrics:
        cm = metrics["confusion_matrix"]
        names = metrics.get("class_names") or [str(c) for c in range(len(cm))]
        w = max(max(len(n) for n in names), max(len(str(x)) for row in cm for x in row)) + 2
        lines += ["", "confusion matrix (rows: true, columns: predicted)",
                  " " * w + "".join(n.rjust(w) for n in names)]
        lines += [n.ljust(w) + "".join(str(x).rjust(w) for x in row) for n, row in zip(names, cm)]
    return "\n".join(lines).strip("\n")


def _fmt(value):
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
