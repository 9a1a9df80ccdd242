"""COCO caption metrics: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, as the coco-caption toolkit computes
them.

The numbers must be comparable with published ones, so every quirk of pycocoevalcap 1.2 is kept on
purpose (they are pointed out where they happen). Only METEOR needs Java: it is run through the
toolkit's own jar when pycocoevalcap and a `java` are installed, and skipped with a note otherwise.

    refs = load_annotations("captions_val2014.json")         # {image_id: [caption, ...]}
    res = load_results("results.json", known_ids=refs)       # {image_id: caption}
    scores, notes = score(refs, res)  # {"Bleu_1": .., "CIDEr": ..}, ["METEOR skipped: .."]
"""

import functools
import json
import os
import re
import shutil
import subprocess
import threading
from collections import Counter

import numpy as np

from captioner import limits
from captioner.errors import CaptionerError

# ---------------------------------------------------------------------------------------------
# Tokeniser: a Python rendering of the Stanford PTBTokenizer (CoreNLP 3.4.1) that the toolkit
# runs as `java ... PTBTokenizer -preserveLines -lowerCase`, followed by the toolkit's punctuation
# filter.
# The Java lexer is a JFlex scanner: at each position the rule matching the LONGEST text wins
# (trailing context counts towards the length), ties go to the rule listed first. _RULES keeps
# that order; only the rules that can fire on English captions are rendered.
# ---------------------------------------------------------------------------------------------

# the toolkit drops these tokens after tokenising (ptbtokenizer.py). Brackets come out of the jar
# lower-cased ('-lrb-'), so they never match the upper-case entries and survive: a toolkit quirk.
PUNCTUATIONS = frozenset(
    [
        "''",
        "'",
        "``",
        "`",
        "-LRB-",
        "-RRB-",
        "-LCB-",
        "-RCB-",
        ".",
        "?",
        "!",
        ",",
        ":",
        "-",
        "--",
        "...",
        ";",
    ]
)

_L = r"[^\W\d_]"  # a letter (JFlex [:letter:])
_AN = r"[^\W_]"  # letter or digit
_APOS = r"(?:['\u0092\u2019]|&apos;)"
_APOSX = r"(?:['`\u0091\u0092\u2018\u2019\u201B]|&apos;)"  # apostrophes seen inside words
_SP = r"[ \t\u00A0\u2000-\u200A\u3000]"
_SPNL = r"[ \t\u00A0\u2000-\u200A\u3000\r\n\u2028\u2029\u000B\u000C\u0085]"
_WORD = rf"{_L}(?:{_L}|\d)*(?:[.!?]{_L}(?:{_L}|\d)*)*"
_NUM = r"\d*(?:[.,\u00AD\u066B\u066C]\d+)+|\d+(?:[.:,\u00AD\u066B\u066C]\d+)*"
_ACRO = r"[A-Za-z](?:\.[A-Za-z])+"
_REDAUX = rf"{_APOS}(?:[msdMSD]|(?i:re|ve|ll))"
_HYPHEN = r"[-_\u058A\u2010\u2011]"
_THING_PART = rf"(?:[dDoOlL]{_APOSX}{_AN})?(?:{_AN}+|[-+]?(?:{_NUM}))"
# abbreviations that keep their period; JFlex is caseless except inside [..], so 'Mass' needs the
# capital
_ABBREV1 = (
    r"(?:(?i:jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec|mon|tues?|wed|thu(?:rs)?|fri"
    r"|ala|ariz|calif|colo|conn|ct|dak|fla|ga|ind|kans?|ky|md|mich|minn|mo|mont|neb|nev"
    r"|okla|penn|tenn|va|vt|wisc?|wyo|inc|cos?|corp|pp?tys?|ltd|plc|bancorp|dept|bhd|assn"
    r"|univ|intl|sys|tel|est|ext|sq|ft|jr|sr|bros|esq|blvd|rd|etc|al|seq|(?:ed|ph)\.d)"
    r"|A(?i:rk)|I(?i:ll)|M(?i:ass)|M(?i:iss)|O(?i:re)|W(?i:ash)|D(?i:el)|L(?i:a)|P(?i:a)|T(?i:ex))\."
)
_ABBREV4 = (
    rf"(?:(?i:mrs?|ms|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt"
    rf"|cpl|pvt|mt|capt|ste?|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|vs|alex|wm"
    rf"|jos|cie|a\.k\.a|cf|treas|invt|elec|natl|m[ft]g|ph)|M(?i:iss)|{_ACRO}|[A-Za-z])"
)


