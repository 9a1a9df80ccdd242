"""Checkpoints: one .npz of plain arrays plus one JSON string of metadata.

Layout inside the .npz (loaded with allow_pickle=False, so nothing in it can run):
    meta                  0-d unicode array: JSON (format, version, model config, vocabulary,
                          features, training state)
    param/<name>          model parameters (W_embed, W_proj, ...)
    optim/<name>/<key>    optimizer state arrays per parameter (Adam's m and v, ...)
    history/<key>         1-D float arrays (per-step training loss, ...)

Written to a temporary file in the same directory, fsynced, then renamed over
the target: a crash or a full disk leaves the previous checkpoint intact.

load() checks the whole metadata and every array's declared shape against one schema
(validate) before reading any array; load_model() turns a checkpoint back into a
CaptioningRNN, and check_compatible() whether a model fits a dataset (same vocabulary and
features).
"""

import json
import math
import os
import zipfile
import zlib

import numpy as np

from . import adaptive, atomic, limits
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
    for key, a in arrays.items():  # the one gate to disk: a diverged model never replaces
        # a good one
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise CaptionerError(
                f"{path}: not saved: {key} holds NaN or inf (training diverged); "
                f"the checkpoint on disk is the last good one; lower --lr or set "
                f"--clip-norm",
                exit_code=1,
            )
    arrays.update({f"history/{k}": np.asarray(v) for k, v in (history or {}).items()})
    meta = dict(meta, format=FORMAT, version=VERSION)
    arrays["meta"] = np.array(json.dumps(meta))
    atomic.write_bytes(path, lambda f: np.savez(f, **arrays), what="checkpoint")


def _headers(z, path):
    """{member: (shape, dtype)} read from each .npy header, before any array is read."""
    out = {}
    for info in z.zip.infolist():
        name = info.filename.removesuffix(".npy")
        with z.zip.open(info) as f:
            try:
                version = np.lib.format.read_magic(f)
                read = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version)
                if read is None:
                    raise ValueError(f"npy format version {version}")
                shape, _, dtype = read(f)
            except ValueError as e:
                raise CaptionerError(
                    f"{path}: entry {name!r} is not a NumPy array ({e}); not a "
                    f"checkpoint written by captioner"
                ) from None
            if dtype.hasobject:  # numpy refuses object arrays (pickles) with allow_pickle=False
                raise CaptionerError(
                    f"{path}: holds pickled objects, refused for safety; "
                    f"only checkpoints written by captioner can be loaded"
                )
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > info.file_size - f.tell():  # the header claims more than the entry holds
                raise CaptionerError(
                    f"{path}: entry {name!r} declares shape {shape} but holds "
                    f"{info.file_size:,} bytes; the file is damaged"
                )
        out[name] = (tuple(shape), dtype)
    return out


