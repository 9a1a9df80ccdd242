"""Synthetic coco_captioning datasets for tests (and scripts/make_synthetic_coco.py).

Each image gets a latent scene (subject, verb, object, place); its features are the
sum of fixed random embeddings of those four parts plus noise, and its captions all
describe that scene in varied words. So the data are random-looking float32 vectors
yet learnable: a captioner can overfit train and do better than chance on val.
"""

import json
import os
from pathlib import Path

import numpy as np

from captioner.data import write_dataset

# ../shared beside the checkout; CAPTIONER_SHARED names it for a copy of the tests elsewhere
# (mutmut runs them in mutants/, where ../shared is not beside them).
SHARED = Path(
    os.environ.get("CAPTIONER_SHARED") or Path(__file__).resolve().parents[1].parent / "shared"
)
SHARED_VOCAB = SHARED / "coco" / "coco2014_vocab.json"
SPECIALS = ["<NULL>", "<START>", "<END>", "<UNK>"]
MAX_LEN = 17  # <START> + 15 words + <END>

# Word classes of the tiny grammar; every word here is in the real CS231n vocabulary.
WORDS = {
    "det": ["a", "the", "one", "some"],
    "subj": [
        "man",
        "woman",
        "dog",
        "cat",
        "boy",
        "girl",
        "horse",
        "bear",
        "giraffe",
        "elephant",
        "bird",
        "zebra",
        "sheep",
        "child",
        "lady",
        "guy",
        "cow",
        "player",
        "person",
        "skier",
        "surfer",
    ],
    "adj": [
        "white",
        "black",
        "red",
        "blue",
        "green",
        "small",
        "large",
        "young",
        "old",
        "little",
        "big",
        "brown",
        "yellow",
        "wooden",
        "tall",
        "pink",
        "orange",
        "colorful",
        "empty",
        "busy",
    ],
    "noun": [
        "train",
        "bus",
        "truck",
        "car",
        "boat",
        "plane",
        "motorcycle",
        "bicycle",
        "kite",
        "table",
        "plate",
        "pizza",
        "cake",
        "laptop",
        "clock",
        "umbrella",
        "bench",
        "bed",
        "sign",
        "couch",
        "frisbee",
        "skateboard",
        "surfboard",
        "ball",
        "phone",
        "computer",
        "sandwich",
    ],
    "verb": [
        "sitting",
        "standing",
        "holding",
        "riding",
        "walking",
        "playing",
        "looking",
        "eating",
        "laying",
        "flying",
        "parked",
        "wearing",
        "carrying",
        "watching",
        "jumping",
        "posing",
        "driving",
        "hanging",
    ],
    "prep": ["on", "in", "with", "near", "by", "under", "behind", "beside", "at", "over"],
    "place": [
        "street",
        "field",
        "room",
        "kitchen",
        "beach",
        "grass",
        "snow",
        "water",
        "park",
        "city",
        "road",
        "building",
        "bathroom",
        "ocean",
        "hill",
        "airport",
        "river",
        "sidewalk",
        "station",
        "court",
    ],
}


