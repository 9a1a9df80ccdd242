"""Run directories: where a training run lives on disk, one writer at a time, and how
Ctrl-C / SIGTERM stop it cleanly.

A run directory holds `last.npz`, `best.npz`, `history.json` and, while a process writes
to it (or after it was stopped), `train.lock`. The loop
itself is captioner.training; the checkpoint file is captioner.checkpoint.
"""

import contextlib
import datetime
import fcntl
import json
import os
import signal
import threading

from . import atomic
from .errors import CaptionerError

# ---------------------------------------------------------------- directories and the lock


def find_checkpoint(path):
    """A run directory means its most advanced checkpoint (for --resume): last.npz, or best.npz
    when a kill came between the two saves of an epoch end (both hold the whole state)."""
    if not os.path.isdir(path):
        return path
    found = [
        p
        for p in (os.path.join(path, "last.npz"), os.path.join(path, "best.npz"))
        if os.path.isfile(p)
    ]
    if not found:
        check_unlocked(path)  # a first epoch still running: say so
        raise CaptionerError(
            f"{os.path.join(path, 'last.npz')}: no checkpoint in this run "
            f"directory yet; start a new run (in another --out, or after "
            f"emptying this one)"
        )
    return max(found, key=_progress)  # ties: last.npz, first in the list


def _progress(path):
    """(step, epoch) a checkpoint reached, from its metadata alone; (-1, -1) if unreadable
    (checkpoint.load then gives the full message)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            t = json.loads(str(z["meta"])).get("training", {})
        return int(t.get("step", -1)), int(t.get("epoch", -1))
    except Exception:  # noqa: BLE001 -- any damage: checkpoint.load explains it
        return -1, -1


@contextlib.contextmanager
def run_lock(run_dir):
    """One writer per run directory. flock dies with the process, so kill -9 leaves no
    stale lock."""
    fd = atomic.lock_exclusive(
        os.path.join(run_dir, "train.lock"),
        "--out",
        f"{run_dir}: another `captioner train` is writing to this run directory; wait for it "
        f"to finish or choose another --out",
    )
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        # temp files of a writer killed mid-save (we hold the lock)
        for name in os.listdir(run_dir):
            if name.startswith(".tmp-") and name.endswith(".npz"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(run_dir, name))
        yield
        # finished (no exception): a finished run folder holds only its files. Unlinked while
        # still held, so no other writer can slip in between.
        with contextlib.suppress(OSError):
            os.remove(os.path.join(run_dir, "train.lock"))
    finally:
        os.close(fd)


def check_unlocked(run_dir):
    """Raise the run_lock message if a live process holds run_dir's lock; writes nothing."""
    try:
        fd = os.open(
            os.path.join(run_dir, "train.lock"), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
        )
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise CaptionerError(
            f"{run_dir}: another `captioner train` is writing to this run "
            f"directory; wait for it to finish or choose another --out"
        ) from None
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
    ours = {"train.lock"}  # what a run killed before its first save leaves: ours to reuse
    try:
        found = sorted(n for n in os.listdir(out) if n not in ours and not n.startswith(".tmp-"))
    except (FileNotFoundError, NotADirectoryError):
        found = []
    except OSError as e:
        raise CaptionerError(
            f"{out}: cannot read the run directory ({e.strerror}); choose another --out"
        ) from None
    if found:  # never write over files this run did not create: a run, or anything else
        check_unlocked(out)  # a run still writing here gets the clearer "another train" message
        if {"last.npz", "best.npz"} & set(found):
            raise CaptionerError(
                f"{out}: already holds a run; continue it with --resume {out} "
                f"or choose another --out"
            )
        if "compare.json" in found:
            raise CaptionerError(
                f"{out}: already holds a comparison; continue it with "
                f"--resume {out} or choose another --out"
            )
        raise CaptionerError(
            f"{out}: already holds {found[0]!r}; choose another --out (a new or empty folder)"
        )
    make_dir(out)
    return out


def make_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CaptionerError(
            f"{path}: cannot create the run directory ({e.strerror}); choose another --out"
        ) from None


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


def newest_best(root="runs"):
    """The newest root/*/best.npz: what sample and evaluate use without --checkpoint."""
    import glob

    def mtime(path):  # a dangling symbolic link or a vanished run is no candidate
        try:
            return os.stat(path).st_mtime if os.path.isfile(path) else None
        except OSError:
            return None

    found = sorted(
        (t, p)
        for p in glob.glob(os.path.join(root, "*", "best.npz"))
        if (t := mtime(p)) is not None
    )
    if not found:
        raise CaptionerError(
            f"{root}/: no trained model found ({root}/*/best.npz); train one with "
            "`captioner train` or pass --checkpoint"
        )
    return found[-1][1]


def checkpoint_data(ckpt, meta, data, split, default=None):
    """The split a checkpoint captions: from the folder data, or when that is the
    default, from the folder the checkpoint was trained on."""
    from . import encoders
    from .checkpoint import check_compatible
    from .config import DATA_DEFAULT
    from .data import _available_kinds, available_splits, captions_file, feature_file, open_dataset

    saved = meta.get("training", {}).get("settings", {}).get("data_dir")
    folder = saved if data == (default or DATA_DEFAULT) and saved else data
    captions = captions_file(folder)
    if os.path.isfile(captions) and split not in available_splits(folder):
        raise CaptionerError(
            f"{captions}: no {split} split (it has "
            f"{', '.join(available_splits(folder))}); the test split comes from "
            f"`captioner prepare --flickr8k DIR`, `--karpathy FILE` or `--coco DIR "
            f"--split karpathy`, or pass another --split"
        )
    f = meta["features"]
    others = _available_kinds(folder, split) - {f["kind"]}
    if others and not os.path.isfile(feature_file(folder, split, f["kind"])):
        enc = encoders.by_feature_id(f.get("encoder"))
        raise CaptionerError(
            f"{folder}: has {', '.join(sorted(others))} features, but {ckpt} was trained on "
            f"{f.get('encoder')} ({f['kind']}) features; pass the --data it was trained on"
            + (f", or build one with `captioner prepare --encoder {enc.name}`" if enc else "")
        )
    d = open_dataset(folder, f["kind"], splits=(split,))
    check_compatible(ckpt, meta, d)
    return d
