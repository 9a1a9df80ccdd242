"""Caption every image of a split once and score it with the COCO metrics."""

import re

from .data import image_groups
from .decoding import beam_captions
from .metrics import score
from .vocab import decode_captions


def coco_image_id(file_name, fallback):
    """COCO_val2014_000000391895.jpg -> 391895 (the id COCO's tools expect)."""
    m = re.search(r"(\d+)\.\w+$", file_name or "")
    return int(m.group(1)) if m else int(fallback)


def decode_split(
    model,
    data,
    split="val",
    max_images=None,
    beam_size=3,
    max_length=16,
    length_norm=0.0,
    batch_size=500,
):
    """-> (feature rows (K,), image ids, best (caption, logprob) per image, reference captions
    per image), one entry per distinct image of the split."""
    images, rows = image_groups(data, split)
    if max_images:
        images, rows = images[:max_images], rows[:max_images]
    names = data.get(f"{split}_images")
    ids = [coco_image_id(names[i] if names else None, i) for i in images]
    if len(set(ids)) != len(ids):  # two file names give one COCO id: number by feature row
        ids = [int(i) for i in images]
    best = []
    batch_size = max(1, min(batch_size, 5000 // beam_size))  # beam memory: images x beams rows
    for i in range(0, len(images), batch_size):  # batches: features may stream from HDF5
        feats = data[f"{split}_features"][images[i : i + batch_size]]
        hyps = beam_captions(model, feats, beam_size, max_length, length_norm)
        best += [h[0] for h in hyps]
    refs = [decode_captions(data[f"{split}_captions"][r], data["idx_to_word"]) for r in rows]
    return images, ids, best, refs


def caption_split(
    model,
    data,
    split="val",
    max_images=None,
    beam_size=3,
    max_length=16,
    length_norm=0.0,
    batch_size=500,
):
    """-> (image ids, generated captions, reference captions per image), one entry per image."""
    _, ids, best, refs = decode_split(
        model, data, split, max_images, beam_size, max_length, length_norm, batch_size
    )
    return ids, [caption for caption, _ in best], refs


def greedy_scores(model, data, max_images=None):
    """BLEU and CIDEr-D (no METEOR) of greedy captions, at most as long as the dataset's,
    of the first max_images val images (None: all): what training, compare and sweep
    report. -> (scores, images scored)."""
    ids, generated, refs = caption_split(
        model,
        data,
        "val",
        max_images=max_images,
        beam_size=1,
        max_length=data["val_captions"].shape[1] - 1,
    )
    scores, _ = score(dict(zip(ids, refs)), dict(zip(ids, generated)), meteor=False)
    return scores, len(ids)


def periodic_scores(model, data, every, n_images):
    """training.train's on_epoch_end adding BLEU-4 and CIDEr-D of greedy captions of the
    first n_images val images (a fixed subset) to every `every`-th epoch's record."""

    def evaluate(state):
        record = state["epochs"][-1]
        if record["epoch"] % every == 0:
            scores, _ = greedy_scores(model, data, n_images)
            record.update(Bleu_4=scores["Bleu_4"], CIDEr=scores["CIDEr"])

    return evaluate


def evaluate_model(model, data, split="val", meteor=True, **decode):
    """-> (scores, notes, results in the COCO results format)."""
    ids, generated, refs = caption_split(model, data, split, **decode)
    scores, notes = score(dict(zip(ids, refs)), dict(zip(ids, generated)), meteor=meteor)
    results = [{"image_id": i, "caption": c} for i, c in zip(ids, generated)]
    return scores, notes, results
