"""`captioner compare`: the cells (and L2 strengths, forget-gate biases) trained alike over
several seeds, in one table with each figure's spread and verdicts by seed count.

A setting is a cell, a weight decay and, for a cell with a forget gate, its initial bias;
every setting is trained once per seed (the seed picks initialisation, data order and val
subset), all with the same data and other settings. Layout of the parent directory:

    compare.json     the plan (cells, weight decays, forget biases, seeds, settings), then
                     the results: per run, per setting (figures over seeds) and verdicts
    gradients.json   the gradient flow of every trained model (`captioner gradients --json`)
    compare-loss.png, gradients.png   their charts (the names `captioner report` looks for)
    <cell>[-wd<L2>][-fb<bias>][-seed<k>]/   one ordinary run directory each (`captioner
                     train --resume` works on it), laid out as a sweep's run: run.json,
                     train.log, result.json (this run's figures, written last)

Runs go through captioner.sweep's runner: one after the other in this process, or
`parallel` subprocesses, or Dask tasks; a run is the run `captioner train` makes with the
same options, wherever it runs. A killed compare resumes run by run: finished runs are
kept, the others continue from their last.npz, exactly as `train --resume` would.
"""

import logging
import os

from . import atomic, checkpoint, gradients, seeds, sweep
from .cells import CELLS, WITH_FORGET_GATE
from .errors import CaptionerError
from .evaluation import greedy_scores

LOG = logging.getLogger("captioner")  # the CLI shows it on stderr

PLAN = "compare.json"
EVAL_IMAGES = 200  # val images captioned for BLEU-4 / CIDEr-D
# settings the plan lists (one run per value), not kept among its shared settings
PER_RUN = ("weight_decay", "forget_bias", "seed")


def settings_of(plan):
    """-> [{"name", "cell", "weight_decay", "forget_bias"}]: cells within each L2 strength,
    forget-gate biases within a cell that has a forget gate (others run with none)."""
    wds, fbs = plan["weight_decays"], plan["forget_biases"]
    out = []
    for wd in wds:
        for cell in plan["cells"]:
            for fb in fbs if cell in WITH_FORGET_GATE else [0.0]:
                name = cell + (f"-wd{wd:g}" if len(wds) > 1 else "")
                if cell in WITH_FORGET_GATE and (len(fbs) > 1 or fb):
                    name += f"-fb{fb:g}"
                out.append({"name": name, "cell": cell, "weight_decay": wd, "forget_bias": fb})
    return out


def run_names(plan):
    """-> [(run directory name, setting, seed)], seeds within each setting."""
    several = len(plan["seeds"]) > 1
    return [
        (s["name"] + (f"-seed{seed}" if several else ""), s, seed)
        for s in settings_of(plan)
        for seed in plan["seeds"]
    ]


def new_plan(parent, cells, weight_decays, forget_biases, seed_list, settings, model, count):
    """Start a comparison in `parent` (created): write its plan. settings: the runs'
    shared training settings (config.settings_of; PER_RUN's are dropped); model: {"hidden_dim",
    "wordvec_dim"}; count: val captions for the gradient flow. -> plan dict."""
    from . import runs

    if os.path.exists(os.path.join(parent, PLAN)):
        raise CaptionerError(
            f"{parent}: already holds a comparison; continue it with "
            f"--resume {parent} or choose another --out"
        )
    for flag, values in [
        ("--cell", cells),
        ("--weight-decay", weight_decays),
        ("--forget-bias", forget_biases),
        ("--seed", seed_list),
    ]:
        if len(set(values)) != len(values):
            raise CaptionerError(f"{flag} values must not repeat")
    runs.make_dir(parent)
    plan = {
        "cells": list(cells),
        "weight_decays": [float(w) for w in weight_decays],
        "forget_biases": [float(b) for b in forget_biases],
        "seeds": [int(s) for s in seed_list],
        "model": dict(model),
        "settings": {k: v for k, v in settings.items() if k not in PER_RUN},
        "gradient_captions": count,
        "results": None,
    }
    atomic.write_json(os.path.join(parent, PLAN), plan, what="comparison plan")
    return plan


