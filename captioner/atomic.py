"""Atomic file writes: a reader sees the old file or the whole new one, never half of either.

Every write goes to a fresh temp file beside the target (created O_EXCL, so a symbolic link
planted under the temp name is never followed), is fsynced, then renamed over the target,
and the directory is fsynced so the rename itself survives a power cut.
"""
import json
import os
import tempfile
from contextlib import contextmanager

from .errors import CaptionerError


@contextmanager
def atomic_path(path, what="file"):
    """Yield a temp path beside `path`; the block writes it (e.g. with h5py), and on success
    it is fsynced and renamed into place. On any error the temp file is removed and the
    previous `path` is untouched; an OSError becomes one CaptionerError naming `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; our files are plain readable files
        os.close(fd)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise CaptionerError(
            f"{path}: could not write {what} ({e.strerror or e}); free some space or choose "
            f"another location; the previous {what} is untouched") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def write_bytes(path, write, what="file"):
    """Atomically write `path` with write(f), f a binary file object."""
    with atomic_path(path, what) as tmp:
        with open(tmp, "wb") as f:
            write(f)


def write_text(path, text, what="file"):
    write_bytes(path, lambda f: f.write(text.encode("utf-8")), what)


def write_json(path, obj, what="file"):
    """Atomically write human-readable JSON."""
    write_text(path, json.dumps(obj, indent=1) + "\n", what)
