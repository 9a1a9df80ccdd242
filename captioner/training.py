"""Training: the epoch loop, exact resume, the overfit check.

train() is the loop: steps over shuffled batches, the optimizer update, an epoch record
(train and val loss). What a run adds, the BLEU-4 / CIDEr-D scores, the best epoch and
its checkpoints, reaches the loop through callbacks (captioner.runs: start_or_resume,
train_in). Everything that decides what happens next is in the state, which a checkpoint
holds (captioner.checkpoint): parameters, optimizer state, epoch and step within the
epoch. The data order of epoch e is a permutation seeded by (seed, e), so a resumed run
replays exactly the batches it would have seen.
"""

import logging
import math
import signal
import threading
import time

import numpy as np

from . import adaptive, cells, config
from .errors import CaptionerError
from .model import CaptioningRNN
from .optim import OPTIMIZERS

LOG = logging.getLogger("captioner")  # the CLI shows it on stderr

DEFAULTS = config.DEFAULTS  # the settings of a run, from captioner.config
# the options new_model reads
MODEL_OPTIONS = (
    "cell",
    "hidden_dim",
    "wordvec_dim",
    "seed",
    "forget_bias",
    "softmax",
    "softmax_cutoffs",
)


def new_model(
    data,
    cell="lstm",
    hidden_dim=512,
    wordvec_dim=256,
    seed=0,
    forget_bias=0.0,
    softmax="full",
    softmax_cutoffs=None,
):
    """A fresh model for a dataset: its vocabulary and feature size, the given cell,
    sizes and output layer (the adaptive softmax's word order from its training
    captions), initialised from seed (what train, compare, sweep, gradients, overfit and
    the demo start from)."""
    return CaptioningRNN(
        data["word_to_idx"],
        input_dim=data["feature_dim"],
        wordvec_dim=wordvec_dim,
        hidden_dim=hidden_dim,
        cell_type=cell,
        seed=seed,
        forget_bias=forget_bias,
        **adaptive.model_args(softmax, softmax_cutoffs, data),
    )


# ---------------------------------------------------------------- the loop


def fresh_state(settings):
    return {
        "epoch": 0,
        "step_in_epoch": 0,
        "step": 0,
        "settings": dict(settings),
        "optim": None,
        "epochs": [],
        "best": None,
    }


def _split_optim(configs):
    """Per-parameter optimizer configs -> (JSON scalars, npz arrays)."""
    scalars, arrays = {}, {}
    for name, cfg in configs.items():
        scalars[name] = {
            k: v.item() if isinstance(v, np.generic) else v
            for k, v in cfg.items()
            if not isinstance(v, np.ndarray)
        }
        arrays[name] = {k: v for k, v in cfg.items() if isinstance(v, np.ndarray)}
    return scalars, arrays


def _join_optim(scalars, arrays, dtype):
    configs = {}
    for name, cfg in scalars.items():
        configs[name] = dict(cfg)
        for k, v in arrays.get(name, {}).items():
            configs[name][k] = np.array(v, dtype=dtype)
    return configs


def resume_state(meta, optim_arrays, history, dtype=np.float32, path="checkpoint"):
    """The training state saved in a checkpoint (checkpoint.load checked it against the
    schema; it may only be absent)."""
    t = meta.get("training")
    if t is None:
        raise CaptionerError(
            f"{path}: cannot resume from it: it holds no training state; resume "
            f"from a checkpoint written by `captioner train` (last.npz of a run)"
        )
    state = dict(t)
    state["settings"] = dict(t["settings"])
    state["optim"] = _join_optim(t["optim"], optim_arrays, dtype)
    state["loss_history"] = [float(x) for x in history.get("loss", np.zeros(0))]
    for key in ("grad_norm", "clipped"):  # absent from checkpoints written before they were kept
        state[f"{key}_history"] = [float(x) for x in history.get(key, np.zeros(0))]
    return state


def saved_state(state):
    """What a checkpoint keeps of a training state (resume_state reads it back) ->
    (meta['training'] JSON, optimizer arrays, the per-step histories)."""
    scalars, arrays = _split_optim(state["optim"])
    meta = {k: v for k, v in state.items() if not k.endswith("history") and k != "optim"}
    history = {
        k: np.asarray(state.get(f"{k}_history", []), dtype=np.float64)
        for k in ("loss", "grad_norm", "clipped")
    }
    return meta | {"optim": scalars}, arrays, history


def _val_subset(data, n, seed):
    if n <= 0 or "val_captions" not in data or len(data["val_captions"]) == 0:
        return None
    total = len(data["val_captions"])
    return np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))


