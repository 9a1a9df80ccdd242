"""captioner.seeds: the spread of per-seed figures and verdicts counted in seeds, on
hand-made per-seed results (no training)."""

import math

import pytest

from captioner import seeds


def result(train1, train, val, bleu, cider, gain, sigma=2.0, forget=None):
    """A per-seed compare result with just the fields the figures read."""
    return {
        "history": [{"train_loss": train1}, {"train_loss": train, "val_loss": val}],
        "Bleu_4": bleu,
        "CIDEr": cider,
        "seconds_per_step": 0.01,
        "gradients": {
            "gain_per_step": gain,
            "halving_steps": math.log(0.5) / math.log(gain) if gain < 1 else None,
            "sigma_max_Wh": sigma,
            "forget_gate_mean": None if forget is None else [{"mean": forget}],
        },
    }


def test_spread_of_per_seed_values():
    s = seeds.spread([6.7, 6.5, None, 6.9])
    assert s["values"] == [6.7, 6.5, None, 6.9] and s["n"] == 3
    assert s["mean"] == pytest.approx(6.7) and s["min"] == 6.5 and s["max"] == 6.9
    assert s["std"] == pytest.approx(0.2)  # sample std: sqrt((0 + 0.04 + 0.04) / 2)
    one = seeds.spread([3.0])
    assert (one["mean"], one["std"], one["n"]) == (3.0, None, 1)
    assert seeds.spread([None, None])["n"] == 0 and seeds.spread([None])["mean"] is None
    assert seeds.fmt(s, ".2f") == "6.70 +- 0.20" and seeds.fmt(one, ".1f") == "3.0"
    assert seeds.fmt(seeds.spread([]), ".1f") == "-"


def test_figures_are_the_spread_of_their_per_seed_inputs():
    runs = [result(20, 4.0, 6.0, 0.5, 3.0, 0.90, forget=0.6), result(22, 4.2, 6.4, 0.7, 3.2, 0.80)]
    f = seeds.figures(runs)
    assert f["first_train_loss"]["values"] == [20, 22] and f["first_train_loss"]["mean"] == 21
    assert f["val_loss"]["values"] == [6.0, 6.4] and f["val_loss"]["mean"] == pytest.approx(6.2)
    assert f["Bleu_4"]["max"] == 0.7 and f["CIDEr"]["min"] == 3.0
    assert f["gain_per_step"]["values"] == [0.90, 0.80]
    assert f["halving_steps"]["mean"] == pytest.approx(
        (math.log(0.5) / math.log(0.9) + math.log(0.5) / math.log(0.8)) / 2
    )
    assert f["forget_gate_mean"]["values"] == [0.6, None] and f["forget_gate_mean"]["n"] == 1
    assert "forget_gate_mean" not in seeds.figures([result(1, 1, 1, 0, 0, 0.9)])


def setting(name, cell, runs, wd=0.0, fb=0.0, seed_list=None):
    return {
        "name": name,
        "cell": cell,
        "weight_decay": wd,
        "forget_bias": fb,
        "seeds": seed_list or list(range(len(runs))),
        "results": runs,
    }


def test_a_verdict_holds_only_in_every_seed():
    rnn = setting("rnn", "rnn", [result(17, 4, 6.7, 0.5, 3.1, 0.92) for _ in range(3)])
    lstm = setting(
        "lstm",
        "lstm",
        [
            result(20, 3.5, 5.9, 0.6, 3.4, 0.90, forget=0.6),
            result(21, 3.4, 6.0, 0.6, 3.3, 0.93, forget=0.6),
            result(19, 3.6, 6.8, 0.4, 3.0, 0.89, forget=0.6),
        ],
    )
    v = seeds.verdict(lstm, rnn, "val_loss", False, 2)
    assert v["holding"] == [0, 1] and v["n"] == 3 and not v["holds"]
    assert v["a_spread"]["values"] == [5.9, 6.0, 6.8] and v["b_spread"]["mean"] == 6.7
    line = seeds.format_verdict(v)
    assert line.startswith("lstm final val loss below rnn's in 2 of 3 seeds (not in every seed)")
    assert "mean 6.233 +- 0.493 vs 6.700 +- 0.000" in line
    up = seeds.verdict(lstm, rnn, "first_train_loss", True, 1)
    assert up["holds"] and "in 3 of 3 seeds (holds)" in seeds.format_verdict(up)
    down = seeds.verdict(lstm, rnn, "first_train_loss", False, 1)
    assert down["holding"] == [] and "(in no seed)" in seeds.format_verdict(down)
    # seeds are paired by number: a seed only one setting ran does not count
    short = setting("rnn", "rnn", rnn["results"][:2], seed_list=[1, 2])
    v = seeds.verdict(lstm, short, "val_loss", False, 2)
    assert v["seeds"] == [1, 2] and v["holding"] == [1] and v["n"] == 2
    # a figure a cell lacks (the RNN's forget gate) gives no seeds, and never "holds"
    v = seeds.verdict(rnn, lstm, "forget_gate_mean", True, "x")
    assert v["n"] == 0 and not v["holds"] and "no seed measured both" in seeds.format_verdict(v)


def test_verdicts_pair_every_cell_with_the_first_and_l2_and_bias_with_their_baselines():
    def runs(val, gain, forget=None):
        return [
            result(20, 4, val + k, 0.5, 3, gain, sigma=3 - val / 10, forget=forget)
            for k in (0, 0.1)
        ]

    settings = [
        setting("rnn", "rnn", runs(6.7, 0.92)),
        setting("lstm-fb0", "lstm", runs(5.9, 0.90, 0.5)),
        setting("lstm-fb1", "lstm", runs(5.8, 0.95, 0.7), fb=1.0),
        setting("gru", "gru", runs(6.0, 0.97)),  # any cell: none is named in the verdict code
        setting("rnn-wd0.01", "rnn", runs(6.5, 0.93), wd=0.01),
    ]
    vs = seeds.verdicts(settings)
    pairs = {(v["claim"], v["a"], v["b"], v["figure"]) for v in vs}
    for other in ("lstm-fb0", "lstm-fb1", "gru"):
        for claim, figure, _ in seeds.CELL_CHECKS:
            assert (claim, other, "rnn", figure) in pairs
    assert ("L2", "rnn-wd0.01", "rnn", "val_loss") in pairs
    assert ("forget bias", "lstm-fb1", "lstm-fb0", "gain_per_step") in pairs
    assert not any(v["b"] == "rnn-wd0.01" for v in vs if v["claim"] != "L2")  # same L2 only
    by = {(v["claim"], v["a"], v["figure"]): v for v in vs}
    assert by[(3, "gru", "gain_per_step")]["holds"]
    assert not by[(3, "lstm-fb0", "gain_per_step")]["holding"]
    assert by[("forget bias", "lstm-fb1", "forget_gate_mean")]["holds"]
    assert by[("L2", "rnn-wd0.01", "val_loss")]["holds"]
    lines = seeds.format_verdicts(vs)
    assert lines[0] == "claim 1, the loss falls more mildly:"
    assert "a forget-gate bias keeps the gradient:" in lines
    assert sum(ln.startswith("  ") for ln in lines) == len(vs)
