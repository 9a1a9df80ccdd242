"""Training: the epoch loop, exact resume, the overfit check.

train() writes into a run directory (captioner.runs): `last.npz` every `save_every`
steps, at the end of each epoch and on Ctrl-C / SIGTERM, `best.npz` (best validation
loss, or CIDEr-D with keep_best='cider') and `history.json`. Everything that decides
what happens next is in the checkpoint (captioner.checkpoint): parameters, optimizer
state, epoch and step within the epoch. The data order of epoch e is a permutation
seeded by (seed, e), so a resumed run replays exactly the batches it would have seen.
"""

import datetime
import math
import os
import time

import numpy as np

from . import atomic, checkpoint
from .errors import CaptionerError
from .model import CaptioningRNN
from .optim import OPTIMIZERS
from .runs import Interrupted, SignalFlag

DEFAULTS = dict(
    epochs=10,
    batch_size=100,
    optimizer="adam",
    lr=1e-3,
    lr_decay=0.95,
    weight_decay=0.0,
    forget_bias=0.0,  # used when the model is made (CaptioningRNN); kept with the settings
    clip_norm=0.0,
    softmax="full",  # the model's output layer (captioner.adaptive); read when it is built
    softmax_cutoffs=None,
    seed=0,
    val_size=1000,
    save_every=1000,
    eval_every=0,
    eval_images=200,
    keep_best="loss",
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


def train(data, model, run_dir=None, state=None, progress=True, log=print, **settings):
    """Train `model` on data['train_*'] and return the final state dict.

    settings: see DEFAULTS; other keys (the data path, ...) are kept in the
    checkpoint for --resume. state: from resume_state() to continue a run.
    run_dir None trains without writing anything (the overfit check).
    """
    from tqdm import tqdm

    s = dict(DEFAULTS, **settings)
    if (
        state is None
        and run_dir
        and any(os.path.exists(os.path.join(run_dir, f"{n}.npz")) for n in ("last", "best"))
    ):
        raise CaptionerError(
            f"{run_dir}: already holds a run; continue it with --resume "
            f"{run_dir} "
            f"or choose another --out"
        )
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

    def save(name):
        if run_dir is None:
            return None
        path = os.path.join(run_dir, f"{name}.npz")
        scalars, arrays = _split_optim(state["optim"])
        meta = dict(
            checkpoint.model_meta(model, data),
            created=datetime.datetime.now().isoformat(timespec="seconds"),
            training={k: v for k, v in state.items() if not k.endswith("history") and k != "optim"}
            | {"optim": scalars},
        )
        checkpoint.save(
            path,
            model.params,
            meta,
            arrays,
            {
                "loss": np.asarray(losses, dtype=np.float64),
                "grad_norm": np.asarray(norms, dtype=np.float64),
                "clipped": np.asarray(clips, dtype=np.float64),
            },
        )
        history = {
            "settings": state["settings"],
            "epochs": state["epochs"],
            "best": state["best"],
            "step": state["step"],
            "loss": [round(x, 5) for x in losses],
            "grad_norm": [round(x, 5) for x in norms],
            "clipped": [int(c) for c in clips],
        }
        atomic.write_json(os.path.join(run_dir, "history.json"), history)
        return path

    with SignalFlag() as flag:
        while state["epoch"] < s["epochs"]:
            epoch = state["epoch"]
            order = np.random.default_rng([s["seed"], epoch]).permutation(n)
            start = state["step_in_epoch"]
            t0 = time.perf_counter()
            bar = tqdm(
                range(start, steps_per_epoch),
                initial=start,
                total=steps_per_epoch,
                desc=f"epoch {epoch + 1}/{s['epochs']}",
                disable=None if progress else True,  # None: only on a terminal, never in logs
                leave=False,
                unit="batch",
                dynamic_ncols=True,
            )
            running = None
            for it in bar:
                idx = order[it * B : (it + 1) * B]
                loss, grads = model.loss(*batch(data, "train", idx))
                loss = float(loss)
                norm = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    where = f"; last good checkpoint: {run_dir}/last.npz" if run_dir else ""
                    raise CaptionerError(
                        f"training diverged at epoch {epoch + 1}, step {it + 1}: "
                        f"loss is {loss}; lower --lr or set --clip-norm{where}",
                        exit_code=1,
                    )
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
                bar.set_postfix(loss=f"{running:.3f}", refresh=False)
                if flag.signum is not None:
                    bar.close()
                    path = save("last")
                    raise Interrupted(flag.signum, path)
                if run_dir and s["save_every"] and state["step"] % s["save_every"] == 0:
                    save("last")
            bar.close()
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
            if s["eval_every"] and (epoch + 1) % s["eval_every"] == 0:
                record.update(eval_metrics(model, data, s["eval_images"]))
            for cfg in state["optim"].values():
                cfg["learning_rate"] *= s["lr_decay"]
            state["epochs"].append(record)
            state["epoch"] += 1
            state["step_in_epoch"] = 0
            log(format_record(record, s["epochs"]))
            better = _improved(state["best"], record, s["keep_best"])
            if better:
                state["best"] = better
            # best first: a kill in between never leaves `last` naming a best.npz that was
            # not written (a resume replays the epoch and saves it)
            if better and run_dir:
                save("best")
            save("last")
            if flag.signum is not None:
                raise Interrupted(
                    flag.signum, os.path.join(run_dir, "last.npz") if run_dir else None
                )
    return state


def _improved(best, record, keep_best):
    key = {"loss": "val_loss", "cider": "CIDEr"}[keep_best]
    if key not in record:
        key = "train_loss"
    value = record[key]
    higher = key == "CIDEr"
    if best is None or best["metric"] != key:
        better = True
    else:
        better = value > best["value"] if higher else value < best["value"]
    if better:
        return {"metric": key, "value": value, "epoch": record["epoch"]}
    return None


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


def eval_metrics(model, data, n_images):
    """BLEU-4 and CIDEr-D of greedy captions on the first n_images val images (a fixed subset)."""
    from .evaluation import caption_split
    from .metrics import score

    ids, generated, refs = caption_split(
        model,
        data,
        "val",
        max_images=n_images,
        beam_size=1,
        max_length=data["val_captions"].shape[1] - 1,
    )
    scores, _ = score(dict(zip(ids, refs)), dict(zip(ids, generated)), meteor=False)
    return {"Bleu_4": scores["Bleu_4"], "CIDEr": scores["CIDEr"]}


# ---------------------------------------------------------------- overfit

OVERFIT_LIMITS = {"rnn": 0.1, "lstm": 0.5}  # CS231n's bars for the final loss


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
    progress=False,
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
    from .data import decode_captions

    _, first = np.unique(data["train_image_idxs"], return_index=True)
    rows = np.sort(first)[:n]
    small = dict(
        data,
        train_captions=data["train_captions"][rows],
        train_image_idxs=data["train_image_idxs"][rows],
    )
    model = CaptioningRNN(
        data["word_to_idx"],
        input_dim=data["feature_dim"],
        wordvec_dim=wordvec_dim,
        hidden_dim=hidden_dim,
        cell_type=cell,
        seed=seed,
    )
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
