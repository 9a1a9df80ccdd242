"""Caption decoding beyond greedy: beam search and temperature sampling.

Both drive model.step (one batched decoder step) and model.init_state, and,
like model.sample, never emit <NULL>, <START> or <UNK>.
"""
import numpy as np

from captioner.errors import CaptionerError


def _log_softmax(logits):
    """float64 log-probabilities (B, V): ranking in float64 keeps the order of
    the float32 logits, so beam_size=1 picks exactly what argmax picks."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
    return z


def _check_positive_int(name, value):
    if int(value) != value or value < 1:
        raise CaptionerError(f"{name} must be a positive integer, got {value!r}")


def beam_search(model, features, beam_size=3, max_length=16, length_norm=0.0, n_best=1):
    """Beam search over images x beams in one batch.

    features (N, D) -> list of N lists of (caption_ids, logprob), best first.
    caption_ids: int64 array of the generated words, ending with <END> when
    one was produced (no <START>, no padding); logprob: its log-probability
    under the model's full softmax (what model.loss scores), a float.

    Each image keeps beam_size hypotheses; a finished one keeps its slot and
    score (its only continuation is free padding), so beam_size=1 is greedy
    decoding exactly. With length_norm alpha > 0 the final hypotheses are
    ranked by logprob / len(caption_ids) ** alpha (pruning uses logprob).
    Returns min(n_best, beam_size) hypotheses per image: a beam never holds
    more, and widening it to n_best would change the best caption.
    """
    _check_positive_int("beam_size", beam_size)
    _check_positive_int("max_length", max_length)
    _check_positive_int("n_best", n_best)
    N, K = len(features), int(beam_size)
    null, end = model._null, model._end
    h, c = model.init_state(features)
    h = np.repeat(h, K, axis=0)
    c = np.repeat(c, K, axis=0) if c is not None else None
    V = model.params["W_vocab"].shape[1]
    score = np.full((N, K), -np.inf)
    score[:, 0] = 0.0          # all beams start identical: keep one, or they duplicate
    tokens = np.full((N, K, max_length), null, dtype=np.int64)
    done = np.zeros((N, K), dtype=bool)
    words = np.full(N * K, model._start)
    frozen = np.full(V, -np.inf)
    frozen[null] = 0.0
    img = np.arange(N)[:, None] * K
    for t in range(max_length):
        logits, h, c = model.step(words, h, c)
        logp = _log_softmax(logits)
        logp[:, model.banned] = -np.inf
        logp = logp.reshape(N, K, V)
        logp[done] = frozen
        cand = (score[:, :, None] + logp).reshape(N, K * V)
        if K == 1:
            top = cand.argmax(axis=1)[:, None]
        else:
            top = np.argpartition(-cand, K - 1, axis=1)[:, :K]
            # best first; equal scores by candidate index, like argmax
            rank = np.lexsort((top, -np.take_along_axis(cand, top, axis=1)), axis=1)
            top = np.take_along_axis(top, rank, axis=1)
        parent, word = top // V, top % V
        score = np.take_along_axis(cand, top, axis=1)
        tokens = np.take_along_axis(tokens, parent[:, :, None], axis=1)
        tokens[:, :, t] = word
        done = np.take_along_axis(done, parent, axis=1) | (word == end)
        rows = (img + parent).ravel()
        h = h[rows]
        c = c[rows] if c is not None else None
        words = word.ravel()
        if done.all():
            break

    results = []
    for n in range(N):
        hyps = []
        for k in range(K):
            if not np.isfinite(score[n, k]):
                continue
            ids = tokens[n, k]
            stop = np.flatnonzero(ids == end)
            ids = ids[:stop[0] + 1] if stop.size else ids[ids != null]
            key = score[n, k] / len(ids) ** length_norm if length_norm else score[n, k]
            hyps.append((key, ids.copy(), float(score[n, k])))
        hyps.sort(key=lambda x: -x[0])   # stable: ties keep beam order
        results.append([(ids, lp) for _, ids, lp in hyps[:n_best]])
    return results


def sample_temperature(model, features, temperature=1.0, max_length=16, rng=None):
    """Stochastic captions (N, max_length) int64, drawn word by word from
    softmax(logits / temperature) with <NULL>, <START>, <UNK> excluded.
    Same layout as model.sample: <END>, then <NULL> padding.
    rng: a np.random.Generator, a seed, or None."""
    if not temperature > 0:
        raise CaptionerError(f"temperature must be > 0, got {temperature!r}")
    _check_positive_int("max_length", max_length)
    rng = np.random.default_rng(rng)
    N = len(features)
    captions = np.full((N, max_length), model._null, dtype=np.int64)
    h, c = model.init_state(features)
    rows = np.arange(N)
    words = np.full(N, model._start)
    for t in range(max_length):
        if rows.size == 0:
            break
        logits, h, c = model.step(words, h, c)
        z = logits.astype(np.float64) / temperature
        z[:, model.banned] = -np.inf
        # Gumbel-max trick: argmax(z + Gumbel noise) ~ softmax(z), no cumsum
        words = (z + rng.gumbel(size=z.shape)).argmax(axis=1)
        captions[rows, t] = words
        live = words != model._end
        if not live.all():
            rows, words, h = rows[live], words[live], h[live]
            c = c[live] if c is not None else None
    return captions
