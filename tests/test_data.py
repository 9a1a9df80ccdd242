import json
import os
import re

import h5py
import numpy as np
import pytest

import captioner.data as D
from captioner.data import (
    H5Rows,
    close_coco_data,
    decode_captions,
    image_groups,
    load_coco_data,
    sample_coco_minibatch,
    write_dataset,
)
from captioner.errors import CaptionerError
from fixtures import build_dataset


@pytest.fixture
def ds(tmp_path):
    """A small dataset with a made-up 60-word vocabulary (same with or without ../shared)."""
    return build_dataset(
        tmp_path / "coco",
        n_train_images=12,
        captions_per_image=3,
        n_val_images=4,
        feature_dim=8,
        vocab_size=60,
    )


def tiny_splits(rng, dim=4, vocab=10):
    def split(n_img, n_cap):
        caps = np.zeros((n_cap, 17), np.int64)
        caps[:, 0], caps[:, 1:4], caps[:, 4] = 1, rng.integers(3, vocab, (n_cap, 3)), 2
        return dict(
            captions=caps,
            image_idxs=rng.integers(0, n_img, n_cap),
            features=rng.standard_normal((n_img, dim)).astype(np.float32),
            images=[f"img{i}.jpg" for i in range(n_img)],
            urls=[f"http://x/{i}" for i in range(n_img)],
        )

    return {"train": split(6, 15), "val": split(3, 7)}


VOCAB10 = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "b", "c", "d", "e", "f"]


def rewrite(path, name, value):
    """Replace one dataset of an HDF5 file."""
    with h5py.File(path, "a") as f:
        attrs = dict(f[name].attrs) if name in f else {}
        if name in f:
            del f[name]
        if value is not None:
            f.create_dataset(name, data=value)
            f[name].attrs.update(attrs)


def edit_vocab(base, fn):
    path = base / "coco2014_vocab.json"
    vocab = json.loads(path.read_text())
    fn(vocab)
    path.write_text(json.dumps(vocab))


# ----------------------------------------------------------------------------- round trip


def test_write_then_load_round_trip(tmp_path):
    splits = tiny_splits(np.random.default_rng(1))
    write_dataset(tmp_path, splits, VOCAB10, kind="pca")
    data = load_coco_data(tmp_path)
    assert data["idx_to_word"] == VOCAB10 and data["word_to_idx"]["e"] == 8
    for s, d in splits.items():
        assert (
            data[f"{s}_captions"].dtype == np.int32 and data[f"{s}_image_idxs"].dtype == np.int64
        )
        np.testing.assert_array_equal(data[f"{s}_captions"], d["captions"])
        np.testing.assert_array_equal(data[f"{s}_image_idxs"], d["image_idxs"])
        assert (
            isinstance(data[f"{s}_features"], np.ndarray)
            and data[f"{s}_features"].dtype == np.float32
        )
        np.testing.assert_array_equal(data[f"{s}_features"], d["features"])
        assert data[f"{s}_images"] == d["images"] and data[f"{s}_urls"] == d["urls"]
    assert (data["feature_kind"], data["feature_dim"], data["encoder"]) == (
        "pca",
        4,
        "vgg16_fc7_pca",
    )
    assert data["base_dir"] == str(tmp_path)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]  # no temp files left behind


