"""Runs: where a training run lives on disk, one writer at a time, and how it starts,
continues and is saved.

A run directory holds `last.npz`, `best.npz`, `history.json` and, while a process writes
to it (or after it was stopped), `train.lock`. start_or_resume() prepares a run, new or
continued, the same way for train, compare, sweep and the demo; train_in() runs the loop
(captioner.training) with a run's callbacks: scores, the best epoch, the checkpoints
(captioner.checkpoint).
"""

import contextlib
import datetime
import fcntl
import json
import logging
import os
from typing import NamedTuple

import numpy as np

from . import atomic, checkpoint, config, training
from .errors import CaptionerError
from .evaluation import periodic_scores

LOG = logging.getLogger("captioner")  # the CLI shows it on stderr

# ---------------------------------------------------------------- directories and the lock


def has_checkpoint(run_dir):
    return any(os.path.exists(os.path.join(run_dir, f"{n}.npz")) for n in ("last", "best"))


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
            raise _holds_a_run(out)
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


def _holds_a_run(path):
    return CaptionerError(
        f"{path}: already holds a run; continue it with --resume {path} or choose another --out"
    )


def make_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CaptionerError(
            f"{path}: cannot create the run directory ({e.strerror}); choose another --out"
        ) from None


# ---------------------------------------------------------------- starting or resuming a run


class Run(NamedTuple):
    """A run ready for its next step: where it writes, its model and dataset, its training
    state (None: a fresh run) and settings (training.DEFAULTS' keys and its data)."""

    run_dir: str
    model: object
    data: dict
    state: dict | None
    settings: dict


def start_or_resume(
    out,
    options,
    load,
    resume=None,
    epochs=None,
    data_dir=None,
    check=None,
    new_dir=True,
    log=None,
):
    """Everything before a run's first step, whether it starts or continues (what train,
    compare, sweep and the demo do) -> Run.

    resume None: a fresh run of options ({name: value} of config.TRAIN_CONFIG's options) on
    data_dir or options['data'], in new_run_dir(out, cell), or in out itself with new_dir
    False (a sweep's run directory, made by the sweep). resume a checkpoint or a run
    directory: that run with its own settings, check(path, meta, settings) first (it may
    refuse), its epochs changed to `epochs` if given, its data read from data_dir if given
    (the dataset moved), and staying in its own directory unless out names another.
    load(data_dir, features, max_train=N) -> dataset. log(line): what is started.
    """
    if resume is not None:
        path = find_checkpoint(resume)
        model, meta, optim, history = checkpoint.load_model(path)
        state = training.resume_state(meta, optim, history, path=path)
        settings = dict(state["settings"])
        if check:
            check(path, meta, settings)
        if epochs is not None:
            settings["epochs"] = epochs
        data_dir = data_dir or settings.get("data_dir", options.get("data"))
        data = load(data_dir, meta["features"]["kind"], max_train=settings.get("max_train"))
        checkpoint.check_compatible(path, meta, data)
        run_dir = os.path.dirname(path) or os.curdir  # as the user wrote it, not absolute
        if out is not None and os.path.abspath(out) != os.path.abspath(run_dir):
            run_dir = new_run_dir(out, model.cell_type)  # never over another run's checkpoints
        if log:
            log(f"resuming {path} at epoch {state['epoch'] + 1}, step {state['step']}")
    else:
        data_dir = data_dir or options["data"]
        data = load(data_dir, options["features"], max_train=options.get("max_train"))
        kwargs = {k: options[k] for k in training.MODEL_OPTIONS if k in options}
        model = training.new_model(data, **kwargs)
        settings = config.settings_of(
            options, os.path.abspath(data["base_dir"]), data["feature_kind"]
        )
        run_dir, state = new_run_dir(out, options["cell"]) if new_dir else out, None
    if log:
        log(
            f"{len(data['train_captions']):,} training captions, {model.cell_type} hidden "
            f"{model.hidden_dim}, {data['encoder']} features ({data['feature_dim']}-d) -> "
            f"{run_dir}"
        )
    return Run(run_dir, model, data, state, settings)


