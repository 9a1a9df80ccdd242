"""`captioner compare`: the RNN and the LSTM (and L2 strengths) trained alike, in one table.

Every run gets the same data, data order, initialisation seed and settings; only the cell
(and the weight decay) differ. Layout of the parent directory:

    compare.json     the plan (cells, weight decays, settings), then the results
    gradients.json   the gradient flow of every trained model (`captioner gradients --json`)
    compare-loss.png, gradients.png   their charts (the names `captioner report` looks for)
    <cell>[-wd<L2>]/ one ordinary run directory each (`captioner train --resume` works on it)

A killed compare resumes run by run: finished runs are kept, the interrupted one continues
from its last.npz, exactly as `train --resume` would.
"""

import os

import numpy as np

from . import atomic, checkpoint, gradients, runs, training
from .errors import CaptionerError
from .model import CaptioningRNN

PLAN = "compare.json"


def run_names(cells, weight_decays):
    """-> [(run name, cell, weight decay)], cells within each L2 strength."""
    several = len(weight_decays) > 1
    return [
        (f"{cell}-wd{wd:g}" if several else cell, cell, wd)
        for wd in weight_decays
        for cell in cells
    ]


def new_plan(parent, cells, weight_decays, settings, hidden_dim, wordvec_dim):
    """Start a comparison in `parent` (created): write its plan. -> plan dict."""
    if os.path.exists(os.path.join(parent, PLAN)):
        raise CaptionerError(
            f"{parent}: already holds a comparison; continue it with "
            f"--resume {parent} or choose another --out"
        )
    if len(set(cells)) != len(cells) or len(set(weight_decays)) != len(weight_decays):
        raise CaptionerError("--cell and --weight-decay values must not repeat")
    runs.make_dir(parent)
    plan = {
        "cells": list(cells),
        "weight_decays": [float(w) for w in weight_decays],
        "model": {"hidden_dim": hidden_dim, "wordvec_dim": wordvec_dim},
        "settings": dict(settings),
        "results": None,
    }
    atomic.write_json(os.path.join(parent, PLAN), plan, what="comparison plan")
    return plan


def load_plan(parent, epochs=None):
    """The plan of a comparison to resume; epochs (optional) extends it and is saved.
    -> plan dict."""
    from .data import read_json

    path = os.path.join(parent, PLAN)
    if not os.path.exists(path):
        raise CaptionerError(
            f"{path}: not found; --resume takes the directory a "
            f"`captioner compare` wrote (its --out)"
        )
    plan = read_json(path, "comparison plan")
    try:
        ok = (
            all(c in ("rnn", "lstm") for c in plan["cells"])
            and all(isinstance(w, (int, float)) and w >= 0 for w in plan["weight_decays"])
            and isinstance(plan["settings"], dict)
            and plan["model"]["hidden_dim"] > 0
            and plan["model"]["wordvec_dim"] > 0
            and plan["cells"]
            and plan["weight_decays"]
        )
    except (KeyError, TypeError):
        ok = False
    why = None if ok else "not a comparison plan this captioner wrote"
    if ok and "epochs" not in plan["settings"]:  # edited since: its settings must still train
        why = "settings.epochs is missing"
    why = why or checkpoint.settings_problem(plan["settings"], "settings")
    if why:
        raise CaptionerError(f"{path}: {why}; start a new comparison with another --out")
    if epochs is not None and epochs != plan["settings"].get("epochs"):
        plan["settings"]["epochs"] = epochs
        atomic.write_json(path, plan, what="comparison plan")
    return plan


def train_runs(data, parent, plan, progress=True, log=print):
    """Train (or finish) every run of the plan. -> [(name, model, state)].

    Raises runs.Interrupted on Ctrl-C / SIGTERM after saving the current run."""
    out = []
    for name, cell, wd in run_names(plan["cells"], plan["weight_decays"]):
        run_dir = os.path.join(parent, name)
        settings = dict(plan["settings"], weight_decay=wd)
        state = None
        if any(os.path.exists(os.path.join(run_dir, n)) for n in ("last.npz", "best.npz")):
            last = runs.find_checkpoint(run_dir)  # last.npz, or best.npz if killed in between
            model, meta, optim, history = checkpoint.load_model(last)
            checkpoint.check_compatible(last, meta, data)
            state = training.resume_state(meta, optim, history, path=last)
            if state["epoch"] >= settings["epochs"]:
                log(f"{name}: done earlier ({state['epoch']} epochs), {run_dir}")
                out.append((name, model, state))
                continue
            settings = dict(state["settings"], epochs=settings["epochs"])
            log(f"{name}: resuming {last} at epoch {state['epoch'] + 1}, step {state['step']}")
        else:
            model = CaptioningRNN(
                data["word_to_idx"],
                input_dim=data["feature_dim"],
                wordvec_dim=plan["model"]["wordvec_dim"],
                hidden_dim=plan["model"]["hidden_dim"],
                cell_type=cell,
                seed=settings["seed"],
            )
            runs.make_dir(run_dir)
            log(f"{name}: {cell}, weight decay {wd:g} -> {run_dir}")
        with runs.run_lock(run_dir):
            state = training.train(
                data,
                model,
                run_dir,
                state=state,
                progress=progress,
                log=lambda line, name=name: log(f"{name}: {line}"),
                **settings,
            )
        out.append((name, model, state))
    return out


