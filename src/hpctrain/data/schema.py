"""The hpctrain dataset file: one HDF5 file per dataset, schema version 1.

Datasets
    images              (N, H, W) or (N, H, W, C), uint8 or uint16; one sample per chunk, uncompressed
                        unless packed with --compression gzip|lzf
    masks               (N, H, W) uint8 class ids, one sample per chunk       kind "segmentation"
    labels              (N,) uint8 class ids                                  kind "classification"
    test_images         (M, H', W'[, C]) like images, without targets        optional (the ISBI test volume)
    splits/<name>/train, splits/<name>/val
                        sorted int64 indices into images; train and val are disjoint, val may be empty

Attributes of the root
    schema_version      1
    hpctrain_version    the version that wrote the file
    kind                "segmentation" | "classification"
    class_names         JSON list; class id i is class_names[i]
    label_values        JSON list; label_values[i] is the raw value in the source that became class id i
    sources             JSON list of {"name", "sha256", "role"}: the input files (a folder of files is one
                        entry whose sha256 is taken over the sorted "<file sha256>  <file name>" lines)
    class_counts        JSON list; pixels (segmentation) or samples (classification) of each class
    content_sha256      see below
    created             ISO 8601 UTC time of packing

Every array above also carries the attribute `sha256`: the hex SHA-256 of its bytes in C order,
little-endian. `content_sha256` is the SHA-256 of the text lines "<path> <dtype> <shape> <sha256>\\n",
e.g. "images uint8 30x512x512 a05d...\\n", for the arrays in this fixed order: images, masks, labels,
test_images (those present), then splits/<name>/train and splits/<name>/val for the split names sorted.
"""
import contextlib
import datetime
import hashlib
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from hpctrain import __version__
from hpctrain.atomic import atomic_output
from hpctrain.errors import UserError

SCHEMA_VERSION = 1
KINDS = ("segmentation", "classification")
DATA_ARRAYS = ("images", "masks", "labels", "test_images")
TARGETS = {"segmentation": "masks", "classification": "labels"}
COMPRESSIONS = ("gzip", "lzf")
_BLOCK_BYTES = 64 << 20  # read this much at a time when hashing


# ---------------------------------------------------------------- reading

