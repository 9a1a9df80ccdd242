"""Figures over seeds: their spread, and verdicts that count the seeds a claim holds in.

A claim about two cells is a claim about a distribution of training runs, not about one
run: BLAS sums differ in their last bits between CPUs, so one seed's trajectory does not
repeat on another machine. A verdict here compares two settings seed by seed (the same seed
means the same data order and validation subset) and holds only if it holds in every seed;
otherwise it says in how many.
"""

import math

import numpy as np

# A figure of one run: (label, how to read it from a compare result, format).
# A compare result (compare.score_run) has "history" (epoch records) and "gradients"
# (gradients.measure); the gradient figures also read `captioner gradients` runs alone.
GRADIENT_FIGURES = {
    "gain_per_step": ("gradient gain per step", lambda g: g["gain_per_step"], ".3f"),
    "halving_steps": ("signal halves every (steps)", lambda g: g["halving_steps"], ".1f"),
    "sigma_max_Wh": ("sigma_max(Wh)", lambda g: g["sigma_max_Wh"], ".2f"),
    "forget_gate_mean": ("forget gate mean", lambda g: forget_mean(g), ".3f"),
}
FIGURES = {
    "first_train_loss": ("train loss at epoch 1", lambda r: r["history"][0]["train_loss"], ".3f"),
    "train_loss": ("final train loss", lambda r: r["history"][-1]["train_loss"], ".3f"),
    "val_loss": ("final val loss", lambda r: r["history"][-1].get("val_loss"), ".3f"),
    "Bleu_4": ("BLEU-4", lambda r: r["Bleu_4"], ".3f"),
    "CIDEr": ("CIDEr-D", lambda r: r["CIDEr"], ".3f"),
    **{
        k: (label, lambda r, get=get: get(r["gradients"]), spec)
        for k, (label, get, spec) in GRADIENT_FIGURES.items()
    },
    "ms_per_step": ("time per training step (ms)", lambda r: 1000 * r["seconds_per_step"], ".1f"),
}


def forget_mean(run):
    """The mean forget gate over steps of one gradients.measure() run, None without one."""
    fg = run["forget_gate_mean"]
    return float(np.mean([x["mean"] for x in fg])) if fg else None


def spread(values):
    """Per-seed values (None: not measured, e.g. no forget gate) -> {"values", "n", "mean",
    "std", "min", "max"} over the measured ones; std is the sample standard deviation
    (n - 1), None for n < 2; all None for n = 0."""
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    out = {"values": list(values), "n": n, "mean": None, "std": None, "min": None, "max": None}
    if n:
        mean = math.fsum(xs) / n
        out.update(mean=mean, min=min(xs), max=max(xs))
        if n > 1:
            out["std"] = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    return out


def figures(results, table=FIGURES):
    """[per-seed result] -> {figure: spread()} for every figure of table measured in some seed."""
    out = {}
    for key, (_, get, _) in table.items():
        s = spread([get(r) for r in results])
        if s["n"]:
            out[key] = s
    return out


def fmt(s, spec, std=True):
    """A spread as 'mean +- std' (or the one value of n = 1); '-' when n = 0."""
    if not s or not s["n"]:
        return "-"
    if s["std"] is None or not std:
        return format(s["mean"], spec)
    return f"{s['mean']:{spec}} +- {s['std']:{spec}}"


# ---------------------------------------------------------------- verdicts


def verdict(a, b, figure, higher, claim):
    """Does setting a's figure lie above (higher) or below setting b's, seed by seed?

    a, b: {"name", "seeds": [seed, ...], "results": [per-seed result]} (aligned lists).
    Seeds that only one of them ran, or where either lacks the figure, do not count.
    -> {"claim", "text", "figure", "a", "b", "seeds", "holding", "n", "holds", "a_spread",
    "b_spread"}: holds only if it holds in every one of n >= 1 seeds.
    """
    label, get, _ = FIGURES[figure]
    va = dict(zip(a["seeds"], (get(r) for r in a["results"])))
    vb = dict(zip(b["seeds"], (get(r) for r in b["results"])))
    seeds = [s for s in a["seeds"] if s in vb and va[s] is not None and vb[s] is not None]
    holding = [s for s in seeds if (va[s] > vb[s] if higher else va[s] < vb[s])]
    return {
        "claim": claim,
        "text": f"{a['name']} {label} {'above' if higher else 'below'} {b['name']}'s",
        "figure": figure,
        "a": a["name"],
        "b": b["name"],
        "seeds": seeds,
        "holding": holding,
        "n": len(seeds),
        "holds": bool(seeds) and len(holding) == len(seeds),
        "a_spread": spread([va[s] for s in seeds]),
        "b_spread": spread([vb[s] for s in seeds]),
    }


