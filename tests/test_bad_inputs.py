"""Bad inputs through the CLI: every one gives one `captioner: error:` line naming the file and
the problem, a non-zero exit code (2 for a bad file or argument, 1 for pictures that cannot be
read), no traceback, and writes nothing over anything."""

import io
import json
import os
import pickle
import shutil
import struct
import zipfile
import zlib

import h5py
import numpy as np
import pytest
from PIL import Image

from captioner import checkpoint, download, encoder, runs
from captioner.data import load_coco_data
from captioner.model import CaptioningRNN
from fileserver import gets, serving
from fixtures import build_dataset
from helpers import run, snapshot

TINY = ["--hidden-dim", 8, "--wordvec-dim", 8, "--batch-size", 10, "--val-size", 5, "--quiet"]


def error_lines(result):
    return [ln for ln in result.output.splitlines() if ln.startswith("captioner: error:")]


def assert_refused(result, name, code=2, *words):
    """Exit `code`, exactly one error line, naming `name` (and `words`)."""
    assert result.exit_code == code, result.output
    lines = error_lines(result)
    assert len(lines) == 1, result.output
    assert str(name) in lines[0], (name, result.output)
    for w in words:
        assert w in lines[0], (w, result.output)


def write_h5(path, **arrays):
    path.unlink(missing_ok=True)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)


