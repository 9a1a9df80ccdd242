"""Atomic file writes: a reader sees the old file or the whole new one, never half of either.

Every write goes to a fresh temp file beside the target (created O_EXCL, so a symbolic link
planted under the temp name is never followed), is fsynced, then renamed over the target,
and the directory is fsynced so the rename itself survives a power cut. With replace=False
the target must be new: the temp file is hard-linked to its name, which fails if anything
appeared there meanwhile (another command writing the same new output), and that is kept.
"""

import errno
import fcntl
import json
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager, suppress

from .errors import CaptionerError


@contextmanager
def atomic_path(path, what="file", replace=True):
    """Yield a temp path beside `path`; the block writes it (e.g. with h5py), and on success
    it is fsynced and renamed into place (replace=False: only if `path` still does not
    exist). On any error the temp file is removed and the previous `path` is untouched; an
    OSError becomes one CaptionerError naming `path`."""
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
        if replace:
            os.replace(tmp, path)
            tmp = None
        else:
            _create(tmp, path, what)  # the temp name is removed below
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise CaptionerError(
            f"{path}: could not write {what} ({e.strerror or e}); free some space or choose "
            f"another location; the previous {what} is untouched"
        ) from None
    finally:
        if tmp is not None:
            with suppress(OSError):
                os.unlink(tmp)


def _create(tmp, path, what):
    """Give the finished temp file the name `path` only if nothing has it: a hard link is
    atomic and never replaces; where links are not supported, an O_EXCL placeholder
    claims the name first."""
    try:
        try:
            os.link(tmp, path, follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                raise
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
            os.replace(tmp, path)
    except FileExistsError:
        raise CaptionerError(
            f"{path}: appeared while this command ran (another command writing the same "
            f"file?) and is kept as it is; this {what} was not written: rerun with another "
            f"file name, or --force to replace it"
        ) from None


def write_bytes(path, write, what="file", replace=True):
    """Atomically write `path` with write(f), f a binary file object."""
    with atomic_path(path, what, replace) as tmp:
        with open(tmp, "wb") as f:
            write(f)


def write_text(path, text, what="file", replace=True):
    write_bytes(path, lambda f: f.write(text.encode("utf-8")), what, replace)


def write_json(path, obj, what="file", replace=True):
    """Atomically write human-readable JSON."""
    text = json.dumps(obj, indent=1) + "\n"
    write_bytes(path, lambda f: f.write(text.encode("utf-8")), what, replace)


def open_lock(path, what):
    """Open (creating) a lock file without following a symbolic link planted under its name
    (which would truncate whatever it points at) and only if it is a regular file -> fd."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as e:
        why = "it is a symbolic link" if e.errno == errno.ELOOP else e.strerror
        raise CaptionerError(
            f"{path}: cannot use this lock file ({why}); remove it or choose another {what}"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CaptionerError(
            f"{path}: the lock file is not a regular file; remove it or choose another {what}"
        )
    return fd


def lock_exclusive(path, what, busy):
    """open_lock(path) and flock it for this process alone -> fd; another holder means
    CaptionerError(busy). flock dies with the process, so kill -9 leaves no stale lock."""
    fd = open_lock(path, what)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CaptionerError(busy) from None
    return fd


def check_new_file(path, force, flag):
    """Refuse (unless force) to replace a file this command did not create: the user named
    an existing file, perhaps their checkpoint or their own results, as an output."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CaptionerError(f"{path}: is a directory; choose a file name for {flag}")
    if os.path.lexists(path) and not force:
        raise CaptionerError(
            f"{path}: already exists; pass --force to replace it, or choose another {flag}"
        )


def check_fresh_dir(path, force, what, keep=(), flag="--out", can_force=True):
    """Refuse (unless force) to write into a folder holding anything but `keep` (our own
    work area, e.g. an interrupted run's): what is there was not made by this command."""
    path = os.fspath(path)
    try:
        found = sorted(set(os.listdir(path)) - set(keep))
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise CaptionerError(f"{path}: is a file, not a folder; choose another {flag}") from None
    except OSError as e:
        raise CaptionerError(
            f"{path}: cannot read the folder ({e.strerror}); choose another {flag}"
        ) from None
    if found and not force:
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        fix = f"pass --force to replace the whole {what}, or " if can_force else ""
        raise CaptionerError(
            f"{path}: already holds {found[0]!r}{more}, not made by captioner; "
            f"{fix}choose another {flag}"
        )


@contextmanager
def fresh_dir(path, what="folder"):
    """Yield a new empty folder beside `path`; the block fills it, and on success it replaces
    `path` whole (the old one, if any, is moved aside and then removed). On any error the new
    folder is removed and `path` is untouched: never half a dataset in place."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        new = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.new-", dir=parent)
    except OSError as e:
        raise CaptionerError(
            f"{path}: cannot create the {what} ({e.strerror}); choose another location"
        ) from None
    try:
        yield new
        old = None
        if os.path.lexists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.replace(path, os.path.join(old, "x"))
        os.replace(new, path)
        dir_fd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise CaptionerError(
            f"{path}: could not write the {what} ({e.strerror or e}); free some "
            f"space or choose another location; the previous {what} is "
            f"untouched"
        ) from None
    finally:
        if os.path.exists(new):
            shutil.rmtree(new, ignore_errors=True)
