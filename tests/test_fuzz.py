"""Property-based: random bytes and random small HDF5 / JSON / npz structures thrown at every
loader of user files. Each either loads or raises CaptionerError; anything else (KeyError,
OSError, a numpy or h5py error, RecursionError, ...) would reach the user as a traceback.

Example counts are modest here; `pytest -m slow` runs the same properties with many more.
"""

import io
import json
import shutil
import zipfile

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from captioner import checkpoint, metrics, runs, training
from captioner.data import close_coco_data, load_coco_data, load_vocab
from captioner.errors import CaptionerError
from captioner.model import CaptioningRNN
from fixtures import build_dataset

FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=2500, deadline=None, suppress_health_check=list(HealthCheck))


def loads_or_refuses(load, *args):
    """Call the loader; a CaptionerError is fine (one line naming the problem), anything else
    fails."""
    try:
        out = load(*args)
    except CaptionerError as e:
        assert "\n" not in str(e) and str(e)
        return None
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzzbase")
    data = build_dataset(
        root / "data",
        n_train_images=5,
        captions_per_image=2,
        n_val_images=3,
        feature_dim=6,
        vocab_size=40,
        seed=2,
    )
    d = load_coco_data(data)
    model = CaptioningRNN(
        d["word_to_idx"], input_dim=6, wordvec_dim=4, hidden_dim=4, cell_type="lstm", seed=0
    )
    (root / "run").mkdir()
    runs.train_in(
        d,
        model,
        str(root / "run"),
        progress=False,
        log=lambda *_: None,
        epochs=1,
        batch_size=4,
        val_size=2,
        data_dir=str(data),
    )
    return root


# ---------------------------------------------------------------- strategies

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
DTYPES = st.sampled_from(["i1", "i4", "i8", "u2", "f2", "f4", "f8", "b1", "S3", "c8"])
SHAPES = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)


@st.composite
def arrays(draw, dtype=DTYPES, shape=SHAPES):
    dt, sh = np.dtype(draw(dtype)), draw(shape)
    n = int(np.prod(sh))
    raw = draw(st.binary(min_size=n * dt.itemsize, max_size=n * dt.itemsize))
    return np.frombuffer(raw, dtype=dt).reshape(sh).copy() if n else np.zeros(sh, dt)


def h5_bytes(tree):
    """{name: array or {subname: array}} -> the bytes of an HDF5 file holding it."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for name, value in tree.items():
            if isinstance(value, dict):
                g = f.create_group(name)
                for k, v in value.items():
                    g.create_dataset(k, data=v)
            else:
                f.create_dataset(name, data=value)
    return buf.getvalue()


CAPTION_NAMES = st.sampled_from(
    ["train_captions", "train_image_idxs", "val_captions", "val_image_idxs", "x"]
)
H5_TREES = st.dictionaries(
    st.one_of(CAPTION_NAMES, st.just("features")),
    st.one_of(arrays(), st.dictionaries(st.just("features"), arrays(), max_size=1)),
    max_size=5,
)
# Near-valid captions: the right names and dtypes, random ids and shapes
NEAR_CAPTIONS = st.fixed_dictionaries(
    {
        "train_captions": arrays(st.just("i4"), st.tuples(st.integers(0, 12), st.integers(0, 18))),
        "train_image_idxs": arrays(st.just("i4"), st.tuples(st.integers(0, 12))),
        "val_captions": arrays(st.just("i4"), st.tuples(st.integers(0, 8), st.just(17))),
        "val_image_idxs": arrays(st.just("i8"), st.tuples(st.integers(0, 8))),
    }
)
NEAR_FEATURES = st.fixed_dictionaries(
    {
        "features": arrays(
            st.sampled_from(["f4", "f8", "f2"]), st.tuples(st.integers(0, 6), st.integers(0, 7))
        )
    }
)


def mutate(data, draw):
    """Truncate, flip bytes or splice random bytes into a real file's content."""
    b = bytearray(data)
    how = draw(st.sampled_from(["truncate", "flip", "splice"]))
    if how == "truncate":
        return bytes(b[: draw(st.integers(0, len(b)))])
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(b) - 1))
        if how == "flip":
            b[i] ^= draw(st.integers(1, 255))
        else:
            b[i : i + 4] = draw(st.binary(min_size=0, max_size=8))
    return bytes(b)


# ---------------------------------------------------------------- dataset loader

DATA_FILES = [
    "coco2014_captions.h5",
    "coco2014_vocab.json",
    "train2014_vgg16_fc7_pca.h5",
    "val2014_vgg16_fc7_pca.h5",
    "val2014_urls.txt",
]


def _load_dataset_with(base, tmp_path_factory, name, content):
    folder = tmp_path_factory.mktemp("fz") / "data"
    shutil.copytree(base / "data", folder)
    (folder / name).write_bytes(content)
    try:
        d = loads_or_refuses(load_coco_data, folder)
        if d is not None:
            close_coco_data(d)
    finally:
        shutil.rmtree(folder.parent)


def _dataset_property(base, tmp_path_factory, data):
    name = data.draw(st.sampled_from(DATA_FILES))
    kind = data.draw(st.sampled_from(["bytes", "mutate", "tree", "near"]))
    if kind == "bytes":
        content = data.draw(st.binary(max_size=2000))
    elif kind == "mutate":
        content = mutate((base / "data" / name).read_bytes(), data.draw)
    elif name.endswith(".json"):
        content = json.dumps(data.draw(JSON) if kind == "tree" else _near_vocab(data)).encode()
    elif name.endswith(".txt"):
        content = "\n".join(data.draw(st.lists(st.text(max_size=5), max_size=5))).encode()
    elif kind == "tree":
        content = h5_bytes(data.draw(H5_TREES))
    else:
        content = h5_bytes(data.draw(NEAR_CAPTIONS if "captions" in name else NEAR_FEATURES))
    _load_dataset_with(base, tmp_path_factory, name, content)


