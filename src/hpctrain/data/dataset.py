"""Reading a dataset file: open_dataset validates it against the schema (see `schema`) on opening."""
import json
from pathlib import Path

import h5py
import numpy as np

from hpctrain.data.schema import KINDS, SCHEMA_VERSION, TARGETS, array_text, first_line, shape_text
from hpctrain.errors import UserError


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
            raise UserError(f"{self.path} has no split {name!r} (it has {', '.join(self.split_names)})")
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
            self.fail(f"images must be N x H x W [x C] uint8 or uint16, not {array_text(images)}")
        expected = images.shape[:3] if self.kind == "segmentation" else images.shape[:1]
        if targets.shape != expected or targets.dtype != np.uint8:
            self.fail(f"{target_name} must be {shape_text(expected)} uint8 to match images, "
                      f"not {array_text(targets)}")
        test = f.get("test_images")
        if test is not None and (test.ndim != images.ndim or test.dtype != images.dtype
                                 or test.shape[3:] != images.shape[3:]):
            self.fail(f"test_images ({array_text(test)}) do not match images ({array_text(images)})")
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
