"""captioner.gradients against finite differences of an independent float64 decoder.

The reference below is written from the equations (not from captioner.layers): it runs the
decoder with a perturbation added to one hidden state h_t, cell state c_t or h0, and returns
one caption's single-word loss. Central differences of it give dl_{n,t}/dh etc., whose norms
must equal the figures gradients.caption_norms computes through the project's backward pass.
"""
import numpy as np
import pytest

from captioner import gradients
from captioner.model import CaptioningRNN

VOCAB = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "cat", "dog", "on", "red", "mat"]
NULL, START, END = 0, 1, 2


def tiny_model(cell, seed=3):
    w2i = {w: i for i, w in enumerate(VOCAB)}
    model = CaptioningRNN(w2i, input_dim=4, wordvec_dim=3, hidden_dim=5, cell_type=cell,
                          dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for k, v in model.params.items():   # non-zero biases, and weights big enough to matter
        model.params[k] = v + 0.3 * rng.standard_normal(v.shape)
    return model


def tiny_batch():
    """Captions of several lengths, one with a <NULL> target before its last word."""
    captions = np.array([
        [START, 4, 5, 7, 4, 9, END],
        [START, 6, END, NULL, NULL, NULL, NULL],
        [START, 4, 8, NULL, 9, END, NULL],     # a gap: target 2 is <NULL>
        [START, 8, 9, 5, 6, 7, END],
    ])
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
        else:
            i, f, o, g = (sigmoid(a[:H]), sigmoid(a[H:2 * H]), sigmoid(a[2 * H:3 * H]),
                          np.tanh(a[3 * H:]))
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
        g[k] = (word_loss(p, cell, feat, caption, t_loss, where, e)
                - word_loss(p, cell, feat, caption, t_loss, where, -e)) / (2 * eps)
    return np.linalg.norm(g)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
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
            want_h = fd_norm(p, cell, feat, cap, last[n], ("h", last[n] - d)) if d <= last[n] else None
            if want_h is None:
                assert np.isnan(norms["h"][n, d])
                continue
            assert norms["h"][n, d] == pytest.approx(want_h, rel=1e-6, abs=1e-10), (n, d)
            if cell == "lstm":
                want_c = fd_norm(p, cell, feat, cap, last[n], ("c", last[n] - d))
                assert norms["c"][n, d] == pytest.approx(want_c, rel=1e-6, abs=1e-10), (n, d)
            checked += 1
        for t in range(T):
            if cap[t + 1] == NULL:
                assert np.isnan(norms["image"][n, t])   # the gap and the padding have no loss
                continue
            want = fd_norm(p, cell, feat, cap, t, ("h0",))
            assert norms["image"][n, t] == pytest.approx(want, rel=1e-6, abs=1e-10), (n, t)
    assert checked == sum(t + 1 for t in last)
    if cell == "rnn":
        assert norms["c"] is None and norms["forget"] is None
    else:
        # forget gate: mean over units of sigmoid(pre-activation), only where the caption runs
        assert np.isnan(norms["forget"][1, 2:]).all() and not np.isnan(norms["forget"][1, :2]).any()
        assert ((norms["forget"][~np.isnan(norms["forget"])] > 0)
                & (norms["forget"][~np.isnan(norms["forget"])] < 1)).all()


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_chunks_change_nothing(cell, monkeypatch):
    model = tiny_model(cell)
    feats, captions = tiny_batch()
    whole = gradients.caption_norms(model.params, cell, feats, captions, NULL)
    monkeypatch.setattr(gradients, "CHUNK_BYTES", 1)     # one caption per chunk
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
    assert [(r["d"], r["captions"]) for r in run["by_distance"]] == \
        [(0, 4), (1, 4), (2, 3), (3, 3), (4, 3), (5, 2)]
    assert run["by_distance"][2]["h"] == pytest.approx(np.mean(norms["h"][[0, 2, 3], 2]))
    assert run["by_distance"][4]["c"] == pytest.approx(np.mean(norms["c"][[0, 2, 3], 4]))
    # targets: t = 2 is <NULL> for caption 2, so 2 captions reach it (0 and 3)
    assert [(r["t"], r["captions"]) for r in run["to_image"]] == \
        [(0, 4), (1, 4), (2, 2), (3, 3), (4, 3), (5, 2)]
    m = [r["h"] for r in run["by_distance"]]
    assert run["gain_per_step"] == pytest.approx((m[-1] / m[0]) ** (1 / 5))
    if run["gain_per_step"] < 1:
        assert 0.5 == pytest.approx(run["gain_per_step"] ** run["halving_steps"])
    assert run["sigma_max_Wh"] == pytest.approx(np.linalg.svd(model.params["Wh"])[1][0])


def test_fresh_lstm_forget_gate_starts_near_half():
    """CS231n's initialisation (b = 0, zero-mean weights): every gate sits near sigmoid(0)."""
    w2i = {w: i for i, w in enumerate(VOCAB)}
    model = CaptioningRNN(w2i, input_dim=4, wordvec_dim=16, hidden_dim=64, cell_type="lstm",
                          dtype=np.float64, seed=0)
    feats, captions = tiny_batch()
    run = gradients.measure(model, feats, captions, "fresh", length=12, min_captions=1)
    fg = [r["mean"] for r in run["forget_gate_mean"]]
    assert all(abs(f - 0.5) < 0.05 for f in fg)
    syn = run["synthetic"]
    assert syn["length"] == 12 and [r["d"] for r in syn["by_distance"]] == list(range(12))
    assert all(r["captions"] == len(feats) for r in syn["by_distance"])
