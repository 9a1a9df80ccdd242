"""Checkpoints: one .npz of plain arrays plus one JSON string of metadata.

Layout inside the .npz (loaded with allow_pickle=False, so nothing in it can run):
    meta                  0-d unicode array: JSON (format, version, model config, vocabulary,
                          features, training state)
    param/<name>          model parameters (W_embed, W_proj, ...)
    optim/<name>/<key>    optimizer state arrays per parameter (Adam's m and v, ...)
    history/<key>         1-D float arrays (per-step training loss, ...)

Written to a temporary file in the same directory, fsynced, then renamed over
the target: a crash or a full disk leaves the previous checkpoint intact.

load_model() turns a checkpoint back into a CaptioningRNN, checking every field, and
check_compatible() whether a model fits a dataset (same vocabulary and features).
"""
import json
import os
import zipfile
import zlib

import numpy as np

from . import atomic
from .errors import CaptionerError
from .model import CaptioningRNN

FORMAT = "captioner-checkpoint"
VERSION = 1


def save(path, params, meta, optim_arrays=None, history=None):
    """Atomically write a checkpoint.

    params: dict name -> ndarray; meta: JSON-serialisable dict;
    optim_arrays: dict name -> dict key -> ndarray; history: dict key -> 1-D array.
    """
    arrays = {f"param/{k}": np.asarray(v) for k, v in params.items()}
    for name, state in (optim_arrays or {}).items():
        arrays.update({f"optim/{name}/{k}": np.asarray(v) for k, v in state.items()})
    arrays.update({f"history/{k}": np.asarray(v) for k, v in (history or {}).items()})
    meta = dict(meta, format=FORMAT, version=VERSION)
    arrays["meta"] = np.array(json.dumps(meta))
    atomic.write_bytes(path, lambda f: np.savez(f, **arrays), what="checkpoint")


def write_json(path, obj):
    """Atomically write a human-readable JSON file (history.json)."""
    atomic.write_json(path, obj)


