"""captioner.gradients against finite differences of an independent float64 decoder.

The reference below is written from the equations (not from captioner.layers): it runs the
decoder with a perturbation added to one hidden state h_t, cell state c_t or h0, and returns
one caption's single-word loss. Central differences of it give dl_{n,t}/dh etc., whose norms
must equal the figures gradients.caption_norms computes through the project's backward pass.
"""

import json
import os

import numpy as np
import pytest

from captioner import gradients
from captioner.model import CaptioningRNN
from helpers import run

VOCAB = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "cat", "dog", "on", "red", "mat"]
NULL, START, END = 0, 1, 2


def tiny_model(cell, seed=3):
    w2i = {w: i for i, w in enumerate(VOCAB)}
    model = CaptioningRNN(
        w2i, input_dim=4, wordvec_dim=3, hidden_dim=5, cell_type=cell, dtype=np.float64, seed=seed
    )
    rng = np.random.default_rng(seed + 1)
    for k, v in model.params.items():  # non-zero biases, and weights big enough to matter
        model.params[k] = v + 0.3 * rng.standard_normal(v.shape)
    return model


def tiny_batch():
    """Captions of several lengths, one with a <NULL> target before its last word."""
    captions = np.array(
        [
            [START, 4, 5, 7, 4, 9, END],
            [START, 6, END, NULL, NULL, NULL, NULL],
            [START, 4, 8, NULL, 9, END, NULL],  # a gap: target 2 is <NULL>
            [START, 8, 9, 5, 6, 7, END],
        ]
    )
    feats = np.random.default_rng(7).standard_normal((len(captions), 4))
    return feats, captions


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def word_loss(p, cell, feat, caption, t_loss, where=None, delta=None):
    """-log p(target t_loss) for one caption; `where` = ("h0",) or ("h", t) or ("c", t)
    adds `delta` to that state (c_t before h_t is computed from it)."""
    h = feat @ p["W_proj"] + p["b_proj"]
    if where == ("h0",):
        h = h + delta
    H = h.shape[0]
    c = np.zeros(H)
    for t in range(t_loss + 1):
        x = p["W_embed"][caption[t]]
        a = x @ p["Wx"] + h @ p["Wh"] + p["b"]
        if cell == "rnn":
            h = np.tanh(a)
        elif cell == "gru":  # the reset gate scales h @ Wh_n only
            ah = h @ p["Wh"]
            r, z = sigmoid(a[:H]), sigmoid(a[H : 2 * H])
            n = np.tanh(a[2 * H :] - ah[2 * H :] + r * ah[2 * H :])
            h = (1 - z) * n + z * h
        else:
            i, f, o, g = (
                sigmoid(a[:H]),
                sigmoid(a[H : 2 * H]),
                sigmoid(a[2 * H : 3 * H]),
                np.tanh(a[3 * H :]),
            )
            c = f * c + i * g
            if where == ("c", t):
                c = c + delta
            h = o * np.tanh(c)
        if where == ("h", t):
            h = h + delta
    scores = h @ p["W_vocab"] + p["b_vocab"]
    scores = scores - scores.max()
    return float(np.log(np.exp(scores).sum()) - scores[caption[t_loss + 1]])