def test_build_dataset_shapes_and_captions(tmp_path):
    base = build_dataset(
        tmp_path,
        n_train_images=30,
        captions_per_image=4,
        n_val_images=5,
        feature_dim=16,
        vocab_size=80,
        seed=3,
    )
    data = load_coco_data(base)
    caps, idxs = data["train_captions"], data["train_image_idxs"]
    assert caps.shape == (120, 17) and data["val_captions"].shape == (20, 17)
    assert data["train_features"].shape == (30, 16) and len(data["idx_to_word"]) == 80
    w2i = data["word_to_idx"]
    assert (caps[:, 0] == w2i["<START>"]).all()
    n_words = (caps > w2i["<END>"]).sum(1)
    assert n_words.min() >= 3 and n_words.max() <= 15 and len(set(n_words)) > 3
    assert ((caps == w2i["<END>"]).sum(1) == 1).all()
    assert (caps[np.arange(len(caps)), n_words + 1] == w2i["<END>"]).all()
    assert (caps[np.arange(17) > (n_words + 1)[:, None]] == w2i["<NULL>"]).all()
    for img, rows in zip(*image_groups(data, "train")):
        assert (idxs[rows] == img).all()
        assert len(rows) == 4 and len({tuple(c) for c in caps[rows]}) == 4  # distinct per image
    # Same seed -> same data; another seed -> different.
    again = load_coco_data(
        build_dataset(
            tmp_path / "b",
            n_train_images=30,
            captions_per_image=4,
            n_val_images=5,
            feature_dim=16,
            vocab_size=80,
            seed=3,
        )
    )
    np.testing.assert_array_equal(again["train_captions"], caps)
    other = load_coco_data(
        build_dataset(
            tmp_path / "c",
            n_train_images=30,
            captions_per_image=4,
            n_val_images=5,
            feature_dim=16,
            vocab_size=80,
            seed=4,
        )
    )
    assert not np.array_equal(other["train_captions"], caps)


def test_build_dataset_uses_real_vocabulary(tmp_path, shared):
    real = json.loads((shared / "coco" / "coco2014_vocab.json").read_text())
    data = load_coco_data(build_dataset(tmp_path, n_train_images=5, n_val_images=2, feature_dim=4))
    assert (
        data["idx_to_word"] == real["idx_to_word"] and data["word_to_idx"] == real["word_to_idx"]
    )
    text = decode_captions(data["train_captions"], data["idx_to_word"])
    assert all("<" not in t and 3 <= len(t.split()) <= 15 for t in text)


def test_real_image_and_url_lists_load(tmp_path, shared):
    """The real val image/url lists (40,504 rows) pass the line-count checks against the
    features."""
    images = (shared / "coco" / "val2014_images.txt").read_text().splitlines()
    urls = (shared / "coco" / "val2014_urls.txt").read_text().splitlines()
    vocab = json.loads((shared / "coco" / "coco2014_vocab.json").read_text())["idx_to_word"]
    caps = np.array([[1, 4, 5, 2] + [0] * 13] * 3)
    write_dataset(
        tmp_path,
        {
            "val": dict(
                captions=caps,
                image_idxs=[0, 1, 40503],
                images=images,
                urls=urls,
                features=np.zeros((len(images), 2), np.float32),
            )
        },
        vocab,
        kind="tiny",
    )
    data = load_coco_data(tmp_path, splits=("val",))
    assert data["val_images"][0].endswith("COCO_val2014_000000391895.jpg")
    assert data["val_urls"][40503] == urls[-1] and data["feature_kind"] == "tiny"
    assert decode_captions(data["val_captions"][0], data["idx_to_word"]) == "a on"


def test_missing_txt_files_give_none(ds):
    os.remove(ds / "train2014_urls.txt")
    os.remove(ds / "val2014_images.txt")
    data = load_coco_data(ds)
    assert data["train_urls"] is None and data["val_images"] is None and len(data["val_urls"]) == 4
    _, _, urls = sample_coco_minibatch(data, batch_size=3, rng=0)
    assert urls is None


def test_max_train_keeps_first_captions(ds):
    full, cut = load_coco_data(ds), load_coco_data(ds, max_train=5)
    np.testing.assert_array_equal(cut["train_captions"], full["train_captions"][:5])
    np.testing.assert_array_equal(cut["train_image_idxs"], full["train_image_idxs"][:5])
    np.testing.assert_array_equal(cut["val_captions"], full["val_captions"])
    with pytest.raises(CaptionerError, match="max-train"):
        load_coco_data(ds, max_train=0)


def test_splits_argument_loads_only_those(ds):
    os.remove(ds / "train2014_vgg16_fc7_pca.h5")
    data = load_coco_data(ds, splits=("val",))
    assert "val_features" in data and "train_captions" not in data


# ----------------------------------------------------------------------------- feature kinds


