"""Which picture lands in which split, from Karpathy's file to `evaluate --split test`.

Small COCO-layout zips of made-up pictures (no ../shared needed): each picture's
captions name it ("a picture of <word>"), so a picture in the wrong split, or captions
that left their picture, show by name.
"""

import io
import json

import pytest
from PIL import Image

from captioner import checkpoint
from captioner import prepare as P
from captioner.data import decode_captions, image_groups, load_coco_data
from captioner.model import CaptioningRNN
from helpers import run, zipped

# (zip folder, Karpathy split, the word its captions use); COCO ids 1, 2, ...
PLAN = [
    ("train2014", "train", "zebra"),
    ("train2014", "train", "kite"),
    ("val2014", "restval", "pizza"),
    ("val2014", "val", "clock"),
    ("val2014", "val", "bench"),
    ("val2014", "test", "horse"),
    ("val2014", "test", "boat"),
    ("val2014", "test", "kite"),  # its captions are all punctuation: skipped, not fatal
]
SILENT = 7


def _name(k):
    folder = PLAN[k][0]
    return f"{folder}/COCO_{folder}_{k + 1:012d}.jpg"


def _picture(k):
    buf = io.BytesIO()
    im = Image.new("RGB", (40, 40), (128, 128, 128))
    im.paste((37 * k % 256, 90 * k % 256, 200), (5, 5, 20 + 2 * k, 30))
    im.save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("coco2014")
    members = {"train2014": {"train2014/": b""}, "val2014": {"val2014/": b""}}
    images = []
    for k, (zfolder, split, word) in enumerate(PLAN):
        members[zfolder][_name(k)] = _picture(k)
        raw = [f"A picture of {word}.", f"{word} in a picture", f"one {word} here"]
        raw = ["...", "!"] if k == SILENT else raw + ["--"] * (k == 0)  # one empty caption
        images.append(
            {
                "filepath": zfolder,
                "filename": _name(k).split("/")[1],
                "cocoid": k + 1,
                "split": split,
                "sentences": [{"raw": r, "tokens": r.lower().split()} for r in raw],
            }
        )
    for zfolder, entries in members.items():
        (folder / f"{zfolder}.zip").write_bytes(zipped(entries))
    (folder / "caption_datasets.zip").write_bytes(
        zipped({"dataset_coco.json": json.dumps({"dataset": "coco", "images": images})})
    )
    return folder


@pytest.fixture(scope="module")
def dataset(coco_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("karpathy") / "ds"
    summary = P.prepare_coco(coco_dir, out, workers=1, batch_size=4, min_count=1, progress=False)
    return out, summary


def _expected(*splits):
    return [_name(k) for k, p in enumerate(PLAN) if p[1] in splits and k != SILENT]


def test_karpathy_splits_hold_exactly_their_pictures_with_their_captions(dataset):
    dataset, summary = dataset
    # a picture left without words is skipped with the reason; empty captions are counted
    assert summary["skipped"] == [(_name(SILENT), "no captions in the annotations")]
    assert summary["empty_captions"] == 3
    d = load_coco_data(dataset, splits=("train", "val", "test"))
    assert d["train_images"] == _expected("train", "restval")  # restval trains
    assert d["val_images"] == _expected("val")
    assert d["test_images"] == _expected("test")
    words = {_name(k): w for k, (_, _, w) in enumerate(PLAN) if k != SILENT}
    # the vocabulary comes from train alone: val and test words are <UNK> there
    train_words = {w for _, s, w in PLAN if s in ("train", "restval")}
    assert {w for w in d["idx_to_word"] if w in words.values()} == train_words
    for split in ("train", "val", "test"):
        images, rows = image_groups(d, split)
        for i, r in zip(images, rows):
            word = words[d[f"{split}_images"][i]]
            caps = decode_captions(d[f"{split}_captions"][r], d["idx_to_word"])
            shown = word if word in train_words else "<UNK>"
            assert sorted(caps) == sorted(
                [f"a picture of {shown}", f"{shown} in a picture", f"one {shown} here"]
            ), (split, word)


def test_evaluate_split_test_writes_exactly_the_test_images(dataset, tmp_path):
    dataset, _ = dataset
    d = load_coco_data(dataset, splits=("train",))
    model = CaptioningRNN(
        d["word_to_idx"], input_dim=d["feature_dim"], wordvec_dim=8, hidden_dim=8
    )
    ckpt = tmp_path / "m.npz"
    checkpoint.save(ckpt, model.params, checkpoint.model_meta(model, d))
    for split in ("test", "val"):
        out = tmp_path / f"{split}.json"
        r = run(
            "evaluate",
            "--checkpoint",
            ckpt,
            "--data",
            dataset,
            "--split",
            split,
            "--no-meteor",
            "--save-results",
            out,
        )
        assert r.exit_code == 0, r.output
        assert f"on 2 {split} images" in r.output
        ids = sorted(e["image_id"] for e in json.loads(out.read_text()))
        assert ids == [k + 1 for k, p in enumerate(PLAN) if p[1] == split and k != SILENT]