def load_plan(parent, epochs=None, data_dir=None, seed_list=None, flag="--resume", cells=None):
    """The plan of a comparison to resume; epochs, data_dir (the dataset moved), seed_list
    and cells (more seeds or cells: those of the plan and new ones), all optional, change it
    and are saved. Plans of one seed and no forget-gate bias (written before those existed)
    read as such. flag: the option that named parent. -> plan dict."""
    from .data import read_json

    path = os.path.join(parent, PLAN)
    if not os.path.exists(path):
        raise CaptionerError(
            f"{path}: not found; {flag} takes the directory a "
            f"`captioner compare` wrote (its --out)"
        )
    plan = read_json(path, "comparison plan")
    try:
        plan.setdefault("forget_biases", [0.0])
        plan.setdefault("seeds", [plan["settings"].pop("seed", 0)])
        plan.setdefault("gradient_captions", 500)
        ok = (
            plan["cells"]
            and all(c in CELLS for c in plan["cells"])
            and all(
                isinstance(w, (int, float)) and w >= 0
                for w in plan["weight_decays"] + plan["forget_biases"]
            )
            and all(type(s) is int and s >= 0 for s in plan["seeds"])
            and isinstance(plan["settings"], dict)
            and plan["model"]["hidden_dim"] > 0
            and plan["model"]["wordvec_dim"] > 0
            and plan["weight_decays"]
            and plan["forget_biases"]
            and plan["seeds"]
        )
    except (KeyError, TypeError, AttributeError):
        ok = False
    why = None if ok else "not a comparison plan this captioner wrote"
    if ok and "epochs" not in plan["settings"]:  # edited since: its settings must still train
        why = "settings.epochs is missing"
    why = why or checkpoint.settings_problem(plan["settings"], "settings")
    if why:
        raise CaptionerError(f"{path}: {why}; start a new comparison with another --out")
    # a run's name holds its seed only when there are several: one seed cannot become more
    _add(plan, "seeds", seed_list, path, fixed=len(plan["seeds"]) == 1)
    _add(plan, "cells", cells, path)  # the runs of the plan's cells keep their names
    changed = {}
    if epochs is not None and epochs != plan["settings"].get("epochs"):
        changed["epochs"] = epochs
    if data_dir is not None and os.path.abspath(data_dir) != plan["settings"].get("data_dir"):
        changed["data_dir"] = os.path.abspath(data_dir)
    if changed:
        plan["settings"].update(changed)
        atomic.write_json(path, plan, what="comparison plan")
    return plan


def _add(plan, key, values, path, fixed=False):
    """Append to plan[key] (seeds, cells) the new ones of values, which must hold all the
    plan's; the plan is saved and its results dropped. values None: unchanged; fixed: no
    value can be added (a single seed)."""
    if values is None or list(values) == plan[key]:
        return
    if fixed or not set(plan[key]) <= set(values):
        raise CaptionerError(
            f"{path}: {key} {_list(plan[key])}; --resume can add {key} to a comparison"
            f"{' of several' if fixed else ''}, not drop any; start a new comparison "
            f"with another --out"
        )
    plan[key] += [v for v in dict.fromkeys(values) if v not in plan[key]]
    plan["results"] = None
    atomic.write_json(path, plan, what="comparison plan")


def run_spec(plan, setting, seed):
    """A run's run.json: the settings of a `captioner sweep` run."""
    s = plan["settings"]
    spec = {k: s[k] for k in sweep.RUN_KEYS if k in s}
    spec.update(
        data=s["data_dir"],
        features=s["features"],
        max_train=s.get("max_train"),
        cell=setting["cell"],
        weight_decay=setting["weight_decay"],
        forget_bias=setting["forget_bias"],
        seed=seed,
        hidden_dim=plan["model"]["hidden_dim"],
        wordvec_dim=plan["model"]["wordvec_dim"],
    )
    return spec


# ---------------------------------------------------------------- one run


def run_one(run_dir):
    """Train (or finish) one run of a comparison, then score_run it: the task of
    `compare --parallel` subprocesses and Dask workers. -> its result."""
    return sweep.run_one(run_dir, score=score_run)


