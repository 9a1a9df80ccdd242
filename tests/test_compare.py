"""`captioner compare`: runs trained exactly as `train` would, one table, resumable."""

import json
import os
import shutil

import numpy as np
import pytest

from captioner import checkpoint
from fixtures import build_dataset
from helpers import assert_same_checkpoint, run

TINY = [
    "--hidden-dim",
    6,
    "--wordvec-dim",
    5,
    "--batch-size",
    10,
    "--val-size",
    10,
    "--quiet",
    "--count",
    25,
    "--lr",
    5e-3,
]


def params(path):
    return checkpoint.load(str(path))[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_dataset(
        tmp_path_factory.mktemp("cmp") / "data",
        n_train_images=10,
        captions_per_image=3,
        n_val_images=6,
        feature_dim=8,
        vocab_size=40,
        seed=4,
    )


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """A finished 2-epoch comparison, uninterrupted."""
    out = tmp_path_factory.mktemp("ref") / "cmp"
    result = run("compare", "--data", data, *TINY, "--epochs", 2, "--out", out)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_compare_trains_like_train_and_reports(data, reference, tmp_path):
    out, output = reference
    assert sorted(os.listdir(out)) == [
        "compare-loss.png",
        "compare.json",
        "gradients.json",
        "gradients.png",
        "lstm",
        "rnn",
    ]
    assert {"run.json", "train.log", "result.json"} <= set(os.listdir(out / "rnn"))
    # each run is the run `captioner train` makes with the same options
    for cell in ("rnn", "lstm"):
        alone = tmp_path / cell
        result = run(
            "train",
            "--data",
            data,
            *TINY[:-4],
            "--quiet",
            "--lr",
            5e-3,
            "--epochs",
            2,
            "--cell",
            cell,
            "--out",
            alone,
        )
        assert result.exit_code == 0, result.output
        assert_same_checkpoint(out / cell / "last.npz", alone / "last.npz")
    plan = json.loads((out / "compare.json").read_text())
    res = plan["results"]["runs"]
    assert [r["name"] for r in res] == ["rnn", "lstm"]
    for r in res:
        hist = json.loads((out / r["name"] / "history.json").read_text())
        assert r["history"] == hist["epochs"]
        assert 0 <= r["Bleu_4"] <= 1 and r["CIDEr"] >= 0 and r["seconds_per_step"] >= 0
        saved = params(out / r["name"] / "last.npz")
        assert r["parameters"] == sum(v.size for v in saved.values())
    assert res[1]["parameters"] > res[0]["parameters"]
    # each figure is what `captioner evaluate` says of that run, greedy, on the same images
    for r in res:
        result = run(
            "evaluate",
            "--checkpoint",
            out / r["name"] / "last.npz",
            "--data",
            data,
            "--beam-size",
            1,
            "--max-images",
            200,
            "--no-meteor",
            "--json",
        )
        assert result.exit_code == 0, result.output
        scores = json.loads(result.output)["scores"]
        assert (r["Bleu_4"], r["CIDEr"]) == (scores["Bleu_4"], scores["CIDEr"]), r["name"]
        assert (r["Bleu_4"], r["CIDEr"]) != (scores["Bleu_1"], scores["CIDEr"])
    flow = json.loads((out / "gradients.json").read_text())["runs"]
    assert [f["cell"] for f in flow] == ["rnn", "lstm"] and flow[1]["forget_gate_mean"]
    # the table: per-epoch losses side by side and the final figures
    assert "rnn train" in output and "lstm val" in output
    for r in res:
        assert f"{r['history'][1]['val_loss']:.3f}" in output
    for label in (
        "BLEU-4",
        "CIDEr-D",
        "time per training step",
        "parameters",
        "gradient gain per step",
        "forget gate mean",
    ):
        assert label in output


def test_compare_resumes_to_the_same_result(data, reference, tmp_path):
    ref, _ = reference
    out = tmp_path / "cmp"
    result = run("compare", "--data", data, *TINY, "--epochs", 1, "--out", out)
    assert result.exit_code == 0, result.output
    result = run("compare", "--resume", out, "--epochs", 2, "--quiet")  # extends every run
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output
    for cell in ("rnn", "lstm"):
        assert_same_checkpoint(ref / cell / "last.npz", out / cell / "last.npz")
    # killed before the second run started: the first is kept, the second trained
    shutil.rmtree(out / "lstm")
    stamp = os.path.getmtime(out / "rnn" / "last.npz")
    result = run("compare", "--resume", out, "--quiet", "--plot", tmp_path / "loss.png")
    assert result.exit_code == 0, result.output
    assert "rnn: done earlier" in result.output
    assert os.path.getmtime(out / "rnn" / "last.npz") == stamp
    assert_same_checkpoint(ref / "lstm" / "last.npz", out / "lstm" / "last.npz")
    png = (tmp_path / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) < 100_000


def test_weight_decays_and_refusals(data, reference, tmp_path, monkeypatch):
    out = tmp_path / "wd"
    result = run(
        "compare",
        "--data",
        data,
        *TINY,
        "--epochs",
        1,
        "--out",
        out,
        "--cell",
        "lstm",
        "--weight-decay",
        0,
        "--weight-decay",
        0.01,
    )
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == [
        "compare-loss.png",
        "compare.json",
        "gradients.json",
        "gradients.png",
        "lstm-wd0",
        "lstm-wd0.01",
    ]
    decays = [
        json.loads((out / n / "history.json").read_text())["settings"]["weight_decay"]
        for n in ("lstm-wd0", "lstm-wd0.01")
    ]
    assert decays == [0.0, 0.01]
    ref, _ = reference
    monkeypatch.chdir(tmp_path)
    for args, name, why in [
        (["--data", data, "--out", ref], str(ref), "already holds a comparison"),
        (["--resume", data], "compare.json", "not found"),
        (["--data", data, "--plot", tmp_path / "no" / "p.png"], "p.png", "does not exist"),
    ]:
        before = sorted(os.listdir(tmp_path))
        result = run("compare", *args, *TINY)
        assert result.exit_code == 2, result.output
        lines = [ln for ln in result.output.splitlines() if ln.startswith("captioner: error:")]
        assert len(lines) == 1 and name in lines[0] and why in lines[0], result.output
        assert sorted(os.listdir(tmp_path)) == before


def test_plan_takes_every_cell(tmp_path):
    """A comparison of all three cells is a plan compare can write and resume; only the
    cell with a forget gate gets one run per forget-gate bias."""
    from captioner import compare as cmp

    plan = cmp.new_plan(
        tmp_path / "c",
        ("rnn", "lstm", "gru"),
        (0.0,),
        (0.0, 1.0),
        (0,),
        {"epochs": 1, "weight_decay": 0.0, "forget_bias": 0.0, "seed": 0},
        {"hidden_dim": 6, "wordvec_dim": 5},
        20,
    )
    assert plan["settings"] == {"epochs": 1}  # the per-run settings are the plan's lists
    assert cmp.load_plan(tmp_path / "c")["cells"] == plan["cells"] == ["rnn", "lstm", "gru"]
    names = [n for n, _, _ in cmp.run_names(plan)]
    assert names == ["rnn", "lstm-fb0", "lstm-fb1", "gru"]


def untimed(res):
    """compare.json's results without wall-clock figures."""
    timing = {"seconds", "seconds_per_step", "ms_per_step"}
    if isinstance(res, dict):
        return {k: untimed(v) for k, v in res.items() if k not in timing}
    if isinstance(res, list):
        return [untimed(v) for v in res]
    return res


SEEDED = ["--seeds", 2, "--forget-bias", 0, "--forget-bias", 1, "--epochs", 2]
SEEDED_RUNS = [f"{s}-seed{k}" for s in ("rnn", "lstm-fb0", "lstm-fb1") for k in (0, 1)]


@pytest.fixture(scope="module")
def seeded(data, tmp_path_factory):
    """A finished comparison over 2 seeds with forget-gate biases 0 and 1, run serially."""
    out = tmp_path_factory.mktemp("seeded") / "serial"
    result = run("compare", "--data", data, *TINY, *SEEDED, "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_seeds_and_forget_biases_in_parallel_equal_serial_and_train(data, seeded, tmp_path):
    serial, parallel = seeded, tmp_path / "parallel"
    out = run("compare", "--data", data, *TINY, *SEEDED, "--parallel", 2, "--out", parallel)
    assert out.exit_code == 0, out.output
    plan = json.loads((serial / "compare.json").read_text())
    assert sorted(d for d in os.listdir(serial) if (serial / d).is_dir()) == sorted(SEEDED_RUNS)
    for name in SEEDED_RUNS:
        for ckpt in ("last.npz", "best.npz"):
            assert_same_checkpoint(serial / name / ckpt, parallel / name / ckpt)
        settings = checkpoint.load(str(serial / name / "last.npz"))[1]["training"]["settings"]
        assert settings["seed"] == int(name[-1])
        assert settings["forget_bias"] == (1.0 if "fb1" in name else 0.0)
    res = plan["results"]
    assert untimed(res) == untimed(json.loads((parallel / "compare.json").read_text())["results"])
    # one of them is the run `captioner train` makes with the same options
    alone = tmp_path / "alone"
    args = ["--cell", "lstm", "--seed", 1, "--forget-bias", 1, "--epochs", 2]
    result = run("train", "--data", data, *TINY[:-4], "--lr", 5e-3, *args, "--out", alone)
    assert result.exit_code == 0, result.output
    assert_same_checkpoint(serial / "lstm-fb1-seed1" / "last.npz", alone / "last.npz")
    # per setting: every per-seed figure, and aggregates that are those of the per-seed values
    by_run = {r["name"]: r for r in res["runs"]}
    assert [s["name"] for s in res["settings"]] == ["rnn", "lstm-fb0", "lstm-fb1"]
    for s in res["settings"]:
        assert s["seeds"] == [0, 1] and s["runs"] == [f"{s['name']}-seed{k}" for k in (0, 1)]
        val = [by_run[n]["history"][-1]["val_loss"] for n in s["runs"]]
        f = s["figures"]["val_loss"]
        assert f["values"] == val and f["n"] == 2
        assert f["mean"] == pytest.approx(np.mean(val)) and f["min"] == min(val)
        assert f["std"] == pytest.approx(np.std(val, ddof=1))
        gains = [by_run[n]["gradients"]["gain_per_step"] for n in s["runs"]]
        assert s["figures"]["gain_per_step"]["values"] == gains
        e1 = [by_run[n]["history"][0]["train_loss"] for n in s["runs"]]
        assert s["epochs"][0]["train_loss"]["values"] == e1
        assert ("forget_gate_mean" in s["figures"]) == (s["cell"] == "lstm")
        assert f"{f['mean']:.3f} +- {f['std']:.3f}" in out.output
    claims = {(v["claim"], v["a"], v["b"], v["figure"]) for v in res["verdicts"]}
    assert (3, "lstm-fb0", "rnn", "gain_per_step") in claims
    assert ("forget bias", "lstm-fb1", "lstm-fb0", "gain_per_step") in claims
    assert (
        "of 2 seeds" in out.output and "claim 3, the gradient reaches further back:" in out.output
    )


def test_seeded_compare_resumes_in_parallel_to_the_serial_result(data, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "cmp"
    result = run("compare", "--data", data, *TINY, *SEEDED, "--cell", "lstm", "--out", ref)
    assert result.exit_code == 0, result.output
    first = [*SEEDED[:-1], 1]  # --epochs 1
    result = run("compare", "--data", data, *TINY, *first, "--cell", "lstm", "--out", out)
    assert result.exit_code == 0, result.output
    shutil.rmtree(out / "lstm-fb1-seed0")  # killed before this run started
    result = run("compare", "--resume", out, "--epochs", 2, "--parallel", 2, "--quiet")
    assert result.exit_code == 0, result.output
    for name in SEEDED_RUNS[2:]:
        assert_same_checkpoint(ref / name / "last.npz", out / name / "last.npz")
    # more seeds later: the runs of the first two are kept, the third trained as a 3-seed run
    result = run("compare", "--resume", ref, "--seed", 2, "--seed", 0, "--seed", 1, "--quiet")
    assert result.exit_code == 0, result.output
    assert "lstm-fb0-seed0: done earlier" in result.output
    res = json.loads((ref / "compare.json").read_text())["results"]
    assert res["seeds"] == [0, 1, 2] and res["settings"][0]["seeds"] == [0, 1, 2]
    alone = tmp_path / "alone"
    args = ["--cell", "lstm", "--seed", 2, "--forget-bias", 1, "--epochs", 2, "--out", alone]
    assert run("train", "--data", data, *TINY[:-4], "--lr", 5e-3, *args).exit_code == 0
    assert_same_checkpoint(ref / "lstm-fb1-seed2" / "last.npz", alone / "last.npz")
    result = run("compare", "--resume", ref, "--seed", 2)  # dropping seeds 0 and 1: refused
    assert result.exit_code == 2 and "can add seeds" in result.output
    result = run(
        "compare", "--data", data, *TINY, "--seeds", 2, "--seed", 1, "--out", tmp_path / "x"
    )
    assert result.exit_code == 2 and "not both" in result.output


def test_a_single_seed_comparison_takes_no_more_seeds(reference):
    """Its runs' names hold no seed, so seeds cannot be added to it; the plan is left as it was."""
    ref, _ = reference
    plan = (ref / "compare.json").read_bytes()
    result = run("compare", "--resume", ref, "--seeds", 2)
    assert result.exit_code == 2 and "to a comparison of several, not drop" in result.output
    assert (ref / "compare.json").read_bytes() == plan


def test_a_cell_added_on_resume_leaves_the_old_runs_and_trains_like_train(data, seeded, tmp_path):
    out = tmp_path / "cmp"
    shutil.copytree(seeded, out)
    spec = json.loads((out / "rnn-seed0" / "run.json").read_text())  # as written before #23:
    (out / "rnn-seed0" / "run.json").write_text(json.dumps(dict(spec, gradient_captions=25)))
    kept = {(n, f): (out / n / f).read_bytes() for n in SEEDED_RUNS for f in os.listdir(out / n)}
    result = run("compare", "--resume", out, "--cell", "gru", "--quiet")  # dropping rnn, lstm
    assert result.exit_code == 2 and "can add cells" in result.output, result.output
    cells = ["--cell", "rnn", "--cell", "lstm", "--cell", "gru", "--cell", "gru"]
    result = run("compare", "--resume", out, *cells, "--quiet")
    assert result.exit_code == 0, result.output
    assert all(f"{name}: done earlier" in result.output for name in SEEDED_RUNS)
    for (name, f), before in kept.items():  # the old runs: kept as they were, file by file
        assert (out / name / f).read_bytes() == before, (name, f)
    alone = tmp_path / "alone"
    args = ["--cell", "gru", "--seed", 1, "--epochs", 2, "--out", alone]
    assert run("train", "--data", data, *TINY[:-4], "--lr", 5e-3, *args).exit_code == 0
    assert_same_checkpoint(out / "gru-seed1" / "last.npz", alone / "last.npz")
    plan = json.loads((out / "compare.json").read_text())
    old = json.loads((seeded / "compare.json").read_text())["results"]
    res = plan["results"]
    assert plan["cells"] == ["rnn", "lstm", "gru"]
    assert [s["name"] for s in res["settings"]] == ["rnn", "lstm-fb0", "lstm-fb1", "gru"]
    assert untimed(res["settings"][:3]) == untimed(old["settings"])
    assert res["settings"][3]["runs"] == ["gru-seed0", "gru-seed1"]
    claims = {(v["a"], v["b"], v["figure"]) for v in res["verdicts"]}
    assert ("gru", "rnn", "val_loss") in claims and "gru val" in result.output


def test_gradients_over_the_seeds_of_a_setting(data, seeded):
    res = json.loads((seeded / "compare.json").read_text())["results"]
    result = run("gradients", "--runs", seeded, "--count", 25, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [g["label"] for g in out["settings"]] == ["rnn", "lstm-fb0", "lstm-fb1"]
    for g, s in zip(out["settings"], res["settings"]):
        assert g["n"] == 2 and g["runs"] == [str(seeded / n / "last.npz") for n in s["runs"]]
        for key in ("gain_per_step", "sigma_max_Wh", "forget_gate_mean"):
            assert g["figures"].get(key) == s["figures"].get(key)
    # checkpoints given one by one: those differing only in the seed are one setting
    ckpts = [seeded / n / "last.npz" for n in ("lstm-fb1-seed0", "rnn-seed0", "lstm-fb1-seed1")]
    args = [a for c in ckpts for a in ("--checkpoint", c)]
    result = run("gradients", *args, "--count", 25)
    assert result.exit_code == 0, result.output
    fb1 = res["settings"][2]["figures"]["gain_per_step"]
    line = next(ln for ln in result.output.splitlines() if "(2 checkpoints)" in ln)
    assert line.startswith(f"{ckpts[0]} and 1 more (2 checkpoints): gradient gain per step")
    assert f"{fb1['mean']:.3f} +- {fb1['std']:.3f} [{fb1['min']:.3f} .. {fb1['max']:.3f}]" in line
    assert "rnn-seed0/last.npz and" not in result.output
    result = run("gradients", "--runs", data)
    assert result.exit_code == 2 and "compare.json: not found; --runs takes" in result.output


def test_a_tampered_plan_is_one_line(reference, tmp_path):
    """Issue 23: compare.json's settings are checked as a checkpoint's are before a resume
    trains with them ("epochs": "1" was a traceback deep in the training loop)."""
    import shutil

    ref, _ = reference
    for change, why in [
        ({"epochs": "1"}, "settings.epochs is '1', expected"),
        ({"lr": [1]}, "settings.lr is [1], expected"),
        ({"secret": 1}, "settings has an unknown setting 'secret'"),
    ]:
        parent = tmp_path / f"c{len(why)}"
        shutil.copytree(ref, parent)
        plan = json.loads((parent / "compare.json").read_text())
        plan["settings"].update(change)
        (parent / "compare.json").write_text(json.dumps(plan))
        result = run("compare", "--resume", parent, "--epochs", 3)
        lines = [ln for ln in result.output.splitlines() if ln.startswith("captioner: error:")]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert f"{parent / 'compare.json'}: {why}" in lines[0] and "another --out" in lines[0]
