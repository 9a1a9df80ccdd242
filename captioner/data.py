"""COCO captioning data in the CS231n `coco_captioning` layout: load, check, sample, write.

The layout (one folder, what `captioner download` unpacks and `captioner prepare` writes):

    coco2014_captions.h5        {split}_captions (N, 17) int, {split}_image_idxs (N,) int;
                                attrs['dataset'] names the dataset (ours only, e.g. flickr8k)
    coco2014_vocab.json         {"idx_to_word": [...], "word_to_idx": {...}}
    {split}2014_{suffix}.h5     'features' (M, D) float; attrs['encoder'] names the CNN (ours only)
    {split}2014_images.txt      one image file name per feature row (optional)
    {split}2014_urls.txt        one image URL per feature row (optional)

Those are the CS231n release's names, kept by COCO 2014 datasets. Any other dataset has the
same files without the claim (NAMINGS['plain']: captions.h5, vocab.json, {split}_{suffix}.h5,
{split}_images.txt, ...); a folder's naming is told by which captions file it holds, so
folders written before plain names existed load as they always did.

Captions are <START> w1 .. wk <END> padded with <NULL> to 17 columns; row i of
{split}_captions describes feature row {split}_image_idxs[i].

Every problem with the user's files raises CaptionerError with one line naming the
file, what is wrong and how to fix it; nothing here lets a raw h5py/json traceback out.
"""

import json
import logging
import os
from contextlib import contextmanager

import h5py
import numpy as np

from captioner import atomic, limits
from captioner import vocab as vocab_rules
from captioner.errors import CaptionerError
from captioner.vocab import decode_captions  # noqa: F401 (re-exported: tests and users import it)

FEATURE_KINDS = {"pca": "vgg16_fc7_pca", "fc7": "vgg16_fc7"}  # kind -> file suffix
# naming -> (captions file, vocabulary file, prefix of a split's files)
NAMINGS = {
    "coco2014": ("coco2014_captions.h5", "coco2014_vocab.json", "{}2014_"),
    "plain": ("captions.h5", "vocab.json", "{}_"),
}
CAPTIONS_FILE, VOCAB_FILE, _ = NAMINGS["coco2014"]  # the CS231n zip's names
# Feature matrices up to this size (as float32) are read into RAM: the 512-d PCA
# train set is 170 MB; the 4096-d fc7 ones (663 MB val, 1.36 GB train) stay on disk.
MAX_IN_MEMORY_BYTES = 256 * 2**20
CHECK_CHUNK_BYTES = 32 * 2**20  # bounded memory for the NaN/inf scan

FIX_DATA = "re-download with `captioner download` (or rebuild with `captioner prepare`)"
FIX_MISSING = "run `captioner download`, or pass --data DIR pointing at a coco_captioning folder"


def naming(base_dir):
    """'plain' when base_dir holds captions.h5, else 'coco2014' (the CS231n layout)."""
    plain = os.path.join(str(base_dir), NAMINGS["plain"][0])
    return "plain" if os.path.isfile(plain) else "coco2014"


def captions_file(base_dir, names=None):
    """Path of base_dir's captions file (names: a key of NAMINGS; default: what is there)."""
    return os.path.join(str(base_dir), NAMINGS[names or naming(base_dir)][0])


def vocab_file(base_dir, names=None):
    return os.path.join(str(base_dir), NAMINGS[names or naming(base_dir)][1])


def split_file(base_dir, split, name, names=None):
    """Path of a split's file: 'images.txt' -> {split}2014_images.txt (or {split}_images.txt)."""
    prefix = NAMINGS[names or naming(base_dir)][2].format(split)
    return os.path.join(str(base_dir), prefix + name)


def feature_file(base_dir, split, kind, names=None):
    """Path of the features file of one split: {split}2014_{suffix}.h5 (or {split}_{suffix}.h5)."""
    return split_file(base_dir, split, f"{FEATURE_KINDS.get(kind, kind)}.h5", names)