def score_run(run_dir, state, data):
    """The figures of a trained run (its last.npz), also those `captioner sweep` reports:
    per-epoch records ("history"), greedy BLEU-4 / CIDEr-D on the first EVAL_IMAGES val images,
    seconds per training step, parameter count and the gradient flow on the first
    gradient_captions val captions (of the comparison's plan, in run_dir's parent)."""
    count = load_plan(os.path.dirname(os.path.abspath(run_dir)))["gradient_captions"]
    model, _, _, _ = checkpoint.load_model(os.path.join(run_dir, "last.npz"))
    scores, _ = greedy_scores(model, data, EVAL_IMAGES)
    feats, caps = gradients.first_captions(data, "val", count)
    records = state["epochs"]
    steps = records[-1]["step"] if records else 0
    seconds = sum(r["seconds"] for r in records)
    losses = [r["val_loss"] for r in records if "val_loss" in r]
    return {
        "epochs": state["epoch"],
        "history": records,
        "Bleu_4": scores["Bleu_4"],
        "CIDEr": scores["CIDEr"],
        "best_val_loss": min(losses) if losses else None,
        "seconds": round(seconds, 2),
        "seconds_per_step": seconds / max(1, steps),
        "parameters": int(sum(p.size for p in model.params.values())),
        "gradient_captions": len(caps),
        "gradients": gradients.measure(model, feats, caps, label=os.path.basename(run_dir)),
    }


# ---------------------------------------------------------------- all runs


def train_runs(parent, plan, parallel=1, scheduler=None, progress=None, log=LOG.info):
    """Train (or finish) every run of the plan; parallel 1 without a scheduler trains in
    this process (progress: as training.train's), else through sweep.run_all. Raises CaptionerError
    naming a failed run, training.Interrupted on Ctrl-C / SIGTERM after saving the current run."""
    planned = run_names(plan)
    todo = []
    for name, _, _ in planned:
        run_dir = os.path.join(parent, name)
        if sweep.finished(run_dir, plan["settings"]["epochs"]) is not None:
            log(f"{name}: done earlier, {run_dir}")
        else:
            todo.append(run_dir)

    def setup():  # a finished run is kept as it is, run.json too
        from . import runs

        for name, setting, seed in planned:
            run_dir = os.path.join(parent, name)
            if run_dir not in todo:
                continue
            runs.make_dir(run_dir)
            spec, path = run_spec(plan, setting, seed), os.path.join(run_dir, "run.json")
            if not os.path.exists(path) or sweep._read(path) != spec:
                atomic.write_json(path, spec)

    if parallel == 1 and scheduler is None:
        setup()
        for run_dir in todo:
            name = os.path.basename(run_dir)
            log(f"{name} -> {run_dir}")
            sweep.run_one(
                run_dir,
                score=score_run,
                echo=lambda line, name=name: log(f"{name}: {line}"),
                progress=progress,
            )
        return
    failed = sweep.run_all(todo, setup, parallel, scheduler, task=run_one, log=log)
    if failed:
        run_dir, why = next(iter(failed.items()))
        raise CaptionerError(
            f"{run_dir}: failed ({why}); see its train.log, then continue with --resume {parent}",
            exit_code=1,
        )


def collect(parent, plan):
    """The finished runs' results -> {"runs": [...], "settings": [...], "verdicts": [...]}:
    per run its result (score_run) with name, setting and seed; per setting its runs, the
    spread of every figure (seeds.figures) and of each epoch's losses; the verdicts."""
    runs = []
    for name, setting, seed in run_names(plan):
        result = sweep.finished(os.path.join(parent, name), plan["settings"]["epochs"])
        if result is None:
            raise CaptionerError(
                f"{os.path.join(parent, name)}: not finished; continue with --resume {parent}"
            )
        runs.append(dict(result, name=name, setting=setting["name"], seed=seed))
    groups, settings = [], []
    for s in settings_of(plan):
        mine = [r for r in runs if r["setting"] == s["name"]]
        groups.append(dict(s, seeds=[r["seed"] for r in mine], results=mine))
        epochs = min(len(r["history"]) for r in mine)
        settings.append(
            dict(
                s,
                runs=[r["name"] for r in mine],
                seeds=[r["seed"] for r in mine],
                parameters=mine[0]["parameters"],
                figures=seeds.figures(mine),
                epochs=[
                    {
                        "epoch": e + 1,
                        **{
                            k: seeds.spread([r["history"][e].get(k) for r in mine])
                            for k in ("train_loss", "val_loss")
                        },
                    }
                    for e in range(epochs)
                ],
            )
        )
    return {
        "runs": runs,
        "settings": settings,
        "verdicts": seeds.verdicts(groups),
        "seeds": plan["seeds"],
        "gradient_captions": runs[0]["gradient_captions"],
    }


