"""Section `softmax`: the training step (forward + backward + Adam, LSTM, the CS231n sizes,
batch 100) with the full and the adaptive softmax, at V = 1,004 (the CS231n vocabulary) and
at V = 9,500 (the most frequent words of ../shared/coco/captions_val2014.json), all
four interleaved round by round. Captions: 100 real COCO val captions encoded with each
vocabulary. The adaptive cutoffs follow captioner.adaptive's default rule on the word
frequencies of all val captions (what `train --softmax adaptive` would pick on them).

Targets (issue 22): adaptive at V ~ 9,500 <= 0.4x full at the same V, and <= 1.3x full at
V = 1,004.
"""

import json
import statistics
import time
from collections import Counter

import numpy as np

from benchmarks.common import END, NULL, REF, SHARED, START, adam_step, interleaved, log, missing

# The COCO road's vocabulary (`prepare` with --min-count 5 on the Karpathy training split,
# ~414,000 captions) has ~9,500 words; the 202,654 val captions give as many with the
# BIG_V - 4 most frequent words (all have count >= 2)
BIG_V = 9_500


def _encode(tokens, word_to_idx, T):
    unk = word_to_idx["<UNK>"]
    caps = np.full((len(tokens), T + 1), NULL, dtype=np.int64)
    for i, words in enumerate(tokens):
        ids = [word_to_idx.get(w, unk) for w in words[: T - 1]]
        caps[i, : len(ids) + 2] = [START, *ids, END]
    return caps


def vocabularies(T):
    """[(label, word_to_idx, all val captions encoded (M, T+1))] for V = 1,004 and ~9,500,
    or None without ../shared/coco."""
    coco = SHARED / "coco"
    if not (coco / "captions_val2014.json").is_file() or not (coco / "coco2014_vocab.json"):
        return None
    from captioner.metrics import tokenize

    anns = json.loads((coco / "captions_val2014.json").read_text())["annotations"]
    tokens = [tokenize(a["caption"]) for a in anns]
    cs231n = json.loads((coco / "coco2014_vocab.json").read_text())["word_to_idx"]
    counts = Counter(w for words in tokens for w in words[: T - 1])
    specials = ["<NULL>", "<START>", "<END>", "<UNK>"]
    words = sorted(counts, key=lambda w: (-counts[w], w))[: BIG_V - len(specials)]
    big = {w: i for i, w in enumerate(specials + words)}
    return [
        ("CS231n vocabulary", cs231n, _encode(tokens, cs231n, T)),
        (
            f"the {len(words):,} most frequent val words (count >= {counts[words[-1]]})",
            big,
            _encode(tokens, big, T),
        ),
    ]


def run(rep, args):
    sec = "softmax"
    reason = missing("adaptive", "model_args")
    if reason:
        rep.skip(sec, reason)
        return
    c = REF
    vocabs = vocabularies(c["T"])
    if vocabs is None:
        rep.skip(sec, f"{SHARED / 'coco'} lacks captions_val2014.json or coco2014_vocab.json")
        return
    from captioner import adaptive
    from captioner.model import CaptioningRNN

    rng = np.random.default_rng(0)
    features = rng.standard_normal((c["N"], c["D"])).astype(np.float32)
    contenders, out = {}, {}
    for label, w2i, encoded in vocabs:
        V = len(w2i)
        captions = encoded[rng.choice(len(encoded), c["N"], replace=False)]
        data = {"word_to_idx": w2i, "train_captions": encoded}
        for softmax in ("full", "adaptive"):
            kw = adaptive.model_args(softmax, None, data)
            model = CaptioningRNN(
                w2i, c["D"], c["W"], c["H"], "lstm", dtype=np.float32, seed=0, **kw
            )
            step = adam_step(model, features, captions)
            step()
            contenders[(V, softmax)] = step
            out[f"V{V}_{softmax}"] = {"vocabulary": label, "cutoffs": kw.get("cutoffs")}
    reps = 3 if args.quick else 9
    log(f"[softmax] {reps} interleaved rounds of {len(contenders)} training steps ...")
    # wall time (the figures) and this process's CPU time (for information: on a shared
    # machine it moves less with the load, and with one BLAS thread it is the step's work)
    cpu = {}

    def cpu_timed(fn, key):
        def run_and_time():
            t0 = time.process_time()
            fn()
            cpu.setdefault(key, []).append(time.process_time() - t0)

        return run_and_time

    times = interleaved({k: cpu_timed(fn, k) for k, fn in contenders.items()}, reps)
    ms = {k: statistics.median(ts) * 1e3 for k, ts in times.items()}
    cpu_ms = {k: statistics.median(ts) * 1e3 for k, ts in cpu.items()}
    (small, big) = sorted({V for V, _ in ms})
    for (V, softmax), t in ms.items():
        out[f"V{V}_{softmax}"].update(ms=t, cpu_ms=cpu_ms[(V, softmax)])
        cut = out[f"V{V}_{softmax}"]["cutoffs"]
        rep.row(
            sec,
            f"LSTM step, V={V:,}, {softmax}",
            f"{t:.0f} ms, CPU {cpu_ms[(V, softmax)]:.0f} ms"
            + (f" (cutoffs {','.join(map(str, cut))})" if cut else ""),
        )
    big_ratio = ms[(big, "adaptive")] / ms[(big, "full")]
    small_ratio = ms[(small, "adaptive")] / ms[(small, "full")]
    vs_small = ms[(big, "adaptive")] / ms[(small, "full")]
    out.update(adaptive_over_full_big=big_ratio, adaptive_over_full_small=small_ratio)
    out["adaptive_big_over_full_small"] = vs_small
    rep.row(sec, f"adaptive / full at V={big:,}", f"{big_ratio:.2f}x", "<= 0.4x", big_ratio <= 0.4)
    rep.row(
        sec,
        f"adaptive at V={big:,} / full at V={small:,}",
        f"{vs_small:.2f}x",
        "<= 1.3x",
        vs_small <= 1.3,
    )
    rep.row(sec, f"adaptive / full at V={small:,} (info)", f"{small_ratio:.2f}x")
    cpu_big = cpu_ms[(big, "adaptive")] / cpu_ms[(big, "full")]
    cpu_small = cpu_ms[(big, "adaptive")] / cpu_ms[(small, "full")]
    out.update(cpu_adaptive_over_full_big=cpu_big, cpu_adaptive_big_over_full_small=cpu_small)
    rep.row(
        sec,
        "the same two ratios in CPU time (info)",
        f"{cpu_big:.2f}x and {cpu_small:.2f}x",
    )
    rep.data[sec] = out