def load(path):
    """Read a checkpoint -> (params, meta, optim_arrays, history). Raises CaptionerError.

    The metadata and every array's declared shape are validated (schema.validate) before any
    array is read, so a small file cannot make us allocate what it only declares."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CaptionerError(
            f"{path}: is a directory; pass a checkpoint file such as {path}/best.npz"
        )
    if os.path.exists(path) and not os.path.isfile(path):  # a FIFO or a device: would block
        raise CaptionerError(
            f"{path}: not a regular file; pass a checkpoint file such as best.npz"
        )
    _check_zip(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            headers = _headers(z, path)
            if "meta" not in headers:
                raise CaptionerError(f"{path}: no metadata; not a checkpoint written by captioner")
            if headers["meta"][1].kind != "U" or headers["meta"][0] != ():
                raise CaptionerError(f"{path}: metadata is not valid JSON; the file is damaged")
            limits.check_memory(
                path,
                "the metadata",
                headers["meta"][1].itemsize,
                "the file is damaged or not a checkpoint written by captioner",
            )
            meta = _parse_meta(path, z["meta"])
            shapes = {k: v for k, v in headers.items() if k != "meta"}
            validate(path, meta, shapes)
            limits.check_memory(
                path,
                "its arrays",
                sum(math.prod(s) * d.itemsize for s, d in shapes.values()),
                "load it on a machine with more memory",
            )
            files = {k: z[k] for k in shapes}
    except CaptionerError:
        raise
    except FileNotFoundError:
        raise CaptionerError(
            f"{path}: no such checkpoint; check the path (runs/<name>/best.npz)"
        ) from None
    except ValueError as e:
        raise CaptionerError(f"{path}: not a captioner checkpoint ({e})") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError, zlib.error, NotImplementedError) as e:
        raise CaptionerError(
            f"{path}: not a readable checkpoint (truncated or corrupt: {e}); "
            f"use another checkpoint, e.g. last.npz or best.npz of the "
            f"run"
        ) from None
    except MemoryError:  # an array header claiming more memory than there is
        raise CaptionerError(
            f"{path}: declares arrays too big to load; the file is damaged or "
            f"not a captioner checkpoint"
        ) from None
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


def _check_zip(path):
    """A checkpoint is an .npz (a zip): anything else is named for what it is, before numpy
    guesses (it would call random bytes 'pickled data' and suggest loading them unsafely)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise CaptionerError(
            f"{path}: no such checkpoint; check the path (runs/<name>/best.npz)"
        ) from None
    except OSError as e:
        raise CaptionerError(f"{path}: cannot read the checkpoint ({e.strerror})") from None
    if not head:
        raise CaptionerError(
            f"{path}: empty file (0 bytes), not a checkpoint; use another one, "
            f"e.g. last.npz or best.npz of the run"
        )
    if head[:1] == b"\x80":  # the pickle protocol 2+ opcode
        raise CaptionerError(
            f"{path}: holds pickled objects, refused for safety; only "
            f"checkpoints written by captioner can be loaded"
        )
    if head != b"PK\x03\x04" and not zipfile.is_zipfile(path):
        raise CaptionerError(
            f"{path}: not an .npz archive, so not a captioner checkpoint; use "
            f"another one, e.g. last.npz or best.npz of the run"
        )


def _parse_meta(path, raw):
    try:
        meta = json.loads(str(raw))
    except (ValueError, RecursionError):
        meta = None
    if not isinstance(meta, dict):
        raise CaptionerError(f"{path}: metadata is not valid JSON; the file is damaged")
    if meta.get("format") != FORMAT:
        raise CaptionerError(f"{path}: not a captioner checkpoint (format {meta.get('format')!r})")
    version = meta.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CaptionerError(
            f"{path}: checkpoint format version {version!r} is newer than this "
            f"captioner understands ({VERSION}); upgrade captioner"
        )
    return meta


def validate(path, meta, shapes):
    """Check the whole metadata and the arrays' declared {key: (shape, dtype)} against one
    schema (the one place that knows it); the first problem is one CaptionerError naming
    the field, so every command that loads a checkpoint can use all of it."""
    why = _problem(meta, shapes)
    if why:
        raise CaptionerError(
            f"{path}: metadata is incomplete or wrong: {why}; not a checkpoint "
            f"this captioner wrote (use another one, e.g. best.npz of the run)"
        )


def check_params(path, params, model):
    """Check that loaded parameters fit `model` exactly (names, shapes, finite values)."""
    for name, ref in model.params.items():
        if name not in params:
            raise CaptionerError(
                f"{path}: parameter {name} is missing; the checkpoint is incomplete"
            )
        if params[name].dtype.kind != "f":
            raise CaptionerError(
                f"{path}: parameter {name} has dtype {params[name].dtype}, "
                f"expected floats; not a checkpoint written by captioner"
            )
        if params[name].shape != ref.shape:
            raise CaptionerError(
                f"{path}: parameter {name} has shape {params[name].shape}, "
                f"the model expects {ref.shape}; the metadata and arrays "
                f"disagree"
            )
        if not np.all(np.isfinite(params[name])):
            raise CaptionerError(
                f"{path}: parameter {name} holds NaN or inf; use an earlier checkpoint"
            )
    extra = set(params) - set(model.params)
    if extra:
        raise CaptionerError(f"{path}: unexpected parameters {sorted(extra)}")


# ---------------------------------------------------------------- models in checkpoints


def model_meta(model, data):
    cfg = {
        "cell_type": model.cell_type,
        "input_dim": model.input_dim,
        "wordvec_dim": model.wordvec_dim,
        "hidden_dim": model.hidden_dim,
        "softmax": model.softmax,
    }
    if model.softmax == "adaptive":
        cfg.update(cutoffs=model.cutoffs, softmax_order=model.softmax_order.tolist())
    return {
        "model": cfg,
        "vocab": [model.idx_to_word[i] for i in range(len(model.idx_to_word))],
        "features": {
            "kind": data["feature_kind"],
            "dim": int(data["feature_dim"]),
            "encoder": data["encoder"],
        },
    }


