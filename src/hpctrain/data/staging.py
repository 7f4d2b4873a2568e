"""Copies a dataset file to node-local storage (e.g. $TMPDIR or a local SSD) once per node before
training, so that every rank reads its samples locally instead of from the shared file system."""
import shutil
from pathlib import Path

import h5py

from hpctrain.atomic import atomic_output
from hpctrain.data import dataset, schema
from hpctrain.errors import UserError


def stage_to_node(path, stage_dir, *, local_rank, barrier):
    """Local rank 0 copies `path` into `stage_dir` (atomically; skipped when an identical copy, same size
    and content_sha256, is already there); every rank then waits in `barrier()` and gets the staged path.
    A failure on local rank 0 is raised on every rank of the node, after the barrier."""
    source, stage_dir = Path(path), Path(stage_dir)
    target = stage_dir / source.name
    if target.resolve() == source.resolve():
        barrier()
        return source
    error = None
    if local_rank == 0:
        try:
            dataset.open_dataset(source).close()
            if _identity(target) != _identity(source):
                stage_dir.mkdir(parents=True, exist_ok=True)
                with atomic_output(target, force=True) as tmp:
                    shutil.copyfile(source, tmp)
        except (OSError, UserError) as e:
            error = e
    barrier()
    if isinstance(error, UserError):
        raise error
    if error is not None:
        raise UserError(f"cannot stage {source} to {stage_dir}: {schema.first_line(error)}")
    if _identity(target) is None or _identity(target) != _identity(source):
        raise UserError(f"{target}: no staged copy of {source} (staging failed on local rank 0)")
    return target


def _identity(path):
    """(size, content_sha256) of a dataset file, or None when it is missing or unreadable."""
    try:
        with h5py.File(path, "r") as f:
            return Path(path).stat().st_size, f.attrs.get("content_sha256")
    except OSError:
        return None