def read_h5(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A small dataset and a checkpoint trained on it (in process: fast)."""
    root = tmp_path_factory.mktemp("good")
    data_dir = build_dataset(
        root / "data",
        n_train_images=6,
        captions_per_image=2,
        n_val_images=3,
        feature_dim=8,
        vocab_size=40,
        seed=1,
    )
    d = load_coco_data(data_dir)
    model = CaptioningRNN(
        d["word_to_idx"], input_dim=8, wordvec_dim=8, hidden_dim=8, cell_type="lstm", seed=0
    )
    os.makedirs(root / "run")
    runs.train_in(
        d,
        model,
        str(root / "run"),
        progress=False,
        log=lambda *_: None,
        epochs=1,
        batch_size=4,
        val_size=3,
        data_dir=str(data_dir),
        features="pca",
    )
    return root


# ---------------------------------------------------------------- datasets

CAPS, VOCAB = "coco2014_captions.h5", "coco2014_vocab.json"
TRAIN_F, VAL_F = "train2014_vgg16_fc7_pca.h5", "val2014_vgg16_fc7_pca.h5"


def _caps(d, **change):
    arrays = read_h5(d / CAPS)
    for k, v in change.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    write_h5(d / CAPS, **arrays)


def _feats(d, name, value):
    write_h5(d / name, features=value)


def _vocab_json(d, obj):
    (d / VOCAB).write_text(obj if isinstance(obj, str) else json.dumps(obj))


def _vocab(d):
    return json.loads((d / VOCAB).read_text())


def _truncate(path, keep=0.5):
    b = path.read_bytes()
    path.write_bytes(b[: int(len(b) * keep)])


def _scramble(path):
    b = bytearray(path.read_bytes())
    b[:64] = np.random.default_rng(0).bytes(64)
    path.write_bytes(bytes(b))


# (case id, file named in the message, what to do to a copy of the dataset)
DATASET_CASES = [
    ("missing captions", CAPS, lambda d: (d / CAPS).unlink()),
    ("missing vocab", VOCAB, lambda d: (d / VOCAB).unlink()),
    ("missing train features", TRAIN_F, lambda d: (d / TRAIN_F).unlink()),
    ("missing val features", VAL_F, lambda d: (d / VAL_F).unlink()),
    ("truncated captions", CAPS, lambda d: _truncate(d / CAPS)),
    ("truncated features", TRAIN_F, lambda d: _truncate(d / TRAIN_F, 0.9)),
    ("zero-byte features", VAL_F, lambda d: _truncate(d / VAL_F, 0)),
    ("corrupt captions header", CAPS, lambda d: _scramble(d / CAPS)),
    ("corrupt features header", TRAIN_F, lambda d: _scramble(d / TRAIN_F)),
    ("not hdf5 at all", CAPS, lambda d: (d / CAPS).write_text("hello")),
    (
        "wrong key",
        CAPS,
        lambda d: _caps(d, train_captions=None, captions=np.zeros((3, 17), np.int32)),
    ),
    ("missing image_idxs", CAPS, lambda d: _caps(d, val_image_idxs=None)),
    (
        "features key wrong",
        TRAIN_F,
        lambda d: write_h5(d / TRAIN_F, feats=np.zeros((6, 8), np.float32)),
    ),
    (
        "float captions",
        CAPS,
        lambda d: _caps(d, train_captions=read_h5(d / CAPS)["train_captions"] + 0.5),
    ),
    ("float image_idxs", CAPS, lambda d: _caps(d, train_image_idxs=np.zeros(12, np.float32))),
    ("string captions", CAPS, lambda d: _caps(d, train_captions=np.array([b"a"] * 12))),
    ("int features", TRAIN_F, lambda d: _feats(d, TRAIN_F, np.zeros((6, 8), np.int32))),
    ("1-d captions", CAPS, lambda d: _caps(d, train_captions=np.ones(12, np.int32))),
    ("1-column captions", CAPS, lambda d: _caps(d, train_captions=np.ones((12, 1), np.int32))),
    ("idxs length", CAPS, lambda d: _caps(d, train_image_idxs=np.zeros(5, np.int32))),
    ("1-d features", TRAIN_F, lambda d: _feats(d, TRAIN_F, np.zeros(6, np.float32))),
    ("3-d features", TRAIN_F, lambda d: _feats(d, TRAIN_F, np.zeros((6, 8, 1), np.float32))),
    ("split dims differ", VAL_F, lambda d: _feats(d, VAL_F, np.zeros((3, 7), np.float32))),
    ("word id past vocab", CAPS, lambda d: _caps(d, val_captions=np.full((6, 17), 40, np.int32))),
    ("negative word id", CAPS, lambda d: _caps(d, train_captions=np.full((12, 17), -1, np.int32))),
    ("image idx past rows", CAPS, lambda d: _caps(d, train_image_idxs=np.full(12, 6, np.int32))),
    ("negative image idx", CAPS, lambda d: _caps(d, val_image_idxs=np.full(6, -1, np.int32))),
    ("nan features", TRAIN_F, lambda d: _feats(d, TRAIN_F, np.full((6, 8), np.nan, np.float32))),
    ("inf features", VAL_F, lambda d: _feats(d, VAL_F, np.full((3, 8), np.inf, np.float32))),
    ("vocab malformed", VOCAB, lambda d: _vocab_json(d, '{"idx_to_word": [')),
    ("vocab not utf-8", VOCAB, lambda d: (d / VOCAB).write_bytes(b"\xff\xfe\x00")),
    ("vocab a list", VOCAB, lambda d: _vocab_json(d, ["<NULL>"])),
    ("vocab deeply nested", VOCAB, lambda d: _vocab_json(d, "[" * 100_000)),
    ("vocab huge number", VOCAB, lambda d: _vocab_json(d, '{"idx_to_word": ' + "9" * 5000 + "}")),
    (
        "vocab lacks <START>",
        VOCAB,
        lambda d: _vocab_json(
            d,
            {
                "idx_to_word": [w for w in _vocab(d)["idx_to_word"] if w != "<START>"],
                "word_to_idx": {
                    w: i
                    for i, w in enumerate(w for w in _vocab(d)["idx_to_word"] if w != "<START>")
                },
            },
        ),
    ),
    (
        "vocab tables disagree",
        VOCAB,
        lambda d: _vocab_json(
            d, dict(_vocab(d), word_to_idx=dict(_vocab(d)["word_to_idx"], **{"<END>": 0}))
        ),
    ),
    (
        "vocab smaller than captions",
        CAPS,
        lambda d: _vocab_json(
            d,
            {
                "idx_to_word": _vocab(d)["idx_to_word"][:8],
                "word_to_idx": {w: i for i, w in enumerate(_vocab(d)["idx_to_word"][:8])},
            },
        ),
    ),
    (
        "empty split",
        CAPS,
        lambda d: _caps(
            d, val_captions=np.zeros((0, 17), np.int32), val_image_idxs=np.zeros(0, np.int32)
        ),
    ),
    ("empty features", VAL_F, lambda d: _feats(d, VAL_F, np.zeros((0, 8), np.float32))),
    ("urls lines", "val2014_urls.txt", lambda d: (d / "val2014_urls.txt").write_text("one\n")),
    (
        "images not utf-8",
        "train2014_images.txt",
        lambda d: (d / "train2014_images.txt").write_bytes(b"\xff\n" * 6),
    ),
]

# what each error line must say is wrong (besides naming the file)
PROBLEMS = {
    "missing captions": "file not found",
    "missing vocab": "file not found",
    "missing train features": "file not found",
    "missing val features": "file not found",
    "truncated captions": "not a readable HDF5 file (truncated file",
    "truncated features": "not a readable HDF5 file (truncated file",
    "zero-byte features": "not a readable HDF5 file (file signature not found)",
    "corrupt captions header": "not a readable HDF5 file (file signature not found)",
    "corrupt features header": "not a readable HDF5 file (file signature not found)",
    "not hdf5 at all": "not a readable HDF5 file (file signature not found)",
    "wrong key": "missing dataset 'train_captions' (found: captions, ",
    "missing image_idxs": "missing dataset 'val_image_idxs'",
    "features key wrong": "missing dataset 'features' (found: feats)",
    "float captions": "'train_captions' has dtype float64, expected integer word ids",
    "float image_idxs": "'train_image_idxs' has dtype float32, expected integer feature rows",
    "string captions": "'train_captions' has dtype |S1, expected integer word ids",
    "int features": "'features' has dtype int32, expected float",
    "1-d captions": "'train_captions' has shape (12,), expected (N, T) with T >= 2",
    "1-column captions": "'train_captions' has shape (12, 1), expected (N, T) with T >= 2",
    "idxs length": "'train_image_idxs' has shape (5,) but 'train_captions' has 12 rows",
    "1-d features": "'features' has shape (6,), expected 2-D (rows, dim)",
    "3-d features": "'features' has shape (6, 8, 1), expected 2-D (rows, dim)",
    "split dims differ": "features are 7-d but ",
    "word id past vocab": "'val_captions' has word id 40 ",
    "negative word id": "'train_captions' has word id -1 ",
    "image idx past rows": "'train_image_idxs' points at feature row 6 but ",
    "negative image idx": "'val_image_idxs' points at feature row -1 but ",
    "nan features": "features contain NaN or inf (first at row 0)",
    "inf features": "features contain NaN or inf (first at row 0)",
    "vocab malformed": "invalid JSON at line 1 column 18",
    "vocab not utf-8": "not UTF-8 text (byte 0)",
    "vocab a list": "expected a JSON object with idx_to_word and word_to_idx",
    "vocab deeply nested": "unusable JSON in the vocabulary file (maximum recursion depth",
    "vocab huge number": "unusable JSON in the vocabulary file (Exceeds the limit",
    "vocab lacks <START>": "vocabulary lacks <START>",
    "vocab tables disagree": "idx_to_word[2] is '<END>' but word_to_idx['<END>'] is 0",
    "vocab smaller than captions": "has 8 words; the captions and vocabulary do not belong",
    "empty split": "split 'val' is empty (0 captions)",
    "empty features": "'features' is empty (shape (0, 8))",
    "urls lines": "has 1 lines but ",
    "images not utf-8": "cannot read ('utf-8' codec can't decode byte 0xff",
}

# cases that only the train split sees (sample --split val does not read it)
TRAIN_SIDE = {
    "missing train features",
    "truncated features",
    "corrupt features header",
    "features key wrong",
    "wrong key",
    "float captions",
    "float image_idxs",
    "string captions",
    "int features",
    "1-d captions",
    "1-column captions",
    "idxs length",
    "1-d features",
    "3-d features",
    "split dims differ",
    "negative word id",
    "image idx past rows",
    "nan features",
    "images not utf-8",
}


@pytest.mark.parametrize("case,name,make_bad", DATASET_CASES, ids=[c[0] for c in DATASET_CASES])
def test_bad_dataset(good, tmp_path, case, name, make_bad):
    data = tmp_path / "data"
    shutil.copytree(good / "data", data)
    make_bad(data)
    before = snapshot(data)
    for args in (
        ["info", "--data", data],
        ["train", "--data", data, *TINY, "--out", tmp_path / "run"],
        ["sample", "--checkpoint", good / "run" / "last.npz", "--data", data, "--split", "val"],
    ):
        if args[0] == "sample" and case in TRAIN_SIDE:
            continue  # sample --split val reads only the val split
        result = run(*args)
        assert_refused(result, data / name, 2, PROBLEMS[case])
    assert snapshot(data) == before
    assert not (tmp_path / "run").exists()


def test_every_bad_dataset_case_names_its_problem():
    assert sorted(PROBLEMS) == sorted(c[0] for c in DATASET_CASES)


def test_optional_text_files_may_be_missing(good, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(good / "data", data)
    for n in os.listdir(data):
        if n.endswith(".txt"):
            os.remove(data / n)
    result = run("info", "--data", data)
    assert result.exit_code == 0, result.output


def test_missing_dataset_folder(tmp_path):
    for cmd in ("info", "train", "overfit"):
        assert_refused(run(cmd, "--data", tmp_path / "nope"), tmp_path / "nope")
    assert_refused(run("info", "--data", tmp_path, "--features", "fc7"), tmp_path)


# ---------------------------------------------------------------- checkpoints


class _Payload:
    """Unpickling this creates the file `target`."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def _arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _with(path, out, meta=None, drop=(), **arrays):
    a = _arrays(path)
    if meta is not None:
        m = json.loads(str(a["meta"]))
        meta(m)
        a["meta"] = np.array(json.dumps(m))
    for k in drop:
        del a[k]
    a.update({k.replace("__", "/"): v for k, v in arrays.items()})
    np.savez(out, **a)


def _set(path, value):
    def change(m):
        *keys, last = path.split(".")
        for k in keys:
            m = m[k]
        if value is KeyError:
            del m[last]
        else:
            m[last] = value

    return change


CKPT_CASES = [  # (id, make(good_last, out_path), words in the message)
    (
        "truncated",
        lambda g, o: o.write_bytes(g.read_bytes()[: len(g.read_bytes()) // 2]),
        "truncated or corrupt",
    ),
    ("zero bytes", lambda _g, o: o.write_bytes(b""), "empty file"),
    (
        "random bytes",
        lambda _g, o: o.write_bytes(np.random.default_rng(1).bytes(3000)),
        "not an .npz",
    ),
    (
        "raw pickle",
        lambda _g, o: o.write_bytes(pickle.dumps(_Payload(str(o) + ".pwned"))),
        "refused for safety",
    ),
    (
        "pickled param",
        lambda g, o: _with(g, o, param__W_proj=np.array([_Payload(str(o) + ".pwned")], object)),
        "pickle",
    ),
    ("not an array", lambda g, o: _zip_add(g, o, "param/b.bin", b"hello"), "not a NumPy array"),
    ("no meta", lambda g, o: _with(g, o, drop=["meta"]), "metadata"),
    ("meta not json", lambda g, o: _meta_raw(g, o, "{oops"), "JSON"),
    ("meta a list", lambda g, o: _meta_raw(g, o, "[1, 2]"), "JSON"),
    (
        "wrong format",
        lambda g, o: _with(g, o, meta=_set("format", "other")),
        "not a captioner checkpoint",
    ),
    ("newer version", lambda g, o: _with(g, o, meta=_set("version", 99)), "newer"),
    ("version string", lambda g, o: _with(g, o, meta=_set("version", "2.0")), "version"),
    ("no model", lambda g, o: _with(g, o, meta=_set("model", KeyError)), "metadata"),
    (
        "unknown cell",
        lambda g, o: _with(g, o, meta=_set("model.cell_type", "transformer")),
        "transformer",
    ),
    ("negative size", lambda g, o: _with(g, o, meta=_set("model.hidden_dim", -8)), "metadata"),
    ("absurd size", lambda g, o: _with(g, o, meta=_set("model.hidden_dim", 10**12)), "W_proj"),
    ("size a string", lambda g, o: _with(g, o, meta=_set("model.wordvec_dim", "8")), "metadata"),
    ("vocab not a list", lambda g, o: _with(g, o, meta=_set("vocab", "abc")), "metadata"),
    (
        "vocab no <END>",
        lambda g, o: _with(g, o, meta=lambda m: m["vocab"].__setitem__(2, "zzz")),
        "<END>",
    ),
    (
        "vocab duplicate",
        lambda g, o: _with(g, o, meta=lambda m: m["vocab"].__setitem__(5, m["vocab"][6])),
        "duplicate",
    ),
    ("features no dim", lambda g, o: _with(g, o, meta=_set("features.dim", KeyError)), "metadata"),
    ("training a list", lambda g, o: _with(g, o, meta=_set("training", [])), "training"),
    ("param wrong shape", lambda g, o: _with(g, o, param__Wh=np.zeros((3, 3), np.float32)), "Wh"),
    ("param missing", lambda g, o: _with(g, o, drop=["param/b_vocab"]), "b_vocab"),
    ("param extra", lambda g, o: _with(g, o, param__W_extra=np.zeros(3, np.float32)), "W_extra"),
    ("param nan", lambda g, o: _with(g, o, param__b=np.full(32, np.nan, np.float32)), "NaN"),
    ("param strings", lambda g, o: _with(g, o, param__b=np.array(["x"] * 32)), "dtype"),
    # issue 14: metadata that is valid JSON but wrong is refused by every command, naming the field
    (
        "no features.encoder",
        lambda g, o: _with(g, o, meta=_set("features.encoder", KeyError)),
        "features.encoder",
    ),
    (
        "input_dim vs shapes",
        lambda g, o: _with(g, o, meta=_set("model.input_dim", 7)),
        "features.dim",
    ),
    (
        "input_dim and dim",
        lambda g, o: _with(
            g, o, meta=lambda m: (_set("model.input_dim", 7)(m), _set("features.dim", 7)(m))
        ),
        "W_proj",
    ),
    (
        "best without value",
        lambda g, o: _with(g, o, meta=_set("training.best.value", KeyError)),
        "training.best",
    ),
    (
        "epochs a string",
        lambda g, o: _with(g, o, meta=_set("training.epochs", "3")),
        "training.epochs",
    ),
    (
        "epoch record odd",
        lambda g, o: _with(g, o, meta=_set("training.epochs", [{"epoch": 1}])),
        "training.epochs[0]",
    ),
    (
        "adam without t",
        lambda g, o: _with(g, o, meta=lambda m: m["training"]["optim"]["Wh"].pop("t")),
        "Wh",
    ),
    ("adam without m", lambda g, o: _with(g, o, drop=["optim/Wh/m"]), "Wh"),
    (
        "epoch past the end, no best",
        lambda g, o: _with(
            g, o, meta=lambda m: (_set("training.epoch", 99)(m), _set("training.best", None)(m))
        ),
        "training.",
    ),
    ("history 10^8 compressed", lambda g, o: _huge_history(g, o), "history/loss"),
    (
        "epoch negative",
        lambda g, o: _with(g, o, meta=_set("training.epoch", -1)),
        "training.epoch",
    ),
    ("step a string", lambda g, o: _with(g, o, meta=_set("training.step", "7")), "training.step"),
    (
        "no settings",
        lambda g, o: _with(g, o, meta=_set("training.settings", KeyError)),
        "settings",
    ),
    (
        "bad optimizer",
        lambda g, o: _with(g, o, meta=_set("training.settings.optimizer", "lbfgs")),
        "optimizer",
    ),
    (
        "batch size 0",
        lambda g, o: _with(g, o, meta=_set("training.settings.batch_size", 0)),
        "batch_size",
    ),
    ("lr nan", lambda g, o: _with(g, o, meta=_set("training.settings.lr", float("nan"))), "lr"),
    ("negative seed", lambda g, o: _with(g, o, meta=_set("training.settings.seed", -3)), "seed"),
    ("setting clashes", lambda g, o: _with(g, o, meta=_set("training.settings.log", 1)), "log"),
    ("optim wrong shape", lambda g, o: _with(g, o, optim__Wh__m=np.zeros(3, np.float32)), "Wh/m"),
    ("optim for no param", lambda g, o: _with(g, o, optim__Wq__m=np.zeros(3, np.float32)), "Wq/m"),
    (
        "optim scalars gone",
        lambda g, o: _with(g, o, meta=_set("training.optim", {})),
        "optimizer state",
    ),
    ("loss history 2-d", lambda g, o: _with(g, o, history__loss=np.zeros((2, 2))), "history"),
    ("loss history long", lambda g, o: _with(g, o, history__loss=np.zeros(10**5)), "history"),
]


def _huge_history(g, o):
    """A real 10^8-element float64 history (800 MB) deflated into under 1 MB."""
    _with(g, o, drop=["history/loss"])
    with zipfile.ZipFile(o, "a", zipfile.ZIP_DEFLATED) as z:
        with z.open("history/loss.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f8", "fortran_order": False, "shape": (10**8,)}
            )
            zeros = bytes(2**23)
            for _ in range(8 * 10**8 // len(zeros)):
                f.write(zeros)


def _meta_raw(g, o, text):
    a = _arrays(g)
    a["meta"] = np.array(text)
    np.savez(o, **a)


def _zip_add(g, o, name, data):
    shutil.copy(g, o)
    with zipfile.ZipFile(o, "a") as z:
        z.writestr(name, data)


@pytest.mark.parametrize("make,words", [c[1:] for c in CKPT_CASES], ids=[c[0] for c in CKPT_CASES])
def test_bad_checkpoint(good, tmp_path, make, words):
    bad = tmp_path / "ckpt" / "last.npz"
    bad.parent.mkdir()
    make(good / "run" / "last.npz", bad)
    before = snapshot(tmp_path)
    data = good / "data"
    for args in (
        ["info", "--checkpoint", bad],
        ["sample", "--checkpoint", bad, "--data", data, "--split", "val"],
        ["evaluate", "--checkpoint", bad, "--data", data, "--no-meteor"],
        ["train", "--resume", bad],
        ["train", "--resume", bad.parent],
    ):
        assert_refused(run(*args), bad, 2, words)
    assert snapshot(tmp_path) == before  # nothing written, no pickle ran
    assert not (tmp_path / "ckpt" / "last.npz.pwned").exists()


RESUME_CASES = [  # loadable models whose training state cannot be resumed
    (
        "no training state",
        lambda g, o: _with(g, o, meta=_set("training", KeyError)),
        "no training state",
    ),
]


@pytest.mark.parametrize(
    "make,words", [c[1:] for c in RESUME_CASES], ids=[c[0] for c in RESUME_CASES]
)
def test_checkpoint_that_cannot_resume(good, tmp_path, make, words):
    bad = tmp_path / "ckpt" / "last.npz"
    bad.parent.mkdir()
    make(good / "run" / "last.npz", bad)
    before = snapshot(tmp_path)
    assert_refused(
        run("train", "--resume", bad, "--data", good / "data"), bad, 2, "cannot resume", words
    )
    assert snapshot(tmp_path) == before
    assert run("info", "--checkpoint", bad).exit_code == 0  # the model itself is fine


def test_checkpoint_vocabulary_without_words_is_refused(tmp_path):
    """A model that could only ever write <END> (issue 14: IndexError in evaluate and sample)."""
    w2i = {w: i for i, w in enumerate(["<NULL>", "<START>", "<END>", "<UNK>"])}
    model = CaptioningRNN(w2i, input_dim=4, wordvec_dim=3, hidden_dim=3, cell_type="rnn")
    path = tmp_path / "m.npz"
    meta = checkpoint.model_meta(model, {"feature_kind": "pca", "feature_dim": 4, "encoder": "x"})
    checkpoint.save(path, model.params, meta)
    assert_refused(run("info", "--checkpoint", path), path, 2, "vocab has no words")
    assert_refused(run("sample", "--checkpoint", path, "--split", "val"), path, 2, "vocab")


def test_checkpoint_for_other_data(good, tmp_path):
    other_vocab = build_dataset(
        tmp_path / "v",
        n_train_images=6,
        captions_per_image=2,
        n_val_images=3,
        feature_dim=8,
        vocab_size=50,
    )
    other_dim = build_dataset(
        tmp_path / "d",
        n_train_images=6,
        captions_per_image=2,
        n_val_images=3,
        feature_dim=12,
        vocab_size=40,
        seed=1,
    )
    ckpt = good / "run" / "last.npz"
    before = snapshot(good)
    for data, words in ((other_vocab, "vocabulary"), (other_dim, "features")):
        for args in (
            ["sample", "--split", "val"],
            ["evaluate", "--no-meteor"],
            ["train", "--resume", ckpt],
        ):
            if args[0] != "train":
                args = args + ["--checkpoint", ckpt]
            assert_refused(run(*args, "--data", data), ckpt, 2, words)
    assert snapshot(good) == before


def test_checkpoint_is_a_directory(tmp_path):
    assert_refused(run("info", "--checkpoint", tmp_path), tmp_path, 2, "directory")
    assert_refused(run("train", "--resume", tmp_path), tmp_path, 2, "no checkpoint")


# ---------------------------------------------------------------- pictures


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png():
    """A 50,000 x 50,000 RGB PNG header (7.5 GB decoded) with a tiny body: never allocate it."""
    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100))
        + _png_chunk(b"IEND", b"")
    )