def load_model(path, dtype=np.float32):
    """Checkpoint -> (model, meta, optim_arrays, history); load() validated every field."""
    params, meta, optim, history = load(path)
    cfg = meta["model"]
    model = CaptioningRNN(
        {w: i for i, w in enumerate(meta["vocab"])},
        input_dim=cfg["input_dim"],
        wordvec_dim=cfg["wordvec_dim"],
        hidden_dim=cfg["hidden_dim"],
        cell_type=cfg["cell_type"],
        dtype=dtype,
        seed=0,
        **softmax_config(cfg),
    )
    check_params(path, params, model)
    for k, v in params.items():
        model.params[k] = np.ascontiguousarray(v, dtype=dtype)
    return model, meta, optim, history


def softmax_config(cfg):
    """The CaptioningRNN softmax keywords of a checkpoint's model config; a checkpoint
    written before the adaptive softmax existed is a full-softmax one."""
    if cfg.get("softmax", "full") == "full":
        return {"softmax": "full"}
    return {
        "softmax": "adaptive",
        "cutoffs": cfg["cutoffs"],
        "softmax_order": np.asarray(cfg["softmax_order"], dtype=np.int64),
    }


def check_compatible(path, meta, data):
    """A checkpoint can only be used with data of the same vocabulary and features."""
    if list(meta["vocab"]) != list(data["idx_to_word"]):
        raise CaptionerError(
            f"{path}: its vocabulary ({len(meta['vocab'])} words) differs from "
            f"the dataset's in {data['base_dir']} "
            f"({len(data['idx_to_word'])} words); "
            f"use the dataset the model was trained on"
        )
    f = meta["features"]
    if int(f["dim"]) != int(data["feature_dim"]) or f.get("encoder") != data["encoder"]:
        raise CaptionerError(
            f"{path}: trained on {f.get('encoder')} features ({f['dim']}-d) "
            f"but the "
            f"dataset has {data['encoder']} ({data['feature_dim']}-d); "
            f"pass --features {f['kind']} or the matching --data"
        )


# ---------------------------------------------------------------- the schema

