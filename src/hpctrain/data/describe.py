"""What a dataset file holds, for people: `hpctrain inspect` (describe) and the one-line summary."""
import numpy as np

from hpctrain.data.dataset import open_dataset
from hpctrain.data.schema import DATA_ARRAYS, array_text, shape_text

RARE = 0.2  # a class under this fraction of an even share (1 / classes) is rare: cross-entropy may ignore it


def rare_classes(class_names, class_counts):
    """[(name, share)] of the classes under RARE / classes of the pixels (or samples): 10 % of two classes."""
    counts = np.asarray(class_counts, np.float64)
    shares = counts / max(counts.sum(), 1)
    return [(name, float(share)) for name, share in zip(class_names, shares) if share < RARE / len(counts)]


def summary(ds):
    """One line about an open Dataset: kind, samples, splits, content hash."""
    return (f"{ds.path}: {ds.kind}, {len(ds.images)} samples of {shape_text(ds.images.shape[1:])} {ds.images.dtype}, "
            f"splits {', '.join(ds.split_names)}, content_sha256 {ds.file.attrs['content_sha256']}")


def describe(path):
    """A human-readable summary: arrays, classes and their balance, splits, provenance."""
    with open_dataset(path) as ds:
        attrs = ds.file.attrs
        lines = [f"{ds.path}  ({ds.path.stat().st_size / 1e6:.1f} MB, schema {attrs['schema_version']}, "
                 f"written by hpctrain {attrs.get('hpctrain_version', '?')} at {attrs.get('created', '?')})",
                 f"kind: {ds.kind}"]
        for name in DATA_ARRAYS:
            if name in ds.file:
                array = ds.file[name]
                chunks = shape_text(array.chunks) if array.chunks else "none"
                lines.append(f"{name}: {array_text(array)}, chunks {chunks}, compression {array.compression or 'none'}")
        counts = np.array(ds.attr_json("class_counts"), np.float64)
        unit = "pixels" if ds.kind == "segmentation" else "samples"
        lines.append(f"classes ({unit}):")
        for i, (name, raw, count) in enumerate(zip(ds.class_names, ds.label_values, counts)):
            raw = "" if str(raw) == name else f" (raw value {raw})"
            lines.append(f"  {i} {name}{raw}: {100 * count / max(counts.sum(), 1):.1f} %")
        for name, share in rare_classes(ds.class_names, counts):
            lines.append(f"  rare: {name} is {100 * share:.1f} % of the {unit} (under "
                         f"{100 * RARE / len(counts):.0f} %); see train.loss")
        for role, counts_of in ds.attr_json("conversions").items() if "conversions" in attrs else ():
            lines.append(f"{role}, by original mode:")
            lines += [f"  {files} {'file' if files == 1 else 'files'}: {what}" for what, files in counts_of.items()]
        if "mask_threshold" in attrs:
            t = ds.attr_json("mask_threshold")
            lines.append(f"masks thresholded at {t['threshold']}: {t['pixels_between']} of {t['pixels']} pixels "
                         f"({100 * t['pixels_between'] / max(t['pixels'], 1):.2f} %) were neither 0 nor the maximum")
        lines.append("splits:")
        for name in ds.split_names:
            lines.append(f"  {name}: train {len(ds.file['splits'][name]['train'])}, "
                         f"val {len(ds.file['splits'][name]['val'])}")
        lines.append("sources:")
        for source in ds.sources:
            extra = f", {source['files']} files" if "files" in source else ""
            lines.append(f"  {source['role']}: {source['name']} (sha256 {source.get('sha256')}{extra})")
        lines.append(f"content_sha256: {attrs['content_sha256']}")
        return "\n".join(lines)
