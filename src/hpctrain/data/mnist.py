"""`hpctrain pack mnist`: MNIST in its original IDX format (raw or gzipped) as a classification dataset.

Splits: `holdout` validates on a fixed seeded fifth of the digits (2,000 of the 10,000 test-set digits)
and trains on the rest; `all` trains on every digit.
"""
import gzip
import zlib
from pathlib import Path

import numpy as np

from hpctrain.atomic import check_new_output
from hpctrain.data import packing, schema
from hpctrain.errors import UserError

IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension
CLASS_NAMES = [str(digit) for digit in range(10)]


def pack(out, *, images, labels, force=False, compression=None):
    check_new_output(out, force)
    digits, targets = read_idx(images, IMAGES_MAGIC), read_idx(labels, LABELS_MAGIC)
    if len(digits) != len(targets):
        raise UserError(f"{images} has {len(digits)} images but {labels} has {len(targets)} labels")
    if targets.max(initial=0) >= len(CLASS_NAMES):
        raise UserError(f"{labels}: label {targets.max()} is not a digit 0-9")
    with packing.create(out, kind="classification", class_names=CLASS_NAMES, label_values=list(range(10)),
                        sources=[packing.file_source(images, "images"), packing.file_source(labels, "labels")],
                        splits=packing.holdout_splits(len(digits)), force=force, compression=compression) as writer:
        writer.write("images", digits)
        writer.write("labels", targets)
    return out


def read_idx(path, magic):
    """An IDX file of unsigned bytes as an array of the shape its header gives."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: cannot read ({schema.first_line(e)})") from None
    found = int.from_bytes(data[:4], "big")
    if len(data) < 4 or found != magic:
        raise UserError(f"{path}: not an IDX {'image' if magic == IMAGES_MAGIC else 'label'} file "
                        f"(magic number {found}, expected {magic})")
    header = 4 + 4 * (magic & 0xFF)
    dims = np.frombuffer(data[4:header], ">u4").astype(np.int64)
    expected = header + int(np.prod(dims))
    if len(dims) != magic & 0xFF or len(data) != expected:
        problem = "truncated" if len(data) < expected else "longer than its header says"
        raise UserError(f"{path}: {problem} ({len(data)} bytes, header {schema.shape_text(dims)} "
                        f"needs {expected})")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)