NON_WORDS = ("<NULL>", "<START>", "<END>", "<UNK>")
# Every training setting: (type check, meaning). Others are refused: they would clash with
# train()'s own arguments or mean the checkpoint came from elsewhere.
_COUNT = (lambda v: _is_int(v) and v >= 1, "an integer >= 1")
_NATURAL = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
_NUMBER = (lambda v: _is_num(v) and v >= 0, "a finite number >= 0")
SETTINGS = {
    "epochs": _COUNT,
    "batch_size": _COUNT,
    "eval_images": _COUNT,
    "seed": _NATURAL,
    "val_size": _NATURAL,
    "save_every": _NATURAL,
    "eval_every": _NATURAL,
    "lr": _NUMBER,
    "lr_decay": _NUMBER,
    "weight_decay": _NUMBER,
    "forget_bias": _NUMBER,
    "clip_norm": _NUMBER,
    "softmax": (lambda v: v in adaptive.SOFTMAXES, "full or adaptive"),
    "softmax_cutoffs": (
        lambda v: v is None or (isinstance(v, list) and all(_is_int(c) for c in v)),
        "null or a list of integers",
    ),
    "optimizer": (
        lambda v: isinstance(v, str) and v in OPTIM_STATE,  # a list would not hash
        "adam, sgd, sgd_momentum or rmsprop",
    ),
    "keep_best": (lambda v: v in ("loss", "cider"), "loss or cider"),
    "max_train": (lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
    "data_dir": (lambda v: isinstance(v, str), "a path"),
    "features": (lambda v: isinstance(v, str), "a feature kind"),
}
# Per optimizer: its scalar state keys and its array state keys (all arrays, or none yet).
OPTIM_STATE = {
    "sgd": ((), ()),
    "sgd_momentum": (("momentum",), ("velocity",)),
    "rmsprop": (("decay_rate", "epsilon"), ("cache",)),
    "adam": (("beta1", "beta2", "epsilon", "t"), ("m", "v")),
}
RECORD = {
    "epoch": _COUNT,
    "step": _NATURAL,
    "lr": _NUMBER,
    "seconds": _NUMBER,
    "train_loss": (lambda v: _is_num(v, nan_ok=True), "a number"),
}
RECORD_OPTIONAL = ("val_loss", "Bleu_4", "CIDEr")
HISTORY = ("history/loss", "history/grad_norm", "history/clipped")  # per-step 1-D floats


def _is_int(v):
    return type(v) is int


def _is_num(v, nan_ok=False):
    return type(v) in (int, float) and (nan_ok or math.isfinite(v))


def param_shapes(cfg, vocab_size):
    """The parameter shapes a model config implies: {name: shape}."""
    k = 4 if cfg["cell_type"] == "lstm" else 1
    V, D, W, H = vocab_size, cfg["input_dim"], cfg["wordvec_dim"], cfg["hidden_dim"]
    shapes = {
        "W_embed": (V, W),
        "W_proj": (D, H),
        "b_proj": (H,),
        "Wx": (W, k * H),
        "Wh": (H, k * H),
        "b": (k * H,),
    }
    if cfg.get("softmax", "full") == "full":
        return shapes | {"W_vocab": (H, V), "b_vocab": (V,)}
    cutoffs = cfg["cutoffs"]
    shapes |= {"W_head": (H, cutoffs[0] + len(cutoffs)), "b_head": (cutoffs[0] + len(cutoffs),)}
    sizes = np.diff(cutoffs + [V]).tolist()
    for i, (d, size) in enumerate(zip(adaptive.tail_dims(H, len(cutoffs)), sizes), 1):
        shapes |= {f"W_tail{i}_proj": (H, d), f"W_tail{i}": (d, size), f"b_tail{i}": (size,)}
    return shapes


def _problem(meta, shapes):
    """-> a description of the first way meta/shapes break the schema, or None."""
    cfg, vocab, feats = meta.get("model"), meta.get("vocab"), meta.get("features")
    if not isinstance(cfg, dict):
        return "model is missing or not an object"
    if cfg.get("cell_type") not in ("rnn", "lstm"):
        return f"model.cell_type is {cfg.get('cell_type')!r}, expected rnn or lstm"
    for key in ("input_dim", "wordvec_dim", "hidden_dim"):
        if not (_is_int(cfg.get(key)) and cfg[key] > 0):
            return f"model.{key} is {cfg.get(key)!r}, expected a positive integer"
    if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab):
        return "vocab is not a list of words"
    if len(set(vocab)) != len(vocab):
        return "vocab has duplicate words"
    odd = [w for w in vocab if w.split() != [w]]
    if odd:  # would print as an empty (or garbled) caption
        return f"vocab word {odd[0]!r} is empty or holds white space"
    missing = [t for t in NON_WORDS[:3] if t not in vocab]
    if missing:
        return f"vocab lacks {', '.join(missing)}"
    if not set(vocab) - set(NON_WORDS):
        return f"vocab has no words besides {', '.join(NON_WORDS)}"
    softmax = cfg.get("softmax", "full")
    if softmax not in adaptive.SOFTMAXES:
        return f"model.softmax is {softmax!r}, expected full or adaptive"
    if softmax == "adaptive":
        why = adaptive.check_cutoffs(cfg.get("cutoffs"), len(vocab))
        if why:
            return f"model.{why}"
        order = cfg.get("softmax_order")
        if not (
            isinstance(order, list)
            and all(_is_int(i) for i in order)
            and sorted(order) == list(range(len(vocab)))
        ):
            return f"model.softmax_order is not a permutation of the {len(vocab)} word ids"
    if not isinstance(feats, dict):
        return "features is missing or not an object"
    for key in ("kind", "encoder"):
        if not isinstance(feats.get(key), str):
            return f"features.{key} is {feats.get(key)!r}, expected a string"
    if feats.get("dim") != cfg["input_dim"] or not _is_int(feats.get("dim")):
        return f"features.dim is {feats.get('dim')!r} but model.input_dim is {cfg['input_dim']}"
    want = param_shapes(cfg, len(vocab))
    for key, (shape, dtype) in shapes.items():
        kind, _, rest = key.partition("/")
        if kind == "param" and rest in want:
            if shape != want[rest]:
                return (
                    f"parameter {rest} has shape {shape}, the metadata implies {want[rest]}; "
                    f"the metadata and arrays disagree"
                )
        elif kind == "optim" and rest.rpartition("/")[0] in want:
            continue  # checked with the training state
        elif key not in HISTORY:
            return f"unexpected entry {key!r}"
        if dtype.kind != "f" and kind == "param":
            return f"parameter {rest} has dtype {dtype}, expected floats"
    for name in want:
        if f"param/{name}" not in shapes:
            return f"parameter {name} is missing; the checkpoint is incomplete"
    if "training" in meta:
        return _training_problem(meta["training"], shapes, want)
    return None