CLAIMS = {
    1: "the loss falls more mildly",
    2: "both cells end up captioning alike",
    3: "the gradient reaches further back",
    "L2": "an L2 penalty regularises",
    "forget bias": "a forget-gate bias keeps the gradient",
}
# (claim, figure, higher): what each claim predicts of a setting against its baseline
CELL_CHECKS = [
    (1, "first_train_loss", True),
    (1, "train_loss", True),
    (2, "val_loss", False),
    (2, "Bleu_4", True),
    (2, "CIDEr", True),
    (3, "gain_per_step", True),
]
L2_CHECKS = [
    ("L2", "val_loss", False),
    ("L2", "sigma_max_Wh", False),
    ("L2", "gain_per_step", True),
]
BIAS_CHECKS = [("forget bias", "gain_per_step", True), ("forget bias", "forget_gate_mean", True)]


def verdicts(settings):
    """Every verdict a comparison supports. settings: [{"name", "cell", "weight_decay",
    "forget_bias", "seeds", "results"}], the first cell's settings being the baseline.

    Each other cell against the first cell at the same weight decay (claims 1-3; a cell
    with a forget-gate bias against the baseline with the same bias if it has one); each
    weight decay against the smallest, same cell and bias (L2); each forget-gate bias
    against the smallest, same cell and weight decay. -> [verdict()]."""

    def find(**want):
        return next(
            (s for s in settings if all(s[k] == v for k, v in want.items())),
            None,
        )

    base_cell = settings[0]["cell"]
    lowest_wd = min(s["weight_decay"] for s in settings)
    out = []
    for s in settings:
        base = None
        if s["cell"] != base_cell:
            base = find(
                cell=base_cell, weight_decay=s["weight_decay"], forget_bias=s["forget_bias"]
            ) or find(cell=base_cell, weight_decay=s["weight_decay"])
        if base is not None:
            out += [verdict(s, base, f, hi, c) for c, f, hi in CELL_CHECKS]
    for s in settings:
        if s["weight_decay"] > lowest_wd:
            base = find(cell=s["cell"], forget_bias=s["forget_bias"], weight_decay=lowest_wd)
            if base is not None:
                out += [verdict(s, base, f, hi, c) for c, f, hi in L2_CHECKS]
    for s in settings:
        biases = [t["forget_bias"] for t in settings if t["cell"] == s["cell"]]
        if s["forget_bias"] > min(biases):
            base = find(cell=s["cell"], weight_decay=s["weight_decay"], forget_bias=min(biases))
            if base is not None:
                out += [verdict(s, base, f, hi, c) for c, f, hi in BIAS_CHECKS]
    return out


def format_verdict(v):
    """One line: 'lstm final val loss below rnn's in 3 of 3 seeds (holds), mean ...'."""
    spec = FIGURES[v["figure"]][2]
    if not v["n"]:
        return f"{v['text']}: no seed measured both"
    status = "holds" if v["holds"] else "not in every seed" if v["holding"] else "in no seed"
    return (
        f"{v['text']} in {len(v['holding'])} of {v['n']} seeds ({status}), mean "
        f"{fmt(v['a_spread'], spec)} vs {fmt(v['b_spread'], spec)}"
    )


def format_verdicts(vs):
    """The verdicts grouped by claim. -> lines."""
    lines = []
    for claim, what in CLAIMS.items():
        mine = [v for v in vs if v["claim"] == claim]
        if mine:
            lines.append(f"claim {claim}, {what}:" if isinstance(claim, int) else f"{what}:")
            lines += [f"  {format_verdict(v)}" for v in mine]
    return lines
