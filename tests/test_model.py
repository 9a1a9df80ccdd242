"""CaptioningRNN: gradients, fast path == readable layers == textbook, dtypes, vocabularies,
greedy sampling."""

import json

import numpy as np
import pytest

import textbook
from captioner.cells import CELLS
from captioner.errors import CaptionerError
from captioner.model import PARAM_NAMES, CaptioningRNN
from gradcheck import numeric_grad, rel_error
from textbook import textbook_loss

WORDS = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "cat", "dog", "sits", "on", "mat"]
assert len(WORDS) == 10  # the default V of the caption makers below
W2I = {w: i for i, w in enumerate(WORDS)}
NULL, START, END, UNK = 0, 1, 2, 3


def make_captions(rng, N, T1, V=10):
    """(N, T1) captions <START> words <END> <NULL>... of varied lengths (1 to T1 - 2 words),
    with <NULL> targets before the end: row 0 has a hole between two words, row 1 has
    nothing to predict, row 2 has the longest length, and the rest are random."""
    assert N >= 4 and T1 >= 6
    lengths = np.r_[T1 - 2, 0, T1 - 2, 1, rng.integers(1, T1 - 1, N - 4)]
    caps = np.full((N, T1), NULL)
    caps[:, 0] = START
    for n, k in enumerate(lengths):
        caps[n, 1 : 1 + k] = rng.integers(4, V, k)
        caps[n, 1 + k] = END
    caps[0, 2] = NULL  # a hole: the step still runs, its target is ignored
    caps[1, 1:] = NULL  # nothing to predict
    return caps


def test_make_captions_covers_what_the_checks_claim():
    caps = make_captions(np.random.default_rng(0), 6, 8)
    targets = caps[:, 1:] != NULL
    real = targets.sum(axis=1)
    assert len(set(real[real > 0])) >= 3  # several lengths
    last = np.where(targets.any(1), targets.shape[1] - np.argmax(targets[:, ::-1], 1), 0)
    holes = [n for n in range(len(caps)) if (~targets[n, : last[n]]).any()]
    assert holes  # a <NULL> target before a real one
    assert not targets[1].any()  # a row with nothing to predict


def gradcheck_model(m, feats, caps, loss_fn):
    loss, grads = loss_fn(feats, caps)
    assert set(grads) == set(PARAM_NAMES)
    for name in PARAM_NAMES:
        assert grads[name].shape == m.params[name].shape
        num = numeric_grad(lambda: loss_fn(feats, caps)[0], m.params[name])
        assert rel_error(num, grads[name]) < 1e-6, name
        assert np.abs(grads[name]).max() > 0, name  # every path carries a gradient


def small_model(cell, rng, dtype=np.float64, seed=0, **kw):
    kw = dict(dict(input_dim=5, wordvec_dim=4, hidden_dim=3), **kw)
    m = CaptioningRNN(W2I, cell_type=cell, dtype=dtype, seed=seed, **kw)
    for k in m.params:  # nonzero biases and larger embeddings exercise every path
        m.params[k] += (0.3 * rng.standard_normal(m.params[k].shape)).astype(dtype)
    return m