def test_auto_prefers_pca_then_single_kind(tmp_path):
    splits = tiny_splits(np.random.default_rng(0))
    write_dataset(tmp_path, splits, VOCAB10, kind="fc7")
    assert load_coco_data(tmp_path)["feature_kind"] == "fc7"
    assert load_coco_data(tmp_path)["encoder"] == "vgg16_fc7"
    write_dataset(tmp_path, splits, VOCAB10, kind="pca")
    assert load_coco_data(tmp_path)["feature_kind"] == "pca"
    assert load_coco_data(tmp_path, features="fc7")["feature_kind"] == "fc7"


def test_custom_kind_with_encoder_attribute(tmp_path):
    write_dataset(
        tmp_path,
        tiny_splits(np.random.default_rng(0), dim=7),
        VOCAB10,
        kind="squeezenet",
        encoder="squeezenet1_1-imagenet",
    )
    assert os.path.isfile(tmp_path / "train2014_squeezenet.h5")
    data = load_coco_data(tmp_path)
    assert data["feature_kind"] == "squeezenet" and data["feature_dim"] == 7
    assert data["encoder"] == "squeezenet1_1-imagenet"
    write_dataset(tmp_path, tiny_splits(np.random.default_rng(0)), VOCAB10, kind="other")
    with pytest.raises(
        CaptionerError, match=r"several feature kinds present \(other, squeezenet\).*--features"
    ):
        load_coco_data(tmp_path)


def test_no_features_and_split_missing_its_features(tmp_path):
    write_dataset(tmp_path, tiny_splits(np.random.default_rng(0)), VOCAB10, kind="pca")
    os.remove(tmp_path / "val2014_vgg16_fc7_pca.h5")
    with pytest.raises(
        CaptionerError, match=r"val2014_vgg16_fc7_pca\.h5: file not found.*captioner download"
    ):
        load_coco_data(tmp_path)
    os.remove(tmp_path / "train2014_vgg16_fc7_pca.h5")
    with pytest.raises(CaptionerError, match=r"no feature files.*--data"):
        load_coco_data(tmp_path)


# ----------------------------------------------------------------------------- lazy reader


def test_lazy_reader_matches_in_memory(ds):
    mem = load_coco_data(ds, lazy=False)["train_features"]
    data = load_coco_data(ds, lazy=True)
    rows = data["train_features"]
    assert (
        isinstance(rows, H5Rows)
        and rows.shape == mem.shape
        and len(rows) == 12
        and rows.dtype == np.float32
    )
    idx = np.array([7, 2, 7, 11, 0, 2, 2, 5])  # unsorted, repeated
    got = rows[idx]
    assert got.dtype == np.float32 and got.shape == (8, 8)
    np.testing.assert_array_equal(got, mem[idx])
    np.testing.assert_array_equal(rows[[3]], mem[[3]])
    np.testing.assert_array_equal(rows[4], mem[4])
    np.testing.assert_array_equal(rows[2:9], mem[2:9])
    assert rows[np.array([], int)].shape == (0, 8)
    with pytest.raises(IndexError, match=r"row index out of range 0\.\.11"):
        rows[np.array([0, 12])]
    with pytest.raises(IndexError, match=r"row index out of range 0\.\.11"):
        rows[np.array([-1])]
    # minibatches are identical either way
    c1, f1, u1 = sample_coco_minibatch(load_coco_data(ds, lazy=False), batch_size=9, rng=5)
    c2, f2, u2 = sample_coco_minibatch(data, batch_size=9, rng=5)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(f1, f2)
    assert u1 == u2
    close_coco_data(data)
    assert rows._file is None
    np.testing.assert_array_equal(rows[idx], mem[idx])  # reopens on demand
    with rows:
        pass
    assert rows._file is None


def test_lazy_chosen_by_size(ds, monkeypatch):
    monkeypatch.setattr(D, "MAX_IN_MEMORY_BYTES", 12 * 8 * 4 - 1)  # train is 12x8 float32, val 4x8
    data = load_coco_data(ds)
    assert isinstance(data["train_features"], H5Rows) and isinstance(
        data["val_features"], np.ndarray
    )
    close_coco_data(data)


# ----------------------------------------------------------------------------- using


