"""Caption decoding beyond greedy: beam search and temperature sampling.

Both drive model.step (one batched decoder step) and model.init_state, and,
like model.sample, never emit <NULL>, <START> or <UNK>, nor an empty caption.
"""

import numpy as np

from captioner.errors import CaptionerError


def _log_normalizer(logits, scratch):
    """log sum_v exp(logits[:, v]) (B,) float64, over the full vocabulary (what
    model.loss normalises by). Exponentials in float32 into scratch (B, V):
    float64 exp costs 8x more here, and a float32 pairwise sum is accurate to
    ~1e-7 relative, far inside what float32 logits carry."""
    m = logits.max(axis=1)
    if m.max(initial=0) < 60 and m.min(initial=0) > -60:
        # exp(logits) can neither overflow nor lose the sum: skip the shift by m
        np.exp(logits, out=scratch)
        return np.log(scratch.sum(axis=1).astype(np.float64))
    np.subtract(logits, m[:, None], out=scratch)
    np.exp(scratch, out=scratch)
    return m + np.log(scratch.sum(axis=1).astype(np.float64))


def _top_words(logits, k):
    """The k largest entries of each row of logits (B, V), best first, ties to
    the lower word id like argmax -> words (B, k), values (B, k). Overwrites the
    picked entries with -inf. k argmax passes: far cheaper than argpartition."""
    B = len(logits)
    rows = np.arange(B)
    words = np.empty((B, k), dtype=np.intp)
    values = np.empty((B, k), dtype=logits.dtype)
    for j in range(k):
        words[:, j] = w = logits.argmax(axis=1)
        values[:, j] = logits[rows, w]
        logits[rows, w] = -np.inf
    return words, values


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
    score (its only continuation is free padding) and, like the unused slots
    of the first step, runs no decoder step. beam_size=1 is greedy decoding
    exactly. With length_norm alpha > 0 the final hypotheses are
    ranked by logprob / len(caption_ids) ** alpha (pruning uses logprob).
    Returns min(n_best, beam_size) hypotheses per image: a beam never holds
    more, and widening it to n_best would change the best caption.
    """
    _check_positive_int("beam_size", beam_size)
    _check_positive_int("max_length", max_length)
    _check_positive_int("n_best", n_best)
    N, K = len(features), int(beam_size)
    model.check_can_sample()
    null, end = model.null, model.end
    V = len(model.word_to_idx)
    score = np.full((N, K), -np.inf)
    score[:, 0] = 0.0  # all beams start identical: keep one, or they duplicate
    tokens = np.full((N, K, max_length), null, dtype=np.int64)
    done = np.zeros((N, K), dtype=bool)
    # Only live hypotheses (finite score, no <END> yet) run a step. h, c hold
    # the states of the previous step's live hypotheses; live hypothesis i
    # continues from state rows[i] (a parent may have several children).
    live = np.arange(N) * K
    h, c = model.init_state(features)
    rows = np.arange(N)
    words = np.full(N, model.start)
    proj = model.decode_proj(N * K, max_length)
    scratch = np.empty((N * K, V), dtype=model.dtype)
    kk = min(K, V)
    for t in range(max_length):
        logits, h, c = model.step(words, h, c, proj, rows)
        lse = _log_normalizer(logits, scratch[: len(live)])
        logits[:, model.banned] = -np.inf
        if t == 0:
            logits[:, end] = -np.inf  # a caption has at least one word
        # An image's best K continuations are among each hypothesis' own K best
        # words: K x K candidates per image instead of K x V.
        top, val = _top_words(logits, kk)
        cand = np.full((N * K, kk), -np.inf)
        cand_word = np.full((N * K, kk), null, dtype=np.int64)
        cand[live] = score.ravel()[live, None] + (val - lse[:, None])
        cand_word[live] = top
        fin = np.flatnonzero(done.ravel() & np.isfinite(score.ravel()))
        cand[fin, 0] = score.ravel()[fin]  # a finished hypothesis continues with free padding
        cand = cand.reshape(N, K * kk)
        cand_word = cand_word.reshape(N, K * kk)
        cand_parent = np.repeat(np.arange(K), kk)
        # best first; equal scores by parent, then word id (the order of argmax over K x V)
        key = cand_parent * V + cand_word
        pick = np.lexsort((key, -cand), axis=1)[:, :K]
        parent = cand_parent[pick]
        word = np.take_along_axis(cand_word, pick, axis=1)
        score = np.take_along_axis(cand, pick, axis=1)
        tokens = np.take_along_axis(tokens, parent[:, :, None], axis=1)
        tokens[:, :, t] = word
        done = np.take_along_axis(done, parent, axis=1) | (word == end)
        # the new live hypotheses continue from their parents' rows of h, c
        was = np.full(N * K, -1)
        was[live] = np.arange(len(live))
        live = np.flatnonzero(~done.ravel() & np.isfinite(score.ravel()))
        if live.size == 0:
            break
        rows = was[(np.arange(N)[:, None] * K + parent).ravel()[live]]
        words = word.ravel()[live]

    # caption = tokens up to the first <END>, or all max_length of them
    is_end = tokens == end
    length = np.where(is_end.any(axis=2), is_end.argmax(axis=2) + 1, max_length)
    key = score / length**length_norm if length_norm else score
    best = np.argsort(-key, axis=1, kind="stable")[:, :n_best]  # stable: ties keep beam order
    finite = np.isfinite(score)
    return [
        [
            (tokens[n, k, : length[n, k]].copy(), float(score[n, k]))
            for k in best[n]
            if finite[n, k]
        ]
        for n in range(N)
    ]


def beam_captions(
    model, features, beam_size=3, max_length=16, length_norm=0.0, n_best=1, batch_size=500
):
    """beam_search in batches of images, as text: features (N, D) -> N lists of
    (caption, logprob), best first. Batches bound the (batch x beam, V) logits."""
    from captioner.data import decode_captions

    out = []
    for k in range(0, len(features), batch_size):
        for hyps in beam_search(
            model,
            features[k : k + batch_size],
            beam_size=beam_size,
            max_length=max_length,
            length_norm=length_norm,
            n_best=n_best,
        ):
            out.append([(decode_captions(ids, model.idx_to_word), lp) for ids, lp in hyps])
    return out


def sample_temperature(model, features, temperature=1.0, max_length=16, rng=None):
    """Stochastic captions (N, max_length) int64, drawn word by word from
    softmax(logits / temperature) with <NULL>, <START>, <UNK> excluded.
    Same layout as model.sample: <END>, then <NULL> padding.
    rng: a np.random.Generator, a seed, or None."""
    if not temperature > 0:
        raise CaptionerError(f"temperature must be > 0, got {temperature!r}")
    _check_positive_int("max_length", max_length)
    rng = np.random.default_rng(rng)
    # Gumbel-max trick: argmax(z + Gumbel noise) ~ softmax(z), no cumsum
    return model.decode(
        features,
        max_length,
        lambda logits: (
            logits.astype(np.float64) / temperature + rng.gumbel(size=logits.shape)
        ).argmax(axis=1),
    )
