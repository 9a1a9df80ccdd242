"""Build a coco_captioning folder from pictures and captions (to caption them: captioner.pictures).

prepare_dataset: a folder of pictures + COCO-format captions; prepare_coco: the COCO 2014
zips (captioner.sources.coco reads them, pictures stay inside the zips); prepare_flickr8k: the two
Flickr8k zips; prepare_karpathy: any dataset in Karpathy's format, pictures in a folder or a
zip (captioner.sources). All go through _build: the pictures are cut into shards of
`batch_size` (captioner.shards: encoded by worker processes or any concurrent.futures
executor), each shard's result goes to its own file in out_dir/.prepare/, and the dataset is
written in the CS231n layout (captioner.data) with the features of one of captioner.encoders
({split}_{kind}.h5, e.g. val_lite0.h5; a COCO 2014 dataset keeps the CS231n names,
train2014_lite0.h5).

    manifest.json        what is being built (encoder, number of chunks and images)
    chunk_00000.npz      names (n,), ok (n,) bool, errors (n,) str ('' when ok),
                         features (m, D), key: hash of the encoder, batch size, names,
                         places and sizes/mtimes (zip members: CRC/size) of its pictures
    lock                 flock'ed while a run is writing here

Only this process writes there (a chunk appears whole or not at all: captioner.atomic),
so after Ctrl-C or kill -9 a rerun redoes at most the shards in flight, and a picture
changed in between is noticed (the key) and encoded again. Shards cover fixed slices of
the image list and a shard's features depend on nothing else, so the result is the same,
bit for bit, whatever the number of workers and however often it was interrupted.
Captions and vocabulary are cheap and rebuilt on every run; only the last step writes
the dataset (data.write_dataset) and removes the work area.
"""

import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time

import numpy as np

from captioner import atomic, data, encoders, limits, shards
from captioner.errors import CaptionerError
from captioner.sources.coco import read_annotations
from captioner.sources.paths import unsafe_name, unsafe_text
from captioner.vocab import SPECIALS, build_vocab, encode_captions  # noqa: F401 (tests)

LOG = logging.getLogger("captioner")  # the CLI shows it on stderr

WORK_DIR = ".prepare"
try:  # the PTB tokenizer of the COCO toolkit, so training words are the words scored
    from captioner.metrics import tokenize as _ptb_tokenize
except ImportError:  # pragma: no cover
    _ptb_tokenize = None


def tokenize(caption):
    """Caption -> lowercase words, punctuation dropped (the COCO evaluation tokens)."""
    if _ptb_tokenize is not None:
        return _ptb_tokenize(caption)
    import re  # pragma: no cover

    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", caption.lower())  # pragma: no cover


# ----------------------------------------------------------------------------- annotations


def _read_split_file(path, names):
    """Val image names, one per line, all of which must be annotated images."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [ln.strip() for ln in f.read().splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise CaptionerError(
            f"{path}: cannot read the val list ({e}); give a text file of image "
            f"file names, one per line"
        ) from None
    val = {ln[2:] if ln.startswith("./") else ln for ln in lines if ln}
    unknown = sorted(val - set(names))
    if unknown:
        raise CaptionerError(
            f"{path}: {len(unknown)} name(s) not among the annotated file_names "
            f"(first: {unknown[0]!r}); list val images exactly as their "
            f"'file_name'"
        )
    return val


# ----------------------------------------------------------------------------- vocabulary


# ----------------------------------------------------------------------------- picture names


def _file_identity(path):
    """What a picture file is, for resume: [size, mtime_ns], or None if it cannot be seen."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return [st.st_size, st.st_mtime_ns]


# ----------------------------------------------------------------------------- work area