class H5Rows:
    """Rows of a 2-D HDF5 dataset read on demand, for feature files too big for RAM.

    rows[idx] with an int array of shape (B,) returns a float32 (B, D) array in the
    requested order (repeats allowed); an int returns one (D,) row; a slice reads a
    contiguous block. The file opens on first use; close() or `with` releases it.
    """

    def __init__(self, path, name="features"):
        self.path, self.name = path, name
        self._file = None
        with h5py.File(path, "r") as f:
            self.shape = tuple(f[name].shape)
        self.dtype = np.dtype(np.float32)

    def _ds(self):
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file[self.name]

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, idx):
        ds = self._ds()
        if isinstance(idx, slice):
            return np.asarray(ds[idx], dtype=np.float32)
        idx = np.asarray(idx)
        if idx.ndim == 0:
            return self[idx[None]][0]
        if idx.dtype.kind not in "iu":
            raise IndexError(f"{self.path}: row indices must be integers, got {idx.dtype}")
        idx = idx.ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError(f"{self.path}: row index out of range 0..{self.shape[0] - 1}")
        if idx.size == 0:
            return np.empty((0,) + self.shape[1:], np.float32)
        # h5py fancy indexing wants strictly increasing indices: read each needed row
        # once in file order, then scatter back to the order asked for.
        uniq, inverse = np.unique(idx, return_inverse=True)
        rows = np.asarray(ds[uniq], dtype=np.float32)
        return rows[inverse]

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"H5Rows({self.path!r}, shape={self.shape})"


def close_coco_data(data):
    """Release the file handles of any lazily read features in a load_coco_data dict."""
    for value in data.values():
        if isinstance(value, H5Rows):
            value.close()


# ----------------------------------------------------------------------------- loading


def read_json(path, what, fix=""):
    """Parse a JSON file; every way it can fail is one CaptionerError line naming the file."""
    fix = f"; {fix}" if fix else ""
    if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        raise CaptionerError(
            f"{path}: not a regular file (a FIFO or a device); pass the {what} JSON file{fix}"
        )  # reading one could block forever
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CaptionerError(f"{path}: {what} file not found{fix}") from None
    except IsADirectoryError:
        raise CaptionerError(
            f"{path}: is a directory, expected the {what} JSON file{fix}"
        ) from None
    except UnicodeDecodeError as e:
        raise CaptionerError(
            f"{path}: not UTF-8 text (byte {e.start}); save the {what} file as UTF-8 JSON"
        ) from None
    except json.JSONDecodeError as e:
        raise CaptionerError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg}){fix}"
        ) from None
    except (ValueError, RecursionError) as e:  # e.g. a 5,000-digit number, nesting 100,000 deep
        raise CaptionerError(
            f"{path}: unusable JSON in the {what} file ({str(e)[:80]}){fix}"
        ) from None
    except OSError as e:
        raise CaptionerError(f"{path}: cannot read the {what} file ({e.strerror}){fix}") from None


def _need_file(path):
    if not os.path.isfile(path):
        raise CaptionerError(f"{path}: file not found; {FIX_MISSING}")