def _near_vocab(data):
    words = data.draw(
        st.lists(
            st.sampled_from(["<NULL>", "<START>", "<END>", "<UNK>", "a", "b", "c"]), max_size=8
        )
    )
    w2i = {w: i for i, w in enumerate(words)}
    if data.draw(st.booleans()):
        w2i = data.draw(
            st.dictionaries(st.sampled_from(words or ["a"]), st.integers(-2, 10) | JSON)
        )
    return {"idx_to_word": words, "word_to_idx": w2i}


@FAST
@given(data=st.data())
def test_dataset_loader(base, tmp_path_factory, data):
    _dataset_property(base, tmp_path_factory, data)


@pytest.mark.slow
@SLOW
@given(data=st.data())
def test_dataset_loader_many(base, tmp_path_factory, data):
    _dataset_property(base, tmp_path_factory, data)


@FAST
@given(data=st.data())
def test_vocab_loader_structures(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("v") / "vocab.json"
    path.write_text(json.dumps(data.draw(JSON) if data.draw(st.booleans()) else _near_vocab(data)))
    loads_or_refuses(load_vocab, str(path))


# ---------------------------------------------------------------- checkpoint loader

KEYS = st.sampled_from(
    [
        "meta",
        "param/W_embed",
        "param/W_proj",
        "param/b",
        "param/Wh",
        "optim/Wh/m",
        "history/loss",
        "param/x/y",
        "junk",
    ]
)


def _ckpt_property(base, tmp_path_factory, data):
    good = base / "run" / "last.npz"
    path = tmp_path_factory.mktemp("c") / "last.npz"
    kind = data.draw(st.sampled_from(["bytes", "mutate", "arrays", "meta"]))
    if kind == "bytes":
        path.write_bytes(data.draw(st.binary(max_size=3000)))
    elif kind == "mutate":
        path.write_bytes(mutate(good.read_bytes(), data.draw))
    elif kind == "arrays":  # a real checkpoint with some arrays replaced by random ones
        with np.load(good) as z:
            a = {k: z[k] for k in z.files}
        for k, v in data.draw(st.dictionaries(KEYS, arrays(), max_size=3)).items():
            a[k] = v
        np.savez(path, **a)
    else:  # a real checkpoint's metadata with random parts replaced
        with np.load(good) as z:
            a = {k: z[k] for k in z.files}
        meta = json.loads(str(a["meta"]))
        for _ in range(data.draw(st.integers(1, 4))):
            node, keys = meta, []
            while isinstance(node, dict) and node and data.draw(st.booleans()):
                k = data.draw(st.sampled_from(sorted(node)))
                keys.append(k)
                parent, node = node, node[k]
            if keys:
                parent[keys[-1]] = data.draw(JSON)
        a["meta"] = np.array(json.dumps(meta))
        np.savez(path, **a)
    result = loads_or_refuses(checkpoint.load_model, path)
    if result is not None:  # a model that loads must also resume or be refused cleanly
        model, meta, optim, history = result
        loads_or_refuses(lambda: training.resume_state(meta, optim, history, path=str(path)))


@FAST
@given(data=st.data())
def test_checkpoint_loader(base, tmp_path_factory, data):
    _ckpt_property(base, tmp_path_factory, data)


@pytest.mark.slow
@SLOW
@given(data=st.data())
def test_checkpoint_loader_many(base, tmp_path_factory, data):
    _ckpt_property(base, tmp_path_factory, data)


def test_array_header_claiming_terabytes(tmp_path):
    """An .npy header may claim any shape: refused cleanly, not a MemoryError traceback."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)}
    )
    path = tmp_path / "c.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("meta.npy", header.getvalue() + b"\0" * 100)
    with pytest.raises(CaptionerError, match="c.npz: entry .meta. declares shape"):
        checkpoint.load(path)


# ---------------------------------------------------------------- results / annotations

ENTRY = st.fixed_dictionaries(
    {}, optional={"image_id": st.integers(-2, 5) | JSON, "caption": st.text(max_size=6) | JSON}
)


def _json_property(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("j") / "f.json"
    kind = data.draw(st.sampled_from(["bytes", "tree", "results", "annotations"]))
    if kind == "bytes":
        path.write_bytes(data.draw(st.binary(max_size=500)))
    elif kind == "tree":
        path.write_text(json.dumps(data.draw(JSON)))
    elif kind == "results":
        path.write_text(json.dumps(data.draw(st.lists(ENTRY | JSON, max_size=5))))
    else:
        path.write_text(json.dumps({"annotations": data.draw(st.lists(ENTRY | JSON, max_size=5))}))
    refs = loads_or_refuses(metrics.load_annotations, str(path))
    loads_or_refuses(
        metrics.load_results, str(path), data.draw(st.none() | st.just({1: [], 2: []}))
    )
    if refs is not None:
        assert all(isinstance(c, str) and c.strip() for caps in refs.values() for c in caps)


@FAST
@given(data=st.data())
def test_results_and_annotations_loaders(tmp_path_factory, data):
    _json_property(tmp_path_factory, data)


@pytest.mark.slow
@SLOW
@given(data=st.data())
def test_results_and_annotations_loaders_many(tmp_path_factory, data):
    _json_property(tmp_path_factory, data)
