"""The adaptive softmax: the readable layer gradient-checked in float64, the fast path
equal to it, exact log-probabilities for decoding, the cutoff rule, and the whole
train -> checkpoint -> evaluate/sample road through the CLI."""

import json

import numpy as np
import pytest
from test_model import W2I, coco_length_captions, make_captions

from captioner import adaptive, checkpoint, decoding
from captioner import layers as L
from captioner.errors import CaptionerError
from captioner.model import CaptioningRNN
from gradcheck import numeric_grad, rel_error
from helpers import run

CUTOFFS = [3, 5, 8]  # V = 11 ranks: head 3 words + 3 cluster logits; clusters 2, 3, 3 words


def layer_inputs(rng, N, T, H=6, cutoffs=CUTOFFS, V=11):
    """Hidden states, rank targets hitting the head and every cluster, a mask with holes."""
    h = rng.standard_normal((N, T, H))
    y = rng.integers(0, V, (N, T))
    y.ravel()[: len(cutoffs) + 1] = [0] + cutoffs  # the head and the first word of each cluster
    mask = rng.random((N, T)) < 0.8
    mask.ravel()[: len(cutoffs) + 1] = True
    mask[-1, 1:] = False  # a caption shorter than T
    bounds = cutoffs + [V]
    W_head = rng.standard_normal((H, cutoffs[0] + len(cutoffs)))
    b_head = rng.standard_normal(cutoffs[0] + len(cutoffs))
    tails = [
        (
            rng.standard_normal((H, d)),
            rng.standard_normal((d, hi - lo)),
            rng.standard_normal(hi - lo),
        )
        for d, lo, hi in zip(adaptive.tail_dims(H, len(cutoffs)), bounds, bounds[1:])
    ]
    return h, y, mask, W_head, b_head, tails


@pytest.mark.parametrize("N, T", [(4, 1), (3, 5), (5, 9)])
def test_layer_gradcheck_float64(N, T):
    """Every input's gradient against centred differences: several caption lengths, masked
    targets, targets in the head and in each cluster."""
    rng = np.random.default_rng(N * 10 + T)
    h, y, mask, W_head, b_head, tails = layer_inputs(rng, N, T)
    cluster = np.searchsorted(CUTOFFS + [11], y[mask], side="right") - 1
    assert set(cluster) == {-1, 0, 1, 2}  # head and all three clusters carry a loss

    def f():
        return L.adaptive_softmax_loss(h, y, mask, W_head, b_head, tails, CUTOFFS)[0]

    _, cache = L.adaptive_softmax_loss(h, y, mask, W_head, b_head, tails, CUTOFFS)
    dh, dW_head, db_head, dtails = L.adaptive_softmax_loss_backward(cache)
    pairs = [(h, dh), (W_head, dW_head), (b_head, db_head)]
    pairs += [(x, dx) for t, dt in zip(tails, dtails) for x, dx in zip(t, dt)]
    for x, dx in pairs:
        assert dx.shape == x.shape
        assert np.abs(dx).max() > 0
        assert rel_error(numeric_grad(f, x), dx) < 1e-6
    assert not dh[~mask].any()  # masked positions send no gradient


def test_loss_is_minus_log_probs_and_probs_sum_to_one():
    """The loss scores exactly what adaptive_log_probs gives the decoders: a proper
    distribution over all V words."""
    rng = np.random.default_rng(3)
    h, y, mask, W_head, b_head, tails = layer_inputs(rng, 4, 6)
    logp = L.adaptive_log_probs(h.reshape(24, -1), W_head, b_head, tails, CUTOFFS)
    assert logp.shape == (24, 11)
    np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1, rtol=1e-12)
    loss, _ = L.adaptive_softmax_loss(h, y, mask, W_head, b_head, tails, CUTOFFS)
    picked = logp[np.arange(24), y.ravel()] * mask.ravel()
    assert loss == pytest.approx(-picked.sum() / 4, rel=1e-12)


def test_log_softmax_is_exact_at_large_logits():
    """Shifted by each row's maximum: logits of +-1000 neither overflow nor lose the answer."""
    x = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, -1000.0]])
    np.testing.assert_allclose(
        L.log_softmax(x), [[0, -1000, -2000], [-np.log(2), -np.log(2), -1000 - np.log(2)]]
    )