@contextmanager
def _open_h5(path):
    _need_file(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        reason = str(e).split("(", 1)[-1].rstrip(")") if "(" in str(e) else str(e)
        raise CaptionerError(
            f"{path}: not a readable HDF5 file ({reason}); the file is "
            f"corrupt or truncated: {FIX_DATA}"
        ) from None
    try:
        yield f
    except (KeyError, RuntimeError, OSError, ValueError, TypeError) as e:
        # h5py reports damaged internals (bad object headers, address overflows) as any of these
        raise CaptionerError(f"{path}: damaged HDF5 file ({str(e)[:100]}); {FIX_DATA}") from None
    finally:
        f.close()


def _dataset(f, path, name):
    if name not in f or not isinstance(f[name], h5py.Dataset):
        found = ", ".join(sorted(f.keys())) or "nothing"
        raise CaptionerError(f"{path}: missing dataset '{name}' (found: {found}); {FIX_DATA}")
    return f[name]


def _read(ds, path, sel=()):
    try:
        return ds[sel]
    except (OSError, RuntimeError) as e:
        raise CaptionerError(
            f"{path}: cannot read '{ds.name.lstrip('/')}' ({e}); the file is "
            f"corrupt or truncated: {FIX_DATA}"
        ) from None


def load_vocab(path):
    """Read and check a vocabulary file (coco2014_vocab.json) -> (word_to_idx, idx_to_word)."""
    _need_file(path)
    vocab = read_json(path, "vocabulary", FIX_DATA)
    if not isinstance(vocab, dict):
        raise CaptionerError(
            f"{path}: expected a JSON object with idx_to_word and word_to_idx; {FIX_DATA}"
        )
    for key in ("idx_to_word", "word_to_idx"):
        if key not in vocab:
            raise CaptionerError(f"{path}: missing key '{key}'; {FIX_DATA}")
    idx_to_word, word_to_idx = vocab["idx_to_word"], vocab["word_to_idx"]
    if not isinstance(idx_to_word, list) or not all(isinstance(w, str) for w in idx_to_word):
        raise CaptionerError(f"{path}: idx_to_word must be a list of strings; {FIX_DATA}")
    if not isinstance(word_to_idx, dict) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in word_to_idx.values()
    ):
        raise CaptionerError(f"{path}: word_to_idx must map words to integers; {FIX_DATA}")
    if len(idx_to_word) != len(word_to_idx):
        raise CaptionerError(
            f"{path}: idx_to_word has {len(idx_to_word)} words but word_to_idx has "
            f"{len(word_to_idx)}; they must list the same words; {FIX_DATA}"
        )
    for i, w in enumerate(idx_to_word):
        if word_to_idx.get(w) != i:
            raise CaptionerError(
                f"{path}: idx_to_word[{i}] is {w!r} but word_to_idx[{w!r}] is "
                f"{word_to_idx.get(w)}; the two tables disagree; {FIX_DATA}"
            )
    broken = vocab_rules.problem(idx_to_word)
    if broken:
        raise CaptionerError(f"{path}: vocabulary {broken}; {FIX_DATA}")
    return word_to_idx, idx_to_word


def _load_captions(path, splits, word_to_idx, vocab_path):
    vocab_size = len(word_to_idx)
    start = word_to_idx[vocab_rules.START]
    blank = [word_to_idx[vocab_rules.NULL], word_to_idx[vocab_rules.END]]
    out = {}
    with _open_h5(path) as f:
        for split in splits:
            cap_ds = _dataset(f, path, f"{split}_captions")
            idx_ds = _dataset(f, path, f"{split}_image_idxs")
            if cap_ds.dtype.kind not in "iu":
                raise CaptionerError(
                    f"{path}: '{split}_captions' has dtype {cap_ds.dtype}, expected "
                    f"integer word ids; {FIX_DATA}"
                )
            if idx_ds.dtype.kind not in "iu":
                raise CaptionerError(
                    f"{path}: '{split}_image_idxs' has dtype {idx_ds.dtype}, expected "
                    f"integer feature rows; {FIX_DATA}"
                )
            if cap_ds.ndim != 2 or cap_ds.shape[1] < 2:
                raise CaptionerError(
                    f"{path}: '{split}_captions' has shape {cap_ds.shape}, expected "
                    f"(N, T) with T >= 2; {FIX_DATA}"
                )
            if idx_ds.ndim != 1 or idx_ds.shape[0] != cap_ds.shape[0]:
                raise CaptionerError(
                    f"{path}: '{split}_image_idxs' has shape {idx_ds.shape} but "
                    f"'{split}_captions' has {cap_ds.shape[0]} rows; {FIX_DATA}"
                )
            if cap_ds.shape[0] == 0:
                raise CaptionerError(f"{path}: split '{split}' is empty (0 captions); {FIX_DATA}")
            for ds in (cap_ds, idx_ds):  # before reading: a 22 KB file may declare 10^8 rows
                limits.check_h5_dataset(ds, path, FIX_DATA)
            captions = _read(cap_ds, path)
            lo, hi = int(captions.min()), int(captions.max())
            if lo < 0 or hi >= vocab_size:
                bad = hi if hi >= vocab_size else lo
                raise CaptionerError(
                    f"{path}: '{split}_captions' has word id {bad} (max id {hi}) but "
                    f"{vocab_path} has {vocab_size} words; the captions and vocabulary "
                    f"do not belong together: {FIX_DATA}"
                )
            bad = np.flatnonzero(captions[:, 0] != start)
            if bad.size:
                raise CaptionerError(
                    f"{path}: '{split}_captions' row {bad[0]} does not begin "
                    f"with <START>; every caption is <START> words <END> "
                    f"<NULL>...: {FIX_DATA}"
                )
            # no word at all: the loss would be 0 with nothing learnt (first rows: a shortcut)
            if not any(
                ((c[:, 1:] != blank[0]) & (c[:, 1:] != blank[1])).any()
                for c in (captions[:100], captions)
            ):
                raise CaptionerError(
                    f"{path}: '{split}_captions' has no caption with a word, "
                    f"only <START>, <END> and <NULL>; nothing to learn or "
                    f"score: {FIX_DATA}"
                )
            out[f"{split}_captions"] = captions.astype(np.int32, copy=False)
            out[f"{split}_image_idxs"] = _read(idx_ds, path).astype(np.int64, copy=False)
    return out


