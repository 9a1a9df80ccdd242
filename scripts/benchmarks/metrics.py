"""Section `metrics`: captioner.metrics.score vs pycocoevalcap's Bleu + Rouge + Cider,
5,000 images x 5 references."""

import json
import re
import statistics

import numpy as np

from benchmarks.common import SHARED, interleaved, log, missing


def _tokenise(s):
    # Lower case, punctuation dropped: what PTBTokenizer leaves, so both scorers see identical
    # words.
    return " ".join(re.findall(r"[a-z0-9]+", s.lower()))


def coco_eval_input(n=5000, refs_per_image=5):
    """references {image_id: [5 tokenised captions]},
    results {image_id: caption of another image}."""
    d = json.loads((SHARED / "coco" / "captions_val2014.json").read_text())
    by_image = {}
    for a in d["annotations"]:
        by_image.setdefault(a["image_id"], []).append(_tokenise(a["caption"]))
    ids = [i for i in sorted(by_image) if len(by_image[i]) >= refs_per_image][:n]
    refs = {i: by_image[i][:refs_per_image] for i in ids}
    results = {i: refs[ids[(k + 1) % len(ids)]][0] for k, i in enumerate(ids)}
    return refs, results


def _norm_key(k):
    return re.sub(r"[^a-z0-9]", "", k.lower())


def run(rep, args):
    sec = "metrics"
    if not (SHARED / "coco" / "captions_val2014.json").is_file():
        return rep.skip(sec, f"{SHARED}/coco/captions_val2014.json absent")
    reason = missing("metrics", "score")
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        theirs_reason = None
    except ImportError as e:
        theirs_reason = f"pycocoevalcap not importable ({e})"
    if reason and theirs_reason:
        return rep.skip(sec, f"{reason}; {theirs_reason}")
    refs, results = coco_eval_input()
    n = len(refs)
    reps = 1 if args.quick else 3
    out = {"images": n, "refs_per_image": 5, "results": "first reference of the next image"}
    got = {}
    contenders = {}
    if reason:
        rep.skip(sec + "/ours", reason)
    else:
        from captioner.metrics import score

        def ours():
            got["ours"] = score(refs, results, meteor=False)[0]

        contenders["ours"] = ours
    if theirs_reason:
        rep.skip(sec + "/pycocoevalcap", theirs_reason)
    else:
        gts = {i: list(v) for i, v in refs.items()}
        res = {i: [v] for i, v in results.items()}

        def theirs():
            b, _ = Bleu(4).compute_score(gts, res, verbose=0)
            s = {f"Bleu_{k + 1}": v for k, v in enumerate(b)}
            s["ROUGE_L"], _ = Rouge().compute_score(gts, res)
            s["CIDEr"], _ = Cider().compute_score(gts, res)
            got["theirs"] = s

        contenders["theirs"] = theirs

    log(f"[metrics] {reps} interleaved rounds of {', '.join(contenders)} over {n} images ...")
    try:
        times = interleaved(contenders, reps)
    except Exception as e:  # noqa: BLE001
        return rep.skip(sec, f"scoring failed: {type(e).__name__}: {e}")
    for name, label in (("ours", "captioner score() B+R+C"), ("theirs", "pycocoevalcap B+R+C")):
        if name in times:
            out[f"{name}_s"] = statistics.median(times[name])
            out[f"{name}_scores"] = {
                k: float(v)
                for k, v in got[name].items()
                if isinstance(v, (int, float, np.floating))
            }
            rep.row(sec, f"{label}, {n} images", f"{out[f'{name}_s']:.2f} s")
    if "ours_s" in out and "theirs_s" in out:
        out["ours_over_theirs"] = out["ours_s"] / out["theirs_s"]
        rep.row(
            sec,
            "captioner / pycocoevalcap",
            f"{out['ours_over_theirs']:.2f}x",
            "< 0.5x",
            out["ours_over_theirs"] < 0.5,
        )
        ours_n = {_norm_key(k): v for k, v in out["ours_scores"].items()}
        diffs = {
            k: abs(v - ours_n[_norm_key(k)])
            for k, v in out["theirs_scores"].items()
            if _norm_key(k) in ours_n
        }
        worst = max(diffs.values(), default=float("nan"))
        out["max_score_diff"] = worst
        rep.row(
            sec,
            "same scores as pycocoevalcap",
            f"{len(diffs)} of {len(out['theirs_scores'])} present, "
            f"max |diff| {worst:.1e} (CIDEr {out['theirs_scores']['CIDEr']:.4f})",
        )
    rep.data[sec] = out
