import json
import os

import numpy as np
import pytest
from PIL import Image

from captioner import efficientnet as L
from captioner import prepare as P
from captioner import shards as S
from captioner.data import decode_captions, feature_attrs, load_coco_data, load_vocab
from captioner.errors import CaptionerError
from helpers import assert_same_dataset

WORDS = ["red", "green", "blue", "white", "black", "yellow"]
COLOURS = [
    (220, 30, 30),
    (30, 170, 40),
    (30, 60, 230),
    (250, 250, 250),
    (15, 15, 15),
    (250, 220, 10),
]


def _pictures(folder, n, bad=(), missing=()):
    """n small pictures (a square of one colour on grey) + COCO captions json -> its path.
    bad: names of files holding text, not pictures; missing: annotated but never written."""
    folder.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    names = [f"pic{i}.png" for i in range(n)] + list(bad) + list(missing)
    for i, name in enumerate(names):
        if i < n:
            im = Image.new("RGB", (48, 48), (128, 128, 128))
            im.paste(COLOURS[i % 6], (8 + i % 3 * 4, 8, 40, 40))
            im.save(folder / name)
        elif name in bad:
            (folder / name).write_bytes(b"this is not a picture\n" * 10)
        images.append({"id": 100 + i, "file_name": name, "coco_url": f"http://x/{name}"})
        for j in range(2):
            anns.append(
                {
                    "id": len(anns),
                    "image_id": 100 + i,
                    "caption": f"A {WORDS[i % 6]} square, on grey{'!' * j}",
                }
            )
    path = folder / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return path


# ---------------------------------------------------------------------------- captions, vocabulary


def test_build_vocab_specials_then_count_then_alphabet():
    toks = [["b", "a", "c"], ["a", "c", "d"], ["a", "c", "e"], ["b", "z"]]
    assert P.build_vocab(toks, min_count=2) == [
        "<NULL>",
        "<START>",
        "<END>",
        "<UNK>",
        "a",
        "c",
        "b",
    ]
    assert P.build_vocab(toks, min_count=1)[4:] == ["a", "c", "b", "d", "e", "z"]
    assert P.build_vocab(toks, min_count=4) == list(P.SPECIALS)


