"""`hpctrain verify`: re-reads a whole dataset file and checks every stored hash and the class counts."""
import hashlib

import numpy as np

from hpctrain.data.dataset import open_dataset
from hpctrain.data.describe import summary
from hpctrain.data.schema import BLOCK_BYTES, TARGETS, class_counts, content_sha256, first_line, little_endian


def verify(path):
    """Re-checks the schema and every stored hash by reading all data; returns a one-line "OK" report."""
    with open_dataset(path) as ds:
        counts = np.zeros(len(ds.class_names), np.int64)

        def recompute(array):
            digest = hashlib.sha256()
            for block in _blocks(ds, array):
                digest.update(little_endian(block))
                if array.name.lstrip("/") == TARGETS[ds.kind]:
                    counts[:] += class_counts(block, len(counts))
            if digest.hexdigest() != array.attrs.get("sha256"):
                ds.fail(f"{array.name.lstrip('/')} does not match its sha256: the file is corrupted")
            return digest.hexdigest()

        if content_sha256(ds.file, recompute) != ds.file.attrs["content_sha256"]:
            ds.fail("content_sha256 does not match the stored arrays")
        if counts.tolist() != ds.attr_json("class_counts"):
            ds.fail("class_counts do not match the stored targets")
        return f"OK {summary(ds)}"


def _blocks(ds, array):
    """The array in blocks of about BLOCK_BYTES; a read error fails with the file and the range."""
    if array.ndim == 0 or len(array) == 0:
        return
    sample_bytes = max(1, array.dtype.itemsize * int(np.prod(array.shape[1:])))
    step = max(1, BLOCK_BYTES // sample_bytes)
    for start in range(0, len(array), step):
        try:
            yield array[start:start + step]
        except OSError as e:
            ds.fail(f"cannot read {array.name.lstrip('/')}[{start}:{start + step}]: {first_line(e)}")