def fd_norm(p, cell, feat, caption, t_loss, where, eps=1e-6):
    H = p["Wh"].shape[0]
    g = np.empty(H)
    for k in range(H):
        e = np.zeros(H)
        e[k] = eps
        g[k] = (
            word_loss(p, cell, feat, caption, t_loss, where, e)
            - word_loss(p, cell, feat, caption, t_loss, where, -e)
        ) / (2 * eps)
    return np.linalg.norm(g)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_norms_equal_finite_differences(cell):
    model = tiny_model(cell)
    p = model.params
    feats, captions = tiny_batch()
    norms = gradients.caption_norms(p, cell, feats, captions, NULL)
    T = captions.shape[1] - 1
    last = [T - 1 - np.argmax((c[1:] != NULL)[::-1]) for c in captions]
    assert list(norms["last"]) == last == [5, 1, 4, 5]
    checked = 0
    for n, (feat, cap) in enumerate(zip(feats, captions)):
        for d in range(T):
            if d > last[n]:
                assert np.isnan(norms["h"][n, d])
                continue
            want_h = fd_norm(p, cell, feat, cap, last[n], ("h", last[n] - d))
            assert norms["h"][n, d] == pytest.approx(want_h, rel=1e-6, abs=1e-10), (n, d)
            if cell == "lstm":
                want_c = fd_norm(p, cell, feat, cap, last[n], ("c", last[n] - d))
                assert norms["c"][n, d] == pytest.approx(want_c, rel=1e-6, abs=1e-10), (n, d)
            checked += 1
        for t in range(T):
            if cap[t + 1] == NULL:
                assert np.isnan(norms["image"][n, t])  # the gap and the padding have no loss
                continue
            want = fd_norm(p, cell, feat, cap, t, ("h0",))
            assert norms["image"][n, t] == pytest.approx(want, rel=1e-6, abs=1e-10), (n, t)
    assert checked == sum(t + 1 for t in last)
    if cell != "lstm":
        assert norms["c"] is None and norms["forget"] is None
    else:
        # forget gate: mean over units of sigmoid(pre-activation), only where the caption runs
        fg = norms["forget"]
        assert np.isnan(fg[1, 2:]).all() and not np.isnan(fg[1, :2]).any()
        assert (
            (norms["forget"][~np.isnan(norms["forget"])] > 0)
            & (norms["forget"][~np.isnan(norms["forget"])] < 1)
        ).all()


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_chunks_change_nothing(cell, monkeypatch):
    model = tiny_model(cell)
    feats, captions = tiny_batch()
    whole = gradients.caption_norms(model.params, cell, feats, captions, NULL)
    monkeypatch.setattr(gradients, "CHUNK_BYTES", 1)  # one caption per chunk
    parts = gradients.caption_norms(model.params, cell, feats, captions, NULL)
    for k, v in whole.items():
        if v is not None:
            np.testing.assert_allclose(parts[k], v, rtol=1e-12)


def test_summary_means_counts_and_gain():
    model = tiny_model("lstm")
    feats, captions = tiny_batch()
    norms = gradients.caption_norms(model.params, "lstm", feats, captions, NULL)
    run = gradients.summarise(norms, model.params, "lstm", "tiny", min_captions=2)
    # d reached by captions with T_n >= d: T_n = 5, 1, 4, 5
    assert [(r["d"], r["captions"]) for r in run["by_distance"]] == [
        (0, 4),
        (1, 4),
        (2, 3),
        (3, 3),
        (4, 3),
        (5, 2),
    ]
    assert run["by_distance"][2]["h"] == pytest.approx(np.mean(norms["h"][[0, 2, 3], 2]))
    assert run["by_distance"][4]["c"] == pytest.approx(np.mean(norms["c"][[0, 2, 3], 4]))
    # targets: t = 2 is <NULL> for caption 2, so 2 captions reach it (0 and 3)
    assert [(r["t"], r["captions"]) for r in run["to_image"]] == [
        (0, 4),
        (1, 4),
        (2, 2),
        (3, 3),
        (4, 3),
        (5, 2),
    ]
    m = [r["h"] for r in run["by_distance"]]
    assert run["gain_per_step"] == pytest.approx((m[-1] / m[0]) ** (1 / 5))
    if run["gain_per_step"] < 1:
        assert run["gain_per_step"] ** run["halving_steps"] == pytest.approx(0.5)
    assert run["sigma_max_Wh"] == pytest.approx(np.linalg.svd(model.params["Wh"])[1][0])