def test_a_cluster_without_targets_gets_zero_gradient():
    rng = np.random.default_rng(4)
    h, y, mask, W_head, b_head, tails = layer_inputs(rng, 3, 4)
    y[:] = 0  # every target in the head
    _, cache = L.adaptive_softmax_loss(h, y, mask, W_head, b_head, tails, CUTOFFS)
    _, _, db_head, dtails = L.adaptive_softmax_loss_backward(cache)
    assert all(not d.any() for dt in dtails for d in dt)
    assert db_head[3:].any()  # the cluster logits are still pushed down


def adaptive_model(cell, rng, cutoffs=(4, 7), dtype=np.float64, order=None, **kw):
    kw = dict(dict(input_dim=5, wordvec_dim=4, hidden_dim=4), **kw)
    if order is None:
        order = rng.permutation(len(W2I))
    m = CaptioningRNN(
        W2I,
        cell_type=cell,
        dtype=dtype,
        seed=0,
        softmax="adaptive",
        cutoffs=list(cutoffs),
        softmax_order=order,
        **kw,
    )
    for k in m.params:  # nonzero biases exercise every path
        m.params[k] += (0.3 * rng.standard_normal(m.params[k].shape)).astype(dtype)
    return m


@pytest.mark.parametrize("readable", [False, True], ids=["fast", "readable"])
@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_model_gradcheck_float64(cell, readable):
    rng = np.random.default_rng(5)
    m = adaptive_model(cell, rng)
    feats, caps = rng.standard_normal((6, 5)), make_captions(rng, 6, 7)
    fn = m.loss_readable if readable else m.loss
    loss, grads = fn(feats, caps)
    assert set(grads) == set(m.params) and "W_vocab" not in grads
    assert {"W_head", "W_tail1_proj", "W_tail2", "b_tail2"} <= set(grads)
    for name in m.params:
        num = numeric_grad(lambda: fn(feats, caps)[0], m.params[name])
        assert rel_error(num, grads[name]) < 1e-6, name


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 2e-4)])
def test_fast_equals_readable(cell, dtype, rtol):
    """packed.adaptive_softmax_rows inside model.loss against layers.adaptive_softmax_loss
    inside loss_readable: masked targets, rows with nothing to predict, COCO lengths."""
    rng = np.random.default_rng(6)
    m = adaptive_model(cell, rng, dtype=dtype)
    for feats, caps in [
        (rng.standard_normal((9, 5)), make_captions(rng, 9, 8)),
        (rng.standard_normal((40, 5)), coco_length_captions(rng, 40)),
    ]:
        feats = feats.astype(dtype)
        loss, grads = m.loss(feats, caps)
        ref_loss, ref = m.loss_readable(feats, caps)
        assert loss == pytest.approx(ref_loss, rel=rtol)
        for name in m.params:
            assert grads[name].dtype == dtype
            scale = np.abs(ref[name]).max()
            np.testing.assert_allclose(grads[name], ref[name], rtol=rtol, atol=rtol * scale)


def test_step_gives_exact_log_probs_in_word_order():
    rng = np.random.default_rng(8)
    m = adaptive_model("lstm", rng)
    feats = rng.standard_normal((4, 5))
    h, c = m.init_state(feats)
    logp, h1, _ = m.step(np.full(4, W2I["<START>"]), h, c)
    np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1, rtol=1e-12)
    # a word's log-probability is the loss of a one-word caption ending in it
    word = W2I["cat"]
    caps = np.array([[W2I["<START>"], word]] * 4)
    loss, _ = m.loss(feats, caps)
    assert loss == pytest.approx(-logp[:, word].mean(), rel=1e-12)
    # beam search's scores are those log-probabilities, summed (the loss of the caption
    # it wrote, finished with <END> or not)
    for ids, lp in decoding.beam_search(m, feats[:2], beam_size=3, max_length=5, n_best=3)[1]:
        loss, _ = m.loss(feats[1:2], np.r_[W2I["<START>"], ids][None])
        assert lp == pytest.approx(-loss, rel=1e-9)


# ---------------------------------------------------------------- order and cutoffs