def good_pictures(folder):
    """Pictures in awkward modes that must all work."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    pics = {
        "palette.png": rgb.convert("P"),
        "palette_transparent.png": rgb.convert("P"),
        "grey.jpg": rgb.convert("L"),
        "grey_alpha.png": rgb.convert("LA"),
        "alpha.png": rgb.convert("RGBA"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "bilevel.png": rgb.convert("1"),
        "sixteen.png": Image.fromarray(rng.integers(0, 65535, (40, 56), dtype=np.uint16)),
        "tiny.png": rgb.resize((1, 1)),
    }
    paths = []
    for name, im in pics.items():
        kw = {"transparency": 0} if name == "palette_transparent.png" else {}
        im.save(folder / name, **kw)
        paths.append(folder / name)
    assert Image.open(folder / "sixteen.png").mode.startswith("I")
    assert Image.open(folder / "cmyk.jpg").mode == "CMYK"
    return paths


def bad_pictures(folder, monkeypatch):
    """{path: words of its message}."""
    ok = folder / "ok.jpg"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(ok)
    (folder / "text.jpg").write_text("this is not a picture")
    (folder / "truncated.jpg").write_bytes(ok.read_bytes()[:200])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "bomb.png").write_bytes(bomb_png())
    (folder / "adir.jpg").mkdir()
    locked = folder / "locked.jpg"
    shutil.copy(ok, locked)
    if os.geteuid() == 0:  # root reads anything: make the encoder's open() refuse this one file
        real_open = open

        def refusing_open(path, *a, **k):
            if os.fspath(path) == str(locked):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *a, **k)

        monkeypatch.setattr(encoder, "open", refusing_open, raising=False)
    else:
        locked.chmod(0)
    return {
        folder / "text.jpg": "not an image",
        folder / "truncated.jpg": "truncated image",
        folder / "empty.jpg": "empty",
        folder / "bomb.png": "decompression bomb",
        folder / "adir.jpg": "directory",
        locked: "Permission denied",
        folder / "missing.jpg": "no such file",
    }


@pytest.fixture(scope="module")
def picture_model(tmp_path_factory):
    """An untrained model on picture-encoder features: enough to caption files."""
    path = tmp_path_factory.mktemp("pm") / "pictures.npz"
    words = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "red", "square"]
    model = CaptioningRNN(
        {w: i for i, w in enumerate(words)},
        input_dim=encoder.FEATURE_DIM,
        wordvec_dim=8,
        hidden_dim=8,
        cell_type="rnn",
        seed=0,
    )
    fake = {
        "feature_kind": "squeezenet",
        "feature_dim": encoder.FEATURE_DIM,
        "encoder": encoder.ENCODER_NAME,
    }
    checkpoint.save(path, model.params, checkpoint.model_meta(model, fake))
    return path


def test_awkward_pictures_work(tmp_path, picture_model):
    paths = good_pictures(tmp_path)
    result = run("sample", *paths, "--checkpoint", picture_model, "--beam-size", 1)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for p in paths:
        assert str(p) in lines, result.output
    result = run("encode", *paths, "--top", 1)
    assert result.exit_code == 0, result.output
    assert sum(str(p) in result.output for p in paths) == len(paths)


def test_bad_pictures_sample_and_encode(tmp_path, picture_model, monkeypatch):
    bad = bad_pictures(tmp_path, monkeypatch)
    ok = tmp_path / "ok.jpg"
    for cmd in (["sample", "--checkpoint", picture_model], ["encode"]):
        result = run(*cmd, ok, *bad)
        assert result.exit_code == 1, result.output
        assert result.output.splitlines()[0] == str(ok)  # the good picture is still done
        lines = error_lines(result)
        assert len(lines) == len(bad), result.output
        for path, words in bad.items():
            mine = [ln for ln in lines if ln.startswith(f"captioner: error: {path}: ")]
            assert len(mine) == 1 and words in mine[0], (path, result.output)


def test_bad_pictures_in_prepare_are_skipped(tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    bad = bad_pictures(images, monkeypatch)
    fine = [p.name for p in good_pictures(images)] + ["ok.jpg"]
    names = fine + [p.name for p in bad]
    ann = {
        "images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
        "annotations": [
            {"image_id": i, "caption": f"a red square number {i % 3}"} for i in range(len(names))
        ],
    }
    (tmp_path / "captions.json").write_text(json.dumps(ann))
    (tmp_path / "val.txt").write_text("ok.jpg\n")
    # --workers 1: the refusing open() above is patched into this process only
    result = run(
        "prepare",
        "--images",
        images,
        "--captions",
        tmp_path / "captions.json",
        "--out",
        tmp_path / "d",
        "--min-count",
        1,
        "--split-by",
        tmp_path / "val.txt",
        "--workers",
        1,
    )
    assert result.exit_code == 0, result.output
    for p in bad:
        assert f"  skipped {p.name}: " in result.output, result.output
    d = load_coco_data(tmp_path / "d")
    assert sorted(d["train_images"] + d["val_images"]) == sorted(fine)

    # every picture bad: refused, and nothing is left in --out but the resumable work area
    ids = {e["id"] for e in ann["images"] if e["file_name"] not in fine}
    only_bad = {
        "images": [e for e in ann["images"] if e["id"] in ids],
        "annotations": [a for a in ann["annotations"] if a["image_id"] in ids],
    }
    (tmp_path / "bad.json").write_text(json.dumps(only_bad))
    result = run(
        "prepare",
        "--images",
        images,
        "--captions",
        tmp_path / "bad.json",
        "--out",
        tmp_path / "e",
        "--min-count",
        1,
        "--workers",
        1,
    )
    assert_refused(result, images, 1, "none of the")
    assert not [n for n in os.listdir(tmp_path / "e") if not n.startswith(".")]


# --------------------------------------------------------------- evaluate --results / --references

REFS = {
    "images": [{"id": 1}, {"id": 2}],
    "annotations": [
        {"image_id": 1, "caption": "a red square"},
        {"image_id": 1, "caption": "a square"},
        {"image_id": 2, "caption": "a blue circle"},
    ],
}
RESULTS = [{"image_id": 1, "caption": "a red square"}, {"image_id": 2, "caption": "a circle"}]

JSON_CASES = [  # (id, which file is bad, its content, words in the message)
    (
        "unknown image id",
        "res",
        RESULTS + [{"image_id": 3, "caption": "x"}],
        "entry 2 has image_id 3",
    ),
    (
        "duplicate id",
        "res",
        RESULTS + [{"image_id": 1, "caption": "x"}],
        "entry 2 repeats image_id 1",
    ),
    ("empty caption", "res", [{"image_id": 1, "caption": "  "}], "entry 0"),
    ("number caption", "res", [{"image_id": 1, "caption": 5}], "entry 0"),
    ("null caption", "res", [{"image_id": 1, "caption": None}], "entry 0"),
    ("no caption", "res", [{"image_id": 1}], "entry 0"),
    ("float id", "res", [{"image_id": 1.5, "caption": "a"}], "entry 0"),
    ("not a list", "res", {"image_id": 1, "caption": "a"}, "list"),
    ("empty list", "res", [], "empty"),
    ("entry not object", "res", ["a red square"], "entry 0"),
    ("malformed", "res", '[{"image_id": 1, "caption": "a"', "invalid JSON"),
    ("deep nesting", "res", "[" * 100_000, "JSON"),
    ("huge number", "res", '[{"image_id": ' + "1" * 5000 + ', "caption": "a"}]', "JSON"),
    ("not utf-8", "res", b"\xff\xfe[]", "UTF-8"),
    (
        "annotation without caption",
        "ann",
        dict(REFS, annotations=REFS["annotations"] + [{"image_id": 2}]),
        "annotations[3]",
    ),
    (
        "annotation caption list",
        "ann",
        dict(REFS, annotations=[{"image_id": 1, "caption": ["a"]}]),
        "annotations[0]",
    ),
    ("annotation without id", "ann", dict(REFS, annotations=[{"caption": "a"}]), "annotations[0]"),
    ("no annotations", "ann", {"images": []}, "annotations"),
    ("empty annotations", "ann", dict(REFS, annotations=[]), "empty"),
    ("annotations malformed", "ann", "{", "invalid JSON"),
    ("annotations deep", "ann", '{"annotations": ' + "[" * 100_000, "JSON"),
]


@pytest.mark.parametrize(
    "which,content,words", [c[1:] for c in JSON_CASES], ids=[c[0] for c in JSON_CASES]
)
def test_bad_results_and_references(tmp_path, which, content, words):
    files = {"res": tmp_path / "results.json", "ann": tmp_path / "refs.json"}
    files["res"].write_text(json.dumps(RESULTS))
    files["ann"].write_text(json.dumps(REFS))
    bad = files[which]
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        bad.write_text(content if isinstance(content, str) else json.dumps(content))
    before = snapshot(tmp_path)
    result = run(
        "evaluate", "--results", files["res"], "--references", files["ann"], "--no-meteor"
    )
    assert_refused(result, bad, 2, words)
    assert snapshot(tmp_path) == before


def test_good_results_score(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(RESULTS))
    (tmp_path / "a.json").write_text(json.dumps(REFS))
    result = run(
        "evaluate",
        "--results",
        tmp_path / "r.json",
        "--references",
        tmp_path / "a.json",
        "--no-meteor",
    )
    assert result.exit_code == 0 and "CIDEr" in result.output, result.output


# ---------------------------------------------------------------- downloads


@pytest.fixture(scope="module")
def coco_zip(tmp_path_factory):
    """A complete (tiny) coco_captioning zip with both feature kinds, as the real one."""
    src = tmp_path_factory.mktemp("zipsrc") / "coco_captioning"
    for kind, dim in (("fc7", 12), ("pca", 4)):
        build_dataset(
            src,
            n_train_images=6,
            captions_per_image=2,
            n_val_images=3,
            feature_dim=dim,
            vocab_size=40,
            kind=kind,
        )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n in sorted(os.listdir(src)):
            z.write(src / n, f"coco_captioning/{n}")
    return src, buf.getvalue()


@pytest.fixture
def server(coco_zip, monkeypatch):
    # The real release's shapes cannot hold for a tiny zip; every other check stays on.
    for key in list(download.COCO_SHAPES):
        monkeypatch.delitem(download.COCO_SHAPES, key)
    with serving({"x.zip": coco_zip[1]}) as srv:
        srv.payload, srv.url = coco_zip[1], f"{srv.base}/x.zip"
        yield srv


def test_interrupted_download_resumes(tmp_path, server, coco_zip):
    server.drops["x.zip"] = 10
    result = run("download", "--url", server.url, "--dest", tmp_path)
    assert_refused(
        result,
        server.url,
        1,
        f"bytes kept in {tmp_path / 'coco_captioning.zip.part'}: rerun `captioner download "
        f"--dest {tmp_path} --url {server.url}` to resume",
    )
    part = (tmp_path / "coco_captioning.zip.part").read_bytes()
    assert 0 < len(part) < len(server.payload) and server.payload.startswith(part)
    server.drops["x.zip"], server.log = 0, []
    result = run("download", "--url", server.url, "--dest", tmp_path)
    assert result.exit_code == 0, result.output
    assert gets(server) == [f"bytes={len(part)}-"]  # continued, not restarted
    src = coco_zip[0]
    for n in os.listdir(src):
        assert (tmp_path / "coco_captioning" / n).read_bytes() == (src / n).read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["coco_captioning"]
    # Already installed: untouched, nothing fetched.
    before = snapshot(tmp_path)
    again = run("download", "--url", server.url, "--dest", tmp_path)
    assert again.exit_code == 0
    assert gets(server) == [f"bytes={len(part)}-"] and snapshot(tmp_path) == before
    # the library logs, the CLI shows it: one line
    assert "coco_captioning already present (pass force=True" in again.output


def _evil_zip(payload, extra=None, skip=None):
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(payload)) as src, zipfile.ZipFile(buf, "w") as z:
        for info in src.infolist():
            if not (skip and info.filename.endswith(skip)):
                z.writestr(info, src.read(info))
        if extra:
            z.writestr(extra, b"evil")
    return buf.getvalue()


@pytest.mark.parametrize(
    "case,words",
    [
        ("corrupt", "not a valid zip"),
        ("dotdot", "'..' in path"),
        ("absolute", "absolute path"),
        ("missing", "missing coco2014_vocab.json"),
        ("truncated", "not a valid zip"),
    ],
)
def test_bad_zip_refused_existing_data_untouched(tmp_path, server, case, words):
    payload = server.payload
    server.files["x.zip"] = {
        "corrupt": np.random.default_rng(0).bytes(4000),
        "dotdot": _evil_zip(payload, "coco_captioning/../../evil.txt"),
        "absolute": _evil_zip(payload, "/tmp/evil.txt"),
        "missing": _evil_zip(payload, skip="coco2014_vocab.json"),
        "truncated": payload[: len(payload) // 2],
    }[case]
    # (a folder of the user's own at the target is refused before any download: test_overwrite)
    result = run("download", "--url", server.url, "--dest", tmp_path)
    assert_refused(result, tmp_path / "coco_captioning.zip", 2, words)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()
    assert sorted(os.listdir(tmp_path)) == ["coco_captioning.zip"]


# ---------------------------------------------------------------- arguments

ARG_CASES = [
    ["train", "--epochs", "0"],
    ["train", "--epochs", "-1"],
    ["train", "--batch-size", "0"],
    ["train", "--hidden-dim", "-5"],
    ["train", "--wordvec-dim", "0"],
    ["train", "--cell", "transformer"],
    ["train", "--lr", "0"],
    ["train", "--lr", "nan"],
    ["train", "--lr", "inf"],
    ["train", "--lr", "-1e-3"],
    ["train", "--lr", "fast"],
    ["train", "--lr-decay", "0"],
    ["train", "--weight-decay", "-1"],
    ["train", "--clip-norm", "nan"],
    ["train", "--optimizer", "lbfgs"],
    ["train", "--max-train", "0"],
    ["train", "--val-size", "-1"],
    ["train", "--seed", "-1"],
    ["train", "--resume", "/no/such/run"],
    ["train", "--keep-best", "bleu"],
    ["train", "--keep-best", "cider"],
    ["train", "--out", "/etc/hostname"],
    ["overfit", "--n", "0"],
    ["overfit", "--epochs", "0"],
    ["overfit", "--cell", "transformer"],
    ["sample"],
    ["sample", "--beam-size", "0", "--split", "val"],
    ["sample", "--count", "0", "--split", "val"],
    ["sample", "--temperature", "0", "--split", "val"],
    ["sample", "--temperature", "nan", "--split", "val"],
    ["sample", "--max-length", "0", "--split", "val"],
    ["sample", "--n-best", "-2", "--split", "val"],
    ["sample", "--seed", "-1", "--split", "val"],
    ["sample", "--split", "dev"],
    ["evaluate", "--max-images", "0"],
    ["evaluate", "--beam-size", "0"],
    ["evaluate", "--length-norm", "-1"],
    ["evaluate", "--results", "/no/such.json", "--references", "/no/such.json"],
    ["evaluate", "--results", __file__],
    ["encode"],
    ["encode", "x.jpg", "--top", "0"],
    ["prepare", "--images", "/no/such/dir", "--captions", __file__, "--out", "x"],
    ["prepare", "--images", ".", "--captions", "/no/such.json", "--out", "x"],
    ["prepare", "--images", ".", "--captions", __file__, "--out", "x", "--val-fraction", "0"],
    ["prepare", "--images", ".", "--captions", __file__, "--out", "x", "--val-fraction", "1"],
    ["prepare", "--images", ".", "--captions", __file__, "--out", "x", "--batch-size", "0"],
    ["prepare", "--images", ".", "--captions", __file__, "--out", "x", "--min-count", "0"],
    ["prepare", "--images", ".", "--captions", __file__, "--out", "x", "--max-words", "0"],
    ["prepare", "--images", ".", "--captions", __file__, "--out", "x", "--seed", "-4"],
    ["demo", "--epochs", "0"],
    ["demo", "--train-images", "-1"],
    ["demo", "--seed", "-1"],
    ["info", "--checkpoint", "/no/such.npz"],
    ["train", "--bogus-option"],
    ["nosuchcommand"],
]


@pytest.mark.parametrize("args", ARG_CASES, ids=[" ".join(a)[:40] for a in ARG_CASES])
def test_bad_arguments_are_usage_errors(tmp_path, args, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may appear here
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "Usage:" in result.output and "Error:" in result.output, result.output
    assert os.listdir(tmp_path) == []


def test_unwritable_places_are_clear_errors(good, tmp_path):
    data = good / "data"
    result = run("train", "--data", data, *TINY, "--out", "/dev/null/run")
    assert_refused(result, "/dev/null/run", 2, "cannot create")
    result = run(
        "evaluate",
        "--checkpoint",
        good / "run" / "last.npz",
        "--data",
        data,
        "--no-meteor",
        "--save-results",
        tmp_path / "no" / "such" / "dir" / "r.json",
    )
    assert_refused(result, tmp_path / "no" / "such" / "dir" / "r.json", 2, "could not write")


def test_resume_into_another_run_is_refused(good, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(good / "run", other)
    before = snapshot(other)
    result = run("train", "--resume", good / "run" / "last.npz", "--out", other)
    assert_refused(result, other, 2, "already holds a run")
    assert snapshot(other) == before


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--cell", "rnn"),
        ("--hidden-dim", 16),
        ("--lr", 0.5),
        ("--batch-size", 7),
        ("--max-train", 3),
        ("--optimizer", "sgd"),
        ("--seed", 9),
    ],
)
def test_resume_with_contradicting_flags_names_the_flag(good, tmp_path, flag, value):
    """issue 14: these were silently ignored; now a usage error naming the flag."""
    run_dir = tmp_path / "run"
    shutil.copytree(good / "run", run_dir)
    before = snapshot(run_dir)
    result = run("train", "--resume", run_dir, flag, value, "--epochs", 2, "--quiet")
    assert result.exit_code == 2, result.output
    assert f"{flag} {value} contradicts" in result.output and "Traceback" not in result.output
    assert snapshot(run_dir) == before


def test_resume_with_agreeing_flags_runs(good, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(good / "run", run_dir)
    result = run(
        "train",
        "--resume",
        run_dir,
        "--cell",
        "lstm",
        "--hidden-dim",
        8,
        "--batch-size",
        4,
        "--epochs",
        2,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert checkpoint.load_model(run_dir / "last.npz")[1]["training"]["epoch"] == 2