def _vocabulary(vocab_size):
    """-> (idx_to_word, {class: array of word ids})."""
    if vocab_size is None and SHARED_VOCAB.is_file():
        idx_to_word = json.loads(SHARED_VOCAB.read_text())["idx_to_word"]
        w2i = {w: i for i, w in enumerate(idx_to_word)}
        return idx_to_word, {
            c: np.array([w2i[w] for w in ws if w in w2i]) for c, ws in WORDS.items()
        }
    # Made-up words ('noun7', ...) split over the classes, padded with filler to vocab_size.
    size = 100 if vocab_size is None else vocab_size
    per_class = max(2, (size - len(SPECIALS)) // len(WORDS))
    if size < len(SPECIALS) + per_class * len(WORDS):
        raise ValueError(f"vocab_size must be at least {len(SPECIALS) + 2 * len(WORDS)}")
    idx_to_word = list(SPECIALS)
    classes = {}
    for c in WORDS:
        classes[c] = np.arange(len(idx_to_word), len(idx_to_word) + per_class)
        idx_to_word += [f"{c}{i}" for i in range(per_class)]
    idx_to_word += [f"word{i}" for i in range(size - len(idx_to_word))]
    return idx_to_word, classes


def _random_captions(scenes, classes, rng):
    """One caption per scene row: (N, 15) word ids left-aligned, and lengths (N,) in 3..15.

    Grammar: det [adj] subject verb {prep det [adj] (object|place)}x0..2 [prep det adj place'],
    built as 16 slots with presence masks, then squeezed left, all in NumPy for speed.
    """
    n = len(scenes)
    pick = lambda c: rng.choice(classes[c], size=n)  # noqa: E731
    coin = lambda p: rng.random(n) < p  # noqa: E731
    swap = coin(0.5)
    first = np.where(swap, scenes[:, 3], scenes[:, 2])
    second = np.where(swap, scenes[:, 2], scenes[:, 3])
    n_phrases = rng.integers(0, 3, size=n)
    on, has1, has2, extra = np.ones(n, bool), n_phrases >= 1, n_phrases >= 2, coin(0.3)
    slots = [
        (pick("det"), on),
        (pick("adj"), coin(0.5)),
        (scenes[:, 0], on),
        (scenes[:, 1], on),
        (pick("prep"), has1),
        (pick("det"), has1),
        (pick("adj"), has1 & coin(0.4)),
        (first, has1),
        (pick("prep"), has2),
        (pick("det"), has2),
        (pick("adj"), has2 & coin(0.4)),
        (second, has2),
        (pick("prep"), extra),
        (pick("det"), extra),
        (pick("adj"), extra),
        (pick("place"), extra),
    ]
    ids = np.stack([s for s, _ in slots], 1)
    mask = np.stack([m for _, m in slots], 1)
    order = np.argsort(~mask, axis=1, kind="stable")  # present slots first, in order
    words = np.take_along_axis(ids, order, 1)[:, : MAX_LEN - 2]
    lengths = np.minimum(mask.sum(1), MAX_LEN - 2)
    words[np.arange(MAX_LEN - 2) >= lengths[:, None]] = 0
    return words, lengths


def make_split(
    n_images, captions_per_image, feature_dim, classes, embed, rng, w2i, name, image_offset
):
    """Scenes, features and captions of one split, as a write_dataset split dict."""
    scenes = np.stack(
        [rng.choice(classes[c], size=n_images) for c in ("subj", "verb", "noun", "place")], 1
    )
    features = sum(embed[scenes[:, j]] for j in range(4)) + 0.5 * rng.standard_normal(
        (n_images, feature_dim), dtype=np.float32
    )
    image_idxs = np.repeat(np.arange(n_images), captions_per_image)
    words, lengths = _random_captions(scenes[image_idxs], classes, rng)
    for _ in range(100):  # redraw captions that repeat another caption of the same image
        _, first = np.unique(np.column_stack([image_idxs, words]), axis=0, return_index=True)
        dup = np.setdiff1d(np.arange(len(words)), first)
        if not len(dup):
            break
        words[dup], lengths[dup] = _random_captions(scenes[image_idxs[dup]], classes, rng)
    else:
        raise ValueError(
            f"cannot make {captions_per_image} distinct captions per image with this vocabulary"
        )
    captions = np.full((len(words), MAX_LEN), w2i["<NULL>"], np.int32)
    captions[:, 0] = w2i["<START>"]
    captions[:, 1 : MAX_LEN - 1] = np.where(words > 0, words, w2i["<NULL>"])
    captions[np.arange(len(words)), lengths + 1] = w2i["<END>"]
    ids = [image_offset + i for i in range(n_images)]
    return {
        "captions": captions,
        "image_idxs": image_idxs,
        "features": features.astype(np.float32),
        "images": [f"coco/images/{name}2014/COCO_{name}2014_{i:012d}.jpg" for i in ids],
        "urls": [f"https://example.invalid/coco_synthetic/{name}2014/{i:012d}.jpg" for i in ids],
    }


def build_dataset(
    out_dir,
    n_train_images=40,
    captions_per_image=5,
    n_val_images=10,
    feature_dim=512,
    vocab_size=None,
    kind="pca",
    seed=0,
    encoder=None,
):
    """Write a synthetic coco_captioning folder to out_dir; returns out_dir.

    vocab_size=None uses the real CS231n vocabulary when ../shared has it, else a
    made-up 100-word one; an int always makes up a vocabulary of exactly that size.
    Same seed and arguments -> same files.
    """
    rng = np.random.default_rng(seed)
    idx_to_word, classes = _vocabulary(vocab_size)
    w2i = {w: i for i, w in enumerate(idx_to_word)}
    embed = rng.standard_normal((len(idx_to_word), feature_dim), dtype=np.float32)
    splits = {}
    for name, n in (("train", n_train_images), ("val", n_val_images)):
        if n:
            splits[name] = make_split(
                n,
                captions_per_image,
                feature_dim,
                classes,
                embed,
                rng,
                w2i,
                name,
                image_offset=1 if name == "train" else 1_000_000,
            )
    return Path(write_dataset(out_dir, splits, idx_to_word, kind=kind, encoder=encoder))