def test_sample_minibatch(ds):
    data = load_coco_data(ds)
    caps, feats, urls = sample_coco_minibatch(
        data, batch_size=25, split="val", rng=np.random.default_rng(2)
    )
    assert caps.shape == (25, 17) and caps.dtype == np.int32 and feats.shape == (25, 8)
    # every caption row comes with its own image's features and url
    for c, f, u in zip(caps, feats, urls):
        row = np.flatnonzero((data["val_captions"] == c).all(1))[0]
        img = data["val_image_idxs"][row]
        np.testing.assert_array_equal(f, data["val_features"][img])
        assert u == data["val_urls"][img]
    again = sample_coco_minibatch(data, batch_size=25, split="val", rng=np.random.default_rng(2))
    np.testing.assert_array_equal(again[0], caps)


def test_decode_captions():
    vocab = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "dog", "runs"]
    caps = np.array([[1, 4, 5, 6, 2, 0, 0], [1, 4, 0, 5, 2, 6, 6], [4, 3, 5, 6, 6, 6, 6]])
    assert decode_captions(caps, vocab) == [
        "a dog runs",
        "a dog",
        "a <UNK> dog runs runs runs runs",
    ]
    assert decode_captions(caps[1], vocab) == "a dog"
    assert decode_captions(np.array([1, 2, 4]), vocab) == ""


def test_image_groups():
    data = {"val_image_idxs": np.array([3, 1, 3, 0, 1, 3])}
    imgs, groups = image_groups(data, "val")
    np.testing.assert_array_equal(imgs, [0, 1, 3])
    assert [g.tolist() for g in groups] == [[3], [1, 4], [0, 2, 5]]


# ----------------------------------------------------------------------------- bad inputs

CAP = "coco2014_captions.h5"
VOC = "coco2014_vocab.json"
TRF = "train2014_vgg16_fc7_pca.h5"
VAF = "val2014_vgg16_fc7_pca.h5"


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def set_encoder(path, name):
    with h5py.File(path, "a") as f:
        f["features"].attrs["encoder"] = name


def rename_end(vocab):
    vocab["idx_to_word"][2] = "end"
    del vocab["word_to_idx"]["<END>"]
    vocab["word_to_idx"]["end"] = 2


def with_nan(path, row):
    with h5py.File(path, "a") as f:
        f["features"][row, 3] = np.nan