def train_in(data, model, run_dir, state=None, progress=None, log=LOG.info, **settings):
    """training.train, with what a run adds through its callbacks: BLEU-4 and CIDEr-D every
    eval_every epochs (evaluation.periodic_scores), the best epoch by keep_best, and in
    run_dir (None: nothing is written) last.npz every save_every steps, at each epoch's end
    and on Ctrl-C / SIGTERM, best.npz when the epoch is the best so far, history.json.
    Raises training.Interrupted naming the checkpoint it saved, training.Diverged naming
    the last good one."""
    s = dict(config.DEFAULTS, **settings)
    if state is None and run_dir and has_checkpoint(run_dir):
        raise _holds_a_run(run_dir)
    state = state or training.fresh_state(s)
    on_epoch_end = [keep_best(s["keep_best"])]
    if s["eval_every"]:
        on_epoch_end.insert(0, periodic_scores(model, data, s["eval_every"], s["eval_images"]))
    on_step = []
    save = None
    if run_dir is not None:
        save = saver(run_dir, model, data)
        on_step.append(lambda state: save("last", state, every=s["save_every"]))
        on_epoch_end.append(lambda state: save_epoch(save, state))
    try:
        return training.train(data, model, state, progress, log, on_step, on_epoch_end, **settings)
    except training.Interrupted as e:
        raise training.Interrupted(e.signum, save and save("last", state)) from None
    except training.Diverged as e:
        last = run_dir and os.path.join(run_dir, "last.npz")
        raise training.Diverged(e.epoch, e.step, e.loss, last) from None


def saver(run_dir, model, data):
    """save(name, state, every=None) -> the path of run_dir/name.npz, written with
    history.json; every N: only at steps that are a multiple of N. A state already saved
    as `name` at its step is not written again (an epoch's end, then Ctrl-C)."""
    saved = {}

    def save(name, state, every=None):
        path = os.path.join(run_dir, f"{name}.npz")
        if every is not None and not (every and state["step"] % every == 0):
            return None
        if saved.get(name) == (state["step"], state["epoch"]):
            return path
        meta, optim_arrays, history = training.saved_state(state)
        meta = dict(
            checkpoint.model_meta(model, data),
            created=datetime.datetime.now().isoformat(timespec="seconds"),
            training=meta,
        )
        checkpoint.save(path, model.params, meta, optim_arrays, history)
        atomic.write_json(
            os.path.join(run_dir, "history.json"),
            {
                "settings": state["settings"],
                "epochs": state["epochs"],
                "best": state["best"],
                "step": state["step"],
                "loss": [round(x, 5) for x in state["loss_history"]],
                "grad_norm": [round(x, 5) for x in state["grad_norm_history"]],
                "clipped": [int(c) for c in state["clipped_history"]],
            },
        )
        saved[name] = (state["step"], state["epoch"])
        return path

    return save


def save_epoch(save, state):
    """An epoch's end: best.npz if it is the best epoch so far, then last.npz. Best first:
    a kill in between never leaves `last` naming a best.npz that was not written (a resume
    replays the epoch and saves it)."""
    best = state["best"]
    if best and best["epoch"] == state["epochs"][-1]["epoch"]:
        save("best", state)
    save("last", state)


def keep_best(metric):
    """training.train's on_epoch_end keeping state['best'], the best epoch so far: lowest
    val loss (metric 'loss'), highest CIDEr-D ('cider'); train loss when the epoch has not
    the figure."""
    key = {"loss": "val_loss", "cider": "CIDEr"}[metric]

    def keep(state):
        record, best = state["epochs"][-1], state["best"]
        k = key if key in record else "train_loss"
        value = record[k]
        if best is None or best["metric"] != k:
            better = True
        else:
            better = value > best["value"] if k == "CIDEr" else value < best["value"]
        if better:
            state["best"] = {"metric": k, "value": value, "epoch": record["epoch"]}

    return keep


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
