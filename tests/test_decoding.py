"""Beam search and temperature sampling on a small model trained in the test."""

import numpy as np
import pytest

from captioner import optim
from captioner.decoding import _top_words, beam_search, sample_temperature
from captioner.errors import CaptionerError
from captioner.model import CaptioningRNN

WORDS = [
    "<NULL>",
    "<START>",
    "<END>",
    "<UNK>",
    "a",
    "cat",
    "dog",
    "sits",
    "on",
    "the",
    "mat",
    "red",
]
W2I = {w: i for i, w in enumerate(WORDS)}
NULL, START, END, UNK = 0, 1, 2, 3
SPECIAL = [NULL, START, UNK]


@pytest.fixture(scope="module")
def trained():
    """A tiny LSTM fit for 150 Adam steps to 3 random captions per image:
    an ambiguous, multi-modal target where beam search has room to win."""
    rng = np.random.default_rng(0)
    n_img, per, T1 = 16, 3, 9
    feats = rng.standard_normal((n_img, 12)).astype(np.float32)
    caps = np.full((n_img * per, T1), NULL)
    caps[:, 0] = START
    for r in range(n_img * per):
        k = rng.integers(1, T1 - 1)
        caps[r, 1 : 1 + k] = rng.integers(3, len(WORDS), k)  # includes <UNK> as a target
        caps[r, 1 + k] = END
    img = np.repeat(np.arange(n_img), per)
    m = CaptioningRNN(W2I, input_dim=12, wordvec_dim=8, hidden_dim=24, cell_type="lstm", seed=0)
    cfg = {k: {"learning_rate": 1e-2} for k in m.params}
    for _ in range(150):
        _, g = m.loss(feats[img], caps)
        for k in m.params:
            m.params[k], cfg[k] = optim.adam(m.params[k], g[k], cfg[k])
    return m, feats


def score(m, feat, ids):
    """log p(ids | image) recomputed through the training loss."""
    cap = np.concatenate([[START], ids])[None, :]
    loss, _ = m.loss(feat[None, :], cap)
    return -loss


def trim(row):
    e = np.flatnonzero(row == END)
    return row[: e[0] + 1] if e.size else row[row != NULL]


@pytest.mark.parametrize("max_length", [1, 4, 16])
def test_beam_one_is_greedy(trained, max_length):
    m, feats = trained
    greedy = m.sample(feats, max_length=max_length)
    beams = beam_search(m, feats, beam_size=1, max_length=max_length)
    for row, hyps in zip(greedy, beams):
        assert len(hyps) == 1
        np.testing.assert_array_equal(hyps[0][0], trim(row))


def test_beam_beats_greedy_and_reports_true_logprobs(trained):
    m, feats = trained
    greedy = m.sample(feats, max_length=12)
    g_lp = np.array([score(m, f, trim(r)) for f, r in zip(feats, greedy)])
    beams = beam_search(m, feats, beam_size=3, max_length=12, n_best=3)
    b_lp = []
    for f, hyps in zip(feats, beams):
        assert len(hyps) == 3
        lps = [lp for _, lp in hyps]
        assert lps == sorted(lps, reverse=True)
        for ids, lp in hyps:
            assert not np.isin(ids, SPECIAL).any()
            assert abs(score(m, f, ids) - lp) < 1e-4 * max(1.0, abs(lp))
        assert len({tuple(ids) for ids, _ in hyps}) == 3  # distinct hypotheses
        b_lp.append(lps[0])
    b_lp = np.array(b_lp)
    assert np.all(b_lp >= g_lp - 1e-4)
    assert b_lp.mean() > g_lp.mean() + 1e-3


def test_length_norm_ranks_by_normalised_score(trained):
    m, feats = trained
    for hyps in beam_search(m, feats[:6], beam_size=4, max_length=10, length_norm=1.0, n_best=4):
        keys = [lp / len(ids) for ids, lp in hyps]
        assert keys == sorted(keys, reverse=True)
    # n_best beyond the beam: the beam's hypotheses, no more
    assert all(len(h) == 2 for h in beam_search(m, feats[:3], beam_size=2, n_best=5))


def test_specials_never_emitted_even_when_most_likely(trained):
    m, feats = trained
    saved = m.params["b_vocab"].copy()
    try:
        m.params["b_vocab"][SPECIAL] += 30.0
        for hyps in beam_search(m, feats, beam_size=3, max_length=8, n_best=3):
            for ids, lp in hyps:
                assert not np.isin(ids, SPECIAL).any() and np.isfinite(lp)
        caps = sample_temperature(m, feats, temperature=2.0, max_length=8, rng=0)
        assert not np.isin(caps, [START, UNK]).any()
        for row in caps:  # NULL only as padding after END
            assert (trim(row) != NULL).all() and (row[len(trim(row)) :] == NULL).all()
    finally:
        m.params["b_vocab"][...] = saved


def test_temperature_sampling(trained):
    m, feats = trained
    a = sample_temperature(m, feats, max_length=10, rng=3)
    np.testing.assert_array_equal(
        a, sample_temperature(m, feats, max_length=10, rng=np.random.default_rng(3))
    )
    assert a.shape == (len(feats), 10)
    # near-zero temperature is greedy
    cold = sample_temperature(m, feats, temperature=1e-6, max_length=10, rng=1)
    np.testing.assert_array_equal(cold, m.sample(feats, max_length=10))
    # first words follow the model's softmax (specials excluded, renormalised)
    reps = 4000
    first = sample_temperature(m, np.repeat(feats[:1], reps, 0), max_length=1, rng=5)[:, 0]
    logits, _, _ = m.step(np.array([START]), *m.init_state(feats[:1]))
    z = logits[0].astype(np.float64)
    z[SPECIAL] = -np.inf
    p = np.exp(z - z.max())
    p /= p.sum()
    freq = np.bincount(first, minlength=len(WORDS)) / reps
    assert np.abs(freq - p).max() < 0.035


