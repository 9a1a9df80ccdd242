"""Recommended Flickr8k settings, measured on a proxy of Flickr8k's size (README, "Caption your
own photos").

    python scripts/flickr8k_proxy.py OUT [--epochs 15] [--runs 5:512,5:256,10:512] [--json]

The proxy: 8,000 real COCO val2014 pictures' captions from ../shared/coco/captions_val2014.json
(5 each, split 6,000 / 1,000 / 1,000 as Flickr8k's train / dev / test), tokenised as `prepare`
does. The pictures themselves are not in ../shared, so each image's "features" (2048-d, as
SqueezeNet's) are a fixed random projection of the bag of its five captions' words plus as much
Gaussian noise, through a ReLU: only a model that learns which words go with which features can
use them. Scores on it are therefore not Flickr8k scores; what transfers is the shape of the
curves (where val CIDEr-D stops rising, what a smaller vocabulary or hidden size costs) and the
time of an epoch of 30,000 captions.

Each run (MIN_COUNT:HIDDEN) trains an LSTM (word vectors 256, Adam 1e-3, decay 0.95, batch 100)
for --epochs epochs with BLEU-4/CIDEr-D of greedy captions on 200 val images after every epoch,
keeps the best CIDEr-D, and scores it on the 1,000 test images (beam 3, no METEOR). A reference
LSTM step at the bench's shape (`make bench`: batch 100, vocabulary 1,004, features 512, hidden
512) is timed in the same process first, so epoch times can be read against it on a busy machine.
"""

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
SIZES = {"train": 6000, "val": 1000, "test": 1000}
DIM = 2048


def proxy_captions(path, seed=0):
    """-> {split: [(image id, [token lists x5])]} from COCO's val captions."""
    from captioner.prepare import tokenize

    ann = json.loads(Path(path).read_text())
    caps = defaultdict(list)
    for a in sorted(ann["annotations"], key=lambda a: a["id"]):
        caps[a["image_id"]].append(a["caption"])
    ids = sorted(i for i, c in caps.items() if len(c) >= 5)
    pick = np.random.default_rng(seed).choice(len(ids), size=sum(SIZES.values()), replace=False)
    chosen = [ids[k] for k in pick]
    out, start = {}, 0
    for split, n in SIZES.items():
        out[split] = [(i, [tokenize(c) for c in caps[i][:5]]) for i in chosen[start : start + n]]
        start += n
    return out


def proxy_features(splits, seed=0, noise=1.0):
    """Bag of words of each image's captions -> fixed random projection + noise -> ReLU."""
    words = sorted({w for its in splits.values() for _, toks in its for t in toks for w in t})
    index = {w: k for k, w in enumerate(words)}
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((len(words), DIM)).astype(np.float32)
    out = {}
    for split, its in splits.items():
        bow = np.zeros((len(its), len(words)), np.float32)
        for r, (_, toks) in enumerate(its):
            for t in toks:
                for w in t:
                    bow[r, index[w]] += 1
        bow /= np.linalg.norm(bow, axis=1, keepdims=True)
        signal = bow @ proj
        signal += noise * signal.std() * rng.standard_normal(signal.shape).astype(np.float32)
        out[split] = np.maximum(signal, 0)
    return out


def write_proxy(out_dir, splits, feats, min_count, max_words=15):
    from captioner import data
    from captioner.prepare import build_vocab, encode_captions

    idx_to_word = build_vocab([t[:max_words] for _, ts in splits["train"] for t in ts], min_count)
    w2i = {w: i for i, w in enumerate(idx_to_word)}
    payload = {}
    for split, its in splits.items():
        toks = [t for _, ts in its for t in ts]
        rows = [r for r, (_, ts) in enumerate(its) for _ in ts]
        payload[split] = dict(
            captions=encode_captions(toks, w2i, max_words),
            image_idxs=np.array(rows, np.int32),
            features=feats[split],
            images=[f"COCO_val2014_{i:012d}.jpg" for i, _ in its],
            urls=None,
        )
    data.write_dataset(
        out_dir,
        payload,
        idx_to_word,
        kind="proxy",
        encoder="proxy: random projection of caption words + noise",
        source="flickr8k-sized proxy from COCO val2014 captions",
    )
    return len(idx_to_word)


def _step(vocab, dim, hidden, captions=None):
    """A function timing one LSTM forward + backward of batch 100 (random 17-token captions,
    or `captions`) at this shape."""
    from captioner.model import CaptioningRNN

    rng = np.random.default_rng(0)
    w2i = {"<NULL>": 0, "<START>": 1, "<END>": 2, **{f"w{k}": k + 3 for k in range(vocab - 3)}}
    model = CaptioningRNN(w2i, input_dim=dim, wordvec_dim=256, hidden_dim=hidden, cell_type="lstm")
    feats = rng.standard_normal((100, dim)).astype(np.float32)
    if captions is None:
        captions = rng.integers(3, vocab, size=(100, 17))
        captions[:, 0] = 1

    def step():
        t0 = time.perf_counter()
        model.loss(feats, captions)
        return time.perf_counter() - t0

    return step


