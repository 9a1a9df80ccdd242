"""The adaptive softmax's choices: its word order and its cutoffs (the layer is
layers.adaptive_softmax_loss, its fast path packed.adaptive_softmax_rows).

The adaptive softmax needs words numbered by frequency. Datasets keep their own word
ids: the model holds a permutation (softmax_order: rank -> word id), built here from
the training captions and saved in the checkpoint, so a dataset's vocabulary file is
never reordered.

Default cutoffs (the rule): the head holds the most frequent words covering
HEAD_COVERAGE of the training targets (at least 1 word, at most V - 1), rounded up to a
multiple of 8; then tail clusters each GROWTH times as large as everything before them
([c, GROWTH * c), ...) until V, cluster k projecting to H / 4**k. On COCO captions the
head is ~800 words, and nine targets in ten never reach a tail.
"""

import numpy as np

from .errors import CaptionerError

SOFTMAXES = ("full", "adaptive")
HEAD_COVERAGE = 0.9
GROWTH = 4
DIV_VALUE = 4  # cluster k's projection has H // DIV_VALUE**k units (PyTorch's div_value)


def target_counts(captions, V, null):
    """How often each word id is a target (captions[:, 1:], <NULL> excluded) -> (V,)."""
    y = np.asarray(captions)[:, 1:].ravel()
    return np.bincount(y[y != null], minlength=V)[:V]


def frequency_order(counts):
    """counts (V,) -> order (V,): order[r] is the word id of frequency rank r, most
    frequent first, ties by word id (so the same captions always give the same order)."""
    return np.lexsort((np.arange(len(counts)), -np.asarray(counts))).astype(np.int64)


def default_cutoffs(sorted_counts):
    """The rule of the module doc: counts in rank order (V,) -> cutoffs [c_1, ..., c_n]."""
    V = len(sorted_counts)
    if V < 2:
        raise CaptionerError("the adaptive softmax needs a vocabulary of at least 2 words")
    total = max(int(np.sum(sorted_counts)), 1)
    covered = np.cumsum(sorted_counts) / total
    head = int(np.searchsorted(covered, HEAD_COVERAGE)) + 1
    head = min(max(8 * -(-head // 8), 1), V - 1)
    cutoffs = [head]
    while cutoffs[-1] * GROWTH < V:
        cutoffs.append(cutoffs[-1] * GROWTH)
    return cutoffs


def tail_dims(hidden_dim, n_clusters):
    """Cluster k's projection size, k = 1..n: H // 4**k, at least 1."""
    return [max(1, hidden_dim // DIV_VALUE**k) for k in range(1, n_clusters + 1)]


def parse_cutoffs(text):
    """'2000,6000' -> [2000, 6000]; CaptionerError for anything else."""
    try:
        cutoffs = [int(t) for t in text.split(",")]
    except ValueError:
        raise CaptionerError(
            f"--softmax-cutoffs {text!r}: expected increasing word counts such as 2000,6000"
        ) from None
    return cutoffs


def check_cutoffs(cutoffs, V):
    """None when cutoffs fit a vocabulary of V words, else why not (one line)."""
    if (
        not isinstance(cutoffs, list)
        or not cutoffs
        or not all(type(c) is int for c in cutoffs)
        or any(b <= a for a, b in zip(cutoffs, cutoffs[1:]))
        or cutoffs[0] < 1
        or cutoffs[-1] >= V
    ):
        return f"cutoffs {cutoffs!r} must be increasing integers between 1 and {V - 1} (V = {V})"
    return None


def model_args(softmax, cutoffs, data):
    """The CaptioningRNN keywords of a softmax choice (train's --softmax and
    --softmax-cutoffs) for a dataset, from its training captions:
    -> {softmax, cutoffs, softmax_order}; cutoffs None means the default rule."""
    if softmax == "full":
        if cutoffs is not None:
            raise CaptionerError("--softmax-cutoffs needs --softmax adaptive")
        return {"softmax": "full"}
    V = len(data["word_to_idx"])
    counts = target_counts(data["train_captions"], V, data["word_to_idx"]["<NULL>"])
    order = frequency_order(counts)
    if cutoffs is None:
        cutoffs = default_cutoffs(counts[order])
    why = check_cutoffs(cutoffs, V)
    if why:
        raise CaptionerError(f"--softmax-cutoffs: {why}; give fewer or smaller cutoffs")
    return {"softmax": "adaptive", "cutoffs": cutoffs, "softmax_order": order}