def _available_kinds(base_dir, split):
    prefix = os.path.basename(split_file(base_dir, split, ""))
    suffix_to_kind = {v: k for k, v in FEATURE_KINDS.items()}
    try:
        names = os.listdir(base_dir)
    except OSError:
        return set()
    return {
        suffix_to_kind.get(n[len(prefix) : -3], n[len(prefix) : -3])
        for n in names
        if n.startswith(prefix) and n.endswith(".h5") and len(n) > len(prefix) + 3
    }


def _pick_kind(base_dir, splits, features):
    if features != "auto":
        return features
    per_split = [_available_kinds(base_dir, s) for s in splits]
    common = set.intersection(*per_split) if per_split else set()
    if "pca" in common:
        return "pca"
    if len(common) == 1:
        return common.pop()
    if len(common) > 1:
        raise CaptionerError(
            f"{base_dir}: several feature kinds present ({', '.join(sorted(common))}); "
            f"choose one with --features KIND"
        )
    anywhere = set.union(*per_split) if per_split else set()
    if anywhere:  # some split has features the others lack: name the first missing file
        kind = "pca" if "pca" in anywhere else sorted(anywhere)[0]
        for s, kinds in zip(splits, per_split):
            if kind not in kinds:
                raise CaptionerError(
                    f"{feature_file(base_dir, s, kind)}: file not found; {FIX_MISSING}"
                )
    raise CaptionerError(
        f"{base_dir}: no feature files "
        f"({split_file('', '/'.join(splits), '<kind>.h5', naming(base_dir))}) found; {FIX_MISSING}"
    )


