"""CaptioningRNN: gradients, packed == padded, dtypes, greedy sampling."""
import numpy as np
import pytest

from captioner import layers as L
from captioner.errors import CaptionerError
from captioner.model import PARAM_NAMES, CaptioningRNN
from gradcheck import numeric_grad, rel_error

WORDS = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "cat", "dog", "sits", "on", "mat"]
W2I = {w: i for i, w in enumerate(WORDS)}
NULL, START, END, UNK = 0, 1, 2, 3


def make_captions(rng, N, T1, V=len(WORDS)):
    """<START> words <END> <NULL>..., lengths varied; one row with a <NULL>
    target mid-caption and one with no target at all."""
    caps = np.full((N, T1), NULL)
    caps[:, 0] = START
    for n in range(N):
        k = rng.integers(0, T1 - 1)
        caps[n, 1:1 + k] = rng.integers(4, V, k)
        caps[n, 1 + k] = END
    caps[0, 2] = NULL          # a hole: the step still runs, its target is ignored
    caps[1, 1:] = NULL         # nothing to predict
    return caps


def padded_loss(m, features, captions):
    """The unpacked CS231n computation, built from the padded layers."""
    p = m.params
    cin, cout = captions[:, :-1], captions[:, 1:]
    mask = cout != m._null
    h0, c_proj = L.affine_forward(features, p["W_proj"], p["b_proj"])
    x, c_emb = L.word_embedding_forward(cin, p["W_embed"])
    fwd, bwd = (L.lstm_forward, L.lstm_backward) if m.cell_type == "lstm" else (L.rnn_forward, L.rnn_backward)
    h, c_rnn = fwd(x, h0, p["Wx"], p["Wh"], p["b"])
    s, c_voc = L.temporal_affine_forward(h, p["W_vocab"], p["b_vocab"])
    loss, ds = L.temporal_softmax_loss(s, cout, mask)
    g = {}
    dh, g["W_vocab"], g["b_vocab"] = L.temporal_affine_backward(ds, c_voc)
    dx, dh0, g["Wx"], g["Wh"], g["b"] = bwd(dh, c_rnn)
    g["W_embed"] = L.word_embedding_backward(dx, c_emb)
    _, g["W_proj"], g["b_proj"] = L.affine_backward(dh0, c_proj)
    return loss, g


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_loss_gradcheck_float64(cell):
    rng = np.random.default_rng(1)
    m = CaptioningRNN(W2I, input_dim=5, wordvec_dim=4, hidden_dim=3, cell_type=cell, dtype=np.float64, seed=0)
    for k in m.params:   # nonzero biases and larger embeddings exercise every path
        m.params[k] += 0.3 * rng.standard_normal(m.params[k].shape)
    feats = rng.standard_normal((4, 5))
    caps = make_captions(rng, 4, 6)
    loss, grads = m.loss(feats, caps)
    assert set(grads) == set(PARAM_NAMES)
    for name in PARAM_NAMES:
        assert grads[name].shape == m.params[name].shape
        num = numeric_grad(lambda: m.loss(feats, caps)[0], m.params[name])
        assert rel_error(num, grads[name]) < 1e-6, name


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 2e-4)])
def test_packed_loss_equals_padded(cell, dtype, rtol):
    rng = np.random.default_rng(2)
    m = CaptioningRNN(W2I, input_dim=6, wordvec_dim=5, hidden_dim=7, cell_type=cell, dtype=dtype, seed=3)
    feats = rng.standard_normal((9, 6)).astype(dtype)
    caps = make_captions(rng, 9, 8)
    loss, grads = m.loss(feats, caps)
    ref_loss, ref = padded_loss(m, feats, caps)
    assert abs(loss - ref_loss) <= rtol * abs(ref_loss)
    for name in PARAM_NAMES:
        assert grads[name].dtype == dtype
        scale = np.abs(ref[name]).max()
        np.testing.assert_allclose(grads[name], ref[name], rtol=rtol, atol=rtol * scale, err_msg=name)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_float32_matches_float64(cell):
    rng = np.random.default_rng(4)
    kw = dict(input_dim=16, wordvec_dim=8, hidden_dim=12, cell_type=cell, seed=5)
    m32 = CaptioningRNN(W2I, dtype=np.float32, **kw)
    m64 = CaptioningRNN(W2I, dtype=np.float64, **kw)
    for k in PARAM_NAMES:
        assert m32.params[k].dtype == np.float32 and m32.params[k].flags.c_contiguous
        np.testing.assert_allclose(m32.params[k], m64.params[k], rtol=1e-6)
    feats = rng.standard_normal((6, 16))
    caps = make_captions(rng, 6, 10)
    l32, g32 = m32.loss(feats, caps)
    l64, g64 = m64.loss(feats, caps)
    assert abs(l32 - l64) < 1e-5 * abs(l64)
    for k in PARAM_NAMES:
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-3, atol=1e-4 * np.abs(g64[k]).max(), err_msg=k)


def test_init_conventions():
    m = CaptioningRNN(W2I, input_dim=20, wordvec_dim=8, hidden_dim=6, cell_type="lstm", seed=0)
    V = len(WORDS)
    shapes = {"W_embed": (V, 8), "W_proj": (20, 6), "b_proj": (6,), "Wx": (8, 24), "Wh": (6, 24),
              "b": (24,), "W_vocab": (6, V), "b_vocab": (V,)}
    assert {k: v.shape for k, v in m.params.items()} == shapes
    assert not m.params["b"].any() and not m.params["b_vocab"].any()
    assert (m._null, m._start, m._end, m._unk) == (NULL, START, END, UNK)
    assert m.idx_to_word[5] == "cat"
    same = CaptioningRNN(W2I, input_dim=20, wordvec_dim=8, hidden_dim=6, cell_type="lstm", seed=0)
    other = CaptioningRNN(W2I, input_dim=20, wordvec_dim=8, hidden_dim=6, cell_type="lstm", seed=1)
    assert np.array_equal(m.params["Wh"], same.params["Wh"])
    assert not np.array_equal(m.params["Wh"], other.params["Wh"])
    assert CaptioningRNN(W2I, hidden_dim=6, cell_type="rnn").params["Wh"].shape == (6, 6)
    with pytest.raises(CaptionerError, match="cell_type"):
        CaptioningRNN(W2I, cell_type="gru")


