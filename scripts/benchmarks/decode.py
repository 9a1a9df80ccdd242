"""Section `decode`: greedy (model.sample) and beam-3 search over 1,000 images; beam 3 over
5,000 in one pass."""

import statistics
import time

import numpy as np

from benchmarks.common import REF, interleaved, log, missing, synthetic_vocab


def run(rep, args):
    sec = "decode"
    reason = missing("model", "CaptioningRNN")
    if reason:
        return rep.skip(sec, reason)
    from captioner.model import CaptioningRNN

    c = REF
    model = CaptioningRNN(
        synthetic_vocab(c["V"]), c["D"], c["W"], c["H"], cell_type="lstm", dtype=np.float32, seed=0
    )
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((5000, c["D"])).astype(np.float32)
    n = 1000
    reps = 1 if args.quick else 3
    out = {"images": n, "cell": "lstm", "max_length": 16, "model": "random init, CS231n config"}

    contenders = {"greedy": lambda: model.sample(feats[:n], max_length=16)}
    reason = missing("decoding", "beam_search")
    if reason:
        rep.skip(sec + "/beam", reason)
    else:
        from captioner.decoding import beam_search

        contenders["beam3"] = lambda: beam_search(model, feats[:n], beam_size=3, max_length=16)
    for name in list(contenders):
        try:
            contenders[name]()  # warm-up, and a failure here skips only this decoder
        except Exception as e:  # noqa: BLE001
            rep.skip(f"{sec}/{name}", f"{name} decoding failed: {type(e).__name__}: {e}")
            del contenders[name]
    if not contenders:
        return
    log(f"[decode] {reps} interleaved rounds of {', '.join(contenders)} over {n} images ...")
    times = interleaved(contenders, reps)
    for name, label in (("greedy", "greedy (model.sample)"), ("beam3", "beam 3 (beam_search)")):
        if name in times:
            out[f"{name}_s"] = statistics.median(times[name])
            out[f"{name}_images_per_s"] = n / out[f"{name}_s"]
            rep.row(
                sec,
                f"{label}, {n} images",
                f"{out[f'{name}_s']:.2f} s ({n / out[f'{name}_s']:.0f} images/s)",
            )
    if "greedy_s" in out and "beam3_s" in out:
        out["beam3_over_greedy"] = out["beam3_s"] / out["greedy_s"]
        rep.row(
            sec,
            "beam 3 / greedy time",
            f"{out['beam3_over_greedy']:.2f}x",
            "<= 3x",
            out["beam3_over_greedy"] <= 3,
        )
    if "beam3" in contenders:
        log("[decode] beam 3 over 5,000 images in one pass ...")
        t0 = time.perf_counter()
        beam_search(model, feats, beam_size=3, max_length=16)
        out["beam3_5000_s"] = time.perf_counter() - t0
        rep.row(sec, "beam 3, 5000 images, one pass", f"{out['beam3_5000_s']:.1f} s")
    rep.data[sec] = out
