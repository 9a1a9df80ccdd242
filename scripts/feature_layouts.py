"""Which EfficientNet-Lite0 features to caption from: layouts measured on the demo's scenes.

    .venv/bin/python scripts/feature_layouts.py [--seeds 0 1] [--out /tmp/layouts] [--layouts ...]

Renders the demo's scenes (1,500 train + 200 val, as `captioner demo`), encodes them once with
each network, builds one dataset per layout, and trains and scores the demo's model on each
(LSTM 256, 20 epochs, the demo's settings) for every seed: CIDEr-D on the held-out scenes and
the grounding ratio (CIDEr-D over the same model's score when every picture is replaced by the
mean feature; the demo passes at 2x). Layouts:

  squeezenet          fire9 13x13x512, 2x2 grid                       2048-d
  head-2x2            Lite0 head 7x7x1280, 2x2 grid                   5120-d
  head-mean+320-2x2   Lite0 head global mean + 7x7x320 2x2 grid       2560-d (chosen)
  head-mean           Lite0 head global mean (no "where")             1280-d

Every vector is scaled to norm sqrt(D), as captioner.encoder.normalize does.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from captioner import efficientnet as L  # noqa: E402
from captioner import encoder as E  # noqa: E402
from captioner.encoder import grid_pool, normalize  # noqa: E402


def lite0_maps(params, batch):
    """batch -> (head 7x7x1280 after ReLU6, last block's 7x7x320), per picture."""
    h = L.stem(batch, *params["stem"])
    for blk, spec in zip(params["blocks"], L.BLOCKS):
        h = L.mbconv(h, blk, spec)
    return L.pointwise(h, *params["head"]), h


def encode_all(paths, batch=16):
    """-> {layout: (N, D) float32} for every layout of the module docstring."""
    from PIL import Image

    lite, squeeze = L.default_params(), E.default_params()
    out = {k: [] for k in ("squeezenet", "head-2x2", "head-mean+320-2x2", "head-mean")}
    for s in range(0, len(paths), batch):
        images = [Image.open(p).convert("RGB") for p in paths[s : s + batch]]
        out["squeezenet"].append(
            E.forward(squeeze, np.stack([E.preprocess(im) for im in images]))[1]
        )
        head, last = lite0_maps(lite, np.stack([L.preprocess(im) for im in images]))
        mean = head.mean(axis=(1, 2))
        out["head-2x2"].append(normalize(grid_pool(head, 2)))
        out["head-mean+320-2x2"].append(normalize(np.concatenate([mean, grid_pool(last, 2)], 1)))
        out["head-mean"].append(normalize(mean))
        print(f"  encoded {s + len(images)}/{len(paths)}", file=sys.stderr, end="\r")
    return {k: np.concatenate(v).astype(np.float32) for k, v in out.items()}


def score(dataset, seed, run_dir):
    """The demo's training and evaluation on one dataset -> (CIDEr-D, grounding ratio)."""
    from captioner.data import load_coco_data
    from captioner.evaluation import evaluate_model
    from captioner.model import CaptioningRNN
    from captioner.training import train

    data = load_coco_data(dataset)
    model = CaptioningRNN(
        data["word_to_idx"], input_dim=data["feature_dim"], wordvec_dim=128, hidden_dim=256,
        cell_type="lstm", seed=seed,
    )  # fmt: skip
    train(
        data, model, run_dir, progress=False, log=lambda *_: None, epochs=20, batch_size=100,
        lr=2e-3, lr_decay=0.97, seed=seed, val_size=500, data_dir=dataset,
        features=data["feature_kind"],
    )  # fmt: skip
    cider = evaluate_model(model, data, "val", meteor=False)[0]["CIDEr"]
    mean = data["train_features"][:].mean(0)
    blind = dict(data, val_features=np.broadcast_to(mean, data["val_features"].shape))
    blind_cider = evaluate_model(model, blind, "val", meteor=False)[0]["CIDEr"]
    return cider, cider / max(blind_cider, 1e-9)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--layouts", nargs="+", default=None, help="only these (default: all)")
    args = ap.parse_args()
    from captioner.data import DEMO_SOURCE, write_dataset
    from captioner.demo import write_demo_images
    from captioner.prepare import build_vocab, encode_captions, read_annotations, tokenize

    work = Path(args.out or tempfile.mkdtemp(prefix="layouts-"))
    n_train, n_val = 1500, 200
    t0 = time.perf_counter()
    ann = work / "images" / "captions.json"
    if not ann.is_file():
        write_demo_images(work / "images", n_train + n_val, seed=0)
    images, captions = read_annotations(ann)
    paths = [str(work / "images" / name) for _, name, _ in images]
    cache = work / "features.npz"  # a rerun (other seeds) does not encode again
    if cache.is_file():
        with np.load(cache) as z:
            feats = {k: z[k] for k in z.files}
    else:
        feats = encode_all(paths)
        np.savez(cache, **feats)
    print(f"encoded {len(paths)} scenes in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    tokens = [[tokenize(c) for c in captions[i]] for i, _, _ in images]
    idx_to_word = build_vocab([t for ts in tokens[:n_train] for t in ts], min_count=1)
    w2i = {w: i for i, w in enumerate(idx_to_word)}
    print(
        f"{'layout':20s} {'dim':>5s}  " + "  ".join(f"seed {s}: CIDEr-D ratio" for s in args.seeds)
    )
    for layout, f in feats.items():
        if args.layouts and layout not in args.layouts:
            continue
        splits = {}
        for split, rows in (("train", range(n_train)), ("val", range(n_train, n_train + n_val))):
            caps = [(r - rows[0], t) for r in rows for t in tokens[r]]
            splits[split] = dict(
                captions=encode_captions([t for _, t in caps], w2i),
                image_idxs=np.array([r for r, _ in caps], np.int32),
                features=f[rows[0] : rows[-1] + 1],
                images=None,
                urls=None,
            )
        dataset = work / layout
        write_dataset(dataset, splits, idx_to_word, kind="x", encoder=layout, source=DEMO_SOURCE)
        print(f"{layout:20s} {f.shape[1]:5d}", end="", flush=True)
        for seed in args.seeds:
            run_dir = work / f"run-{layout}-{seed}"
            run_dir.mkdir(exist_ok=True)
            cider, ratio = score(str(dataset), seed, run_dir)
            print(f"  {cider:13.3f} {ratio:5.1f}x", end="", flush=True)
        print()
    print(f"{time.perf_counter() - t0:.0f} s in all; work folder {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