# words that, after 'U.S.', make the lexer read the period as a sentence end too
_OPENERS = (
    "(?:"
    + "|".join(
        w[0] + "(?i:" + w[1:] + ")" if len(w) > 1 else w
        for w in [
            "About",
            "According",
            "Additionally",
            "After",
            "An",
            "A",
            "As",
            "At",
            "But",
            "Earlier",
            "He",
            "Her",
            "Here",
            "However",
            "If",
            "In",
            "It",
            "Last",
            "Many",
            "More",
            "Now",
            "Once",
            "One",
            "Other",
            "Our",
            "She",
            "Since",
            "So",
            "Some",
            "Such",
            "That",
            "The",
            "Then",
            "There",
            "These",
            "They",
            "This",
            "We",
            "When",
            "While",
            "What",
            "Yet",
            "You",
        ]
    )
    + r"|M(?i:r|s)\.)"
)


def _acronym_end(text):
    # 'U.S.' + sentence end gives 'U.S.' and '.', but 'I.' gives 'I' and '.'
    return (text[0] if len(text) == 2 else text) + " ."


def _same(text):
    return text


def _fixed(out):
    return lambda _text: out


def _quote(_text):
    # every quote the lexer can emit (` `` ' '') is dropped by the punctuation filter
    return "'"


def _fraction(text):
    return text.replace(" ", "\u00a0")  # the jar keeps '3 1/2' as one token with a no-break space


def _split_at(k):
    return lambda text: text[:-k] + " " + text[-k:]


def _hyphens(text):
    return "--" if 3 <= len(text) <= 4 else text


_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}

# (pattern, action) in JFlex rule order. Group 't', when present, is the token and the rest of the
# match is trailing context (which still counts towards the match length).
_RULES = [
    (r"(?i:cannot|'twas|dunno)", _split_at(3)),
    (r"(?i:'tis|gonna|gotta|lemme|gimme|wanna)", _split_at(2)),
    (r"<\/?[A-Za-z!][^>]*>", _same),  # SGML
    (r"&(?i:MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]", _fixed("--")),
    (r"&(?i:amp);", _fixed("&")),
    (r"&(?i:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);", _same),
    (rf"(?P<t>{_WORD}){_REDAUX}", _same),  # john|'s
    (r"(?P<t>[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*)n" + _APOSX + "t", _same),  # do|n't
    (_WORD, _same),
    (
        rf"{_APOS}n{_APOS}?|[lLdDjJ]{_APOS}|(?i:dunkin|somethin|ol){_APOS}|{_APOS}(?i:em)"
        rf"|[A-HJ-XZn]{_APOSX}{_L}{{2}}{_L}*|{_APOS}[2-9]0(?i:s)|{_APOS}(?i:till?)"
        rf"|{_L}+[aeiouyAEIOUY]{_APOSX}[aeiouA-Z]{_L}*|{_APOS}(?i:cause)"
        r"|(?i:cont'd\.?|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)",
        _same,
    ),  # APOWORD
    (rf"(?P<t>(?i:y){_APOS}){_L}", _same),  # y'|all
    (r"(?i:https?)://[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-]", _same),
    (
        r"(?:(?i:www)\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}"
        r"|(?:[^ \t\n\f\r\"`'<>|.!?(){},\-_$]+\.)+(?i:com|net|org|edu))"
        r"(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?",
        _same,
    ),  # LIKELYURL
    (
        r"[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00A0]*@(?:[^ \t\n\f\r\"<>|().\u00A0]+\.)+[a-zA-Z]{2,4}",
        _same,
    ),
    (rf"(?P<t>{_REDAUX})[^A-Za-z]", _same),
    (r"(?i:n)" + _APOSX + r"(?i:t)", _same),
    (r"\d{1,2}[-/]\d{1,2}[-/]\d{2,4}", _same),  # DATE
    (rf"[-+]?(?:{_NUM})", _same),  # NUMBER
    (r"(?:\d{1,4}[- \u00A0])?\d{1,4}(?:\\?/|\u2044)\d{1,4}", _fraction),  # FRAC
    (r"[\u00BC\u00BD\u00BE\u2153\u2154]", lambda t: _FRACTIONS[t]),
    (
        r"-(?i:RRB|LRB|RCB|LCB|RSB|LSB)-|(?i:C\.D\.s|pro-|anti-|S(?:&|&amp;)P-500|S(?:&|&amp;)Ls)"
        rf"|(?i:cap){_APOS}(?i:n)|(?i:c){_APOS}(?i:est)",
        _same,
    ),  # TBSPEC
    (r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}", _same),  # a/b
    (r"[A-Z]*\$|#", _same),
    (rf"(?P<t>[A-Za-z](?:\.[A-Za-z])*\.){_SPNL}+{_OPENERS}{_SP}", _acronym_end),
    (
        rf"(?P<t>(?i:ca|figs?|prop|nos?|sect?s?|arts?|paras?|bldg|pp|op|approx|rs)\.){_SPNL}?\d",
        _same,
    ),
    (_ABBREV1, _same),
    (_ABBREV4 + r"\.", _same),
    (rf"(?P<t>{_ABBREV4}){_SP}", _same),
    (rf"(?P<t>{_ACRO}){_SPNL}", _same),
    (rf"(?P<t>{_APOS}[0-9][0-9]){_SPNL}", _same),
    (rf"(?P<t>{_WORD}\.)[,;:]", _same),
    (
        r"(?:\([0-9]{3}\)[ \u00A0]?|[0-9]{3}[- \u00A0.])[0-9]{3}[- \u00A0.][0-9]{4}",
        lambda t: t.replace(" ", "\u00a0").replace("(", "-LRB-").replace(")", "-RRB-"),
    ),  # PHONE
    (r"\"|&(?i:quot);", _quote),
    (r"\+|[%&\u2030\u2031]|~|\^|\||\\", _same),
    (r"\[", _fixed("-LSB-")),
    (r"\]", _fixed("-RSB-")),
    (r"\{", _fixed("-LCB-")),
    (r"\}", _fixed("-RCB-")),
    (r"\(", _fixed("-LRB-")),
    (r"\)", _fixed("-RRB-")),
    (r"<+|>+|&(?i:lt|gt);", lambda t: {"&lt;": "<", "&gt;": ">"}.get(t.lower(), t)),
    (r"-+", _hyphens),
    (r"\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026]", _fixed("...")),  # LDOTS
    (r"@+|#+|_+", _same),
    (r"\*+|(?:\\\*){1,3}", _same),
    (r"[,;:]", _same),
    (r"[?!]+", _same),
    (r"[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA]", _same),
    (r"=", _same),
    (r"/", _same),
    (
        rf"(?P<t>[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:[A-Za-z0-9\u00AD]+|{_ACRO}\.))+\.)[,;:]",
        _same,
    ),
    (rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:[A-Za-z0-9\u00AD]+|{_ACRO}\.))+", _same),  # HTHING
    (rf"(?P<t>{_THING_PART}(?:{_HYPHEN}{_THING_PART})*\.)[,;:]", _same),
    (rf"{_THING_PART}(?:{_HYPHEN}{_THING_PART})*", _same),  # THING: x-ray
    (r"[A-Z]+(?:(?:[+&]|&amp;)[A-Z]+)+", _same),  # THINGA: AT&T
    (r"(?P<t>')[A-Za-z][^ \t\n\r\u00A0]", _quote),
    (_REDAUX, _same),
    (
        rf"{_APOS}|''|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F"
        r"\u2039\u203A\u00AB\u00BB]{1,2}",
        _quote,
    ),
]
# all rules tried in one regex call: each sits in an optional lookahead that records its match
_ALL = re.compile(
    "".join(
        f"(?:(?=(?P<w{k}>{p.replace('(?P<t>', f'(?P<t{k}>')}))|)"
        for k, (p, _) in enumerate(_RULES)
    )
)
_SLOTS = [
    (_ALL.groupindex[f"w{k}"], _ALL.groupindex.get(f"t{k}"), f) for k, (_, f) in enumerate(_RULES)
]