def _seconds_per_step(epochs):
    steps = np.diff([0] + [r["step"] for r in epochs])
    return sum(r["seconds"] for r in epochs) / max(1, int(steps.sum()))


def results(data, trained, count=500, eval_images=200):
    """Final figures of trained runs: [(name, model, state)] -> {"runs": [...]} with per run
    its epochs, greedy BLEU-4 / CIDEr-D on the first eval_images val images, seconds per
    training step, parameter count and the gradient flow on the first `count` val captions."""
    from .evaluation import caption_split
    from .metrics import score

    feats, caps = gradients.first_captions(data, "val", count)
    runs = []
    for name, model, state in trained:
        ids, generated, refs = caption_split(
            model,
            data,
            "val",
            max_images=eval_images,
            beam_size=1,
            max_length=data["val_captions"].shape[1] - 1,
        )
        scores, _ = score(dict(zip(ids, refs)), dict(zip(ids, generated)), meteor=False)
        runs.append(
            {
                "name": name,
                "cell": model.cell_type,
                "weight_decay": state["settings"].get("weight_decay", 0.0),
                "epochs": state["epochs"],
                "Bleu_4": scores["Bleu_4"],
                "CIDEr": scores["CIDEr"],
                "images": len(ids),
                "seconds_per_step": _seconds_per_step(state["epochs"]),
                "parameters": int(sum(p.size for p in model.params.values())),
                "gradients": gradients.measure(model, feats, caps, label=name),
            }
        )
    return {"runs": runs, "gradient_captions": len(caps)}


def save_results(parent, plan, res):
    """compare.json gets the results; gradients.json the gradient flow of every run."""
    atomic.write_json(os.path.join(parent, PLAN), dict(plan, results=res), what="comparison")
    atomic.write_json(
        os.path.join(parent, "gradients.json"),
        {"runs": [r["gradients"] for r in res["runs"]]},
        what="gradient report",
    )


def format_results(res):
    """The comparison table. -> list of lines."""
    runs = res["runs"]
    W = max(12, *(len(r["name"]) + 8 for r in runs))
    lines = [
        "loss per epoch (train = mean over the epoch's batches, val = fixed val subset)",
        "epoch" + "".join(f"{r['name'] + ' train':>{W}}{r['name'] + ' val':>{W}}" for r in runs),
    ]
    for e in range(max(len(r["epochs"]) for r in runs)):
        row = f"{e + 1:5d}"
        for r in runs:
            rec = r["epochs"][e] if e < len(r["epochs"]) else {}
            row += "".join(
                f"{rec[k]:{W}.4f}" if k in rec else f"{'-':>{W}}"
                for k in ("train_loss", "val_loss")
            )
        lines.append(row)

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    n = runs[0]["images"]
    table = [
        (f"BLEU-4 (val, greedy, {n} images)", lambda r: fmt(r["Bleu_4"], ".3f")),
        (f"CIDEr-D (val, greedy, {n} images)", lambda r: fmt(r["CIDEr"], ".3f")),
        ("time per training step (ms)", lambda r: fmt(1000 * r["seconds_per_step"], ".1f")),
        ("parameters", lambda r: f"{r['parameters']:,}"),
        ("weight decay (L2)", lambda r: f"{r['weight_decay']:g}"),
        ("gradient gain per step", lambda r: fmt(r["gradients"]["gain_per_step"], ".3f")),
        ("signal halves every (steps)", lambda r: fmt(r["gradients"]["halving_steps"], ".1f")),
        ("||dl/dh|| at d = 0", lambda r: fmt(_at(r, 0), ".2e")),
        (f"||dl/dh|| at d = {_far(runs)}", lambda r: fmt(_at(r, _far(runs)), ".2e")),
        ("sigma_max(Wh)", lambda r: fmt(r["gradients"]["sigma_max_Wh"], ".2f")),
        ("forget gate mean", lambda r: fmt(_forget(r), ".3f")),
    ]
    lines += ["", f"{'final':34}" + "".join(f"{r['name']:>{W}}" for r in runs)]
    lines += [f"{label:34}" + "".join(f"{get(r):>{W}}" for r in runs) for label, get in table]
    lines.append(f"(gradient flow: mean over the first {res['gradient_captions']} val captions)")
    return lines


def _far(runs):
    """The largest distance every run reports."""
    return min((r["gradients"]["by_distance"] or [{"d": 0}])[-1]["d"] for r in runs)


def _at(run, d):
    return next((x["h"] for x in run["gradients"]["by_distance"] if x["d"] == d), None)


def _forget(run):
    fg = run["gradients"]["forget_gate_mean"]
    return float(np.mean([x["mean"] for x in fg])) if fg else None