def test_encode_captions_pads_truncates_and_marks_unknown():
    w2i = {w: i for i, w in enumerate(["<NULL>", "<START>", "<END>", "<UNK>", "a", "cat"])}
    caps = P.encode_captions([["a", "cat"], ["a", "dog", "cat", "a", "a"]], w2i, max_words=3)
    np.testing.assert_array_equal(caps, [[1, 4, 5, 2, 0], [1, 4, 3, 5, 2]])
    assert caps.dtype == np.int32


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"images": [', r"invalid JSON at line 1"),
        ("[1, 2]", r"top level is a list"),
        ('{"images": []}', r"no 'annotations' list"),
        ('{"images": [{"id": 1}], "annotations": []}', r"images\[0\] .*'file_name' must be"),
        (
            '{"images": [{"id": 1.5, "file_name": "a.jpg"}], "annotations": []}',
            r"images\[0\] .*'id' must be",
        ),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}], '
            '"annotations": []}',
            r"images\[1\] .*repeats images\[0\]",
        ),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "a.jpg"}], '
            '"annotations": []}',
            r"images\[1\] .*file_name repeats",
        ),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg"}], '
            '"annotations": [{"image_id": 1, "caption": "x"},'
            ' {"image_id": 7, "caption": "a dog"}]}',
            r'annotations\[1\] \{"image_id": 7.*not in \'images\'',
        ),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg"}], '
            '"annotations": [{"image_id": 1, "caption": 3}]}',
            r"annotations\[0\] .*'caption' must be a string",
        ),
    ],
)
def test_bad_annotations_name_the_file_and_entry(tmp_path, content, message):
    path = tmp_path / "caps.json"
    path.write_text(content)
    with pytest.raises(CaptionerError, match=rf"caps\.json: .*{message}"):
        P.prepare_dataset(tmp_path, path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # refused before any work


def test_bad_arguments_are_refused(tmp_path):
    ann = _pictures(tmp_path / "img", 2)
    with pytest.raises(CaptionerError, match="pictures folder not found"):
        P.prepare_dataset(tmp_path / "nope", ann, tmp_path / "out")
    with pytest.raises(CaptionerError, match="val fraction"):
        P.prepare_dataset(tmp_path / "img", ann, tmp_path / "out", val_fraction=1.0)
    split = tmp_path / "val.txt"
    split.write_text("pic1.png\nzebra.png\n")
    with pytest.raises(CaptionerError, match=r"val\.txt: 1 name.*'zebra\.png'"):
        P.prepare_dataset(tmp_path / "img", ann, tmp_path / "out", split_by=split)
    split.write_text("pic0.png\npic1.png\n")
    with pytest.raises(CaptionerError, match="every captioned image in val"):
        P.prepare_dataset(tmp_path / "img", ann, tmp_path / "out", split_by=split)


def test_split_file_picks_val_and_vocab_comes_from_train_only(tmp_path):
    ann = _pictures(tmp_path / "img", 3)  # captions: 'A red square, on grey', green, blue
    split = tmp_path / "val.txt"
    split.write_text("./pic2.png\n\n")
    s = P.prepare_dataset(
        tmp_path / "img", ann, tmp_path / "out", split_by=split, min_count=1, progress=False
    )
    d = load_coco_data(tmp_path / "out")
    assert d["train_images"] == ["pic0.png", "pic1.png"] and d["val_images"] == ["pic2.png"]
    assert d["idx_to_word"] == [
        "<NULL>",
        "<START>",
        "<END>",
        "<UNK>",
        "a",
        "grey",
        "on",
        "square",
        "green",
        "red",
    ]
    assert decode_captions(d["val_captions"], d["idx_to_word"]) == ["a <UNK> square on grey"] * 2
    assert s["val"]["unk_words"] == pytest.approx(0.2) and s["train"]["unk_words"] == 0


# ----------------------------------------------------------------------------- real COCO pictures


def test_real_coco_pictures_make_a_loadable_dataset(shared, tmp_path):
    images_dir = shared / "coco" / "images"
    ann = json.loads((images_dir / "captions.json").read_text())
    vocab = shared / "coco" / "coco2014_vocab.json"
    s = P.prepare_dataset(
        images_dir,
        images_dir / "captions.json",
        tmp_path / "ds",
        val_fraction=0.2,
        vocab=vocab,
        progress=False,
        seed=3,
    )
    assert (s["train"]["images"], s["val"]["images"]) == (10, 3) and s["skipped"] == []
    assert s["train"]["captions"] + s["val"]["captions"] == len(ann["annotations"])
    assert not (tmp_path / "ds" / P.WORK_DIR).exists()

    d = load_coco_data(tmp_path / "ds")
    # photographs get EfficientNet-Lite0 features by default, and the dataset says so
    assert d["feature_kind"] == "lite0" and d["encoder"] == L.ENCODER_NAME
    attrs = feature_attrs(tmp_path / "ds", "lite0", "val")
    assert {k: attrs[k] for k in ("encoder", "encoder_weights_sha256", "feature_layout")} == {
        "encoder": L.ENCODER_NAME,
        "encoder_weights_sha256": L.WEIGHTS_SHA256,
        "feature_layout": L.LAYOUT,
    }
    assert d["train_features"].shape == (10, L.FEATURE_DIM) and d["val_features"].shape == (
        3,
        L.FEATURE_DIM,
    )
    # the encoder's per-image normalisation: every row has RMS 1, whatever the picture
    norms = np.linalg.norm(np.concatenate([d["train_features"], d["val_features"]]), axis=1)
    np.testing.assert_allclose(norms, np.sqrt(L.FEATURE_DIM), rtol=1e-4)
    assert d["idx_to_word"] == load_vocab(vocab)[1]  # reused as is
    assert d["train_captions"].shape[1] == 17
    assert sorted(d["train_images"] + d["val_images"]) == sorted(
        im["file_name"] for im in ann["images"]
    )
    assert d["val_urls"] == [str(images_dir / n) for n in d["val_images"]]

    id_of = {im["file_name"]: im["id"] for im in ann["images"]}
    w2i = d["word_to_idx"]
    n_unk = 0
    for split in ("train", "val"):
        got = {}
        for row, idx in zip(
            decode_captions(d[f"{split}_captions"], d["idx_to_word"]), d[f"{split}_image_idxs"]
        ):
            got.setdefault(id_of[d[f"{split}_images"][idx]], []).append(row)
        for image_id, rows in got.items():
            want = [
                " ".join(w if w in w2i else "<UNK>" for w in P.tokenize(a["caption"])[:15])
                for a in ann["annotations"]
                if a["image_id"] == image_id
            ]
            assert rows == want
            n_unk += sum(r.count("<UNK>") for r in rows)
    assert n_unk > 0  # the real vocabulary lacks some of these words, and they became <UNK>
    # '... with two remotes': not in the vocabulary
    caption = "there are two cats laying down with two <UNK>"
    assert caption in decode_captions(
        np.concatenate([d["train_captions"], d["val_captions"]]), d["idx_to_word"]
    )


# ---------------------------------------------------------------------------- bad pictures, resume


def test_bad_and_missing_pictures_are_skipped(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(tmp_path / "img" / "cut.jpg", quality=95)
    data = (tmp_path / "img" / "cut.jpg").read_bytes()
    ann = _pictures(tmp_path / "img", 4, bad=["text.jpg"], missing=["gone.png"])
    (tmp_path / "img" / "cut.jpg").write_bytes(data[: len(data) // 2])
    doc = json.loads(ann.read_text())
    doc["images"].append({"id": 999, "file_name": "cut.jpg"})
    doc["annotations"].append({"id": 999, "image_id": 999, "caption": "a green picture"})
    doc["images"].append({"id": 998, "file_name": "uncaptioned.png"})
    ann.write_text(json.dumps(doc))

    s = P.prepare_dataset(
        tmp_path / "img", ann, tmp_path / "out", val_fraction=0.3, min_count=1, progress=False
    )
    why = dict(s["skipped"])
    assert sorted(why) == ["cut.jpg", "gone.png", "text.jpg", "uncaptioned.png"]
    assert (
        "text.jpg: not an image" in why["text.jpg"] and "gone.png: no such file" in why["gone.png"]
    )
    assert "cut.jpg" in why["cut.jpg"] and "no captions" in why["uncaptioned.png"]
    d = load_coco_data(tmp_path / "out")
    assert sorted(d["train_images"] + d["val_images"]) == [f"pic{i}.png" for i in range(4)]
    assert (
        len(d["train_captions"]) + len(d["val_captions"]) == 8
    )  # the skipped pictures' captions dropped
    assert d["train_urls"] == [f"http://x/{n}" for n in d["train_images"]]


def test_nothing_readable_is_an_error(tmp_path):
    ann = _pictures(tmp_path / "img", 0, bad=["a.jpg", "b.jpg"], missing=["c.jpg"])
    with pytest.raises(
        CaptionerError, match="none of the 3 annotated pictures could be read"
    ) as e:
        P.prepare_dataset(tmp_path / "img", ann, tmp_path / "out", progress=False)
    assert e.value.exit_code == 1


def test_interrupted_run_resumes_to_the_same_dataset(tmp_path, monkeypatch):
    ann = _pictures(tmp_path / "img", 7, bad=["bad.jpg"])
    args = dict(val_fraction=0.25, min_count=2, batch_size=2, progress=False, seed=1)
    straight = P.prepare_dataset(tmp_path / "img", ann, tmp_path / "a", **args)
    assert straight["resumed_images"] == 0 and [n for n, _ in straight["skipped"]] == ["bad.jpg"]

    real, calls = S.encode_shard, []

    def dies_after_two(spec):
        calls.append([os.path.basename(p) for p in spec["refs"]])
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(spec)

    monkeypatch.setattr(S, "encode_shard", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        P.prepare_dataset(tmp_path / "img", ann, tmp_path / "b", workers=1, **args)
    work = tmp_path / "b" / P.WORK_DIR
    assert sorted(p.name for p in work.glob("chunk_*.npz")) == [
        "chunk_00000.npz",
        "chunk_00001.npz",
    ]
    assert sorted(os.listdir(tmp_path / "b")) == [P.WORK_DIR]  # no dataset file yet

    calls.clear()
    resumed = P.prepare_dataset(tmp_path / "img", ann, tmp_path / "b", workers=1, **args)
    assert resumed["resumed_images"] == 4 and resumed["encoded_images"] == 4
    assert sum(map(len, calls)) == 4  # only the chunks that were not done
    assert resumed["skipped"] == straight["skipped"] and resumed["train"] == straight["train"]
    assert not work.exists()
    assert_same_dataset(tmp_path / "a", tmp_path / "b")


def test_work_area_of_other_arguments_or_garbage_is_not_reused(tmp_path, monkeypatch):
    ann = _pictures(tmp_path / "img", 3)
    work = tmp_path / "out" / P.WORK_DIR
    work.mkdir(parents=True)
    (work / "manifest.json").write_text('{"key": "other"}')
    (work / "chunk_00000.npz").write_bytes(b"garbage")
    s = P.prepare_dataset(
        tmp_path / "img", ann, tmp_path / "out", min_count=1, batch_size=2, progress=False
    )
    assert s["resumed_images"] == 0 and s["encoded_images"] == 3
    d = load_coco_data(tmp_path / "out")
    assert (
        np.isfinite(d["train_features"]).all()
        and d["train_features"].shape[0] + d["val_features"].shape[0] == 3
    )


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    ann = _pictures(tmp_path / "img", 2)
    work = tmp_path / "out" / P.WORK_DIR
    work.mkdir(parents=True)
    fd = P._lock(str(work))
    try:
        with pytest.raises(CaptionerError, match="another `captioner prepare` is writing here"):
            P.prepare_dataset(tmp_path / "img", ann, tmp_path / "out", progress=False)
    finally:
        os.close(fd)


def test_vocabulary_defaults_are_cs231ns():
    """Words seen at least 5 times (CS231n's threshold); captions of 15 words plus <START>
    and <END> (17 columns, as coco2014_captions.h5)."""
    toks = [["cat"]] * 5 + [["dog"]] * 4
    assert P.build_vocab(toks) == [*P.SPECIALS, "cat"]
    w2i = {w: i for i, w in enumerate(P.build_vocab(toks))}
    caps = P.encode_captions([["cat"] * 20], w2i)
    assert caps.shape == (1, 17) and (caps[0, 1:16] == w2i["cat"]).all() and caps[0, 16] == 2


def test_prepare_tokenizes_as_the_metrics_do():
    """Captions become the COCO evaluation's tokens (PTB rules), so training words and
    scored words agree: "man's" -> "man 's", "well-made" stays one word."""
    from captioner import metrics

    caption = "A man's well-made hat, isn't it? Two dogs."
    assert P.tokenize(caption) == metrics.tokenize(caption)
    assert P.tokenize(caption) == [
        "a",
        "man",
        "'s",
        "well-made",
        "hat",
        "is",
        "n't",
        "it",
        "two",
        "dogs",
    ]


def test_a_caption_of_megabytes_costs_what_its_kept_words_cost():
    """Issue 23 (hostile Karpathy/COCO values): a 6 MB caption is read up to 2,000
    characters, so tokenising it takes what a long caption takes, not seconds and a
    million-word list; ordinary captions are tokenised whole."""
    items = [
        {"name": "a.jpg", "captions": ["a dog " * 1_000_000, "A cat on a mat."]},
        {"name": "b.jpg", "captions": [42 * " "]},
    ]
    skipped = []
    kept, empty = P._tokenize(items, skipped)
    assert kept[0]["tokens"][0] == ["a", "dog"] * (2000 // 6) + ["a"]
    assert kept[0]["tokens"][1] == ["a", "cat", "on", "a", "mat"]
    assert empty == 1 and skipped == [("b.jpg", "no captions in the annotations")]


@pytest.mark.parametrize(
    "garbage",
    [
        lambda _: None,
        lambda r: dict(r, names=r["names"][::-1]),
        lambda r: dict(r, features=r["features"][:1]),
        lambda r: dict(r, features=r["features"] * np.nan),
        lambda r: dict(r, ok=r["ok"].astype(int)),
    ],
)
def test_a_worker_returning_garbage_is_one_line_and_nothing_written(tmp_path, garbage):
    """Issue 23 (Dask paths): a shard result that is not the encoded pictures of its shard
    (another captioner on a worker, a broken executor) never reaches a chunk file."""
    from concurrent.futures import Future

    class Garbling(S.InlineExecutor):
        def submit(self, fn, /, *args, **kwargs):
            future = Future()
            future.set_result(garbage(fn(*args, **kwargs)))
            return future

    ann = _pictures(tmp_path / "img", 4)
    with pytest.raises(CaptionerError, match=r"shard 0 \(pic\d.png, ...\): the worker returned"):
        P.prepare_dataset(
            tmp_path / "img", ann, tmp_path / "out", executor=Garbling(), progress=False
        )
    assert list((tmp_path / "out" / P.WORK_DIR).glob("chunk_*")) == []


def test_a_pictures_folder_whose_path_is_not_utf8_is_refused_at_the_start(tmp_path):
    """Issue 23, class 9 for prepare: the folder's path is written into *_urls.txt (UTF-8,
    one a line), so a name in another encoding is one line before any work, not a
    UnicodeEncodeError at the end."""
    folder = tmp_path / os.fsdecode(b"img\xff")
    ann = _pictures(folder, 3)
    with pytest.raises(CaptionerError) as err:
        P.prepare_dataset(folder, ann, tmp_path / "out", progress=False)
    assert str(err.value).startswith(f"{folder}: the pictures folder's path cannot be a line")
    assert "lone surrogate" in str(err.value) and not (tmp_path / "out").exists()