_SKIP = re.compile(r"[\s\u200B\u200E\u200F\uFEFF\x00]+|&(?i:nbsp);")
# Most captions are plain words, commas and periods: their tokens are the words themselves unless
# a word splits ('cannot') or keeps its period ('St.', 'I.'), which sends the caption to the lexer.
_PLAIN_CHARS = str.maketrans("", "", "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ,.\t")
_SPLIT_WORDS = frozenset(["cannot", "dunno", "gonna", "gotta", "lemme", "gimme", "wanna"])
_ABBREV_DOT = re.compile(rf"{_ABBREV1}|{_ABBREV4}\.")


@functools.lru_cache(maxsize=1 << 16)
def _plain_word(chunk):
    """Lower-cased word of a letters-and-periods chunk, or None when the lexer must decide."""
    core = chunk.strip(".")
    if "." in core or core.lower() in _SPLIT_WORDS:
        return None
    if chunk.endswith(".") and core and _ABBREV_DOT.fullmatch(core + "."):
        return None
    return core.lower()


# In the toolkit a caption is followed by the next one on the jar's input, which most often opens
# with 'A ': that context decides e.g. whether a final 'P.' is 'p' or 'p.'.
_NEXT_LINE = "\nA "
# inside the lexer: a plain word or a comma followed by a space is a token by itself
_FAST = re.compile(r"[A-Za-z]+(?=[ \t])|,(?=[ \t])")