@pytest.mark.parametrize("readable", [False, True], ids=["fast", "readable"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_loss_gradcheck_float64(cell, readable):
    """Both paths against centred differences, on captions of several lengths with a
    <NULL> target mid-caption (the masked-target branch) and a row with no target."""
    rng = np.random.default_rng(1)
    m = small_model(cell, rng)
    feats = rng.standard_normal((6, 5))
    caps = make_captions(rng, 6, 7)
    gradcheck_model(m, feats, caps, m.loss_readable if readable else m.loss)


def coco_length_captions(rng, N, T1=17, V=10):
    """Captions with COCO's length distribution (8-15 words, most 9-11), plus <NULL> gaps."""
    lengths = np.clip(np.round(rng.normal(10.5, 1.8, N)), 8, T1 - 2).astype(int)
    caps = np.full((N, T1), NULL)
    caps[:, 0] = START
    for n, k in enumerate(lengths):
        caps[n, 1 : 1 + k] = rng.integers(3, V, k)  # <UNK> included
        caps[n, 1 + k] = END
    caps[::7, 3] = NULL
    return caps


def assert_same(loss, grads, ref_loss, ref, rtol):
    assert abs(loss - ref_loss) <= rtol * abs(ref_loss)
    for name in PARAM_NAMES:
        scale = np.abs(ref[name]).max()
        assert scale > 0, name
        np.testing.assert_allclose(
            grads[name], ref[name], rtol=rtol, atol=rtol * scale, err_msg=name
        )


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 2e-4)])
def test_fast_loss_equals_readable_layers(cell, dtype, rtol):
    """The packed fast path against captioner.layers composed CS231n's way (padded,
    rnn_forward looping over the step functions): independent code, same numbers."""
    rng = np.random.default_rng(2)
    m = CaptioningRNN(
        W2I, input_dim=6, wordvec_dim=5, hidden_dim=7, cell_type=cell, dtype=dtype, seed=3
    )
    m.params["b"] += (0.5 * rng.standard_normal(m.params["b"].shape)).astype(dtype)
    for feats, caps in [
        (rng.standard_normal((9, 6)), make_captions(rng, 9, 8)),
        (rng.standard_normal((40, 6)), coco_length_captions(rng, 40)),
    ]:
        loss, grads = m.loss(feats.astype(dtype), caps)
        assert all(g.dtype == dtype for g in grads.values())
        assert_same(loss, grads, *m.loss_readable(feats.astype(dtype), caps), rtol)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_fast_loss_equals_readable_on_real_coco_captions(cell, shared):
    """Real COCO val captions in the CS231n vocabulary (1004 words, <UNK>s, real lengths)."""
    from captioner.metrics import tokenize

    coco = shared / "coco"
    anns = json.loads((coco / "captions_val2014.json").read_text())["annotations"]
    w2i = json.loads((coco / "coco2014_vocab.json").read_text())["word_to_idx"]
    rng = np.random.default_rng(5)
    caps = np.full((60, 17), w2i["<NULL>"])
    for i, k in enumerate(rng.choice(len(anns), 60, replace=False)):
        ids = [w2i.get(w, w2i["<UNK>"]) for w in tokenize(anns[k]["caption"])[:15]]
        caps[i, : len(ids) + 2] = [w2i["<START>"], *ids, w2i["<END>"]]
    assert len(set((caps != w2i["<NULL>"]).sum(1))) >= 4
    m = CaptioningRNN(
        w2i, input_dim=8, wordvec_dim=6, hidden_dim=10, cell_type=cell, dtype=np.float64, seed=4
    )
    feats = rng.standard_normal((60, 8))
    loss, grads = m.loss(feats, caps)
    assert_same(loss, grads, *m.loss_readable(feats, caps), 1e-10)
    assert_same(loss, grads, *textbook_loss(m.params, feats, caps, cell), 1e-10)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_fast_loss_equals_textbook(cell):
    """tests/textbook.py: a third, separately written float64 implementation (the bench's
    baseline), checked here so the bench compares equal computations."""
    rng = np.random.default_rng(6)
    m = small_model(cell, rng, input_dim=6, wordvec_dim=5, hidden_dim=7)
    feats = rng.standard_normal((30, 6))
    caps = coco_length_captions(rng, 30)
    assert_same(*m.loss(feats, caps), *textbook_loss(m.params, feats, caps, cell), 1e-10)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_textbook_gradcheck(cell):
    assert textbook._grad_check(cell) < 1e-6


def test_cs231n_vocabulary_without_start_end():
    """CS231n's own checks build word_to_idx with only <NULL> (and words): a loss works,
    sampling says what is missing."""
    w2i = {"<NULL>": 0, "cat": 2, "dog": 3, "a": 1}
    m = CaptioningRNN(
        w2i, input_dim=4, wordvec_dim=3, hidden_dim=5, cell_type="lstm", dtype=np.float64, seed=0
    )
    assert (m.null, m.start, m.end, m.unk) == (0, None, None, None)
    caps = np.array([[1, 2, 3, 0], [3, 1, 0, 0]])
    loss, grads = m.loss(np.ones((2, 4)), caps)
    ref_loss, ref = m.loss_readable(np.ones((2, 4)), caps)
    assert loss > 0
    assert_same(loss, grads, ref_loss, ref, 1e-10)
    with pytest.raises(CaptionerError, match="no <START> or <END> token"):
        m.sample(np.ones((1, 4)))
    from captioner.decoding import beam_search

    with pytest.raises(CaptionerError, match="cannot write captions"):
        beam_search(m, np.ones((1, 4)))
    with pytest.raises(CaptionerError, match="<NULL>"):
        CaptioningRNN({"cat": 0, "<START>": 1, "<END>": 2})


@pytest.mark.parametrize("cell", list(CELLS))
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
    full = np.where(
        caps == NULL, 4, caps
    )  # every step has a target (the fast path's other branch)
    for c in (caps, full):
        l32, g32 = m32.loss(feats, c)
        l64, g64 = m64.loss(feats, c)
        assert abs(l32 - l64) < 1e-5 * abs(l64)
        for k in PARAM_NAMES:
            assert g32[k].dtype == np.float32, k  # computed in float32, not only stored so
            np.testing.assert_allclose(
                g32[k], g64[k], rtol=1e-3, atol=1e-4 * np.abs(g64[k]).max(), err_msg=k
            )


