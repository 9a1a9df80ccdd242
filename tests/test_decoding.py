"""Beam search and temperature sampling on a small model trained in the test."""
import numpy as np
import pytest

from captioner import optim
from captioner.decoding import beam_search, sample_temperature
from captioner.errors import CaptionerError
from captioner.model import CaptioningRNN

WORDS = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "cat", "dog", "sits", "on", "the", "mat", "red"]
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
        caps[r, 1:1 + k] = rng.integers(3, len(WORDS), k)   # includes <UNK> as a target
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
    return row[:e[0] + 1] if e.size else row[row != NULL]


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
        assert len({tuple(ids) for ids, _ in hyps}) == 3    # distinct hypotheses
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
        for row in caps:      # NULL only as padding after END
            assert (trim(row) != NULL).all() and (row[len(trim(row)):] == NULL).all()
    finally:
        m.params["b_vocab"][...] = saved


def test_temperature_sampling(trained):
    m, feats = trained
    a = sample_temperature(m, feats, max_length=10, rng=3)
    np.testing.assert_array_equal(a, sample_temperature(m, feats, max_length=10, rng=np.random.default_rng(3)))
    assert a.shape == (len(feats), 10)
    # near-zero temperature is greedy
    np.testing.assert_array_equal(sample_temperature(m, feats, temperature=1e-6, max_length=10, rng=1),
                                  m.sample(feats, max_length=10))
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


def test_rnn_cell_beam_and_sampling():
    m = CaptioningRNN(W2I, input_dim=6, wordvec_dim=4, hidden_dim=10, cell_type="rnn", seed=2)
    m.params["W_vocab"] *= 10
    feats = np.random.default_rng(0).standard_normal((7, 6))
    greedy = m.sample(feats, max_length=9)
    for row, hyps in zip(greedy, beam_search(m, feats, beam_size=1, max_length=9)):
        np.testing.assert_array_equal(hyps[0][0], trim(row))
    for f, hyps in zip(feats, beam_search(m, feats, beam_size=4, max_length=9, n_best=4)):
        for ids, lp in hyps:
            assert abs(score(m, f, ids) - lp) < 1e-4 * max(1.0, abs(lp))
    assert sample_temperature(m, feats, max_length=9, rng=0).shape == (7, 9)