def test_frequency_order_and_default_cutoffs():
    counts = np.array([0, 5, 50, 7, 50, 1, 0, 3])
    assert adaptive.frequency_order(counts).tolist() == [2, 4, 3, 1, 7, 5, 0, 6]  # ties by id
    # 90% coverage needs the head to hold the 2 most frequent words -> rounded up to 8,
    # capped at V - 1
    assert adaptive.default_cutoffs(np.sort(counts)[::-1]) == [7]
    steep = np.r_[np.full(100, 1000), np.ones(9900)]  # 100 words hold 91% of the tokens
    assert adaptive.default_cutoffs(steep) == [104, 416, 1664, 6656]
    assert adaptive.tail_dims(512, 3) == [128, 32, 8]
    with pytest.raises(CaptionerError):
        adaptive.default_cutoffs(np.ones(1))


@pytest.mark.parametrize("bad", [[], [0, 3], [3, 3], [5, 2], [10], [2.0], "2,3"])
def test_bad_cutoffs_are_named(bad):
    assert adaptive.check_cutoffs(bad, 10)
    with pytest.raises(CaptionerError, match="cutoffs"):
        CaptioningRNN(W2I, softmax="adaptive", cutoffs=bad)


def test_model_args_from_training_captions():
    caps = np.array([[1, 5, 5, 5, 2], [1, 5, 6, 2, 0]])
    data = {"word_to_idx": W2I, "train_captions": caps}
    got = adaptive.model_args("adaptive", None, data)
    assert got["softmax_order"][:3].tolist() == [5, 2, 6]  # "cat" x4, <END> x2, "dog"
    assert got["cutoffs"] == [8]
    assert adaptive.model_args("adaptive", [2, 4], data)["cutoffs"] == [2, 4]
    assert adaptive.model_args("full", None, data) == {"softmax": "full"}
    with pytest.raises(CaptionerError, match="--softmax adaptive"):
        adaptive.model_args("full", [2], data)
    with pytest.raises(CaptionerError, match="--softmax-cutoffs"):
        adaptive.model_args("adaptive", [2, 40], data)


# ---------------------------------------------------------------- checkpoints and the CLI


def test_checkpoint_records_the_softmax(tmp_path):
    rng = np.random.default_rng(9)
    m = adaptive_model("lstm", rng, dtype=np.float32)
    data = {"feature_kind": "pca", "feature_dim": 5, "encoder": "test"}
    meta = checkpoint.model_meta(m, data)
    assert meta["model"]["softmax"] == "adaptive" and meta["model"]["cutoffs"] == [4, 7]
    checkpoint.save(tmp_path / "m.npz", m.params, meta)
    back, _, _, _ = checkpoint.load_model(tmp_path / "m.npz")
    assert back.softmax == "adaptive" and back.cutoffs == [4, 7]
    assert (back.softmax_order == m.softmax_order).all()
    feats = rng.standard_normal((3, 5))
    assert (back.sample(feats, 6) == m.sample(feats, 6)).all()
    # an old checkpoint (no softmax recorded) is a full-softmax one
    full = CaptioningRNN(W2I, input_dim=5, wordvec_dim=4, hidden_dim=8, cell_type="lstm")
    old = checkpoint.model_meta(full, data)
    del old["model"]["softmax"]
    checkpoint.save(tmp_path / "old.npz", full.params, old)
    assert checkpoint.load_model(tmp_path / "old.npz")[0].softmax == "full"
    # a damaged order is refused with one line naming it
    meta["model"]["softmax_order"][0] = meta["model"]["softmax_order"][1]
    checkpoint.save(tmp_path / "bad.npz", m.params, meta)
    with pytest.raises(CaptionerError, match="softmax_order"):
        checkpoint.load_model(tmp_path / "bad.npz")