def batch(data, split, idx):
    """Caption rows idx of a split -> (features (B, D) float32, captions (B, 17))."""
    captions = data[f"{split}_captions"][idx]
    features = data[f"{split}_features"][data[f"{split}_image_idxs"][idx]]
    return features, captions


def evaluate_loss(model, data, rows, batch_size=100):
    """Mean per-caption loss (CS231n convention) over caption rows of val."""
    total = 0.0
    for i in range(0, len(rows), batch_size):
        idx = rows[i : i + batch_size]
        loss, _ = model.loss(*batch(data, "val", idx))
        total += float(loss) * len(idx)
    return total / len(rows)


def train(
    data, model, state=None, progress=None, log=LOG.info, on_step=(), on_epoch_end=(), **settings
):
    """The training loop: train `model` on data['train_*'] and return the final state dict.

    settings: see DEFAULTS; other keys (the data path, ...) are kept in state['settings'].
    state: from resume_state() to continue a run (or fresh_state()).
    on_step, on_epoch_end: functions f(state) called after every step and after every epoch
    (its record last in state['epochs'], before it is logged): what a run adds to the
    loop, the scores, the best epoch and the checkpoints, comes through them
    (runs.train_in). progress: None, or progress(desc, done, total, unit, **figures), the
    library's progress callback (the CLI draws a bar from it): called at the start of every
    epoch ("epoch 3/10", steps done, steps of the epoch, "batch") and after each step, with
    loss=the running mean loss. log(line): epoch records. Ctrl-C / SIGTERM stop at the next
    step boundary with Interrupted (after on_epoch_end at an epoch's end, before on_step
    otherwise); a non-finite loss or gradient with Diverged.
    """
    s = dict(DEFAULTS, **settings)
    state = state or fresh_state(s)
    state["settings"].update(epochs=s["epochs"])
    update = OPTIMIZERS[s["optimizer"]]
    if state["optim"] is None:
        state["optim"] = {k: {"learning_rate": s["lr"]} for k in model.params}
    losses = state.setdefault("loss_history", [])
    norms = state.setdefault("grad_norm_history", [])
    clips = state.setdefault("clipped_history", [])
    n = len(data["train_captions"])
    B = s["batch_size"]
    steps_per_epoch = math.ceil(n / B)
    val_rows = _val_subset(data, s["val_size"], s["seed"])

    with SignalFlag() as flag:
        while state["epoch"] < s["epochs"]:
            epoch = state["epoch"]
            order = np.random.default_rng([s["seed"], epoch]).permutation(n)
            start = state["step_in_epoch"]
            t0 = time.perf_counter()
            desc = f"epoch {epoch + 1}/{s['epochs']}"
            if progress:
                progress(desc, start, steps_per_epoch, "batch")
            running = None
            for it in range(start, steps_per_epoch):
                idx = order[it * B : (it + 1) * B]
                loss, grads = model.loss(*batch(data, "train", idx))
                loss = float(loss)
                norm = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    raise Diverged(epoch + 1, it + 1, loss)
                if s["clip_norm"] and norm > s["clip_norm"]:
                    scale = s["clip_norm"] / norm
                    for g in grads.values():
                        g *= scale
                for k, w in model.params.items():
                    dw = grads[k]
                    if s["weight_decay"] and k.startswith("W"):
                        dw = dw + s["weight_decay"] * w
                    model.params[k], state["optim"][k] = update(w, dw, state["optim"][k])
                losses.append(loss)
                norms.append(norm)  # before clipping; clips marks the steps that were clipped
                clips.append(float(bool(s["clip_norm"]) and norm > s["clip_norm"]))
                state["step"] += 1
                state["step_in_epoch"] = it + 1
                running = loss if running is None else 0.9 * running + 0.1 * loss
                if progress:
                    progress(desc, it + 1, steps_per_epoch, "batch", loss=running)
                if flag.signum is not None:
                    raise Interrupted(flag.signum)
                for f in on_step:
                    f(state)
            record = {
                "epoch": epoch + 1,
                "step": state["step"],
                # the whole epoch's steps, also those before a resume mid-epoch
                "train_loss": float(np.mean(losses[-steps_per_epoch:] or [float("nan")])),
                "lr": float(state["optim"][next(iter(state["optim"]))]["learning_rate"]),
                "seconds": round(time.perf_counter() - t0, 2),
            }
            if val_rows is not None:
                record["val_loss"] = evaluate_loss(model, data, val_rows, B)
            for cfg in state["optim"].values():
                cfg["learning_rate"] *= s["lr_decay"]
            state["epochs"].append(record)
            state["epoch"] += 1
            state["step_in_epoch"] = 0
            for f in on_epoch_end:
                f(state)
            log(format_record(record, s["epochs"]))
            if flag.signum is not None:
                raise Interrupted(flag.signum)
    return state