def settings_problem(settings, where):
    """How training settings (a dict of SETTINGS) break the schema, or None; where: their
    place in the file, for the message."""
    if not isinstance(settings, dict):
        return f"{where} is missing or not an object"
    for key, v in settings.items():
        if key not in SETTINGS:
            return f"{where} has an unknown setting {key!r}"
        ok, meaning = SETTINGS[key]
        if not ok(v):
            return f"{where}.{key} is {v!r}, expected {meaning}"
    return None


def _training_problem(t, shapes, want):
    if not isinstance(t, dict):
        return "training is not an object"
    for key in ("epoch", "step_in_epoch", "step"):
        if not (_is_int(t.get(key)) and t[key] >= 0):
            return f"training.{key} is {t.get(key)!r}, expected a non-negative integer"
    settings = t.get("settings")
    why = settings_problem(settings, "training.settings")
    if why:
        return why
    records = t.get("epochs")
    if not isinstance(records, list) or len(records) != t["epoch"]:
        return f"training.epochs must list one record per finished epoch ({t['epoch']})"
    for i, r in enumerate(records):
        if not isinstance(r, dict) or r.get("epoch") != i + 1:
            return f"training.epochs[{i}] is not the record of epoch {i + 1}"
        for key, (ok, meaning) in RECORD.items():
            if not ok(r.get(key)):
                return f"training.epochs[{i}].{key} is {r.get(key)!r}, expected {meaning}"
        for key in RECORD_OPTIONAL:
            if key in r and not _is_num(r[key], nan_ok=True):
                return f"training.epochs[{i}].{key} is {r[key]!r}, expected a number"
    best = t.get("best")
    metrics = ("val_loss", "train_loss", "CIDEr")
    good_best = (
        isinstance(best, dict)
        and best.get("metric") in metrics
        and _is_num(best.get("value"), nan_ok=True)
        and _is_int(best.get("epoch"))
        and 1 <= best["epoch"] <= t["epoch"]
    )
    if t["epoch"] and not good_best:
        return (
            f"training.best is {best!r}; after {t['epoch']} epochs it must give the metric, "
            f"value and epoch of the best one"
        )
    if not t["epoch"] and best is not None:
        return "training.best is set before any epoch finished"
    optimizer = settings.get("optimizer", "adam")
    scalars = t.get("optim")
    if not isinstance(scalars, dict) or set(scalars) != set(want):
        return "training.optim: the optimizer state does not match the parameters"
    known, array_keys = OPTIM_STATE[optimizer]
    for name, cfg in scalars.items():
        if not isinstance(cfg, dict) or not _is_num(cfg.get("learning_rate")):
            return f"training.optim.{name}.learning_rate is missing or not a finite number"
        for key, v in cfg.items():
            if key not in known + ("learning_rate",):
                return f"training.optim.{name}.{key} is not a setting of {optimizer}"
            if not (_is_num(v) and (key != "t" or (_is_int(v) and v >= 0))):
                return f"training.optim.{name}.{key} is {v!r}, expected a finite number"
        have = [k for k in array_keys if f"optim/{name}/{k}" in shapes]
        if have and len(have) != len(array_keys) or ("t" in known and bool(have) != ("t" in cfg)):
            has = have + [k for k in cfg if k == "t"]
            needs = list(array_keys) + [k for k in known if k == "t"]
            return (
                f"the optimizer state of {name} is partial (has {has}); {optimizer} needs {needs}"
            )
    for key, (shape, dtype) in shapes.items():
        kind, _, rest = key.partition("/")
        if kind == "optim":
            name, _, k = rest.rpartition("/")
            if k not in array_keys or dtype.kind != "f" or shape != want[name]:
                return f"optimizer array {name}/{k} does not fit the parameters"
    for key in HISTORY:
        if key in shapes:
            shape, dtype = shapes[key]
            # loss: one per step; the others began later (older runs), so at most one per step
            if (
                len(shape) != 1
                or dtype.kind != "f"
                or not (shape[0] == t["step"] if key == "history/loss" else shape[0] <= t["step"])
            ):
                return (
                    f"{key} has shape {shape} ({dtype}); it must hold one float per "
                    f"training step ({t['step']})"
                )
    return None
