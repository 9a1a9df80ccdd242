"""`captioner compare`: runs trained exactly as `train` would, one table, resumable."""

import json
import os
import shutil

import numpy as np
import pytest

from captioner import checkpoint
from fixtures import build_dataset
from helpers import run

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


def assert_same_params(a, b):
    pa, pb = params(a), params(b)
    assert sorted(pa) == sorted(pb)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


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
        assert_same_params(out / cell / "last.npz", alone / "last.npz")
    plan = json.loads((out / "compare.json").read_text())
    res = plan["results"]["runs"]
    assert [r["name"] for r in res] == ["rnn", "lstm"]
    for r in res:
        hist = json.loads((out / r["name"] / "history.json").read_text())
        assert [e["train_loss"] for e in r["epochs"]] == [e["train_loss"] for e in hist["epochs"]]
        assert 0 <= r["Bleu_4"] <= 1 and r["CIDEr"] >= 0 and r["seconds_per_step"] >= 0
        saved = params(out / r["name"] / "last.npz")
        assert r["parameters"] == sum(v.size for v in saved.values())
    assert res[1]["parameters"] > res[0]["parameters"]
    flow = json.loads((out / "gradients.json").read_text())["runs"]
    assert [f["cell"] for f in flow] == ["rnn", "lstm"] and flow[1]["forget_gate_mean"]
    # the table: per-epoch losses side by side and the final figures
    assert "rnn train" in output and "lstm val" in output
    for r in res:
        assert f"{r['epochs'][1]['val_loss']:.4f}" in output
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
        assert_same_params(ref / cell / "last.npz", out / cell / "last.npz")
    # killed before the second run started: the first is kept, the second trained
    shutil.rmtree(out / "lstm")
    stamp = os.path.getmtime(out / "rnn" / "last.npz")
    result = run("compare", "--resume", out, "--quiet", "--plot", tmp_path / "loss.png")
    assert result.exit_code == 0, result.output
    assert "rnn: done earlier" in result.output
    assert os.path.getmtime(out / "rnn" / "last.npz") == stamp
    assert_same_params(ref / "lstm" / "last.npz", out / "lstm" / "last.npz")
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