def test_bad_arguments(trained):
    m, feats = trained
    with pytest.raises(CaptionerError, match="beam_size"):
        beam_search(m, feats, beam_size=0)
    with pytest.raises(CaptionerError, match="temperature"):
        sample_temperature(m, feats, temperature=0)


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_other_cells_beam_and_sampling(cell):
    """The cells besides the LSTM (the `trained` fixture): beam 1 is greedy, and every
    hypothesis' log-probability is what the training loss scores."""
    m = CaptioningRNN(W2I, input_dim=6, wordvec_dim=4, hidden_dim=10, cell_type=cell, seed=2)
    m.params["W_vocab"] *= 10
    feats = np.random.default_rng(0).standard_normal((7, 6))
    greedy = m.sample(feats, max_length=9)
    for row, hyps in zip(greedy, beam_search(m, feats, beam_size=1, max_length=9)):
        np.testing.assert_array_equal(hyps[0][0], trim(row))
    for f, hyps in zip(feats, beam_search(m, feats, beam_size=4, max_length=9, n_best=4)):
        for ids, lp in hyps:
            assert abs(score(m, f, ids) - lp) < 1e-4 * max(1.0, abs(lp))
    assert sample_temperature(m, feats, max_length=9, rng=0).shape == (7, 9)


def reference_beam(m, feats, K, max_length):
    """The textbook beam search: every step scores all K x V continuations in
    float64 and keeps the K best (ties to the lower candidate index); finished
    hypotheses continue with free <NULL>. -> (tokens (N, K, L), score (N, K))."""
    N, V = len(feats), m.params["W_vocab"].shape[1]
    h, c = m.init_state(feats)
    h, c = np.repeat(h, K, 0), np.repeat(c, K, 0) if c is not None else None
    score = np.full((N, K), -np.inf)
    score[:, 0] = 0
    tokens = np.full((N, K, max_length), NULL)
    done = np.zeros((N, K), bool)
    words = np.full(N * K, START)
    for t in range(max_length):
        logits, h, c = m.step(words, h, c)
        z = logits.astype(np.float64)
        logp = z - z.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        logp[:, SPECIAL] = -np.inf
        if t == 0:
            logp[:, END] = -np.inf  # no empty captions
        logp = logp.reshape(N, K, V)
        logp[done] = np.where(np.arange(V) == NULL, 0.0, -np.inf)
        cand = (score[:, :, None] + logp).reshape(N, K * V)
        top = np.argsort(-cand, axis=1, kind="stable")[:, :K]
        parent, word = top // V, top % V
        score = np.take_along_axis(cand, top, 1)
        tokens = np.take_along_axis(tokens, parent[:, :, None], 1)
        tokens[:, :, t] = word
        done = np.take_along_axis(done, parent, 1) | (word == END)
        rows = (np.arange(N)[:, None] * K + parent).ravel()
        h, c, words = h[rows], c[rows] if c is not None else None, word.ravel()
    return tokens, score


@pytest.mark.parametrize("K", [2, 3, 5, 14])
def test_beam_equals_full_search(trained, K):
    """Per-hypothesis top-K preselection and skipping finished hypotheses
    change nothing: same captions and scores as scoring all K x V candidates."""
    m, feats = trained
    n_end = n_hyps = 0
    for max_length in (4, 10):
        tokens, score = reference_beam(m, feats, K, max_length)
        beams = beam_search(m, feats, beam_size=K, max_length=max_length, n_best=K)
        for n, hyps in enumerate(beams):
            ref = [(trim(tokens[n, k]), score[n, k]) for k in range(K) if np.isfinite(score[n, k])]
            ref.sort(key=lambda r: -r[1])
            assert len(hyps) == len(ref)
            for (ids, lp), (rids, rlp) in zip(hyps, ref):
                np.testing.assert_array_equal(ids, rids)
                assert abs(lp - rlp) < 1e-5 * max(1.0, abs(rlp))
                n_end += ids[-1] == END
                n_hyps += 1
    assert 0 < n_end < n_hyps  # both finished and cut-off hypotheses occur


def test_top_words_ties_go_to_the_lower_id():
    logits = np.array(
        [[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, -np.inf, 5.0, 5.0, -1.0]], dtype=np.float32
    )
    ref = np.argsort(-logits, axis=1, kind="stable")[:, :3]
    words, values = _top_words(logits.copy(), 3)
    np.testing.assert_array_equal(words, ref)
    np.testing.assert_array_equal(values, np.take_along_axis(logits, ref, 1))


def test_no_images(trained):
    m, feats = trained
    assert beam_search(m, feats[:0], beam_size=3) == []
    assert m.sample(feats[:0], max_length=5).shape == (0, 5)


def test_no_empty_captions():
    """Even a model that prefers <END> first writes at least one word."""
    from captioner.model import CaptioningRNN

    w2i = {w: i for i, w in enumerate(["<NULL>", "<START>", "<END>", "<UNK>", "a", "b"])}
    model = CaptioningRNN(w2i, input_dim=4, wordvec_dim=3, hidden_dim=5, cell_type="lstm", seed=0)
    model.params["b_vocab"][w2i["<END>"]] = 50.0
    feats = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    greedy = model.sample(feats, max_length=5)
    assert (greedy[:, 0] > 3).all() and (greedy[:, 1] == w2i["<END>"]).all()
    for beams in beam_search(model, feats, beam_size=3, max_length=5, n_best=3):
        assert all(len(ids) >= 2 and ids[0] > 3 for ids, _ in beams)
    assert (sample_temperature(model, feats, 1.0, 5, rng=0)[:, 0] > 3).all()
