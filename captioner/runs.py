"""Run directories: where a training run lives on disk, one writer at a time, and how
Ctrl-C / SIGTERM stop it cleanly.

A run directory holds `last.npz`, `best.npz`, `history.json` and `train.lock`. The loop
itself is captioner.training; the checkpoint file is captioner.checkpoint.
"""
import contextlib
import datetime
import fcntl
import os
import signal
import threading

from .errors import CaptionerError

# ---------------------------------------------------------------- directories and the lock


def find_checkpoint(path):
    """A run directory means its last.npz (for --resume)."""
    if os.path.isdir(path):
        path = os.path.join(path, "last.npz")
        if not os.path.exists(path):
            check_unlocked(os.path.dirname(path))  # a first epoch still running: say so
            raise CaptionerError(f"{path}: no checkpoint in this run directory yet; "
                                 f"start a new run")
    return path


@contextlib.contextmanager
def run_lock(run_dir):
    """One writer per run directory. flock dies with the process, so kill -9 leaves no
    stale lock."""
    path = os.path.join(run_dir, "train.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise CaptionerError(f"{run_dir}: cannot use this run directory ({e.strerror}); "
                             f"choose another --out") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CaptionerError(f"{run_dir}: another `captioner train` is writing to this run "
                             f"directory; wait for it to finish or choose another --out") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        # temp files of a writer killed mid-save (we hold the lock)
        for name in os.listdir(run_dir):
            if name.startswith(".tmp-") and name.endswith(".npz"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(run_dir, name))
        yield
    finally:
        os.close(fd)


def check_unlocked(run_dir):
    """Raise the run_lock message if a live process holds run_dir's lock; writes nothing."""
    try:
        fd = os.open(os.path.join(run_dir, "train.lock"), os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise CaptionerError(f"{run_dir}: another `captioner train` is writing to this run "
                             f"directory; wait for it to finish or choose another --out") from None
    finally:
        os.close(fd)


def new_run_dir(out, cell):
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = os.path.join("runs", f"{stamp}-{cell}")
        n = 1
        while os.path.exists(out):  # two runs started in the same second
            n += 1
            out = os.path.join("runs", f"{stamp}-{cell}-{n}")
    if os.path.exists(os.path.join(out, "last.npz")):
        check_unlocked(out)  # a run still writing here gets the clearer "another train" message
        raise CaptionerError(f"{out}: already holds a run; continue it with --resume {out} "
                             f"or choose another --out")
    make_dir(out)
    return out


def make_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CaptionerError(f"{path}: cannot create the run directory ({e.strerror}); "
                             f"choose another --out") from None


# ---------------------------------------------------------------- signals

class Interrupted(Exception):
    """Training stopped by a signal after saving `last`; exit with 128 + signum."""

    def __init__(self, signum, path):
        super().__init__(f"interrupted by {signal.Signals(signum).name}; saved {path}")
        self.signum, self.path = signum, path


class SignalFlag:
    """Defer SIGINT/SIGTERM to a step boundary: parameters are updated in place,
    so stopping mid-update would save a half-stepped model. A second signal stops at once."""

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self._old = {}
        if in_main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, _frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def in_main_thread():
    return threading.current_thread() is threading.main_thread()