def load(path):
    """Read a checkpoint -> (params, meta, optim_arrays, history). Raises CaptionerError."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CaptionerError(f"{path}: is a directory; pass a checkpoint file such as "
                             f"{path}/best.npz")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise CaptionerError(f"{path}: no such checkpoint; check the path "
                             f"(runs/<name>/best.npz)") from None
    except ValueError as e:
        # numpy refuses object arrays (pickles) when allow_pickle=False: never unpickle.
        if "pickle" in str(e):
            raise CaptionerError(f"{path}: holds pickled objects, refused for safety; "
                                 f"only checkpoints written by captioner can be loaded") from None
        raise CaptionerError(f"{path}: not a captioner checkpoint ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError, zlib.error, NotImplementedError) as e:
        raise CaptionerError(f"{path}: not a readable checkpoint (truncated or corrupt: {e}); "
                             f"use another checkpoint, e.g. last.npz or best.npz of the run"
                             ) from None
    except MemoryError:  # an array header claiming more memory than there is
        raise CaptionerError(f"{path}: declares arrays too big to load; the file is damaged or "
                             f"not a captioner checkpoint") from None
    odd = sorted(k for k, v in files.items() if not isinstance(v, np.ndarray))
    if odd:  # a zip member not in .npy format comes back as raw bytes
        raise CaptionerError(f"{path}: entry {odd[0]!r} is not a NumPy array; not a checkpoint "
                             f"written by captioner")
    if "meta" not in files:
        raise CaptionerError(f"{path}: no metadata; not a checkpoint written by captioner")
    try:
        meta = json.loads(str(files.pop("meta")))
        assert isinstance(meta, dict)
    except Exception:
        raise CaptionerError(f"{path}: metadata is not valid JSON; the file is damaged") from None
    if meta.get("format") != FORMAT:
        raise CaptionerError(f"{path}: not a captioner checkpoint (format {meta.get('format')!r})")
    version = meta.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CaptionerError(f"{path}: checkpoint format version {version!r} is newer than this "
                             f"captioner understands ({VERSION}); upgrade captioner")
    params, optim, history = {}, {}, {}
    for key, arr in files.items():
        kind, _, rest = key.partition("/")
        if kind == "param":
            params[rest] = arr
        elif kind == "optim":
            name, _, k = rest.rpartition("/")
            optim.setdefault(name, {})[k] = arr
        elif kind == "history":
            history[rest] = arr
    return params, meta, optim, history


def check_params(path, params, model):
    """Check that loaded parameters fit `model` exactly (names, shapes, finite values)."""
    for name, ref in model.params.items():
        if name not in params:
            raise CaptionerError(f"{path}: parameter {name} is missing; the checkpoint is "
                                 f"incomplete")
        if params[name].dtype.kind != "f":
            raise CaptionerError(f"{path}: parameter {name} has dtype {params[name].dtype}, "
                                 f"expected floats; not a checkpoint written by captioner")
        if params[name].shape != ref.shape:
            raise CaptionerError(f"{path}: parameter {name} has shape {params[name].shape}, "
                                 f"the model expects {ref.shape}; the metadata and arrays "
                                 f"disagree")
        if not np.all(np.isfinite(params[name])):
            raise CaptionerError(f"{path}: parameter {name} holds NaN or inf; use an earlier "
                                 f"checkpoint")
    extra = set(params) - set(model.params)
    if extra:
        raise CaptionerError(f"{path}: unexpected parameters {sorted(extra)}")


# ---------------------------------------------------------------- models in checkpoints


def model_meta(model, data):
    return {"model": {"cell_type": model.cell_type, "input_dim": model.input_dim,
                      "wordvec_dim": model.wordvec_dim, "hidden_dim": model.hidden_dim},
            "vocab": [model.idx_to_word[i] for i in range(len(model.idx_to_word))],
            "features": {"kind": data["feature_kind"], "dim": int(data["feature_dim"]),
                         "encoder": data["encoder"]}}


def load_model(path, dtype=np.float32):
    """Checkpoint -> (model, meta, optim_arrays, history); every field checked."""
    params, meta, optim, history = load(path)
    try:
        cfg, vocab, feats = meta["model"], meta["vocab"], meta["features"]
        if cfg["cell_type"] not in ("rnn", "lstm"):
            raise ValueError(f"unknown cell type {cfg['cell_type']!r}")
        if not isinstance(vocab, list):
            raise ValueError("vocab is not a list")
        word_to_idx = {w: i for i, w in enumerate(vocab)}
        if len(word_to_idx) != len(vocab) or not all(isinstance(w, str) for w in vocab):
            raise ValueError("vocabulary has duplicate or non-string words")
        for tok in ("<NULL>", "<START>", "<END>"):   # a model trained by captioner can sample
            if tok not in word_to_idx:
                raise CaptionerError(f"{path}: vocabulary has no {tok} token; not a checkpoint "
                                     f"written by `captioner train`")
        dims = {k: cfg[k] for k in ("input_dim", "wordvec_dim", "hidden_dim")}
        if not all(type(v) is int and v > 0 for v in dims.values()):
            raise ValueError(f"sizes must be positive integers, got {dims}")
        if (not isinstance(feats, dict) or type(feats["dim"]) is not int
                or not isinstance(feats["kind"], str)):
            raise ValueError("features must give an integer dim and a kind")
        if not isinstance(meta.get("training", {}), dict):
            raise ValueError("training is not an object")
        # Compare the array shapes with the sizes first: the metadata alone must not decide
        # how much memory a model allocates.
        k = 4 if cfg["cell_type"] == "lstm" else 1
        V, H, W = len(vocab), dims["hidden_dim"], dims["wordvec_dim"]
        want = {"W_embed": (V, W), "W_proj": (dims["input_dim"], H), "b_proj": (H,),
                "Wx": (W, k * H),
                "Wh": (H, k * H), "b": (k * H,), "W_vocab": (H, V), "b_vocab": (V,)}
        for name, shape in want.items():
            if name not in params:
                raise CaptionerError(f"{path}: parameter {name} is missing; the checkpoint "
                                     f"is incomplete")
            if params[name].shape != shape:
                raise CaptionerError(f"{path}: parameter {name} has shape "
                                     f"{params[name].shape}, the "
                                     f"metadata implies {shape}; the metadata and arrays disagree")
        model = CaptioningRNN(word_to_idx, input_dim=dims["input_dim"], wordvec_dim=W,
                              hidden_dim=H,
                              cell_type=cfg["cell_type"], dtype=dtype, seed=0)
    except (KeyError, TypeError, ValueError) as e:
        raise CaptionerError(f"{path}: metadata is incomplete or wrong ({e!s}); "
                             f"not a checkpoint this captioner wrote") from None
    except CaptionerError as e:
        msg = str(e)
        raise CaptionerError(msg if msg.startswith(f"{path}:") else f"{path}: {msg}") from None
    check_params(path, params, model)
    for k, v in params.items():
        model.params[k] = np.ascontiguousarray(v, dtype=dtype)
    return model, meta, optim, history


def check_compatible(path, meta, data):
    """A checkpoint can only be used with data of the same vocabulary and features."""
    if list(meta["vocab"]) != list(data["idx_to_word"]):
        raise CaptionerError(f"{path}: its vocabulary ({len(meta['vocab'])} words) differs from "
                             f"the dataset's in {data['base_dir']} "
                             f"({len(data['idx_to_word'])} words); "
                             f"use the dataset the model was trained on")
    f = meta["features"]
    if int(f["dim"]) != int(data["feature_dim"]) or f.get("encoder") != data["encoder"]:
        raise CaptionerError(f"{path}: trained on {f.get('encoder')} features ({f['dim']}-d) "
                             f"but the "
                             f"dataset has {data['encoder']} ({data['feature_dim']}-d); "
                             f"pass --features {f['kind']} or the matching --data")