def save_results(parent, plan, res):
    """compare.json gets the results; gradients.json the gradient flow of every run."""
    atomic.write_json(os.path.join(parent, PLAN), dict(plan, results=res), what="comparison")
    atomic.write_json(
        os.path.join(parent, "gradients.json"),
        {"runs": [r["gradients"] for r in res["runs"]]},
        what="gradient report",
    )


def draw(parent, res, plot=None):
    """compare-loss.png (and plot, if given) and gradients.png: each setting's mean over
    seeds with its min-max band."""
    from . import plots

    for path in filter(None, [plot, os.path.join(parent, "compare-loss.png")]):
        plots.loss_plot([(s["name"], s["epochs"]) for s in res["settings"]], path)
    by_name = {r["name"]: r["gradients"] for r in res["runs"]}
    plots.gradient_plot(
        [(s["name"], [by_name[n] for n in s["runs"]]) for s in res["settings"]],
        os.path.join(parent, "gradients.png"),
    )


def format_results(res):
    """The comparison table: per-epoch losses, every figure's spread, the verdicts. -> lines."""
    settings = res["settings"]
    n_seeds = len(res["seeds"])
    over = (
        f"seed {res['seeds'][0]}" if n_seeds == 1 else f"{n_seeds} seeds ({_list(res['seeds'])})"
    )
    W = max(17, *(len(s["name"]) + 8 for s in settings))
    lines = [
        f"loss per epoch, mean +- std over {over} (train = mean over the epoch's batches, "
        f"val = fixed val subset)",
        "epoch"
        + "".join(f"{s['name'] + ' train':>{W}}{s['name'] + ' val':>{W}}" for s in settings),
    ]
    for e in range(max(len(s["epochs"]) for s in settings)):
        row = f"{e + 1:5d}"
        for s in settings:
            rec = s["epochs"][e] if e < len(s["epochs"]) else {}
            row += "".join(
                f"{seeds.fmt(rec.get(k), '.3f'):>{W}}" for k in ("train_loss", "val_loss")
            )
        lines.append(row)
    lines += ["", "settings"]
    lines += [
        f"  {s['name']}: {s['cell']}, weight decay {s['weight_decay']:g}"
        + (f", forget-gate bias {s['forget_bias']:g}" if s["cell"] in WITH_FORGET_GATE else "")
        + f", {s['parameters']:,} parameters"
        for s in settings
    ]
    N = max(len(s["name"]) for s in settings) + 2
    head = f"{'':{N}}" + "".join(f"{k:>9}" for k in ("mean", "std", "min", "max"))
    head += f"{'n':>3}   per seed ({_list(res['seeds'])})"
    lines += ["", f"final figures over {over}"]
    labels = {
        "Bleu_4": f"BLEU-4 (val, greedy, first {EVAL_IMAGES} images)",
        "CIDEr": f"CIDEr-D (val, greedy, first {EVAL_IMAGES} images)",
        "gain_per_step": f"gradient gain per step (first {res['gradient_captions']} val captions)",
    }
    for key, (label, _, spec) in seeds.FIGURES.items():
        rows = [(s["name"], s["figures"][key]) for s in settings if key in s["figures"]]
        if not rows:
            continue
        lines += [labels.get(key, label), head]
        for name, f in rows:
            stats = "".join(
                f"{'-' if f[k] is None else format(f[k], spec):>9}"
                for k in ("mean", "std", "min", "max")
            )
            each = " ".join("-" if v is None else format(v, spec) for v in f["values"])
            lines.append(f"  {name:{N - 2}}{stats}{f['n']:3d}   {each}")
    if res["verdicts"]:
        lines += ["", f"verdicts over {over} (a claim holds when it holds in every seed)"]
        lines += seeds.format_verdicts(res["verdicts"])
    return lines


def _list(values):
    return ", ".join(str(v) for v in values)