def test_init_conventions():
    m = CaptioningRNN(W2I, input_dim=20, wordvec_dim=8, hidden_dim=6, cell_type="lstm", seed=0)
    V = len(WORDS)
    shapes = {
        "W_embed": (V, 8),
        "W_proj": (20, 6),
        "b_proj": (6,),
        "Wx": (8, 24),
        "Wh": (6, 24),
        "b": (24,),
        "W_vocab": (6, V),
        "b_vocab": (V,),
    }
    assert {k: v.shape for k, v in m.params.items()} == shapes
    assert not m.params["b"].any() and not m.params["b_vocab"].any()
    assert (m.null, m.start, m.end, m.unk) == (NULL, START, END, UNK)
    assert m.idx_to_word[5] == "cat"
    same = CaptioningRNN(W2I, input_dim=20, wordvec_dim=8, hidden_dim=6, cell_type="lstm", seed=0)
    other = CaptioningRNN(W2I, input_dim=20, wordvec_dim=8, hidden_dim=6, cell_type="lstm", seed=1)
    assert np.array_equal(m.params["Wh"], same.params["Wh"])
    assert not np.array_equal(m.params["Wh"], other.params["Wh"])
    assert CaptioningRNN(W2I, hidden_dim=6, cell_type="rnn").params["Wh"].shape == (6, 6)
    assert CaptioningRNN(W2I, hidden_dim=6, cell_type="gru").params["Wh"].shape == (6, 18)
    with pytest.raises(CaptionerError, match="cell_type"):
        CaptioningRNN(W2I, cell_type="transformer")


def naive_greedy(m, features, max_length):
    """Full batch every step, no row dropping: the reference for sample()."""
    h, c = m.init_state(features)
    words = np.full(len(features), m.start)
    out = np.full((len(features), max_length), m.null)
    done = np.zeros(len(features), bool)
    for t in range(max_length):
        logits, h, c = m.step(words, h, c)
        logits[:, [m.null, m.start, m.unk]] = -np.inf
        if t == 0:
            logits[:, m.end] = -np.inf
        words = logits.argmax(1)
        out[:, t] = np.where(done, m.null, words)
        done |= words == m.end
    return out


@pytest.mark.parametrize("cell", list(CELLS))
def test_sample_greedy_stops_at_end_and_skips_specials(cell):
    rng = np.random.default_rng(6)
    m = CaptioningRNN(W2I, input_dim=10, wordvec_dim=6, hidden_dim=8, cell_type=cell, seed=7)
    # make the specials the most likely words: sample must still skip them
    m.params["b_vocab"][[NULL, START, UNK]] = 50.0
    m.params["W_vocab"] *= 20  # sharp, feature-dependent choices; END sometimes wins
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
            assert (row[e[0] + 1 :] == NULL).all() and (row[: e[0]] != NULL).all()
        else:
            assert (row != NULL).all()
    assert 0 < ended < 40  # both finished and unfinished rows occur


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


@pytest.mark.parametrize("cell", list(CELLS))
def test_loss_workspace_reuse_changes_nothing(cell):
    """loss() keeps its temporaries between calls: batches of other sizes in
    between must not leak into a result, nor overwrite grads handed out before."""
    rng = np.random.default_rng(8)
    kw = dict(input_dim=6, wordvec_dim=5, hidden_dim=7, cell_type=cell, seed=9)
    m, fresh = CaptioningRNN(W2I, **kw), CaptioningRNN(W2I, **kw)
    batches = [
        (rng.standard_normal((n, 6)), make_captions(rng, n, t))
        for n, t in ((5, 7), (12, 10), (4, 6))
    ]
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


@pytest.mark.parametrize("cell", list(CELLS))
def test_step_with_word_projections(cell):
    rng = np.random.default_rng(10)
    m = CaptioningRNN(
        W2I, input_dim=6, wordvec_dim=5, hidden_dim=7, cell_type=cell, dtype=np.float64, seed=11
    )
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


@pytest.mark.parametrize("cell", list(CELLS))
def test_every_cell_entry_is_complete(cell):
    """A cell is one table entry plus its layers: each entry finds all seven functions and
    gives the model its parameter shapes."""
    from captioner import cells

    c = cells.get(cell)
    for kind in ("step_forward", "step_backward", "forward", "backward"):
        assert callable(getattr(c, kind))
    for kind in ("packed_forward", "packed_backward", "decode_step"):
        assert callable(getattr(c, kind))
    m = CaptioningRNN(W2I, hidden_dim=6, wordvec_dim=4, cell_type=cell)
    assert m.params["Wx"].shape == (4, 6 * c.gates) and m.params["b"].shape == (6 * c.gates,)
    assert c.states[0] == "h" and set(c.states) <= {"h", "c"}
    with pytest.raises(ValueError, match="rnn, lstm, gru"):
        cells.get("transformer")