def test_fresh_lstm_forget_gate_starts_near_half():
    """CS231n's initialisation (b = 0, zero-mean weights): every gate sits near sigmoid(0)."""
    w2i = {w: i for i, w in enumerate(VOCAB)}
    model = CaptioningRNN(
        w2i, input_dim=4, wordvec_dim=16, hidden_dim=64, cell_type="lstm", dtype=np.float64, seed=0
    )
    feats, captions = tiny_batch()
    run = gradients.measure(model, feats, captions, "fresh", length=12, min_captions=1)
    fg = [r["mean"] for r in run["forget_gate_mean"]]
    assert all(abs(f - 0.5) < 0.05 for f in fg)
    syn = run["synthetic"]
    assert syn["length"] == 12 and [r["d"] for r in syn["by_distance"]] == list(range(12))
    assert all(r["captions"] == len(feats) for r in syn["by_distance"])


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A small dataset (30 val captions) and a checkpoint trained on it."""
    from captioner import runs
    from captioner.data import load_coco_data
    from fixtures import build_dataset

    root = tmp_path_factory.mktemp("flow")
    data_dir = build_dataset(
        root / "data",
        n_train_images=8,
        captions_per_image=5,
        n_val_images=6,
        feature_dim=8,
        vocab_size=40,
        seed=2,
    )
    d = load_coco_data(data_dir)
    model = CaptioningRNN(
        d["word_to_idx"], input_dim=8, wordvec_dim=6, hidden_dim=7, cell_type="rnn", seed=0
    )
    os.makedirs(root / "run")
    runs.train_in(
        d,
        model,
        str(root / "run"),
        progress=False,
        log=lambda *_: None,
        epochs=1,
        batch_size=10,
        val_size=5,
        data_dir=str(data_dir),
        features="pca",
    )
    return root


def test_command_json_plot_and_table(tiny_data, tmp_path):
    from captioner.data import load_coco_data

    data = tiny_data / "data"
    plot = tmp_path / "flow.png"
    common = ["--data", data, "--count", 25, "--hidden-dim", 6, "--wordvec-dim", 5]
    result = run(
        "gradients",
        "--cell",
        "rnn",
        "--cell",
        "lstm",
        "--cell",
        "gru",
        *common,
        "--length",
        4,
        "--json",
        "--plot",
        plot,
    )
    assert result.exit_code == 0, result.output
    runs = json.loads(result.output)["runs"]
    assert [(r["cell"], r["label"]) for r in runs] == [
        ("rnn", "rnn (fresh, seed 0)"),
        ("lstm", "lstm (fresh, seed 0)"),
        ("gru", "gru (fresh, seed 0)"),
    ]
    assert runs[2]["forget_gate_mean"] is None and runs[2]["by_distance"][0]["c"] is None
    for r in runs:
        assert set(r) >= {
            "label",
            "cell",
            "by_distance",
            "to_image",
            "gain_per_step",
            "halving_steps",
            "sigma_max_Wh",
            "forget_gate_mean",
        }
        assert r["by_distance"][0]["d"] == 0 and r["by_distance"][0]["captions"] == 25
        assert all(row["captions"] >= 20 for row in r["by_distance"] + r["to_image"])
        assert [x["d"] for x in r["synthetic"]["by_distance"]] == [0, 1, 2, 3]
    assert all(row["c"] is None for row in runs[0]["by_distance"])
    assert runs[0]["forget_gate_mean"] is None
    assert all(row["c"] > 0 for row in runs[1]["by_distance"])
    assert all(0 < row["mean"] < 1 for row in runs[1]["forget_gate_mean"])
    # the figures are those of the library on the split's first 25 captions in file order
    d = load_coco_data(data, splits=("val",))
    feats, caps = gradients.first_captions(d, "val", 25)
    np.testing.assert_array_equal(caps, d["val_captions"][:25])
    model = CaptioningRNN(
        d["word_to_idx"], input_dim=8, wordvec_dim=5, hidden_dim=6, cell_type="lstm", seed=0
    )
    want = gradients.measure(model, feats, caps, "x")
    assert [x["h"] for x in runs[1]["by_distance"]] == pytest.approx(
        [x["h"] for x in want["by_distance"]], rel=1e-9
    )
    png = plot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) < 100_000

    result = run(
        "gradients", "--checkpoint", tiny_data / "run" / "last.npz", "--cell", "lstm", *common
    )
    assert result.exit_code == 0, result.output
    assert "by distance d" in result.output and "reach to the image" in result.output
    assert f"{tiny_data / 'run' / 'last.npz'}: gain per step" in result.output
    assert "lstm (fresh, seed 0): gain per step" in result.output


def corrupt_val_captions(src, dst, captions):
    """A copy of dataset src whose val captions are replaced by `captions`."""
    import shutil

    import h5py

    shutil.copytree(src, dst)
    with h5py.File(dst / "coco2014_captions.h5", "a") as f:
        n = len(f["val_captions"])
        del f["val_captions"]
        f["val_captions"] = np.broadcast_to(captions, (n, len(captions))).astype(np.int32)
    return dst


def test_bad_inputs_are_one_line_and_write_nothing(tiny_data, tmp_path, monkeypatch):
    from fixtures import build_dataset

    data = tiny_data / "data"
    ckpt = tiny_data / "run" / "last.npz"
    other = build_dataset(
        tmp_path / "other",
        n_train_images=4,
        captions_per_image=2,
        n_val_images=3,
        feature_dim=8,
        vocab_size=50,
        seed=3,
    )
    empty = corrupt_val_captions(data, tmp_path / "empty", [1, 0, 0, 0, 0])  # <START> then <NULL>
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    cases = [
        (["--checkpoint", ckpt, "--data", other], str(ckpt), "vocabulary"),
        (["--cell", "rnn", "--data", empty], str(empty), "no caption"),
        (
            ["--cell", "rnn", "--data", data, "--plot", tmp_path / "no" / "dir" / "p.png"],
            str(tmp_path / "no" / "dir" / "p.png"),
            "does not exist",
        ),
        (["--cell", "rnn", "--data", data, "--plot", work / "flow.jpg"], "flow.jpg", ".png"),
    ]
    for args, name, why in cases:
        result = run("gradients", *args)
        assert result.exit_code == 2, (args, result.output)
        lines = [ln for ln in result.output.splitlines() if ln.startswith("captioner: error:")]
        assert len(lines) == 1 and name in lines[0] and why in lines[0], (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    for args, option in [
        (["--cell", "rnn", "--count", 0], "--count"),
        (["--cell", "lstm", "--length", 1], "--length"),
        (["--data", data], "--checkpoint"),
        (["--cell", "rnn", "--data", data, "--plot", tmp_path], "--plot"),
    ]:
        result = run("gradients", *args)
        assert result.exit_code == 2, result.output
        assert [
            ln for ln in result.output.splitlines() if ln.startswith("Error:") and option in ln
        ], result.output
    assert os.listdir(work) == []
    assert not (tmp_path / "no").exists() and sorted(os.listdir(tmp_path)) == [
        "cwd",
        "empty",
        "other",
    ]


def test_help_does_not_load_numpy_or_matplotlib():
    import subprocess
    import sys

    code = (
        "import sys\nfrom captioner.cli import main\n"
        "for args in (['--help'], ['gradients', '--help'], ['compare', '--help']):\n"
        "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in ('numpy', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_fresh_lstm_with_a_forget_bias(tiny_data):
    """--forget-bias opens a fresh LSTM's forget gate (the same draw otherwise), and leaves a
    fresh RNN, which has none, alone."""
    common = ["--data", tiny_data / "data", "--count", 25, "--hidden-dim", 6, "--wordvec-dim", 5]
    runs = {}
    for bias in (0, 2):
        result = run(
            "gradients",
            "--cell",
            "rnn",
            "--cell",
            "lstm",
            *common,
            "--forget-bias",
            bias,
            "--json",
        )
        assert result.exit_code == 0, result.output
        runs[bias] = json.loads(result.output)["runs"]
    rnn, lstm = runs[2]
    assert rnn == runs[0][0] and rnn["forget_gate_mean"] is None
    assert lstm["label"] == "lstm (fresh, seed 0, forget bias 2)"
    for opened, plain in zip(lstm["forget_gate_mean"], runs[0][1]["forget_gate_mean"]):
        assert opened["mean"] > plain["mean"] + 0.2