def reference_step(reps=10):
    """Median seconds of one LSTM step at the bench's shape (vocabulary 1,004, features 512)."""
    step = _step(1004, 512, 512)
    return float(np.median([step() for _ in range(reps + 1)][1:]))


def step_ratios(vocabs, hiddens, rounds=5):
    """{(vocab, hidden): median of (step at that shape with 2048-d features) / (reference step)},
    the two timed alternately, round by round, so a busy machine slows both alike."""
    ref = _step(1004, 512, 512)
    ref()
    out = {}
    for v in vocabs:
        for h in hiddens:
            step = _step(v, DIM, h)
            step()
            out[v, h] = float(np.median([step() / ref() for _ in range(rounds)]))
    return out


def run(out, min_count, hidden, epochs):
    from captioner import checkpoint, runs
    from captioner.data import load_coco_data
    from captioner.evaluation import evaluate_model
    from captioner.model import CaptioningRNN

    ds = out / f"mc{min_count}"
    d = load_coco_data(ds, splits=("train", "val", "test"))
    model = CaptioningRNN(
        d["word_to_idx"], input_dim=DIM, wordvec_dim=256, hidden_dim=hidden, cell_type="lstm"
    )
    run_dir = out / "runs" / f"mc{min_count}-h{hidden}"
    run_dir.mkdir(parents=True, exist_ok=True)
    state = runs.train_in(
        d,
        model,
        str(run_dir),
        progress=False,
        log=lambda m: print(f"  [mc{min_count} h{hidden}] {m}", file=sys.stderr, flush=True),
        epochs=epochs,
        eval_every=1,
        keep_best="cider",
        data_dir=str(ds),
        features="proxy",
    )
    best, _, _, _ = checkpoint.load_model(str(run_dir / "best.npz"))
    scores, _, _ = evaluate_model(best, d, "test", meteor=False, beam_size=3)
    return dict(
        min_count=min_count,
        hidden=hidden,
        vocab=len(d["idx_to_word"]),
        unk=float(
            (d["train_captions"][:, 1:] == d["word_to_idx"]["<UNK>"]).sum()
            / (d["train_captions"][:, 1:] > 2).sum()
        ),
        epochs=[
            {k: r[k] for k in ("epoch", "train_loss", "val_loss", "Bleu_4", "CIDEr", "seconds")}
            for r in state["epochs"]
        ],
        best_epoch=state["best"]["epoch"],
        test={k: scores[k] for k in ("Bleu_4", "CIDEr", "ROUGE_L")},
    )


def vocab_table(splits, min_counts=(1, 2, 3, 5, 10), max_words=15):
    """[{min_count, vocab, unk per split}]: how many words each --min-count keeps, and the share
    of each split's caption words that become <UNK>."""
    from captioner.prepare import build_vocab

    rows = []
    for mc in min_counts:
        words = set(build_vocab([t[:max_words] for _, ts in splits["train"] for t in ts], mc))
        row = {"min_count": mc, "vocab": len(words)}
        for split, its in splits.items():
            toks = [w for _, ts in its for t in ts for w in t[:max_words]]
            row[f"unk_{split}"] = round(sum(w not in words for w in toks) / len(toks), 4)
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--runs", default="5:512,5:256,10:512")
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument(
        "--ratios",
        action="store_true",
        help="Only time a step at the proxy's shapes against the reference step, and stop.",
    )
    ap.add_argument(
        "--vocab", action="store_true", help="Only print the vocabulary size and <UNK> share."
    )
    args = ap.parse_args()
    if args.vocab:
        for row in vocab_table(proxy_captions(SHARED / "coco" / "captions_val2014.json")):
            print(json.dumps(row))
        return
    if args.ratios:
        for (v, h), r in step_ratios((1671, 2587), (256, 512)).items():
            print(
                json.dumps({"vocab": v, "hidden": h, "features": DIM, "step_ratio": round(r, 3)})
            )
        return
    captions = SHARED / "coco" / "captions_val2014.json"
    if not captions.is_file():
        sys.exit(f"{captions}: not found; this script needs ../shared beside the checkout")
    runs = [tuple(int(x) for x in r.split(":")) for r in args.runs.split(",")]
    t0 = time.perf_counter()
    splits = proxy_captions(captions)
    feats = proxy_features(splits, noise=args.noise)
    vocab = {
        mc: write_proxy(args.out / f"mc{mc}", splits, feats, mc) for mc in {m for m, _ in runs}
    }
    print(
        f"proxy built in {time.perf_counter() - t0:.0f} s; vocabularies {vocab}", file=sys.stderr
    )
    ref = reference_step()
    print(f"reference LSTM step (bench shape): {ref * 1000:.0f} ms", file=sys.stderr)
    results = []
    for mc, hidden in runs:
        results.append(run(args.out, mc, hidden, args.epochs))
        results[-1]["reference_step_ms"] = round(ref * 1000, 1)
        print(json.dumps(results[-1]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