BAD = {
    "missing captions": (lambda b: os.remove(b / CAP), CAP, "file not found"),
    "missing vocab": (lambda b: os.remove(b / VOC), VOC, "captioner download"),
    "not hdf5": (lambda b: (b / CAP).write_text("hello"), CAP, "not a readable HDF5"),
    "truncated hdf5": (
        lambda b: truncate(b / TRF),
        TRF,
        r"not a readable HDF5 file \(truncated file",
    ),
    "missing key": (
        lambda b: rewrite(b / CAP, "val_image_idxs", None),
        CAP,
        "missing dataset 'val_image_idxs'",
    ),
    "missing features key": (
        lambda b: rewrite(b / VAF, "features", None),
        VAF,
        "missing dataset 'features'",
    ),
    "float captions": (
        lambda b: rewrite(b / CAP, "train_captions", np.ones((36, 17))),
        CAP,
        "dtype float64",
    ),
    "float idxs": (
        lambda b: rewrite(b / CAP, "train_image_idxs", np.zeros(36)),
        CAP,
        "integer feature rows",
    ),
    "int features": (
        lambda b: rewrite(b / TRF, "features", np.ones((12, 8), np.int32)),
        TRF,
        "expected float",
    ),
    "1-D captions": (
        lambda b: rewrite(b / CAP, "val_captions", np.ones(12, np.int32)),
        CAP,
        r"shape \(12,\)",
    ),
    "idxs length": (
        lambda b: rewrite(b / CAP, "val_image_idxs", np.zeros(11, np.int32)),
        CAP,
        "has 12 rows",
    ),
    "3-D features": (
        lambda b: rewrite(b / VAF, "features", np.ones((4, 2, 4), np.float32)),
        VAF,
        "expected 2-D",
    ),
    "dims differ": (
        lambda b: rewrite(b / VAF, "features", np.ones((4, 6), np.float32)),
        VAF,
        "6-d but",
    ),
    "word id too big": (
        lambda b: rewrite(b / CAP, "val_captions", np.full((12, 17), 60, np.int32)),
        CAP,
        r"word id 60 \(max id 60\).*60 words",
    ),
    "negative word id": (
        lambda b: rewrite(b / CAP, "val_captions", np.full((12, 17), -1, np.int32)),
        CAP,
        "word id -1",
    ),
    "image idx too big": (
        lambda b: rewrite(b / CAP, "train_image_idxs", np.full(36, 12)),
        CAP,
        "feature row 12 but .*train2014_vgg16_fc7_pca.h5 has 12 rows",
    ),
    "nan features": (lambda b: with_nan(b / TRF, 10), TRF, "NaN or inf .*row 10"),
    "empty split": (
        lambda b: (
            rewrite(b / CAP, "val_captions", np.zeros((0, 17), np.int32)),
            rewrite(b / CAP, "val_image_idxs", np.zeros(0, np.int32)),
        ),
        CAP,
        "empty",
    ),
    "empty features": (
        lambda b: rewrite(b / VAF, "features", np.zeros((0, 8), np.float32)),
        VAF,
        "empty",
    ),
    "malformed json": (
        lambda b: (b / VOC).write_text('{"idx_to_word": [\n  "a",\n}'),
        VOC,
        "line 3 column 1",
    ),
    "json not object": (lambda b: (b / VOC).write_text("[1, 2]"), VOC, "JSON object"),
    "vocab lacks END": (lambda b: edit_vocab(b, rename_end), VOC, "lacks <END>"),
    "vocab disagree": (
        lambda b: edit_vocab(b, lambda v: v["word_to_idx"].update({"det0": 5, "det1": 4})),
        VOC,
        r"idx_to_word\[4\] is 'det0' but word_to_idx\['det0'\] is 5.*disagree",
    ),
    "vocab sizes differ": (
        lambda b: edit_vocab(b, lambda v: v["idx_to_word"].pop()),
        VOC,
        "59 words",
    ),
    "images count": (
        lambda b: (b / "train2014_images.txt").write_text("a\nb\n"),
        "train2014_images.txt",
        "has 2 lines but .*12 feature rows",
    ),
    "urls count": (
        lambda b: (b / "val2014_urls.txt").write_text("a\n" * 5),
        "val2014_urls.txt",
        "has 5 lines",
    ),
    "encoders differ": (lambda b: set_encoder(b / VAF, "other"), VAF, "encoder 'other' differs"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_file_and_problem(ds, case):
    damage, filename, pattern = BAD[case]
    damage(ds)
    with pytest.raises(CaptionerError) as err:
        load_coco_data(ds, features="pca")
    msg = str(err.value)
    assert filename in msg and "\n" not in msg
    assert err.value.exit_code == 2
    assert re.search(pattern, msg), msg


def test_missing_folder(tmp_path):
    with pytest.raises(
        CaptionerError, match=r"nowhere: data folder not found.*captioner download.*--data"
    ):
        load_coco_data(tmp_path / "nowhere")


@pytest.mark.parametrize("lazy", [False, True])
def test_nan_found_in_late_chunk(ds, monkeypatch, lazy):
    monkeypatch.setattr(D, "CHECK_CHUNK_BYTES", 2 * 8 * 4)  # two rows per chunk
    with h5py.File(ds / VAF, "a") as f:
        f["features"][3, 0] = np.inf
    with pytest.raises(
        CaptionerError,
        match=r"val2014_vgg16_fc7_pca\.h5: features contain NaN or inf "
        r"\(first at row 3\)",
    ):
        load_coco_data(ds, lazy=lazy)
    assert load_coco_data(ds, lazy=lazy, check_finite=False)["val_features"].shape == (4, 8)


def test_failed_write_leaves_no_temp_file(tmp_path):
    splits = tiny_splits(np.random.default_rng(0))
    splits["val"]["urls"] = ["only one"]
    with pytest.raises(ValueError, match="val urls: 1 lines for 3 feature rows"):
        write_dataset(tmp_path, splits, VOCAB10)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