class Interrupted(Exception):
    """Training stopped by a signal at a step boundary; exit with 128 + signum. path: the
    checkpoint saved on the way out (runs.train_in), if any."""

    def __init__(self, signum, path=None):
        super().__init__(f"interrupted by {signal.Signals(signum).name}; saved {path}")
        self.signum, self.path = signum, path


class Diverged(CaptionerError):
    """A non-finite loss or gradient: nothing of that step is kept. checkpoint: the last
    good one of the run, if it writes one."""

    def __init__(self, epoch, step, loss, checkpoint=None):
        where = f"; last good checkpoint: {checkpoint}" if checkpoint else ""
        super().__init__(
            f"training diverged at epoch {epoch}, step {step}: loss is {loss}; lower --lr or "
            f"set --clip-norm{where}",
            exit_code=1,
        )
        self.epoch, self.step, self.loss = epoch, step, loss


class SignalFlag:
    """Defer SIGINT/SIGTERM to a step boundary: parameters are updated in place,
    so stopping mid-update would save a half-stepped model. A second signal stops at once."""

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self._old = {}
        if threading.current_thread() is threading.main_thread():
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


def format_record(r, epochs):
    parts = [f"epoch {r['epoch']}/{epochs}", f"train loss {r['train_loss']:.4f}"]
    if "val_loss" in r:
        parts.append(f"val loss {r['val_loss']:.4f}")
    for k in ("Bleu_4", "CIDEr"):
        if k in r:
            parts.append(f"{k} {r[k]:.3f}")
    parts.append(f"lr {r['lr']:.2e}")
    parts.append(f"{r['seconds']:.1f}s")
    return "  ".join(parts)


# ---------------------------------------------------------------- overfit

OVERFIT_LIMITS = {c.name: c.overfit_limit for c in cells.CELLS.values()}  # CS231n's bars


def overfit(
    data,
    cell,
    n=50,
    epochs=50,
    batch_size=25,
    lr=5e-3,
    lr_decay=0.995,
    hidden_dim=512,
    wordvec_dim=256,
    seed=231,
    progress=None,
):
    """CS231n's sanity check: memorise n training captions, one per image, and judge it.

    CS231n takes the first 50 captions, which in the real (shuffled) files belong to
    50 different images. We make that explicit: the first caption of each of the
    first n distinct images, since no model can memorise two captions of one image.

    Returns a dict: model, state (state['epochs'] holds the per-epoch losses), rows
    (the caption rows), final_loss, limit (OVERFIT_LIMITS[cell]), passed (final_loss <
    limit), truth and sampled (the captions as text, greedy), exact (how many of the
    sampled captions equal their ground truth).
    """
    from .vocab import decode_captions

    _, first = np.unique(data["train_image_idxs"], return_index=True)
    rows = np.sort(first)[:n]
    small = dict(
        data,
        train_captions=data["train_captions"][rows],
        train_image_idxs=data["train_image_idxs"][rows],
    )
    model = new_model(data, cell, hidden_dim, wordvec_dim, seed)
    # CS231n's RNN decays its rate by 0.95 an epoch: after 50 epochs at 8% of it, the RNN
    # stopped at a loss of 0.08-0.13 on the synthetic data, astride the 0.1 bar; 0.995 (the
    # LSTM's) lets both cells converge
    state = train(
        small,
        model,
        None,
        progress=progress,
        log=lambda *_: None,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lr_decay=lr_decay,
        seed=seed,
        val_size=0,
    )
    captions = data["train_captions"][rows]
    feats = data["train_features"][data["train_image_idxs"][rows]]
    truth = decode_captions(captions, data["idx_to_word"])
    sampled = decode_captions(
        model.sample(feats, max_length=captions.shape[1] - 1), data["idx_to_word"]
    )
    final = state["epochs"][-1]["train_loss"]
    return {
        "model": model,
        "state": state,
        "rows": rows,
        "final_loss": final,
        "limit": OVERFIT_LIMITS[cell],
        "passed": final < OVERFIT_LIMITS[cell],
        "truth": truth,
        "sampled": sampled,
        "exact": sum(a == b for a, b in zip(sampled, truth)),
    }