def _check_finite(ds, path):
    rows_per_chunk = max(1, CHECK_CHUNK_BYTES // max(1, ds.shape[1] * 4))
    for start in range(0, ds.shape[0], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        block = _read(ds, path, rows) if isinstance(ds, h5py.Dataset) else ds[rows]
        with np.errstate(over="ignore", invalid="ignore"):  # float64 past float32's range -> inf
            ok = np.isfinite(np.asarray(block, dtype=np.float32)).all(axis=1)
        if not ok.all():
            row = start + int(np.argmin(ok))
            raise CaptionerError(
                f"{path}: features contain NaN or inf (first at row {row}); {FIX_DATA}"
            )


def _load_features(path, kind, lazy, check_finite):
    """-> (features ndarray or H5Rows, encoder name)."""
    with _open_h5(path) as f:
        ds = _dataset(f, path, "features")
        if ds.dtype.kind != "f":
            raise CaptionerError(
                f"{path}: 'features' has dtype {ds.dtype}, expected float; {FIX_DATA}"
            )
        if ds.ndim != 2:
            raise CaptionerError(
                f"{path}: 'features' has shape {ds.shape}, expected 2-D (rows, dim); {FIX_DATA}"
            )
        if ds.shape[0] == 0 or ds.shape[1] == 0:
            raise CaptionerError(f"{path}: 'features' is empty (shape {ds.shape}); {FIX_DATA}")
        if lazy is None:
            lazy = ds.shape[0] * ds.shape[1] * 4 > MAX_IN_MEMORY_BYTES
        limits.check_h5_dataset(ds, path, FIX_DATA, in_memory=not lazy)
        encoder = ds.attrs.get("encoder", FEATURE_KINDS.get(kind, kind))
        if isinstance(encoder, bytes):
            encoder = encoder.decode("utf-8", "replace")
        encoder = str(encoder)
        if lazy:
            if check_finite:
                _check_finite(ds, path)
            return H5Rows(path), encoder
        with np.errstate(
            over="ignore", invalid="ignore"
        ):  # out-of-range values become inf: caught below
            features = np.asarray(_read(ds, path), dtype=np.float32)
    if check_finite:
        _check_finite(features, path)
    return features, encoder


def _read_lines(path, n_rows, feat_path):
    """Lines of an optional txt file (None if absent); must have one line per feature row."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CaptionerError(f"{path}: cannot read ({e}); {FIX_DATA}") from None
    if len(lines) != n_rows:
        raise CaptionerError(
            f"{path}: has {len(lines)} lines but {feat_path} has {n_rows} feature rows "
            f"(one line per row expected); {FIX_DATA}, or delete the txt file"
        )
    return lines


def load_coco_data(
    base_dir,
    features="auto",
    splits=("train", "val"),
    max_train=None,
    lazy=None,
    check_finite=True,
):
    """Load and check a coco_captioning folder. Returns a dict like CS231n's:

    word_to_idx, idx_to_word; per split: {split}_captions int32 (N, T),
    {split}_image_idxs int64 (N,), {split}_features float32 (M, D) ndarray (or an
    H5Rows when bigger than MAX_IN_MEMORY_BYTES; lazy=True/False forces it),
    {split}_urls and {split}_images (lists of M str, or None when the txt file is
    absent); feature_kind, feature_dim, encoder, base_dir, dataset (its name or None).
    features: 'auto' (pca if present, else the one kind present), 'pca', 'fc7' or
    any other file suffix. max_train keeps the first N training captions.
    """
    base_dir = str(base_dir)
    if not os.path.isdir(base_dir):
        raise CaptionerError(f"{base_dir}: data folder not found; {FIX_MISSING}")
    splits = tuple(splits)
    if not splits:
        raise CaptionerError(f"{base_dir}: no splits requested")
    if max_train is not None and max_train < 1:
        raise CaptionerError(f"--max-train must be at least 1, got {max_train}")
    vocab_path = vocab_file(base_dir)
    word_to_idx, idx_to_word = load_vocab(vocab_path)
    data = {"word_to_idx": word_to_idx, "idx_to_word": idx_to_word, "base_dir": base_dir}
    # Check every file exists before the (possibly slow) reads, so one message names all we need.
    kind = _pick_kind(base_dir, splits, features)
    feat_paths = {s: feature_file(base_dir, s, kind) for s in splits}
    for path in [captions_file(base_dir), *feat_paths.values()]:
        _need_file(path)
    data.update(_load_captions(captions_file(base_dir), splits, word_to_idx, vocab_path))

    dims, encoders = {}, {}
    try:
        for split in splits:
            path = feat_paths[split]
            feats, encoders[split] = _load_features(path, kind, lazy, check_finite)
            data[f"{split}_features"] = feats
            n_rows, dims[split] = feats.shape
            idxs = data[f"{split}_image_idxs"]
            lo, hi = int(idxs.min()), int(idxs.max())
            if lo < 0 or hi >= n_rows:
                raise CaptionerError(
                    f"{captions_file(base_dir)}: '{split}_image_idxs' "
                    f"points at feature row {hi if hi >= n_rows else lo} but {path} has "
                    f"{n_rows} rows; captions and features do not belong together: {FIX_DATA}"
                )
            for name in ("images", "urls"):
                data[f"{split}_{name}"] = _read_lines(
                    split_file(base_dir, split, f"{name}.txt"), n_rows, path
                )
        first = splits[0]
        for split in splits[1:]:
            if dims[split] != dims[first]:
                raise CaptionerError(
                    f"{feat_paths[split]}: features are {dims[split]}-d but "
                    f"{feat_paths[first]} has {dims[first]}-d; both splits must come "
                    f"from the same encoder: {FIX_DATA}"
                )
            if encoders[split] != encoders[first]:
                raise CaptionerError(
                    f"{feat_paths[split]}: encoder '{encoders[split]}' differs from "
                    f"'{encoders[first]}' in {feat_paths[first]}; {FIX_DATA}"
                )
    except BaseException:
        close_coco_data(data)
        raise

    if max_train is not None and "train" in splits:
        data["train_captions"] = data["train_captions"][:max_train]
        data["train_image_idxs"] = data["train_image_idxs"][:max_train]
    data.update(
        feature_kind=kind,
        feature_dim=dims[splits[0]],
        encoder=encoders[splits[0]],
        dataset=dataset_name(base_dir),
    )
    return data


def available_splits(base_dir):
    """The splits ('train', 'val', 'test', ...) base_dir's captions file holds."""
    with _open_h5(captions_file(base_dir)) as f:
        return [k[: -len("_captions")] for k in f if k.endswith("_captions")]


def dataset_name(base_dir):
    """attrs['dataset'] of base_dir's captions file (e.g. 'flickr8k'), or None; never raises."""
    try:
        with h5py.File(captions_file(base_dir), "r") as f:
            name = f.attrs.get("dataset")
    except Exception:  # a note, not a check: load_coco_data reports a broken file
        return None
    return None if name is None else name.decode() if isinstance(name, bytes) else str(name)


# attrs['source'] of the demo's datasets: `sample` warns that such a model knows only shapes
DEMO_SOURCE = "captioner demo: rendered coloured shapes on plain backgrounds"


def feature_attrs(base_dir, kind, split="train"):
    """The attributes of a split's 'features' (encoder, source, encoder_weights_sha256,
    feature_layout: what `prepare` records) as str; {} when there are none."""
    with _open_h5(feature_file(base_dir, split, kind)) as f:
        attrs = dict(f["features"].attrs) if "features" in f else {}
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in attrs.items()}


def dataset_source(base_dir, attr="source"):
    """attrs['source'] of base_dir's feature files (what write_dataset was told the
    pictures were), or another of write_dataset's attributes ('pictures'), or None;
    never raises."""
    try:
        for name in sorted(os.listdir(base_dir)):
            if name.endswith(".h5") and name not in (n[0] for n in NAMINGS.values()):
                with h5py.File(os.path.join(base_dir, name), "r") as f:
                    source = f["features"].attrs.get(attr) if "features" in f else None
                if source is not None:
                    return source.decode() if isinstance(source, bytes) else str(source)
    except Exception:  # a note, not a check: a missing or odd folder just means no note
        return None
    return None


# ----------------------------------------------------------------------------- using


def sample_coco_minibatch(data, batch_size=100, split="train", rng=None):
    """Random captions (with replacement, as CS231n) and their image features.

    Returns captions int32 (B, T), features float32 (B, D), urls (list of B str, or None).
    rng: a np.random.Generator, a seed, or None.
    """
    rng = np.random.default_rng(rng)
    captions = data[f"{split}_captions"]
    mask = rng.integers(captions.shape[0], size=batch_size)
    image_idxs = data[f"{split}_image_idxs"][mask]
    features = data[f"{split}_features"][image_idxs]
    urls = data.get(f"{split}_urls")
    if urls is not None:
        urls = [urls[i] for i in image_idxs]
    return captions[mask], features, urls


def image_groups(data, split):
    """Group caption rows by image: -> (image_idxs (K,) sorted unique, [rows_of_image_k, ...]).

    rows_of_image_k is an int array of row numbers into data[f'{split}_captions'],
    in their original order; used by evaluation (all references of one image).
    """
    idxs = data[f"{split}_image_idxs"]
    order = np.argsort(idxs, kind="stable")
    uniq, starts = np.unique(idxs[order], return_index=True)
    return uniq, np.split(order, starts[1:])


# ----------------------------------------------------------------------------- writing


def write_dataset(
    out_dir,
    splits,
    idx_to_word,
    kind="pca",
    encoder=None,
    source=None,
    pictures=None,
    name=None,
    names="coco2014",
    attrs=None,
    feature_attrs=None,
):
    """Write a complete coco_captioning folder; returns out_dir.

    splits: {split: dict(captions (N, T) int, image_idxs (N,) int, features (M, D) float
    (any array-like that slices rows, e.g. H5Rows), images, urls (lists of M str or None))}.
    coco2014_captions.h5 is rewritten with exactly these splits; features go to
    {split}2014_{suffix}.h5 with attrs['encoder'] when encoder is given. Each file is
    written under a temp name and renamed, so a crash never leaves a half file in place.
    source: what the pictures were (attrs['source'], e.g. the demo's rendered shapes).
    pictures: the folder the picture files are in (attrs['pictures']; `report` shows
    pictures from there only). name: the dataset's short name (the captions file's
    attrs['dataset'], e.g. flickr8k); names: the file names, a key of NAMINGS ('plain'
    for anything but COCO 2014). attrs: {name: str} also stored on the captions file
    (prepare's record of its inputs). feature_attrs: {name: value} stored on each features
    dataset as str (prepare: the encoder's weights sha256 and layout).
    """
    out_dir = str(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    idx_to_word = list(idx_to_word)
    vocab = {"idx_to_word": idx_to_word, "word_to_idx": {w: i for i, w in enumerate(idx_to_word)}}
    atomic.write_text(vocab_file(out_dir, names), json.dumps(vocab))

    with atomic.atomic_path(captions_file(out_dir, names)) as tmp:
        with h5py.File(tmp, "w") as f:
            if name is not None:
                f.attrs["dataset"] = str(name)
            f.attrs.update(attrs or {})
            for split, d in splits.items():
                f.create_dataset(
                    f"{split}_captions", data=np.asarray(d["captions"], dtype=np.int32)
                )
                f.create_dataset(
                    f"{split}_image_idxs", data=np.asarray(d["image_idxs"], dtype=np.int32)
                )

    for split, d in splits.items():
        feats = d["features"]
        n, dim = feats.shape
        with atomic.atomic_path(feature_file(out_dir, split, kind, names)) as tmp:
            with h5py.File(tmp, "w") as f:
                ds = f.create_dataset("features", shape=(n, dim), dtype=np.float32)
                step = max(1, CHECK_CHUNK_BYTES // (4 * dim))
                for start in range(0, n, step):  # chunked so a lazy source never sits in RAM whole
                    ds[start : start + step] = np.asarray(
                        feats[start : start + step], dtype=np.float32
                    )
                if encoder is not None:
                    ds.attrs["encoder"] = str(encoder)
                if source is not None:
                    ds.attrs["source"] = str(source)
                if pictures is not None:
                    ds.attrs["pictures"] = os.path.abspath(pictures)
                for key, value in (feature_attrs or {}).items():
                    ds.attrs[key] = str(value)
        for what in ("images", "urls"):
            lines = d.get(what)
            if lines is not None:
                if len(lines) != n:
                    raise ValueError(f"{split} {what}: {len(lines)} lines for {n} feature rows")
                atomic.write_text(
                    split_file(out_dir, split, f"{what}.txt", names),
                    "".join(f"{line}\n" for line in lines),
                )
    return out_dir


# offline stand-ins for the default --data: what `make demo` builds; what
# `python scripts/make_synthetic_coco.py data/synthetic` writes (CS231n's layout and sizes)
DEMO_DATA = os.path.join("data", "demo", "dataset")
SYNTHETIC_DATA = os.path.join("data", "synthetic")


def open_dataset(
    path, features="auto", splits=("train", "val"), max_train=None, fallback=DEMO_DATA
):
    """load_coco_data of a folder that must exist (the error says how to get one); path
    left at its default (config.DATA_DEFAULT) and not downloaded: `fallback` when it is
    there, with a note on the captioner logger (d['base_dir'] says which was read)."""
    from .config import DATA_DEFAULT

    if not os.path.isdir(path):
        if path == DATA_DEFAULT and os.path.isfile(captions_file(fallback)):
            logging.getLogger("captioner").info(
                f"note: {path} is not downloaded (`captioner download`); using {fallback} "
                f"(--data chooses)"
            )
            path = fallback
        else:
            raise CaptionerError(
                f"{path}: no such dataset directory; run `captioner download` (or "
                f"`make coco`), or point --data / CAPTIONER_DATA at one (offline: `make demo` "
                f"builds {DEMO_DATA}; `python scripts/make_synthetic_coco.py data/synthetic` "
                f"makes a synthetic one in seconds)"
            )
    return load_coco_data(path, features=features, splits=splits, max_train=max_train)
