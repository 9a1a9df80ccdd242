"""Caption every image of a split once and score it with the COCO metrics."""
import re

import numpy as np

from .data import decode_captions, image_groups
from .decoding import beam_search
from .metrics import score


def coco_image_id(file_name, fallback):
    """COCO_val2014_000000391895.jpg -> 391895 (the id COCO's tools expect)."""
    m = re.search(r"(\d+)\.\w+$", file_name or "")
    return int(m.group(1)) if m else int(fallback)


def caption_split(model, data, split="val", max_images=None, beam_size=3, max_length=16,
                  length_norm=0.0, batch_size=500):
    """-> (image ids, generated captions, reference captions per image), one entry per image."""
    images, rows = image_groups(data, split)
    if max_images:
        images, rows = images[:max_images], rows[:max_images]
    names = data.get(f"{split}_images")
    ids = [coco_image_id(names[i] if names else None, i) for i in images]
    generated = []
    for i in range(0, len(images), batch_size):
        feats = data[f"{split}_features"][images[i:i + batch_size]]
        beams = beam_search(model, feats, beam_size=beam_size, max_length=max_length,
                            length_norm=length_norm)
        generated += [decode_captions(np.asarray(b[0][0]), data["idx_to_word"]) for b in beams]
    refs = [decode_captions(data[f"{split}_captions"][r], data["idx_to_word"]) for r in rows]
    return ids, generated, refs


def evaluate_model(model, data, split="val", meteor=True, **decode):
    """-> (scores, notes, results in the COCO results format)."""
    ids, generated, refs = caption_split(model, data, split, **decode)
    scores, notes = score(dict(zip(ids, refs)), dict(zip(ids, generated)), meteor=meteor)
    results = [{"image_id": i, "caption": c} for i, c in zip(ids, generated)]
    return scores, notes, results