class Dataset:
    """An open, validated dataset file (read-only); use as a context manager or call close()."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such file")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as e:
            raise UserError(f"{self.path}: not a readable HDF5 file ({first_line(e)})") from None
        try:
            self._validate()
        except BaseException:
            self.file.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.file.close()

    @property
    def images(self):
        return self.file["images"]

    @property
    def targets(self):
        """`masks` (segmentation) or `labels` (classification)."""
        return self.file[TARGETS[self.kind]]

    @property
    def test_images(self):
        return self.file.get("test_images")

    @property
    def split_names(self):
        return sorted(self.file["splits"])

    def split(self, name, subset="train"):
        """The sorted sample indices of splits/<name>/<subset>."""
        if name not in self.file["splits"]:
            raise UserError(f"{self.path}: unknown split {name!r} (known: {', '.join(self.split_names)})")
        if subset not in ("train", "val"):
            raise UserError(f"unknown subset {subset!r} (known: train, val)")
        return self.file["splits"][name][subset][()]

    def attr_json(self, name):
        return json.loads(self.file.attrs[name])

    def fail(self, message):
        raise UserError(f"{self.path}: {message}")

    def _validate(self):
        f, attrs = self.file, self.file.attrs
        version = attrs.get("schema_version")
        if version is None:
            self.fail("not an hpctrain dataset (no schema_version attribute)")
        if version != SCHEMA_VERSION:
            self.fail(f"schema_version {version}, this hpctrain reads version {SCHEMA_VERSION}")
        for name in ("kind", "class_names", "label_values", "sources", "class_counts", "content_sha256"):
            if name not in attrs:
                self.fail(f"attribute {name} is missing")
        self.kind = attrs["kind"]
        if self.kind not in KINDS:
            self.fail(f"unknown kind {self.kind!r} (known: {', '.join(KINDS)})")
        try:
            self.class_names = self.attr_json("class_names")
            self.label_values = self.attr_json("label_values")
            self.sources = self.attr_json("sources")
        except (json.JSONDecodeError, TypeError) as e:
            self.fail(f"an attribute is not valid JSON ({e})")
        if len(self.class_names) < 2 or len(self.label_values) != len(self.class_names):
            self.fail("class_names needs two or more entries and one label_values entry each")

        target_name = TARGETS[self.kind]
        for name in ("images", target_name, "splits"):
            if name not in f:
                self.fail(f"{name} is missing")
        images, targets = f["images"], f[target_name]
        if images.ndim not in (3, 4) or images.dtype not in (np.uint8, np.uint16):
            self.fail(f"images must be N x H x W [x C] uint8 or uint16, not {_describe(images)}")
        expected = images.shape[:3] if self.kind == "segmentation" else images.shape[:1]
        if targets.shape != expected or targets.dtype != np.uint8:
            self.fail(f"{target_name} must be {shape_text(expected)} uint8 to match images, "
                       f"not {_describe(targets)}")
        test = f.get("test_images")
        if test is not None and (test.ndim != images.ndim or test.dtype != images.dtype
                                 or test.shape[3:] != images.shape[3:]):
            self.fail(f"test_images ({_describe(test)}) do not match images ({_describe(images)})")
        if not self.split_names:
            self.fail("no splits")
        for name in self.split_names:
            self._validate_split(name, len(images))

    def _validate_split(self, name, count):
        group = self.file["splits"][name]
        subsets = {}
        for subset in ("train", "val"):
            array = group.get(subset)
            if not isinstance(array, h5py.Dataset) or array.ndim != 1 or array.dtype != np.int64:
                self.fail(f"splits/{name}/{subset} must be a 1-D int64 array")
            subsets[subset] = indices = array[()]
            if len(indices) and (indices.min() < 0 or indices.max() >= count):
                self.fail(f"splits/{name}/{subset} has indices outside 0..{count - 1}")
            if np.any(np.diff(indices) <= 0):
                self.fail(f"splits/{name}/{subset} is not sorted and unique")
        if len(np.intersect1d(subsets["train"], subsets["val"])):
            self.fail(f"splits/{name}: train and val overlap")


def open_dataset(path):
    """Opens and validates a dataset file; raises UserError naming the file and the problem."""
    return Dataset(path)


# ---------------------------------------------------------------- writing

class Writer:
    """Fills the arrays of a new file sample by sample (or block by block), hashing as it goes. What
    `meta` only learns from the data (e.g. label_values) may be set before the block of create() ends."""

    def __init__(self, file, compression, *, kind, class_names, label_values, sources, splits, target=None):
        self.file, self.target = file, target or file.filename
        self.compression = compression
        self.meta = dict(kind=kind, class_names=class_names, label_values=label_values, sources=sources)
        self.splits = splits
        self.class_counts = np.zeros(len(class_names), np.int64)
        self._next = {}
        self._hashes = {}
        self._arrays = {}

    def create(self, name, count, sample_shape, dtype):
        if name not in DATA_ARRAYS:
            raise ValueError(f"not a data array: {name}")
        shape = (count, *sample_shape)
        if self.compression is None:
            _check_space(self.file.filename, self.target, count * int(np.prod(sample_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        chunks = (1, *sample_shape) if sample_shape and count else None
        # One Dataset object per array: a signal (Ctrl-C, SIGTERM) that lands in the deallocation of a
        # short-lived h5py object is swallowed there, so writing makes none per sample.
        self._arrays[name] = self.file.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks,
                                                      compression=self.compression if chunks else None)
        self._next[name] = 0
        self._hashes[name] = hashlib.sha256()

    def append(self, name, sample):
        """Writes the next sample of `name`."""
        self._put(name, np.asarray(sample)[None])

    def write(self, name, array):
        """Creates `name` and writes every sample of `array`, in blocks."""
        self.create(name, len(array), array.shape[1:], array.dtype)
        step = max(1, _BLOCK_BYTES // max(1, array[:1].nbytes))
        for start in range(0, len(array), step):
            self._put(name, array[start:start + step])

    def _put(self, name, block):
        array, start = self._arrays[name], self._next[name]
        if block.shape[1:] != array.shape[1:] or block.dtype != array.dtype:
            raise ValueError(f"{name}[{start}]: {block.dtype} {block.shape[1:]}, "
                             f"expected {array.dtype} {array.shape[1:]}")
        array[start:start + len(block)] = block
        self._hashes[name].update(_little_endian(block))
        if name in TARGETS.values():
            self.class_counts += np.bincount(block.ravel(), minlength=len(self.class_counts))
        self._next[name] = start + len(block)

    def finish(self):
        for name, i in self._next.items():
            if i != len(self.file[name]):
                raise ValueError(f"{name}: {i} of {len(self.file[name])} samples written")
            self.file[name].attrs["sha256"] = self._hashes[name].hexdigest()
        for name, (train, val) in self.splits.items():
            for subset, indices in (("train", train), ("val", val)):
                indices = np.asarray(indices, np.int64)
                array = self.file.create_dataset(f"splits/{name}/{subset}", data=indices)
                array.attrs["sha256"] = _sha256(indices)
        self.file.attrs.update({
            "schema_version": SCHEMA_VERSION,
            "hpctrain_version": __version__,
            **{k: v if isinstance(v, str) else json.dumps(v) for k, v in self.meta.items()},
            "class_counts": json.dumps(self.class_counts.tolist()),
            "content_sha256": content_sha256(self.file, lambda array: array.attrs["sha256"]),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        })


def _check_space(path, target, nbytes):
    """Refuses an array the disk cannot hold before writing it: HDF5 fails badly (it can crash on close)
    when a write meets a full disk."""
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    if nbytes + (1 << 20) > free:
        raise UserError(f"not enough disk space for {target}: {nbytes / 2**20:.1f} MiB more needed, "
                        f"{free / 2**20:.1f} MiB free")


@contextlib.contextmanager
def create(out, *, kind, class_names, label_values, sources, splits, force=False, compression=None):
    """Yields a Writer for a new file; the file appears at `out`, complete, only if the block succeeds.

    splits: {name: (train indices, val indices)}; sources: [{"name", "sha256", "role"}].
    """
    if kind not in KINDS:
        raise ValueError(kind)
    if compression not in (None, *COMPRESSIONS):
        raise UserError(f"unknown compression {compression!r} (known: {', '.join(COMPRESSIONS)})")
    with atomic_output(out, force) as tmp:
        with h5py.File(tmp, "w") as f:
            writer = Writer(f, compression, kind=kind, class_names=class_names, label_values=label_values,
                            sources=sources, splits=splits, target=out)
            yield writer
            writer.finish()


# ---------------------------------------------------------------- splits and provenance

def holdout_splits(count, val_fraction=0.2, seed=0):
    """`holdout`: a fixed seeded permutation, the first val_fraction of it for validation; `all`."""
    order = np.random.default_rng(seed).permutation(count)
    n_val = int(round(count * val_fraction))
    return {"holdout": (np.sort(order[n_val:]), np.sort(order[:n_val])), **all_split(count)}


def fold_splits(count, folds=5):
    """`fold0`..: each validates on one block of consecutive samples and trains on the rest; `all`."""
    blocks = np.array_split(np.arange(count), folds)
    splits = {f"fold{k}": (np.setdiff1d(np.arange(count), val), val) for k, val in enumerate(blocks)}
    return {**splits, **all_split(count)}


def all_split(count):
    return {"all": (np.arange(count), np.arange(0))}


def file_source(path, role):
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"name": Path(path).name, "sha256": digest, "role": role}


def files_source(name, paths, role):
    """One source entry for many files (a folder or glob)."""
    lines = "".join(f"{file_source(p, role)['sha256']}  {Path(p).name}\n" for p in paths)
    return {"name": name, "sha256": hashlib.sha256(lines.encode()).hexdigest(), "role": role, "files": len(paths)}


# ---------------------------------------------------------------- labels

def present_values(array):
    """The set of values in an unsigned integer array."""
    return set(np.flatnonzero(np.bincount(array.ravel())).tolist())


def binary_values(values, dtype, where):
    """[raw value of class 0, raw value of class 1] for two-valued labels: 0/1 or 0/max of the dtype."""
    for pair in ([0, 1], [0, int(np.iinfo(dtype).max)]):
        if set(values) <= set(pair):
            return pair
    shown = ", ".join(map(str, sorted(values)[:6])) + (", ..." if len(values) > 6 else "")
    raise UserError(f"{where}: labels must be two-valued, 0/{np.iinfo(dtype).max} or 0/1, found {shown}")


# ---------------------------------------------------------------- checking

def content_sha256(file, array_sha256):
    """The file's content hash, from `array_sha256(h5py array)` of each array in the fixed order."""
    lines = []
    for path in array_paths(file):
        array = file[path]
        lines.append(f"{path} {array.dtype.name} {shape_text(array.shape)} {array_sha256(array)}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def array_paths(file):
    paths = [name for name in DATA_ARRAYS if name in file]
    for name in sorted(file.get("splits", {})):
        paths += [f"splits/{name}/train", f"splits/{name}/val"]
    return paths


def verify(path):
    """Re-checks the schema and every stored hash by reading all data; returns a one-line "OK" report."""
    with open_dataset(path) as ds:
        counts = np.zeros(len(ds.class_names), np.int64)

        def recompute(array):
            digest = hashlib.sha256()
            for block in _blocks(ds, array):
                digest.update(_little_endian(block))
                if array.name.lstrip("/") == TARGETS[ds.kind]:
                    counts[:] += np.bincount(block.ravel(), minlength=len(counts))[:len(counts)]
            if digest.hexdigest() != array.attrs.get("sha256"):
                ds.fail(f"{array.name.lstrip('/')} does not match its sha256: the file is corrupted")
            return digest.hexdigest()

        if content_sha256(ds.file, recompute) != ds.file.attrs["content_sha256"]:
            ds.fail("content_sha256 does not match the stored arrays")
        if counts.tolist() != ds.attr_json("class_counts"):
            ds.fail("class_counts do not match the stored targets")
        return f"OK {summary(ds)}"


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
                lines.append(f"{name}: {_describe(array)}, chunks {chunks}, compression {array.compression or 'none'}")
        counts = np.array(ds.attr_json("class_counts"), np.float64)
        unit = "pixels" if ds.kind == "segmentation" else "samples"
        lines.append(f"classes ({unit}):")
        for i, (name, raw, count) in enumerate(zip(ds.class_names, ds.label_values, counts)):
            lines.append(f"  {i} {name} (raw value {raw}): {100 * count / max(counts.sum(), 1):.1f} %")
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


# ---------------------------------------------------------------- helpers

def _blocks(ds, array):
    if array.ndim == 0 or len(array) == 0:
        return
    sample_bytes = max(1, array.dtype.itemsize * int(np.prod(array.shape[1:])))
    step = max(1, _BLOCK_BYTES // sample_bytes)
    for start in range(0, len(array), step):
        try:
            yield array[start:start + step]
        except OSError as e:
            ds.fail(f"cannot read {array.name.lstrip('/')}[{start}:{start + step}]: {first_line(e)}")


def _little_endian(array):
    array = np.ascontiguousarray(array)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).data


def _sha256(array):
    return hashlib.sha256(_little_endian(array)).hexdigest()


def shape_text(shape):
    return "x".join(map(str, shape))


def _describe(array):
    return f"{shape_text(array.shape)} {array.dtype}"


def first_line(error):
    return str(error).splitlines()[0] if str(error) else type(error).__name__