def _lex(text):
    """PTB tokens of one line (before lower-casing and the punctuation filter)."""
    out = []
    n = len(text)
    text += _NEXT_LINE
    i = 0
    while i < n:
        m = _SKIP.match(text, i)
        if m:
            i = m.end()
            continue
        m = _FAST.match(text, i)
        if m and m.group().lower() not in _SPLIT_WORDS:
            out.append(m.group())
            i = m.end()
            continue
        regs = _ALL.match(text, i).regs
        best, tok_end, action = i, i, None
        for w, t, f in _SLOTS:
            end = regs[w][1]
            if end > best:
                best, tok_end, action = end, (regs[t][1] if t else end), f
        if action is None:  # untokenizable character: the jar deletes it
            i += 1
            continue
        out.append(action(text[i:tok_end]))
        i = tok_end
    return out


def tokenize(caption):
    """str -> list[str]: the tokens pycocoevalcap scores (lower-cased, punctuation dropped)."""
    text = caption.replace("\n", " ")
    if not text.translate(_PLAIN_CHARS) and ".," not in text:  # "word.," keeps its period
        words = [_plain_word(c) for c in text.replace(",", " ").split()]
        if None not in words:
            return [w for w in words if w]
    # the toolkit joins the jar's tokens with spaces, re-splits on ' ' and filters punctuation
    return [t for t in " ".join(_lex(text)).lower().split(" ") if t and t not in PUNCTUATIONS]


# ---------------------------------------------------------------------------------------------
# Scorers on tokens. Inputs: refs {image_id: [tokens, ...]}, res {image_id: tokens}; the images
# scored are res's keys, in res's order. Each scorer first turns every token list back into the
# string the toolkit would hold, then splits it the way the toolkit's scorer does: str.split() for
# BLEU and CIDEr (which also splits the no-break space inside '3 1/2'), split(" ") for ROUGE-L
# (where an empty caption is one empty token).
# ---------------------------------------------------------------------------------------------


def _align(refs_tok, res_tok):
    ids = list(res_tok)
    if not ids:
        raise ValueError("no results to score")
    for i in ids:
        if not refs_tok.get(i):
            raise ValueError(f"image {i!r} has no reference captions")
    return ids


def _ngram_table(hyps, refs, n=4):
    """Counts of every 1..n-gram in every sentence, as flat arrays.

    hyps: I token lists; refs: I lists of token lists. Sentences are numbered hyps first
    (sentence i is image i's result), then the references image by image.
    Returns (img, lens, grams): img (S,) image of each sentence, lens (S,) token counts, and
    grams[k-1] = (sent, gram, count, G): one row per distinct k-gram of a sentence, sorted by
    (sent, gram), gram ids in [0, G).
    """
    sents = hyps + [r for rs in refs for r in rs]
    n_img = len(hyps)
    img = np.concatenate([np.arange(n_img), np.repeat(np.arange(n_img), [len(rs) for rs in refs])])
    lens = np.fromiter(map(len, sents), dtype=np.int64, count=len(sents))
    vocab = {}
    ids = np.fromiter(
        (vocab.setdefault(w, len(vocab)) for s in sents for w in s),
        dtype=np.int64,
        count=int(lens.sum()),
    )
    sent = np.repeat(np.arange(len(sents)), lens)
    room = lens[sent] - (np.arange(len(ids)) - np.repeat(np.cumsum(lens) - lens, lens))
    gram_at, n_grams = ids, max(len(vocab), 1)
    grams = []
    for k in range(1, n + 1):
        starts = np.flatnonzero(room >= k)
        if k > 1:  # a k-gram is a (k-1)-gram plus one word: number the pairs that occur
            pair = gram_at[starts] * max(len(vocab), 1) + ids[starts + k - 1]
            uniq, inverse = np.unique(pair, return_inverse=True)
            gram_at = np.full(len(ids), -1, dtype=np.int64)
            gram_at[starts] = inverse.ravel()
            n_grams = max(len(uniq), 1)
        key = np.sort(sent[starts] * n_grams + gram_at[starts])
        first = _runs(key)
        count = np.diff(np.r_[first, len(key)])
        key = key[first]
        grams.append((key // n_grams, key % n_grams, count, n_grams))
    return img, lens, grams


def _split_words(refs_tok, res_tok, ids):
    hyps = [" ".join(res_tok[i]).split() for i in ids]
    refs = [[" ".join(r).split() for r in refs_tok[i]] for i in ids]
    return hyps, refs


def _lookup(keys, table):
    """Positions of keys in the sorted array table, and whether each was found."""
    if not len(table):
        return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(table, keys), len(table) - 1)
    return pos, table[pos] == keys


def _runs(sorted_keys):
    """Start index of each run of equal values in a sorted array."""
    return (
        np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        if len(sorted_keys)
        else sorted_keys
    )


def _bleu(img, lens, grams, n):
    n_img = int(img.max()) + 1
    hyp_len = lens[:n_img]
    correct = np.zeros((n, n_img))
    for k in range(n):
        sent, gram, count, n_grams = grams[k]
        split = np.searchsorted(sent, n_img)
        # clip each result n-gram count by its largest count in any one reference
        ref_key = img[sent[split:]] * n_grams + gram[split:]
        order = np.argsort(ref_key, kind="stable")
        ref_key = ref_key[order]
        first = _runs(ref_key)
        max_count = (
            np.maximum.reduceat(count[split:][order], first)
            if len(first)
            else np.zeros(1, np.int64)
        )
        pos, found = _lookup(sent[:split] * n_grams + gram[:split], ref_key[first])
        clipped = np.where(found, np.minimum(count[:split], max_count[pos]), 0)
        correct[k] = np.bincount(sent[:split], clipped, minlength=n_img)
    guess = np.maximum(0, hyp_len[None, :] - np.arange(n)[:, None])
    # 'closest' reference length, ties to the shorter: min of (|ref - hyp|, ref) per image
    ref_len = lens[n_img:]
    big = int(lens.max()) + 1
    closest = np.abs(ref_len - hyp_len[img[n_img:]]) * big + ref_len
    first_ref = np.r_[0, np.cumsum(np.bincount(img[n_img:], minlength=n_img))[:-1]]
    closest = np.minimum.reduceat(closest, first_ref) % big
    tiny, small = 1e-15, 1e-9  # the toolkit's constants: 0/0 gives 0, not nan

    def combine(correct, guess, test_len, ref_len):
        precision = (correct + tiny) / (guess + small)
        root = 1.0 / np.arange(1, n + 1)
        scores = np.cumprod(precision, axis=0) ** (root[:, None] if precision.ndim == 2 else root)
        ratio = (test_len + tiny) / (ref_len + small)
        return scores * np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, tiny)), 1.0)

    corpus = combine(
        correct.sum(1), guess.sum(1).astype(float), float(hyp_len.sum()), float(closest.sum())
    )
    per_image = combine(correct, guess.astype(float), hyp_len.astype(float), closest.astype(float))
    return [float(b) for b in corpus], per_image


