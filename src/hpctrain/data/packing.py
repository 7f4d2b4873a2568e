"""Writing a dataset file, for the packers: create() and its Writer, the standard splits, source
(provenance) entries and label helpers. The format is defined in `schema`."""
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
from hpctrain.data.schema import (
    BLOCK_BYTES,
    COMPRESSIONS,
    DATA_ARRAYS,
    KINDS,
    SCHEMA_VERSION,
    TARGETS,
    class_counts,
    content_sha256,
    little_endian,
    sha256,
)
from hpctrain.errors import UserError


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
        """Creates the data array `name` of `count` samples, one chunk each, to be filled by append()."""
        if name not in DATA_ARRAYS:
            raise ValueError(f"not a data array: {name}")
        shape = (count, *sample_shape)
        if self.compression is None:
            _check_space(self.file.filename, self.target,
                         count * int(np.prod(sample_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
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
        step = max(1, BLOCK_BYTES // max(1, array[:1].nbytes))
        for start in range(0, len(array), step):
            self._put(name, array[start:start + step])

    def _put(self, name, block):
        array, start = self._arrays[name], self._next[name]
        if block.shape[1:] != array.shape[1:] or block.dtype != array.dtype:
            raise ValueError(f"{name}[{start}]: {block.dtype} {block.shape[1:]}, "
                             f"expected {array.dtype} {array.shape[1:]}")
        array[start:start + len(block)] = block
        self._hashes[name].update(little_endian(block))
        if name in TARGETS.values():
            self.class_counts += class_counts(block, len(self.class_counts))
        self._next[name] = start + len(block)

    def finish(self):
        """Checks that every array is full, writes the splits, the hashes and the root attributes."""
        for name, i in self._next.items():
            if i != len(self.file[name]):
                raise ValueError(f"{name}: {i} of {len(self.file[name])} samples written")
            self.file[name].attrs["sha256"] = self._hashes[name].hexdigest()
        for name, (train, val) in self.splits.items():
            for subset, indices in (("train", train), ("val", val)):
                indices = np.asarray(indices, np.int64)
                array = self.file.create_dataset(f"splits/{name}/{subset}", data=indices)
                array.attrs["sha256"] = sha256(indices)
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


# ---------------------------------------------------------------- splits

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
    """`all`: every sample trains, none validates."""
    return {"all": (np.arange(count), np.arange(0))}


# ---------------------------------------------------------------- provenance

def file_source(path, role):
    """The source entry of one input file."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"name": Path(path).name, "sha256": digest, "role": role}


def files_source(name, paths, role):
    """One source entry for many files (a folder or glob)."""
    lines = "".join(f"{file_source(p, role)['sha256']}  {Path(p).name}\n" for p in paths)
    return {"name": name, "sha256": hashlib.sha256(lines.encode()).hexdigest(), "role": role, "files": len(paths)}


# ---------------------------------------------------------------- labels

def present_values(array):
    """The set of values in an unsigned integer array. Two-valued arrays (0 and one other value), the common
    case, are told by counting: a histogram costs 25 times as much (schema.class_counts)."""
    top = int(array.max()) if array.size else 0
    nonzero = np.count_nonzero(array)
    if top and nonzero == np.count_nonzero(array == top):
        return {top} | ({0} if nonzero < array.size else set())
    return set(np.flatnonzero(np.bincount(array.ravel())).tolist())


def binary_values(values, dtype, where, what="label", hint=""):
    """[raw value of class 0, raw value of class 1] for two-valued labels: 0/1 or 0/max of the dtype (0/1 when
    only 0 is present). `hint`: what the error suggests besides."""
    for pair in ([0, 1], [0, int(np.iinfo(dtype).max)]):
        if set(values) <= set(pair):
            return pair
    shown = ", ".join(map(str, sorted(values)[:6])) + (", ..." if len(values) > 6 else "")
    raise UserError(f"{where}: {what} values {shown}; two-valued {what}s are 0/1 or 0/{np.iinfo(dtype).max}{hint}")
