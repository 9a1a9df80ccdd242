"""The vocabulary: special tokens, the rules every vocabulary obeys (a dataset's and a
checkpoint's alike), building one from captions, and captions to ids and back.

A vocabulary is CS231n's idx_to_word list: <NULL> pads, <START> begins every caption,
<END> ends it, <UNK> (optional) stands for a word outside the list.
"""

from collections import Counter

import numpy as np

NULL, START, END, UNK = "<NULL>", "<START>", "<END>", "<UNK>"
REQUIRED = (NULL, START, END)  # a dataset or a checkpoint needs these
SPECIALS = REQUIRED + (UNK,)  # tokens a model never writes as a caption's word


def problem(words):
    """The first rule the word list breaks, as text after "vocabulary ...", or None."""
    missing = [t for t in REQUIRED if t not in words]
    if missing:
        return f"lacks {', '.join(missing)} (needs {', '.join(REQUIRED)})"
    odd = [w for w in words if w.split() != [w]]
    if odd:  # a word that prints as nothing (or as two) would make empty or garbled captions
        return f"word {odd[0]!r} is empty or holds white space"
    if not set(words) - set(SPECIALS):
        return f"has no words besides {', '.join(SPECIALS)}; no caption could be written with it"
    return None


def build_vocab(token_lists, min_count=5):
    """idx_to_word: the specials, then words with count >= min_count by descending
    count, ties alphabetical (so the same captions always give the same ids)."""
    counts = Counter(w for words in token_lists for w in words)
    words = sorted(
        (w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
        key=lambda w: (-counts[w], w),
    )
    return list(SPECIALS) + words


def encode_captions(token_lists, word_to_idx, max_words=15):
    """Token lists -> (N, max_words + 2) int32: <START> w1 .. wk <END>, <NULL>-padded,
    words outside the vocabulary as <UNK>, each caption cut to max_words."""
    out = np.full((len(token_lists), max_words + 2), word_to_idx[NULL], dtype=np.int32)
    unk = word_to_idx[UNK]
    for r, words in enumerate(token_lists):
        ids = [word_to_idx.get(w, unk) for w in words[:max_words]]
        out[r, : len(ids) + 2] = [word_to_idx[START], *ids, word_to_idx[END]]
    return out


def decode_captions(captions, idx_to_word):
    """Word ids -> text: drops <NULL> and <START>, stops at <END>.

    captions: (T,) -> str, or (N, T) -> list of N str.
    """
    captions = np.asarray(captions)
    if captions.ndim == 1:
        return decode_captions(captions[None], idx_to_word)[0]
    decoded = []
    for row in captions:
        words = []
        for i in row:
            word = idx_to_word[i]
            if word == END:
                break
            if word not in (NULL, START):
                words.append(word)
        decoded.append(" ".join(words))
    return decoded