def bleu(refs_tok, res_tok, n=4, per_image=False):
    """Corpus BLEU-1..n as pycocoevalcap's Bleu(n): list of n floats.

    Clipped n-gram matches and counts are summed over all images before the precisions are taken;
    the brevity penalty uses the reference length closest to each result (ties: the shorter).
    per_image=True also returns the toolkit's per-image BLEU, shape (n, I).
    """
    ids = _align(refs_tok, res_tok)
    hyps, refs = _split_words(refs_tok, res_tok, ids)
    scores, images = _bleu(*_ngram_table(hyps, refs, n), n)
    return (scores, images) if per_image else scores


def _lcs(a, b):
    """Length of the longest common subsequence of two token lists, bit-parallel (Hyyro 2004):
    bit i of v is cleared when a[i] ends a new longest match; the carry of v + u does the DP."""
    masks = {}
    for i, w in enumerate(a):
        masks[w] = masks.get(w, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for w in b:
        u = v & masks.get(w, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def _rouge_l(hyps, refs, beta=1.2):
    scores = np.zeros(len(hyps))
    for k, (hyp, rs) in enumerate(zip(hyps, refs)):
        hyp = hyp or [""]  # toolkit quirk: ''.split(" ") is one empty token
        best_p = best_r = 0.0
        for ref in rs:
            ref = ref or [""]
            lcs = _lcs(hyp, ref)
            best_p = max(best_p, lcs / len(hyp))
            best_r = max(best_r, lcs / len(ref))
        # best precision and best recall may come from different references
        if best_p and best_r:
            scores[k] = (1 + beta**2) * best_p * best_r / (best_r + beta**2 * best_p)
    return scores


def rouge_l(refs_tok, res_tok, per_image=False):
    """ROUGE-L as pycocoevalcap's Rouge: F-measure (beta 1.2) of the best LCS precision and the
    best LCS recall over an image's references, averaged over images."""
    ids = _align(refs_tok, res_tok)
    hyps = [" ".join(res_tok[i]).split(" ") for i in ids]
    refs = [[" ".join(r).split(" ") for r in refs_tok[i]] for i in ids]
    hyps = [h if h != [""] else [] for h in hyps]
    refs = [[r if r != [""] else [] for r in rs] for rs in refs]
    scores = _rouge_l(hyps, refs)
    return (float(np.mean(scores)), scores) if per_image else float(np.mean(scores))


def _cider_d(img, lens, grams, sigma=6.0):
    n_img = int(img.max()) + 1
    n_refs = np.bincount(img[n_img:], minlength=n_img)
    ref_img = img[n_img:]
    log_n = np.log(float(n_img))
    sim = np.zeros((len(grams), len(ref_img)))
    for k, (sent, gram, count, n_grams) in enumerate(grams):
        split = np.searchsorted(sent, n_img)
        # document frequency: over the references of the images being scored, and nowhere else
        ref_key = np.sort(img[sent[split:]] * n_grams + gram[split:])
        ref_key = ref_key[_runs(ref_key)]
        df = np.bincount(ref_key % n_grams, minlength=n_grams)
        weight = count * (log_n - np.log(np.maximum(1.0, df)))[gram]  # tf-idf, tf unnormalised
        norm = np.sqrt(np.bincount(sent, weight * weight, minlength=len(img)))
        hyp_key = sent[:split] * n_grams + gram[:split]  # sorted: sent == image
        pos, found = _lookup(img[sent[split:]] * n_grams + gram[split:], hyp_key)
        w_ref = weight[split:]
        w_hyp = weight[:split][pos] if split else np.zeros(len(pos))  # pos is all 0 then
        # CIDEr-D clipping: a result n-gram counts at most as much as in the reference
        dot = np.bincount(
            sent[split:] - n_img,
            np.where(found, np.minimum(w_hyp, w_ref) * w_ref, 0.0),
            minlength=len(ref_img),
        ).astype(float)  # int when empty
        denom = norm[:n_img][ref_img] * norm[n_img:]
        sim[k] = np.divide(dot, denom, out=np.zeros_like(dot), where=denom != 0)
    # Gaussian length penalty; the toolkit measures length as the number of bigrams
    delta = (np.maximum(lens[:n_img] - 1, 0)[ref_img] - np.maximum(lens[n_img:] - 1, 0)).astype(
        float
    )
    sim *= np.exp(-(delta**2) / (2 * sigma**2))
    per_ref = sim.mean(axis=0)
    return np.bincount(ref_img, per_ref, minlength=n_img) / n_refs * 10.0


def cider_d(refs_tok, res_tok, per_image=False):
    """CIDEr-D as pycocoevalcap's Cider: mean over images of 10 x the mean over n = 1..4 and over
    references of the clipped tf-idf cosine, times a Gaussian length penalty (sigma 6)."""
    ids = _align(refs_tok, res_tok)
    hyps, refs = _split_words(refs_tok, res_tok, ids)
    scores = _cider_d(*_ngram_table(hyps, refs, 4))
    return (float(np.mean(scores)), scores) if per_image else float(np.mean(scores))


# ---------------------------------------------------------------------------------------------
# METEOR: only the official jar gives the official number. It ships inside pycocoevalcap; we speak
# its -stdio protocol (as pycocoevalcap.meteor.Meteor does) on our own tokens, so no tokeniser jar.
# ---------------------------------------------------------------------------------------------


def _write_all(pipe, data):
    try:
        pipe.write(data)
        pipe.flush()
    except OSError:  # the jar died; the reader sees it
        pass


def _meteor(hyps, refs):
    """hyps: I strings; refs: I lists of strings -> (score, None) or (None, reason)."""
    try:
        from pycocoevalcap.meteor import meteor as toolkit_meteor  # only to find the jar
    except ImportError:
        return None, "METEOR skipped: pycocoevalcap not installed: pip install captioner[meteor]"
    java = shutil.which("java")
    if java is None:
        return None, "METEOR skipped: Java not found (install a Java runtime to get METEOR)"
    jar_dir = os.path.dirname(os.path.abspath(toolkit_meteor.__file__))
    cmd = [java, "-jar", "-Xmx2G", "meteor-1.5.jar", "-", "-", "-stdio", "-l", "en", "-norm"]
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=jar_dir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    except OSError as e:
        return None, f"METEOR skipped: could not start Java ({e})"
    # SCORE lines go in from a thread while the stats come back: one round trip per image would
    # be 40x slower, and writing everything first could fill both pipes and deadlock
    lines = []
    for hyp, rs in zip(hyps, refs):
        hyp = hyp.replace("|||", "").replace("  ", " ")  # the toolkit cleans the result this way
        lines.append(" ||| ".join(["SCORE", " ||| ".join(rs), hyp]) + "\n")
    writer = threading.Thread(target=_write_all, args=(proc.stdin, "".join(lines).encode()))
    writer.start()
    try:
        stats = [proc.stdout.readline().decode().strip() for _ in lines]
        writer.join()
        if not all(stats):
            raise OSError("the METEOR jar stopped answering")
        proc.stdin.write((" ||| ".join(["EVAL"] + stats) + "\n").encode())
        proc.stdin.flush()
        answers = [proc.stdout.readline() for _ in range(len(lines) + 1)]  # per image, then all
        return float(answers[-1].strip()), None
    except (OSError, ValueError) as e:
        return None, f"METEOR skipped: {e}"
    finally:
        proc.stdin.close()
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------
# score(): the metrics of one table. An entry takes the tokenised captions (_Captions) and returns
# {score key: corpus figure, or per-image figures whose mean is the corpus figure}; METEOR raises
# _Skipped when it cannot run. Adding a metric is one entry; the diversity figures follow.
# ---------------------------------------------------------------------------------------------


class _Skipped(Exception):
    """A metric that cannot run here; its message is score()'s note."""


class _Captions:
    """The captions being scored, tokenised as the toolkit does, in the order of ids."""

    def __init__(self, references, results):
        self.ids = list(results)
        self.res_tok = {i: tokenize(results[i]) for i in self.ids}
        self.refs_tok = {i: [tokenize(c) for c in references[i]] for i in self.ids}

    @functools.cached_property
    def ngrams(self):  # shared by BLEU and CIDEr-D
        return _ngram_table(*_split_words(self.refs_tok, self.res_tok, self.ids), 4)


def _bleu_scores(c):
    return {f"Bleu_{k + 1}": b for k, b in enumerate(_bleu(*c.ngrams, 4)[0])}


def _meteor_score(c):
    value, why = _meteor(
        [" ".join(c.res_tok[i]) for i in c.ids],
        [[" ".join(r) for r in c.refs_tok[i]] for i in c.ids],
    )
    if value is None:
        raise _Skipped(why)
    return {"METEOR": value}


METRICS = {  # name -> (the score keys it gives, entry), in the order COCO reports them
    "BLEU": (("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"), _bleu_scores),
    "METEOR": (("METEOR",), _meteor_score),
    "ROUGE_L": (("ROUGE_L",), lambda c: {"ROUGE_L": rouge_l(c.refs_tok, c.res_tok, True)[1]}),
    "CIDEr": (("CIDEr",), lambda c: {"CIDEr": _cider_d(*c.ngrams)}),
}
KEYS = tuple(k for keys, _ in METRICS.values() for k in keys)


def score(references, results, meteor=True, per_image=False):
    """COCO caption metrics of results against references, as the toolkit's COCOEvalCap computes
    them for the result images.

    references: {image_id: [caption, ...]} (may hold more images than results);
    results: {image_id: caption}. Captions are raw strings, tokenised here.
    Returns (scores, notes): scores {"Bleu_1".."Bleu_4", "METEOR", "ROUGE_L", "CIDEr": float};
    METEOR is absent when it cannot run (or meteor is False), and notes says why. per_image=True
    adds a third value, {image_id: CIDEr-D of that image}, whose mean is scores["CIDEr"].
    """
    if not results:
        raise CaptionerError("results: nothing to score; give at least one caption")
    for i, caption in results.items():
        if not references.get(i):
            raise CaptionerError(
                f"results: image id {i!r} has no reference captions; "
                "score only images that are in the annotations"
            )
        if not isinstance(caption, str):
            raise CaptionerError(
                f"results: image id {i!r} has a {type(caption).__name__} caption, "
                "expected a string"
            )
    captions = _Captions(references, results)
    scores, notes, images = {}, [], {}
    for name, (_, metric) in METRICS.items():
        if name == "METEOR" and not meteor:
            continue
        try:
            figures = metric(captions)
        except _Skipped as e:
            notes.append(str(e))
            continue
        for key, value in figures.items():
            if isinstance(value, np.ndarray):
                images[key] = value
                value = np.mean(value)
            scores[key] = float(value)
    if per_image:
        return scores, notes, {i: float(c) for i, c in zip(captions.ids, images["CIDEr"])}
    return scores, notes


# ---------------------------------------------------------------------------------------------
# Diversity: how varied the generated captions are (the report's figures beside the scores).
# ---------------------------------------------------------------------------------------------

REPEATED_SHOWN = 10  # most repeated captions listed


def diversity(generated, references, vocab_size=None):
    """How varied the generated captions are.

    generated: N captions (str), one per image; references: N lists of str.
    -> dict: n, distinct (count and share), words_used (distinct words in generated) and
    ref_words_used, length histograms (gen_lengths, ref_lengths: {length: count}), repeated
    (the most frequent captions, [(caption, count)]), few/few_share (the share of images whose
    caption is one of the `few` most frequent ones) and warning (a sentence, or None).
    """
    n = len(generated)
    counts = Counter(generated)
    gen_words = [c.split() for c in generated]
    ref_words = [r.split() for rs in references for r in rs]
    few = max(1, min(5, n // 10))
    few_share = sum(c for _, c in counts.most_common(few)) / max(n, 1)
    warning = None
    if n >= 2 and few_share >= 0.5:
        warning = (
            f"{few_share:.0%} of the {n} images get one of the same {few} caption"
            f"{'s' if few > 1 else ''}: the model mostly ignores the picture"
        )
    return {
        "n": n,
        "distinct": len(counts),
        "distinct_share": len(counts) / max(n, 1),
        "words_used": len({w for ws in gen_words for w in ws}),
        "ref_words_used": len({w for ws in ref_words for w in ws}),
        "vocab_size": vocab_size,
        "gen_lengths": dict(sorted(Counter(map(len, gen_words)).items())),
        "ref_lengths": dict(sorted(Counter(map(len, ref_words)).items())),
        "mean_length": float(np.mean([len(w) for w in gen_words])) if n else 0.0,
        "ref_mean_length": float(np.mean([len(w) for w in ref_words])) if ref_words else 0.0,
        "repeated": [(c, k) for c, k in counts.most_common(REPEATED_SHOWN) if k > 1],
        "few": few,
        "few_share": few_share,
        "warning": warning,
    }


# ---------------------------------------------------------------------------------------------
# Files: COCO annotations {"images": .., "annotations": [{"image_id", "caption"}, ..]} and COCO
# results [{"image_id", "caption"}, ..]. Every problem is one CaptionerError line naming the file.
# ---------------------------------------------------------------------------------------------


def _read_json(path, what):
    from .data import read_json

    return read_json(path, what)


def _image_id(path, where, entry):
    if "image_id" not in entry:
        raise CaptionerError(f"{path}: {where} has no 'image_id'")
    i = entry["image_id"]
    if isinstance(i, bool) or not isinstance(i, (int, str)):
        raise CaptionerError(f"{path}: {where} has image_id {json.dumps(i)}, expected an integer")
    return i


def _caption(path, where, entry):
    if "caption" not in entry:
        raise CaptionerError(f"{path}: {where} has no 'caption'")
    c = entry["caption"]
    if not isinstance(c, str):
        raise CaptionerError(f"{path}: {where} has caption {json.dumps(c)}, expected a string")
    if not c.strip():
        raise CaptionerError(f"{path}: {where} has an empty caption")
    if len(c) > limits.MAX_CAPTION_CHARS:  # ROUGE-L's LCS is quadratic in the caption length
        raise CaptionerError(
            f"{path}: {where} has a caption of {len(c):,} characters, over the "
            f"{limits.MAX_CAPTION_CHARS:,} allowed; a caption is one sentence"
        )
    return c


def load_annotations(path):
    """COCO caption annotations -> {image_id: [caption, ...]} in file order."""
    data = _read_json(path, "annotations")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise CaptionerError(
            f"{path}: not COCO caption annotations: expected an object with an "
            '\'annotations\' list of {"image_id", "caption"}'
        )
    if not data["annotations"]:
        raise CaptionerError(
            f"{path}: the 'annotations' list is empty; no reference captions to score against"
        )
    refs = {}
    for k, entry in enumerate(data["annotations"]):
        where = f"annotations[{k}]"
        if not isinstance(entry, dict):
            raise CaptionerError(
                f"{path}: {where} is a {type(entry).__name__}, expected an object"
            )
        refs.setdefault(_image_id(path, where, entry), []).append(_caption(path, where, entry))
    return refs


def load_results(path, known_ids=None):
    """COCO results [{"image_id": .., "caption": ..}, ..] -> {image_id: caption} in file order.

    known_ids: the annotated image ids (e.g. the dict from load_annotations); results naming
    any other image are refused, as the toolkit's loadRes does.
    """
    data = _read_json(path, "results")
    if not isinstance(data, list):
        raise CaptionerError(
            f"{path}: not COCO results: expected a JSON list of "
            f'{{"image_id", "caption"}} objects, got a {type(data).__name__}'
        )
    if not data:
        raise CaptionerError(f"{path}: the results list is empty; nothing to score")
    results, first = {}, {}
    for k, entry in enumerate(data):
        where = f"entry {k}"
        if not isinstance(entry, dict):
            raise CaptionerError(
                f"{path}: {where} is a {type(entry).__name__}, expected an object"
            )
        i = _image_id(path, where, entry)
        caption = _caption(path, f"{where} (image_id {i})", entry)
        if i in first:
            raise CaptionerError(
                f"{path}: {where} repeats image_id {i} of entry {first[i]}; "
                "give one caption per image"
            )
        if known_ids is not None and i not in known_ids:
            hint = ""
            if isinstance(i, str) and i.isdigit() and int(i) in known_ids:
                hint = " (it is a string here, an integer in the annotations)"
            raise CaptionerError(
                f"{path}: {where} has image_id {json.dumps(i)}, which is not in the "
                f"annotations{hint}; caption only annotated images"
            )
        first[i] = k
        results[i] = caption
    return results
