"""Write a synthetic dataset in the CS231n coco_captioning layout, to try captioner without the
1 GB download.

    python scripts/make_synthetic_coco.py data/synthetic --captions 20000
    captioner train --data data/synthetic ...

Features are random float32 vectors built from each image's latent scene, so the
captions are learnable; see tests/fixtures.py for the grammar.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fixtures import build_dataset  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n")[0].split()),  # the first paragraph, whole
        epilog="Different sizes go to different folders (data/synthetic, data/synthetic-5k): "
        "the folder's files are replaced.",
    )
    p.add_argument("out", help="output folder (created; files in it are replaced)")
    p.add_argument(
        "--captions", type=int, default=20000, help="number of training captions (default 20000)"
    )
    p.add_argument("--per-image", type=int, default=5, help="captions per image (default 5)")
    p.add_argument(
        "--val-images",
        type=int,
        default=None,
        help="validation images (default: a fifth of train)",
    )
    p.add_argument("--dim", type=int, default=512, help="feature dimension (default 512)")
    p.add_argument("--kind", default="pca", help="feature kind / file suffix (default 'pca')")
    p.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="made-up vocabulary of this size (default: the real CS231n one if ../shared has it)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.captions < 1 or args.per_image < 1 or args.dim < 1:
        p.error("--captions, --per-image and --dim must be positive")
    n_train = max(1, args.captions // args.per_image)
    n_val = max(1, n_train // 5) if args.val_images is None else args.val_images
    out = build_dataset(
        args.out,
        n_train_images=n_train,
        captions_per_image=args.per_image,
        n_val_images=n_val,
        feature_dim=args.dim,
        vocab_size=args.vocab_size,
        kind=args.kind,
        seed=args.seed,
    )
    print(
        f"{out}: {n_train * args.per_image} train captions of {n_train} images, "
        f"{n_val * args.per_image} val captions of {n_val} images, "
        f"{args.dim}-d {args.kind} features"
    )


if __name__ == "__main__":
    main()