def _chunk_key(spec, identities):
    """A chunk's features depend on the encoder, the batch size and these exact pictures."""
    net = encoders.module(spec["encoder"])
    blob = json.dumps(
        [
            net.ENCODER_NAME,
            net.WEIGHTS_SHA256,
            spec["batch_size"],
            spec["names"],
            spec["refs"],
            identities,
        ]
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_chunk(path, names, key, dim):
    """A finished chunk file -> dict, or None when absent, unreadable, or not made from
    the same pictures (their names, places and sizes/mtimes: `key`)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            c = {k: z[k] for k in ("names", "ok", "errors", "key")}
            if c["names"].tolist() != names or len(c["ok"]) != len(names) or str(c["key"]) != key:
                return None
            c["features"] = z["features"] if "features" in z.files else None
    except Exception:  # half-written by another tool, or garbage: just encode it again
        return None
    if c["features"] is None or c["features"].shape != (int(c["ok"].sum()), dim):
        return None
    return c


class _ChunkRows:
    """The ok feature rows of a list of chunk files, read slice by slice (what
    data.write_dataset asks for), so a big dataset never sits in RAM whole."""

    def __init__(self, paths, counts, dim):
        self.paths, self.starts = paths, np.concatenate([[0], np.cumsum(counts)]).astype(int)
        self.shape = (int(self.starts[-1]), dim)

    def __getitem__(self, rows):
        start, stop, _ = rows.indices(self.shape[0])
        parts = [np.zeros((0, self.shape[1]), np.float32)]
        for k, path in enumerate(self.paths):
            lo, hi = max(start, self.starts[k]), min(stop, self.starts[k + 1])
            if lo < hi:
                with np.load(path, allow_pickle=False) as z:
                    parts.append(z["features"][lo - self.starts[k] : hi - self.starts[k]])
        return np.concatenate(parts)


def _lock(work):
    return atomic.lock_exclusive(
        os.path.join(work, "lock"),
        "output folder",
        f"{work}: another `captioner prepare` is writing here; wait for it or choose another "
        f"output folder",
    )


def default_workers():
    """All the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (macOS)
        return os.cpu_count() or 1


def _encode_chunks(work, specs, keys, executor, workers, progress, on_shard, enc):
    """Encode every shard whose chunk file is not already done, through `executor`
    (None: shards.default_executor(workers)). -> (chunk paths, images found done)."""
    for name in os.listdir(work):  # chunks of a longer image list, or a killed writer's temp files
        m = re.fullmatch(r"chunk_(\d+)\.npz", name)
        if name.startswith(".tmp-") or (m and int(m.group(1)) >= len(specs)):
            os.remove(os.path.join(work, name))
    atomic.write_json(
        os.path.join(work, "manifest.json"),
        {
            "encoder": encoders.module(enc).ENCODER_NAME,
            "chunks": len(specs),
            "images": sum(len(s["names"]) for s in specs),
        },
    )
    paths = [os.path.join(work, f"chunk_{k:05d}.npz") for k in range(len(specs))]
    dim = encoders.module(enc).FEATURE_DIM
    todo = [
        s
        for s in specs
        if _read_chunk(paths[s["index"]], s["names"], keys[s["index"]], dim) is None
    ]
    total = sum(len(s["names"]) for s in specs)
    done = total - sum(len(s["names"]) for s in todo)
    if progress:
        progress("encoding", done, total, "img")
    encoded, failed = [done], [0]

    def write(result):
        k = int(result["index"])
        arrays = {name: result[name] for name in ("names", "ok", "errors", "features")}
        arrays["key"] = np.array(keys[k])
        atomic.write_bytes(paths[k], lambda f: np.savez(f, **arrays), what="chunk file")
        failed[0] += int((~result["ok"]).sum())
        encoded[0] += len(result["names"])
        if progress:
            progress(
                "encoding",
                encoded[0],
                total,
                "img",
                **({"skipped": failed[0]} if failed[0] else {}),
            )
        if on_shard is not None:
            on_shard(k)

    if executor is None:
        with shards.default_executor(workers) as pool:
            shards.run_shards(pool, todo, write, max_pending=2 * workers)
    else:
        shards.run_shards(executor, todo, write, max_pending=2 * workers)
    return paths, done


# ----------------------------------------------------------------------------- prepare


def _check_sizes(batch_size, max_words, workers):
    for what, v in (("batch size", batch_size), ("max words", max_words), ("workers", workers)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise CaptionerError(f"{what} must be a positive integer, got {v!r}")


def _load_vocab(vocab):
    if vocab is None:
        return None
    word_to_idx, _ = data.load_vocab(str(vocab))
    if "<UNK>" not in word_to_idx:
        raise CaptionerError(
            f"{vocab}: vocabulary has no <UNK> token for words outside it; "
            f"add one or let prepare build the vocabulary"
        )
    return data.load_vocab(str(vocab))


def prepare_dataset(
    images_dir,
    annotations,
    out_dir,
    val_fraction=0.1,
    split_by=None,
    vocab=None,
    min_count=5,
    max_words=15,
    batch_size=32,
    progress=None,
    seed=0,
    workers=None,
    executor=None,
    on_shard=None,
    source=None,
    force=False,
    encoder=None,
):
    """Pictures + COCO captions json -> a coco_captioning folder in out_dir. Returns a summary:

    out_dir, encoder, feature_kind, vocab_size, per split {images, captions, unk_words
    (fraction of caption words that became <UNK>)}, skipped [(file_name, reason)],
    empty_captions, truncated_captions, resumed_images (found already encoded),
    encoded_images, seconds, images_per_second, workers, warnings (sentences, each with its
    fix: mostly-<UNK> captions, a split of a few images) and done_before (out_dir already
    held this very dataset: nothing was done).
    split_by: a text file of val file names (one a line); else a seeded random
    val_fraction of the captioned images. vocab: a coco2014_vocab.json to reuse
    (needs <UNK>); else one is built from the train captions (build_vocab).
    workers: encoding processes (default: all cores); executor: any
    concurrent.futures.Executor to run the shards instead (captioner.shards); workers
    then only sets how many shards are in flight. on_shard(k): called after chunk k is
    written. progress: None, or progress(desc, done, total, unit, **figures) called as the
    captions are read and the pictures encoded (the CLI draws a bar from it). source: what
    the pictures are (data.write_dataset; the demo marks its own).
    encoder: a captioner.encoders name (None: encoders.DEFAULT).
    File names outside images_dir, or that cannot be written one a line, are skipped
    with the reason. out_dir may hold only prepare's own work: an interrupted run (resumed)
    or a finished dataset (the same inputs: done_before; others: refused unless force).
    """
    t0 = time.perf_counter()
    images_dir, out_dir = os.path.abspath(str(images_dir)), str(out_dir)
    built = _check_out(out_dir, force)
    if not os.path.isdir(images_dir):
        raise CaptionerError(
            f"{images_dir}: pictures folder not found; pass the folder the "
            f"annotations' file_names are relative to"
        )
    if unsafe_text(images_dir):  # its path goes into *_urls.txt, UTF-8 text, one a line
        raise CaptionerError(
            f"{images_dir}: the pictures folder's path cannot be a line of the dataset's "
            f"UTF-8 *_urls.txt ({unsafe_text(images_dir, 'it')}); rename or move the folder"
        )
    workers = default_workers() if workers is None else workers
    _check_sizes(batch_size, max_words, workers)
    if split_by is None and not 0 < val_fraction < 1:
        raise CaptionerError(
            f"val fraction must be between 0 and 1 (exclusive), got {val_fraction!r}"
        )
    vocab = _load_vocab(vocab)

    images, captions = read_annotations(str(annotations))
    all_names = [name for _, name, _ in images]
    skipped, kept = [], []
    for i, name, url in images:  # names are checked once, here: nothing outside is ever opened
        why = unsafe_name(name, images_dir) or (unsafe_text(url, "coco_url") if url else None)
        if why:
            skipped.append((name, why))
        else:
            kept.append((i, name, url))
    items = [
        dict(
            name=name,
            ref=os.path.join(images_dir, name),
            ident=_file_identity(os.path.join(images_dir, name)),
            url=url or os.path.join(images_dir, name),
            captions=captions.get(i, []),
        )
        for i, name, url in kept
    ]
    items, empty = _tokenize(items, skipped, progress)
    if len(items) < 2:
        raise CaptionerError(
            f"{annotations}: {len(items)} captioned image(s); need at least 2 "
            f"(one for train, one for val)"
        )

    if split_by is not None:
        val_names = _read_split_file(str(split_by), all_names)
        is_val = [it["name"] in val_names for it in items]
    else:
        n_val = min(len(items) - 1, max(1, round(val_fraction * len(items))))
        is_val = np.zeros(len(items), dtype=bool)
        is_val[np.random.default_rng(seed).permutation(len(items))[:n_val]] = True
        is_val = is_val.tolist()
    split_items = {
        s: [it for it, v in zip(items, is_val) if v == (s == "val")] for s in ("train", "val")
    }
    for s, its in split_items.items():
        if not its:
            raise CaptionerError(
                f"{split_by}: puts every captioned image in "
                f"{'val' if s == 'train' else 'train'}; each split needs at "
                f"least one"
            )
    return _build(
        out_dir,
        split_items,
        skipped,
        empty,
        vocab,
        min_count,
        max_words,
        batch_size,
        progress,
        workers,
        executor,
        on_shard,
        images_dir,
        t0,
        source,
        pictures=images_dir,
        encoder=encoder,
        built=built,
        split_fix="list more val pictures in --split-by"
        if split_by is not None
        else f"hold out more with --val-fraction {_fraction_for(len(items))}",
    )


def prepare_coco(coco_dir, out_dir, split="karpathy", progress=None, **options):
    """The COCO 2014 zips of `captioner download --images` (in coco_dir) -> a dataset in
    out_dir, reading the pictures out of the zips. split 'karpathy': train (train +
    restval), val and test of Karpathy's dataset_coco.json, its raw sentences as captions;
    'official': train2014 / val2014 with captions_{train,val}2014.json. options: vocab,
    min_count, max_words, batch_size, workers, executor, on_shard, force, encoder (as
    prepare_dataset). Returns the summary of prepare_dataset (with a 'test' entry for
    karpathy). The files keep the CS231n release's names (coco2014_captions.h5, ...)."""
    from captioner.sources import coco

    def read():
        # Karpathy's file is 160 MB of JSON: say what the first minute is spent on
        LOG.info(f"{coco_dir}: reading the {split} split's captions and the zips' directories")
        return coco.read_split(str(coco_dir), split) + ([],)

    what = dict(
        source="COCO 2014 photographs",
        name=f"coco2014-{split}",
        names="coco2014",
        split_fix="use the complete zips of `captioner download --images`",
    )
    return _prepare_read(read, coco_dir, out_dir, what, progress=progress, **options)


def prepare_flickr8k(flickr_dir, out_dir, **options):
    """The two zips of `captioner download --flickr8k` (in flickr_dir) -> a dataset in out_dir:
    the standard train / dev (as val) / test lists, pictures read out of the zip. Options and
    summary as prepare_coco, plus 'notes' (the release's gaps that were worked around)."""
    from captioner.sources import flickr8k

    what = dict(source="Flickr8k photographs", name="flickr8k", pictures=flickr_dir)
    return _prepare_read(lambda: flickr8k.read(flickr_dir), flickr_dir, out_dir, what, **options)


def prepare_karpathy(karpathy, images, out_dir, member=None, **options):
    """A dataset in Karpathy's format (the .json `karpathy`, or its `member` when karpathy is
    a zip such as caption_datasets.zip) with its pictures in `images` (a folder or a zip) ->
    a dataset in out_dir: train (+ restval), val, test. Options and summary as prepare_coco."""
    from captioner.sources import karpathy as reader

    def read():
        splits, skipped, name = reader.read(karpathy, images, member)
        what["name"] = name
        what["source"] = f"{name} photographs (Karpathy's format)"
        what["pictures"] = images if os.path.isdir(images) else os.path.dirname(images) or "."
        return splits, skipped, []

    what = {}
    return _prepare_read(read, images, out_dir, what, **options)


def _prepare_read(
    read,
    where,
    out_dir,
    what,
    vocab=None,
    min_count=5,
    max_words=15,
    batch_size=32,
    progress=None,
    workers=None,
    executor=None,
    on_shard=None,
    force=False,
    encoder=None,
):
    """Check the options, read() -> ({split: [item]}, skipped, notes), tokenise, _build.
    what: source, name and names of the dataset (data.write_dataset)."""
    t0 = time.perf_counter()
    built = _check_out(out_dir, force)
    why = unsafe_text(os.path.abspath(str(where)), "its path")
    if why:  # the pictures' places go into *_urls.txt, UTF-8 text, one a line
        raise CaptionerError(
            f"{where}: cannot be named in the dataset's *_urls.txt ({why}); rename or move it"
        )
    workers = default_workers() if workers is None else workers
    _check_sizes(batch_size, max_words, workers)
    vocab = _load_vocab(vocab)
    split_items, skipped, notes = read()
    items, empty = _tokenize([it for its in split_items.values() for it in its], skipped, progress)
    keep = {id(it) for it in items}
    split_items = {s: [it for it in its if id(it) in keep] for s, its in split_items.items()}
    for s, its in split_items.items():
        if not its:
            raise CaptionerError(
                f"{where}: no captioned {s} pictures; check that the files are "
                f"complete (and the split of the pictures)"
            )
    summary = _build(
        str(out_dir),
        split_items,
        skipped,
        empty,
        vocab,
        min_count,
        max_words,
        batch_size,
        progress,
        workers,
        executor,
        on_shard,
        str(where),
        t0,
        encoder=encoder,
        built=built,
        **what,
    )
    return dict(summary, notes=notes)


def _tokenize(items, skipped, progress=None):
    """Tokenise each item's captions (-> item['tokens']); items left without a caption go to
    skipped. -> (items with captions, number of empty captions). A caption is read up to
    limits.MAX_CAPTION_CHARS characters (COCO's longest has ~250; at most 100 words are
    kept): a crafted caption of megabytes costs no more than that."""
    empty, out = 0, []
    show = progress if progress and len(items) >= 1000 else None  # a flash otherwise
    for k, it in enumerate(items):
        if show:
            show("captions", k, len(items), "img")
        # interned: COCO's ~7 million caption words are ~30,000 distinct strings
        caps = [c[: limits.MAX_CAPTION_CHARS] for c in it.pop("captions")]
        toks = [[sys.intern(w) for w in tokenize(c)] for c in caps]
        empty += sum(not t for t in toks)
        it["tokens"] = [t for t in toks if t]
        if it["tokens"]:
            out.append(it)
        else:
            skipped.append((it["name"], "no captions in the annotations"))
    if show:
        show("captions", len(items), len(items), "img")
    return out, empty


def _build(
    out_dir,
    split_items,
    skipped,
    empty,
    vocab,
    min_count,
    max_words,
    batch_size,
    progress,
    workers,
    executor,
    on_shard,
    where,
    t0,
    source=None,
    pictures=None,
    name=None,
    names="plain",
    built=None,
    split_fix="put more pictures in that split of the dataset's split lists",
    encoder=None,
):
    """Encode split_items ({split: [item]}) in shards and write the dataset (pictures: the
    folder of the picture files, recorded in it for `report`; source, name and names: see
    data.write_dataset). built: the record of the dataset already in out_dir (_check_out):
    the same inputs again mean nothing to do; other inputs are refused (force rebuilds).
    split_fix: what to do about a split of a few pictures. encoder: a captioner.encoders name
    (None: the default for photographs)."""
    enc = encoders.get(encoders.DEFAULT if encoder is None else encoder)
    about = encoders.describe(enc)
    # Shards never straddle the splits, so each split's rows are a run of whole chunks.
    specs, keys, shard_split, shard_items = [], [], [], []
    for s, its in split_items.items():
        for k in range(0, len(its), batch_size):
            part = its[k : k + batch_size]
            spec = dict(
                index=len(specs),
                names=[it["name"] for it in part],
                refs=[it["ref"] for it in part],
                batch_size=batch_size,
                encoder=enc.name,
            )
            keys.append(_chunk_key(spec, [it["ident"] for it in part]))
            specs.append(spec)
            shard_split.append(s)
            shard_items.append(part)

    record = _record(keys, split_items, vocab, min_count, max_words, source, enc.name)
    if built is not None:
        if built.get("record") == record:  # this very dataset: nothing to do
            return dict(
                built["summary"],
                out_dir=out_dir,
                done_before=True,
                resumed_images=0,
                encoded_images=0,
                seconds=time.perf_counter() - t0,
                images_per_second=0.0,
                workers=workers,
            )
        what = "other pictures, captions or settings" if built else "inputs it did not record"
        raise CaptionerError(
            f"{out_dir}: holds a dataset captioner prepare built from {what}; pass --force "
            f"to rebuild it, or choose another --out"
        )

    work = os.path.join(out_dir, WORK_DIR)
    try:
        os.makedirs(work, exist_ok=True)
    except OSError as e:
        raise CaptionerError(
            f"{out_dir}: cannot create the output folder ({e.strerror})"
        ) from None
    lock = _lock(work)
    try:
        chunk_paths, resumed = _encode_chunks(
            work, specs, keys, executor, workers, progress, on_shard, enc
        )
        split_chunks = {s: [] for s in split_items}
        ok_items = {s: [] for s in split_items}
        for k, s in enumerate(shard_split):
            c = _read_chunk(chunk_paths[k], specs[k]["names"], keys[k], about["dim"])
            if c is None:
                raise CaptionerError(
                    f"{chunk_paths[k]}: changed while prepare was running; rerun it"
                )
            split_chunks[s].append((chunk_paths[k], int(c["ok"].sum())))
            ok_items[s] += [it for it, ok in zip(shard_items[k], c["ok"]) if ok]
            skipped += [
                (it["name"], str(m))
                for it, ok, m in zip(shard_items[k], c["ok"], c["errors"])
                if not ok
            ]
        n_images = len(specs) and sum(len(s["names"]) for s in specs)
        if not any(ok_items.values()):
            first = skipped[-1][1] if skipped else ""
            raise CaptionerError(
                f"{where}: none of the {n_images} annotated pictures could be "
                f"read (e.g. {first}); check the folder and the file_names",
                exit_code=1,
            )
        for s in split_items:
            if not ok_items[s]:
                raise CaptionerError(
                    f"{where}: no readable {s} pictures (all "
                    f"{len(split_items[s])} were skipped); fix the pictures or "
                    f"change the split"
                )

        split_tokens, split_rows = {}, {}
        for s in split_items:
            toks, rows = [], []
            for r, it in enumerate(ok_items[s]):
                toks += it["tokens"]
                rows += [r] * len(it["tokens"])
            split_tokens[s], split_rows[s] = toks, rows
        if vocab is None:
            idx_to_word = build_vocab([t[:max_words] for t in split_tokens["train"]], min_count)
            word_to_idx = {w: i for i, w in enumerate(idx_to_word)}
        else:
            word_to_idx, idx_to_word = vocab

        splits, summary_splits = {}, {}
        for s in split_items:
            caps = encode_captions(split_tokens[s], word_to_idx, max_words)
            real = caps[:, 1:] != word_to_idx["<NULL>"]
            real &= caps[:, 1:] != word_to_idx["<END>"]
            splits[s] = dict(
                captions=caps,
                image_idxs=np.array(split_rows[s], dtype=np.int32),
                features=_ChunkRows(*zip(*split_chunks[s]), about["dim"]),
                images=[it["name"] for it in ok_items[s]],
                urls=[it["url"] for it in ok_items[s]],
            )
            summary_splits[s] = dict(
                images=len(ok_items[s]),
                captions=len(caps),
                unk_words=float((caps[:, 1:][real] == word_to_idx["<UNK>"]).mean()),
            )
        summary = dict(
            dataset=name,
            encoder=about["feature_id"],
            feature_kind=enc.kind,
            vocab_size=len(idx_to_word),
            **summary_splits,
            skipped=skipped,
            empty_captions=empty,
            truncated_captions=sum(len(t) > max_words for s in split_tokens.values() for t in s),
            warnings=_warnings(summary_splits, vocab, min_count, split_fix),
        )
        stamp = {"prepare_record": record, "prepare_summary": json.dumps(summary)}
        with atomic.fresh_dir(out_dir, "dataset") as new:  # replaces out_dir (and work) whole
            data.write_dataset(
                new,
                splits,
                idx_to_word,
                kind=enc.kind,
                encoder=about["feature_id"],
                source=source,
                pictures=pictures,
                feature_attrs={
                    "encoder_weights_sha256": about["weights_sha256"],
                    "feature_layout": about["layout"],
                },
                name=name,
                names=names,
                attrs=stamp,
            )
    finally:
        os.close(lock)
    shutil.rmtree(work, ignore_errors=True)

    seconds = time.perf_counter() - t0
    return dict(
        summary,
        out_dir=out_dir,
        done_before=False,
        resumed_images=resumed,
        encoded_images=n_images - resumed,
        seconds=seconds,
        images_per_second=(n_images - resumed) / max(seconds, 1e-9),
        workers=workers,
    )


# ----------------------------------------------------------------------------- own output

MIN_SPLIT_IMAGES = 5  # fewer and a split's loss and scores say little
MAX_UNK_SHARE = 0.10  # more unknown train words and captions are mostly <UNK>


def _dataset_names(names):
    """True when every name is one prepare writes into a dataset folder."""
    pattern = (
        r"(coco2014_)?(captions\.h5|vocab\.json)"
        r"|(train|val|test)(2014)?_(\w+\.h5|images\.txt|urls\.txt)"
    )
    return all(n == WORK_DIR or re.fullmatch(pattern, n) for n in names)


def _check_out(out_dir, force):
    """Refuse (unless force) an out_dir holding anything but prepare's own work: its work area
    (an interrupted run) or a dataset it finished. -> that dataset's record
    {"record", "summary"} (empty for a dataset written before records were kept), or None."""
    try:
        names = os.listdir(out_dir)
    except OSError:
        names = []
    built = None
    captions = data.captions_file(out_dir)
    if not force and os.path.isfile(captions) and _dataset_names(names):
        built = _read_record(captions)
    if built is None:  # anything else there was not made by prepare
        atomic.check_fresh_dir(out_dir, force, "dataset folder", keep=(WORK_DIR,))
    return built


def _read_record(path):
    """The record prepare stamped on a captions file: {"record", "summary"}; {} for a
    dataset prepare wrote before it kept records; None when the folder is not prepare's."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = {k: f.attrs[k] for k in ("prepare_record", "prepare_summary") if k in f.attrs}
    except (OSError, ValueError):
        return None
    if len(attrs) < 2:  # prepare's, from before it kept records, if its features name an encoder
        folder = os.path.dirname(path)
        for name in os.listdir(folder):
            if name.endswith(".h5") and name not in (n[0] for n in data.NAMINGS.values()):
                try:
                    with h5py.File(os.path.join(folder, name), "r") as f:
                        if "encoder" in f["features"].attrs:
                            return {}
                except (OSError, KeyError, ValueError):
                    pass
        return None
    text = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in attrs.items()}
    try:
        return {"record": text["prepare_record"], "summary": json.loads(text["prepare_summary"])}
    except ValueError:
        return {}


def _record(keys, split_items, vocab, min_count, max_words, source, encoder):
    """A hash of everything the dataset is made of: the pictures and their encoder (the chunk
    keys hold its weights' hash too), the splits, the caption tokens and the vocabulary
    settings."""
    h = hashlib.sha256()
    blob = [keys, vocab[1] if vocab else min_count, max_words, source, encoder]
    h.update(json.dumps(blob).encode())
    for s, its in split_items.items():
        h.update(s.encode())
        for it in its:
            h.update(json.dumps([it["name"], it["tokens"]]).encode())
    return h.hexdigest()


def _warnings(splits, vocab, min_count, split_fix):
    """Sentences on a degenerate dataset (mostly <UNK> captions, a split of a few images),
    each with its fix."""
    out = []
    unk = splits["train"]["unk_words"]
    if unk > MAX_UNK_SHARE:
        why = "are not in --vocab" if vocab else f"occur fewer than --min-count {min_count} times"
        fix = "build the vocabulary from these captions" if vocab else "pass --min-count 1"
        out.append(
            f"{unk:.1%} of the train caption words become <UNK> (they {why}): the model would "
            f"learn mostly <UNK>; with so few captions {fix}"
        )
    for s, t in splits.items():
        if t["images"] < MIN_SPLIT_IMAGES:
            n = t["images"]
            out.append(
                f"the {s} split has only {n} image{'' if n == 1 else 's'}: its loss and "
                f"scores say little; {split_fix}"
            )
    return out


def _fraction_for(n_images):
    """A --val-fraction giving val MIN_SPLIT_IMAGES of n_images (in steps of 0.05, at most
    0.5)."""
    return round(min(0.5, math.ceil(MIN_SPLIT_IMAGES / max(n_images, 1) / 0.05) * 0.05), 2)
