"""The picture encoders, by name: one table everything else reads.

    enc = encoders.get("efficientnet-lite0")
    feats, logits, ok, errors = encoders.encode_files(paths, enc)

An entry names its network module (captioner.encoder: SqueezeNet 1.1, captioner.efficientnet:
EfficientNet-Lite0), which provides preprocess(img), forward(params, batch) -> (logits,
features), default_params(), FEATURE_DIM, ENCODER_NAME (the feature id a dataset records and
a checkpoint keeps), LAYOUT and WEIGHTS_SHA256. A third encoder is one more entry.

A dataset records the feature id (attrs['encoder']), so `sample` finds the encoder a
checkpoint was trained with (by_feature_id); a dataset without it is SqueezeNet's or CS231n's.
"""

import importlib
from collections import namedtuple

from captioner.errors import CaptionerError

# kind: the dataset's feature file suffix, {split}2014_{kind}.h5
Encoder = namedtuple("Encoder", "name module kind")

ENCODERS = {
    "squeezenet": Encoder("squeezenet", "captioner.encoder", "squeezenet"),
    "efficientnet-lite0": Encoder("efficientnet-lite0", "captioner.efficientnet", "lite0"),
}
# What `prepare` encodes photographs with (--images, --coco, and every other picture source).
DEFAULT = "efficientnet-lite0"
DEMO = "squeezenet"  # the demo's rendered shapes (README, "Choosing the encoder")


def get(name):
    """Encoder entry of a name (ENCODERS' keys) -> Encoder; CaptionerError if unknown."""
    if isinstance(name, Encoder):
        return name
    if name not in ENCODERS:
        raise CaptionerError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    return ENCODERS[name]


def module(enc):
    """The network module of an entry (imported on first use)."""
    return importlib.import_module(get(enc).module)


def by_feature_id(feature_id):
    """The entry whose features a dataset or checkpoint names (attrs['encoder'], or for a
    feature file without it its kind, e.g. 'squeezenet'), or None (e.g. CS231n's VGG-16 PCA
    features, which no picture encoder here computes)."""
    for enc in ENCODERS.values():
        if feature_id in (module(enc).ENCODER_NAME, enc.kind):
            return enc
    return None


def of_checkpoint(ckpt, meta):
    """The entry that computes a checkpoint's features from a picture (`sample` on picture
    files); CaptionerError when none does (CS231n's VGG-16 PCA features)."""
    feature_id = meta["features"].get("encoder")
    enc = by_feature_id(feature_id)
    if enc is None:
        raise CaptionerError(
            f"{ckpt}: trained on {feature_id} features, which cannot be "
            f"computed from a picture (the CS231n VGG-16 PCA basis is not published); caption "
            f"dataset images with --split val, or build a dataset with `captioner prepare` "
            f"and train on it"
        )
    return enc


def describe(enc):
    """-> {'encoder', 'feature_id', 'dim', 'weights_sha256', 'layout'} (a dataset's attrs)."""
    m = module(enc)
    return {
        "encoder": get(enc).name,
        "feature_id": m.ENCODER_NAME,
        "dim": m.FEATURE_DIM,
        "weights_sha256": m.WEIGHTS_SHA256,
        "layout": m.LAYOUT,
    }


def encode_images(images, enc, batch_size=32, params=None):
    """List of PIL images -> logits (N,1000) float32, features (N,D) float32."""
    import numpy as np

    m = module(enc)
    params = m.default_params() if params is None else params
    logits = [np.zeros((0, m.NUM_CLASSES), np.float32)]
    feats = [np.zeros((0, m.FEATURE_DIM), np.float32)]
    for i in range(0, len(images), batch_size):
        batch = np.stack([m.preprocess(im) for im in images[i : i + batch_size]])
        lg, ft = m.forward(params, batch)
        logits.append(lg)
        feats.append(ft)
    return np.concatenate(logits), np.concatenate(feats)


def encode_files(paths, enc, batch_size=32, progress=None, params=None):
    """Encode picture files, skipping bad ones. progress: None, or progress(desc, done,
    total, unit) called before each picture and at the end (the CLI draws a bar).

    Returns (features (M,D) float32, logits (M,1000) float32, ok_paths [M paths, same
    order as rows], errors [(path, one-line message)]). Only CaptionerError from
    open_image is collected; bugs still raise.
    """
    import numpy as np

    from captioner.encoder import open_image

    m = module(enc)
    params = m.default_params() if params is None else params
    feats, logits, ok, errors, pending = [], [], [], [], []

    def flush():
        if pending:
            lg, ft = m.forward(params, np.stack([x for _, x in pending]))
            logits.append(lg)
            feats.append(ft)
            ok.extend(p for p, _ in pending)
            pending.clear()

    paths = list(paths)
    for k, p in enumerate(paths):
        if progress:
            progress("encoding", k, len(paths), "img")
        try:
            x = m.preprocess(open_image(p))
        except CaptionerError as e:
            errors.append((p, str(e)))
            continue
        pending.append((p, x))
        if len(pending) >= batch_size:
            flush()
    flush()
    if progress:
        progress("encoding", len(paths), len(paths), "img")
    feats = np.concatenate(feats) if feats else np.zeros((0, m.FEATURE_DIM), np.float32)
    logits = np.concatenate(logits) if logits else np.zeros((0, m.NUM_CLASSES), np.float32)
    return feats, logits, ok, errors