def test_train_save_load_evaluate_sample(tmp_path):
    from fixtures import build_dataset

    data = build_dataset(
        tmp_path / "coco",
        n_train_images=60,
        captions_per_image=5,
        n_val_images=10,
        feature_dim=16,
        vocab_size=40,
        seed=4,
    )
    out = tmp_path / "run"
    common = ["--data", data, "--hidden-dim", 16, "--wordvec-dim", 8, "--val-size", 20]
    result = run("train", *common, "--epochs", 2, "--softmax", "adaptive", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    meta = checkpoint.load(out / "last.npz")[1]
    assert meta["model"]["softmax"] == "adaptive"
    assert meta["training"]["settings"]["softmax"] == "adaptive"
    model, _, _, _ = checkpoint.load_model(out / "best.npz")
    assert model.softmax == "adaptive" and "W_vocab" not in model.params
    result = run("train", "--resume", out, "--epochs", 3, "--quiet")
    assert result.exit_code == 0 and "epoch 3/3" in result.output, result.output
    result = run(
        "evaluate",
        "--checkpoint",
        out / "best.npz",
        "--data",
        data,
        "--no-meteor",
        "--beam-size",
        2,
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["scores"]["CIDEr"] >= 0
    result = run("sample", "--checkpoint", out / "best.npz", "--data", data, "--split", "val")
    assert result.exit_code == 0, result.output
    result = run("info", "--data", data, "--checkpoint", out / "best.npz")
    cutoffs = ",".join(map(str, meta["model"]["cutoffs"]))
    assert f"adaptive softmax (cutoffs {cutoffs})" in result.output, result.output
    result = run("train", *common, "--softmax-cutoffs", "3,9", "--out", tmp_path / "x")
    assert result.exit_code != 0 and "--softmax adaptive" in result.output
    bad = ["--softmax", "adaptive", "--softmax-cutoffs", "3,400", "--out", tmp_path / "y"]
    result = run("train", *common, *bad)
    assert result.exit_code != 0 and "cutoffs" in result.output
    assert result.output.count("\n") <= 2


def test_gradient_flow_through_the_adaptive_softmax():
    """`captioner gradients` backpropagates a word's loss through the adaptive softmax:
    its dl/dh is minus the gradient of that word's exact log-probability."""
    from captioner import gradients

    rng = np.random.default_rng(10)
    m = adaptive_model("lstm", rng)
    p = m.params
    h = rng.standard_normal((5, 4))
    targets = np.array([W2I["cat"], W2I["<END>"], W2I["a"], W2I["mat"], W2I["dog"]])
    rows = np.array([True, True, False, True, True])
    got = gradients._word_loss_grad(p, h, targets, rows, (m.cutoffs, m.rank))

    def f():
        logp = L.adaptive_log_probs(h, p["W_head"], p["b_head"], m._tails(), m.cutoffs)
        return -np.sum(logp[np.arange(5), m.rank[targets]] * rows)

    assert rel_error(numeric_grad(f, h), got) < 1e-6
    assert not got[2].any()


def test_report_command_and_compare_with_adaptive(tmp_path):
    from captioner.config import train_command
    from fixtures import build_dataset

    cmd = train_command(
        {"softmax": "adaptive", "softmax_cutoffs": [3, 9]},
        {"cell_type": "lstm", "hidden_dim": 8, "wordvec_dim": 4},
        "runs/x",
    )
    assert "--softmax adaptive --softmax-cutoffs 3,9" in cmd
    data = build_dataset(
        tmp_path / "data",
        n_train_images=10,
        captions_per_image=3,
        n_val_images=6,
        feature_dim=8,
        vocab_size=40,
        seed=4,
    )
    out = tmp_path / "cmp"
    tiny = ["--hidden-dim", 8, "--wordvec-dim", 4, "--batch-size", 10, "--count", 10]
    result = run(
        "compare",
        "--data",
        data,
        *tiny,
        "--epochs",
        1,
        "--softmax",
        "adaptive",
        "--softmax-cutoffs",
        "8",
        "--out",
        out,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    for cell in ("rnn", "lstm"):
        model, meta, _, _ = checkpoint.load_model(out / cell / "last.npz")
        assert model.softmax == "adaptive" and model.cutoffs == [8]
    result = run("report", out / "lstm", "--out", tmp_path / "report.html")
    assert result.exit_code == 0, result.output
    assert "--softmax-cutoffs 8" in (tmp_path / "report.html").read_text()


def test_sweep_continues_a_run_json_from_before_the_softmax(tmp_path):
    from captioner import atomic, sweep

    base = {"cell": "lstm", "epochs": 2, "softmax": "full", "softmax_cutoffs": None}
    ((name, settings),) = sweep.plan(base, [])
    old = {k: v for k, v in settings.items() if not k.startswith("softmax")}
    (tmp_path / name).mkdir()
    atomic.write_json(tmp_path / name / "run.json", old)
    assert sweep.check(str(tmp_path), base, []) == [(name, settings)]
    with pytest.raises(CaptionerError, match="softmax"):
        sweep.check(str(tmp_path), dict(base, softmax="adaptive"), [])


def test_sweep_state_accepts_cutoffs():
    from captioner import sweep

    spec = {"epochs": 2, "softmax": "adaptive", "softmax_cutoffs": [3, 9]}
    assert sweep._run_problem(spec) is None
    assert sweep._run_problem(dict(spec, softmax_cutoffs=["3"]))