def naive_greedy(m, features, max_length):
    """Full batch every step, no row dropping: the reference for sample()."""
    h, c = m.init_state(features)
    words = np.full(len(features), m._start)
    out = np.full((len(features), max_length), m._null)
    done = np.zeros(len(features), bool)
    for t in range(max_length):
        logits, h, c = m.step(words, h, c)
        logits[:, [m._null, m._start, m._unk]] = -np.inf
        if t == 0:
            logits[:, m._end] = -np.inf
        words = logits.argmax(1)
        out[:, t] = np.where(done, m._null, words)
        done |= words == m._end
    return out


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_sample_greedy_stops_at_end_and_skips_specials(cell):
    rng = np.random.default_rng(6)
    m = CaptioningRNN(W2I, input_dim=10, wordvec_dim=6, hidden_dim=8, cell_type=cell, seed=7)
    # make the specials the most likely words: sample must still skip them
    m.params["b_vocab"][[NULL, START, UNK]] = 50.0
    m.params["W_vocab"] *= 20   # sharp, feature-dependent choices; END sometimes wins
    feats = rng.standard_normal((40, 10)).astype(np.float32) * 3
    caps = m.sample(feats, max_length=12)
    assert caps.shape == (40, 12) and caps.dtype.kind == "i"
    np.testing.assert_array_equal(caps, naive_greedy(m, feats, 12))
    ended = 0
    for row in caps:
        assert not np.isin(row, [START, UNK]).any()
        e = np.flatnonzero(row == END)
        if e.size:
            ended += 1
            assert (row[e[0] + 1:] == NULL).all() and (row[:e[0]] != NULL).all()
        else:
            assert (row != NULL).all()
    assert 0 < ended < 40        # both finished and unfinished rows occur


def test_sample_end_first():
    m = CaptioningRNN(W2I, input_dim=4, wordvec_dim=3, hidden_dim=5, seed=0)
    m.params["b_vocab"][END] = 100.0
    caps = m.sample(np.ones((3, 4)), max_length=5)
    # <END> cannot come first (no empty captions): one word, then <END>.
    assert (caps[:, 0] > UNK).all()
    np.testing.assert_array_equal(caps[:, 1:], [[END, NULL, NULL, NULL]] * 3)


def test_batch_without_targets_has_zero_loss_and_grads():
    m = CaptioningRNN(W2I, input_dim=4, wordvec_dim=3, hidden_dim=5, cell_type="lstm", seed=0)
    caps = np.array([[START, NULL, NULL], [START, NULL, NULL]])
    loss, grads = m.loss(np.ones((2, 4)), caps)
    assert loss == 0.0
    assert all(not g.any() and g.shape == m.params[k].shape for k, g in grads.items())


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_loss_workspace_reuse_changes_nothing(cell):
    """loss() keeps its temporaries between calls: batches of other sizes in
    between must not leak into a result, nor overwrite grads handed out before."""
    rng = np.random.default_rng(8)
    kw = dict(input_dim=6, wordvec_dim=5, hidden_dim=7, cell_type=cell, seed=9)
    m, fresh = CaptioningRNN(W2I, **kw), CaptioningRNN(W2I, **kw)
    batches = [(rng.standard_normal((n, 6)), make_captions(rng, n, t)) for n, t in ((5, 7), (12, 10), (3, 5))]
    first = m.loss(*batches[0])
    kept = {k: v.copy() for k, v in first[1].items()}
    for feats, caps in batches[1:] + batches[:1]:
        loss, grads = m.loss(feats, caps)
        ref_loss, ref = CaptioningRNN(W2I, **kw).loss(feats, caps)
        assert loss == ref_loss
        for k in PARAM_NAMES:
            np.testing.assert_array_equal(grads[k], ref[k], err_msg=k)
    for k in PARAM_NAMES:
        np.testing.assert_array_equal(first[1][k], kept[k], err_msg=k)
    assert fresh.loss(*batches[0])[0] == first[0]


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_step_with_word_projections(cell):
    rng = np.random.default_rng(10)
    m = CaptioningRNN(W2I, input_dim=6, wordvec_dim=5, hidden_dim=7, cell_type=cell, dtype=np.float64,
                      seed=11)
    m.params["b"] += rng.standard_normal(m.params["b"].shape)
    h, c = m.init_state(rng.standard_normal((4, 6)))
    words = np.array([START, 5, 5, 9])
    proj = m.word_proj()
    ref = m.params["W_embed"][words] @ m.params["Wx"] + m.params["b"]
    np.testing.assert_allclose(proj[words], ref, rtol=1e-12)
    for x, y in zip(m.step(words, h, c), m.step(words, h, c, proj)):
        if x is not None:
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)
    assert m.decode_proj(1, 3) is None and m.decode_proj(2, len(WORDS)) is not None
    # rows: continue from shared states, as if they had been gathered first
    rows = np.array([2, 0, 2, 2, 3])
    words = np.array([5, 6, 7, 5, 9])
    shared = m.step(words, h, c, proj, rows=rows)
    gathered = m.step(words, h[rows], c[rows] if c is not None else None, proj)
    for x, y in zip(shared, gathered):
        if x is not None:
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)
