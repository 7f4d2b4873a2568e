"""Every output is written to a temporary name beside its target and renamed into place when complete,
so a crash, a kill or a full disk leaves the previous file (or none), never a half-written one."""
import contextlib
import errno
import os
import tempfile
from pathlib import Path

from hpctrain.errors import UserError

_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES)
_pending = set()  # temporary files of outputs being written


def check_new_output(path, force=False):
    """Refuses an existing output unless `force`, and a missing output folder."""
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f"{path} exists (use --force to overwrite it)")
    if not path.parent.is_dir():
        raise UserError(f"output folder {path.parent} does not exist")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path, force=True):
    """Yields a temporary path in the target's folder; renames it to `path` on success, removes it on any
    failure. A disk-full or permission error becomes a UserError naming the target."""
    path = Path(path)
    check_new_output(path, force)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    _pending.add(tmp)
    try:
        try:
            yield tmp
        except OSError as e:
            if e.errno in _DISK_ERRORS:
                raise UserError(f"cannot write {path}: {e.strerror or e}") from None
            raise
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; honour the user's umask
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        _pending.discard(tmp)


def discard_pending():
    """Removes the temporary files of all outputs still being written (for a process about to die)."""
    for tmp in list(_pending):
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_text(path, text):
    with atomic_output(path) as tmp:
        tmp.write_text(text)
