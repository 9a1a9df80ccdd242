"""Build a coco_captioning folder from your own pictures (to caption them: captioner.pictures).

prepare_dataset: pictures + COCO-format captions -> the CS231n layout (captioner.data)
with SqueezeNet features ({split}2014_squeezenet.h5). Encoding is the slow part, so it
is checkpointed: each batch of images goes to its own file in out_dir/.prepare/,

    manifest.json        what is being built (a hash of everything the features depend on)
    chunk_00000.npz      names (n,), ok (n,) bool, errors (n,) str ('' when ok), features (m, D)
    lock                 flock'ed while a run is writing here

A chunk file appears whole or not at all (written under a temp name, then renamed), so
after Ctrl-C or kill -9 a rerun with the same arguments redoes at most one batch. Chunks
cover fixed slices of the image list, so every image is encoded in the same batch as in
an uninterrupted run: the result is the same, bit for bit. Captions and vocabulary are
cheap and rebuilt on every run; only the last step writes the dataset (data.write_dataset)
and removes the work area.
"""
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections import Counter

import numpy as np

from captioner import atomic, data, encoder
from captioner.errors import CaptionerError

KIND = 'squeezenet'  # -> {split}2014_squeezenet.h5
WORK_DIR = '.prepare'
SPECIALS = ('<NULL>', '<START>', '<END>', '<UNK>')
FIX_ANN = 'fix the file (COCO format: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]})'

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

def _show(entry):
    text = json.dumps(entry, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + '...'


def read_annotations(path):
    """COCO captions json -> (images [(id, file_name, url or None)] in file order,
    captions {id: [caption, ...]} in file order). Every problem is a CaptionerError
    naming the file and the offending entry."""
    ann = data.read_json(path, 'annotations', 'pass the captions json')
    if not isinstance(ann, dict):
        raise CaptionerError(f'{path}: top level is a {type(ann).__name__}, expected an object; {FIX_ANN}')
    for key in ('images', 'annotations'):
        if not isinstance(ann.get(key), list):
            raise CaptionerError(f"{path}: no '{key}' list; {FIX_ANN}")

    images, by_id, by_name = [], {}, {}
    for k, e in enumerate(ann['images']):
        where = f'{path}: images[{k}] {_show(e)}'
        if not isinstance(e, dict):
            raise CaptionerError(f'{where} is not an object; {FIX_ANN}')
        i, name = e.get('id'), e.get('file_name')
        if isinstance(i, bool) or not isinstance(i, (int, str)):
            raise CaptionerError(f"{where}: 'id' must be an integer; {FIX_ANN}")
        if not isinstance(name, str) or not name.strip():
            raise CaptionerError(f"{where}: 'file_name' must be a non-empty string; {FIX_ANN}")
        if i in by_id:
            raise CaptionerError(f'{where}: id {i!r} repeats images[{by_id[i]}]; image ids must be unique')
        if name in by_name:
            raise CaptionerError(f'{where}: file_name repeats images[{by_name[name]}]; list each picture once')
        by_id[i], by_name[name] = k, k
        url = next((e[u] for u in ('coco_url', 'flickr_url') if isinstance(e.get(u), str) and e[u]), None)
        images.append((i, name, url))

    captions = {}
    for k, e in enumerate(ann['annotations']):
        where = f'{path}: annotations[{k}] {_show(e)}'
        if not isinstance(e, dict):
            raise CaptionerError(f'{where} is not an object; {FIX_ANN}')
        i, cap = e.get('image_id'), e.get('caption')
        if isinstance(i, bool) or not isinstance(i, (int, str)):
            raise CaptionerError(f"{where}: 'image_id' must be an integer; {FIX_ANN}")
        if i not in by_id:
            raise CaptionerError(f"{where}: image_id {i!r} is not in 'images'; add the image or drop the caption")
        if not isinstance(cap, str):
            raise CaptionerError(f"{where}: 'caption' must be a string; {FIX_ANN}")
        captions.setdefault(i, []).append(cap)
    return images, captions


def _read_split_file(path, names):
    """Val image names, one per line, all of which must be annotated images."""
    try:
        with open(path, encoding='utf-8') as f:
            lines = [ln.strip() for ln in f.read().splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise CaptionerError(f'{path}: cannot read the val list ({e}); give a text file of image '
                             f'file names, one per line') from None
    val = {ln[2:] if ln.startswith('./') else ln for ln in lines if ln}
    unknown = sorted(val - set(names))
    if unknown:
        raise CaptionerError(f"{path}: {len(unknown)} name(s) not among the annotated file_names "
                             f"(first: {unknown[0]!r}); list val images exactly as their 'file_name'")
    return val


# ----------------------------------------------------------------------------- vocabulary

def build_vocab(token_lists, min_count=5):
    """idx_to_word: the specials, then words with count >= min_count by descending
    count, ties alphabetical (so the same captions always give the same ids)."""
    counts = Counter(w for words in token_lists for w in words)
    words = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                   key=lambda w: (-counts[w], w))
    return list(SPECIALS) + words


def encode_captions(token_lists, word_to_idx, max_words=15):
    """Token lists -> (N, max_words + 2) int32: <START> w1 .. wk <END>, <NULL>-padded,
    words outside the vocabulary as <UNK>, each caption cut to max_words."""
    out = np.full((len(token_lists), max_words + 2), word_to_idx['<NULL>'], dtype=np.int32)
    unk = word_to_idx['<UNK>']
    for r, words in enumerate(token_lists):
        ids = [word_to_idx.get(w, unk) for w in words[:max_words]]
        out[r, :len(ids) + 2] = [word_to_idx['<START>'], *ids, word_to_idx['<END>']]
    return out


# ----------------------------------------------------------------------------- work area

def _read_chunk(path, names):
    """A finished chunk file -> dict, or None when absent, unreadable or not for `names`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            c = {k: z[k] for k in ('names', 'ok', 'errors')}
            if c['names'].tolist() != names or len(c['ok']) != len(names):
                return None
            c['features'] = z['features'] if 'features' in z.files else None
    except Exception:  # half-written by another tool, or garbage: just encode it again
        return None
    if c['features'] is None or c['features'].shape != (int(c['ok'].sum()), encoder.FEATURE_DIM):
        return None
    return c


class _ChunkRows:
    """The ok feature rows of a list of chunk files, read slice by slice (what
    data.write_dataset asks for), so a big dataset never sits in RAM whole."""

    def __init__(self, paths, counts):
        self.paths, self.starts = paths, np.concatenate([[0], np.cumsum(counts)]).astype(int)
        self.shape = (int(self.starts[-1]), encoder.FEATURE_DIM)

    def __getitem__(self, rows):
        start, stop, _ = rows.indices(self.shape[0])
        parts = [np.zeros((0, self.shape[1]), np.float32)]
        for k, path in enumerate(self.paths):
            lo, hi = max(start, self.starts[k]), min(stop, self.starts[k + 1])
            if lo < hi:
                with np.load(path, allow_pickle=False) as z:
                    parts.append(z['features'][lo - self.starts[k]:hi - self.starts[k]])
        return np.concatenate(parts)


def _lock(work):
    fd = os.open(os.path.join(work, 'lock'), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CaptionerError(f'{work}: another `captioner prepare` is writing here; wait for it '
                             f'or choose another output folder') from None
    return fd


def _encode_chunks(work, chunks, images_dir, batch_size, progress):
    """Encode every chunk (a list of file names) not already done. -> (chunk paths,
    images found done at the start)."""
    key = hashlib.sha256(json.dumps([encoder.ENCODER_NAME, images_dir, batch_size, chunks]).encode()).hexdigest()
    manifest = os.path.join(work, 'manifest.json')
    try:
        with open(manifest, encoding='utf-8') as f:
            same = json.load(f).get('key') == key
    except Exception:
        same = False
    if not same:  # other pictures, split or encoder: nothing here can be reused
        for name in os.listdir(work):
            if name.startswith('chunk_'):
                os.remove(os.path.join(work, name))
        atomic.write_json(manifest, {'key': key, 'encoder': encoder.ENCODER_NAME,
                                     'images_dir': images_dir, 'batch_size': batch_size,
                                     'chunks': len(chunks), 'images': sum(map(len, chunks))})

    paths = [os.path.join(work, f'chunk_{k:05d}.npz') for k in range(len(chunks))]
    todo = [k for k in range(len(chunks)) if _read_chunk(paths[k], chunks[k]) is None]
    done = sum(map(len, chunks)) - sum(len(chunks[k]) for k in todo)
    from tqdm import tqdm
    bar = tqdm(total=sum(map(len, chunks)), initial=done, unit='img', desc='encoding',
               disable=not progress, smoothing=0.1)
    failed = 0
    try:
        for k in todo:
            names = chunks[k]
            files = [os.path.join(images_dir, n) for n in names]
            feats, _, ok_files, errors = encoder.encode_files(files, batch_size=batch_size)
            ok_set = set(ok_files)
            why = dict(errors)
            ok = np.array([f in ok_set for f in files], dtype=bool)
            msgs = np.array(['' if f in ok_set else why.get(f, 'not encoded') for f in files], dtype=str)
            arrays = dict(names=np.array(names, dtype=str), ok=ok, errors=msgs,
                          features=np.asarray(feats, dtype=np.float32))
            atomic.write_bytes(paths[k], lambda f: np.savez(f, **arrays))
            failed += int((~ok).sum())
            bar.update(len(names))
            if failed:
                bar.set_postfix(skipped=failed)
    finally:
        bar.close()
    return paths, done


# ----------------------------------------------------------------------------- prepare

def prepare_dataset(images_dir, annotations, out_dir, val_fraction=0.1, split_by=None, vocab=None,
                    min_count=5, max_words=15, batch_size=32, progress=True, seed=0):
    """Pictures + COCO captions json -> a coco_captioning folder in out_dir. Returns a summary:

    out_dir, encoder, feature_kind, vocab_size, per split {images, captions, unk_words
    (fraction of caption words that became <UNK>)}, skipped [(file_name, reason)],
    empty_captions, truncated_captions, resumed_images (found already encoded),
    encoded_images, seconds, images_per_second.
    split_by: a text file of val file names (one a line); else a seeded random
    val_fraction of the captioned images. vocab: a coco2014_vocab.json to reuse
    (needs <UNK>); else one is built from the train captions (build_vocab).
    """
    t0 = time.perf_counter()
    images_dir, out_dir = os.path.abspath(str(images_dir)), str(out_dir)
    if not os.path.isdir(images_dir):
        raise CaptionerError(f'{images_dir}: pictures folder not found; pass the folder the '
                             f"annotations' file_names are relative to")
    if int(batch_size) != batch_size or batch_size < 1:
        raise CaptionerError(f'batch size must be a positive integer, got {batch_size!r}')
    if int(max_words) != max_words or max_words < 1:
        raise CaptionerError(f'max words must be a positive integer, got {max_words!r}')
    if split_by is None and not 0 < val_fraction < 1:
        raise CaptionerError(f'val fraction must be between 0 and 1 (exclusive), got {val_fraction!r}')
    if vocab is not None:
        word_to_idx, idx_to_word = data.load_vocab(str(vocab))
        if '<UNK>' not in word_to_idx:
            raise CaptionerError(f'{vocab}: vocabulary has no <UNK> token for words outside it; '
                                 f'add one or let prepare build the vocabulary')

    images, captions = read_annotations(str(annotations))
    tokens = {i: [tokenize(c) for c in caps] for i, caps in captions.items()}
    empty = sum(not t for ts in tokens.values() for t in ts)
    tokens = {i: [t for t in ts if t] for i, ts in tokens.items()}
    all_names = [name for _, name, _ in images]
    skipped = [(name, 'no captions in the annotations') for i, name, _ in images if not tokens.get(i)]
    images = [im for im in images if tokens.get(im[0])]
    if len(images) < 2:
        raise CaptionerError(f'{annotations}: {len(images)} captioned image(s); need at least 2 '
                             f'(one for train, one for val)')

    names = [name for _, name, _ in images]
    if split_by is not None:
        val_names = _read_split_file(str(split_by), all_names)
        is_val = [n in val_names for n in names]
    else:
        n_val = min(len(images) - 1, max(1, round(val_fraction * len(images))))
        is_val = np.zeros(len(images), dtype=bool)
        is_val[np.random.default_rng(seed).permutation(len(images))[:n_val]] = True
        is_val = is_val.tolist()
    split_images = {s: [im for im, v in zip(images, is_val) if v == (s == 'val')] for s in ('train', 'val')}
    for s, ims in split_images.items():
        if not ims:
            raise CaptionerError(f'{split_by}: puts every captioned image in '
                                 f"{'val' if s == 'train' else 'train'}; each split needs at least one")

    # Chunks never straddle the splits, so each split's rows are a run of whole chunks.
    chunks, chunk_split = [], []
    for s, ims in split_images.items():
        for k in range(0, len(ims), batch_size):
            chunks.append([name for _, name, _ in ims[k:k + batch_size]])
            chunk_split.append(s)

    work = os.path.join(out_dir, WORK_DIR)
    try:
        os.makedirs(work, exist_ok=True)
    except OSError as e:
        raise CaptionerError(f'{out_dir}: cannot create the output folder ({e.strerror})') from None
    lock = _lock(work)
    try:
        chunk_paths, resumed = _encode_chunks(work, chunks, images_dir, batch_size, progress)
        split_chunks = {s: [] for s in split_images}
        ok_names = {s: [] for s in split_images}
        for k, s in enumerate(chunk_split):
            c = _read_chunk(chunk_paths[k], chunks[k])
            if c is None:
                raise CaptionerError(f'{chunk_paths[k]}: changed while prepare was running; rerun it')
            split_chunks[s].append((chunk_paths[k], int(c['ok'].sum())))
            ok_names[s] += [n for n, ok in zip(chunks[k], c['ok']) if ok]
            skipped += [(n, str(m)) for n, ok, m in zip(chunks[k], c['ok'], c['errors']) if not ok]
        if not ok_names['train'] and not ok_names['val']:
            first = skipped[-1][1] if skipped else ''
            raise CaptionerError(f'{images_dir}: none of the {len(images)} annotated pictures could be read '
                                 f'(e.g. {first}); check the folder and the file_names', exit_code=1)
        for s in split_images:
            if not ok_names[s]:
                raise CaptionerError(f'{images_dir}: no readable {s} pictures (all {len(split_images[s])} '
                                     f'were skipped); fix the pictures or change the split')

        by_name = {name: (i, url) for i, name, url in images}
        split_tokens, split_rows = {}, {}
        for s in split_images:
            toks, rows = [], []
            for r, name in enumerate(ok_names[s]):
                for t in tokens[by_name[name][0]]:
                    toks.append(t)
                    rows.append(r)
            split_tokens[s], split_rows[s] = toks, rows
        if vocab is None:
            idx_to_word = build_vocab([t[:max_words] for t in split_tokens['train']], min_count)
            word_to_idx = {w: i for i, w in enumerate(idx_to_word)}

        splits, summary_splits = {}, {}
        for s in split_images:
            caps = encode_captions(split_tokens[s], word_to_idx, max_words)
            real = caps[:, 1:] != word_to_idx['<NULL>']
            real &= caps[:, 1:] != word_to_idx['<END>']
            files = [os.path.join(images_dir, n) for n in ok_names[s]]
            splits[s] = dict(
                captions=caps, image_idxs=np.array(split_rows[s], dtype=np.int32),
                features=_ChunkRows(*zip(*split_chunks[s])), images=ok_names[s],
                urls=[by_name[n][1] or f for n, f in zip(ok_names[s], files)])
            summary_splits[s] = dict(images=len(ok_names[s]), captions=len(caps),
                                     unk_words=float((caps[:, 1:][real] == word_to_idx['<UNK>']).mean()))
        data.write_dataset(out_dir, splits, idx_to_word, kind=KIND, encoder=encoder.ENCODER_NAME)
    finally:
        os.close(lock)
    shutil.rmtree(work, ignore_errors=True)

    seconds = time.perf_counter() - t0
    n_images = sum(map(len, chunks))
    return dict(out_dir=out_dir, encoder=encoder.ENCODER_NAME, feature_kind=KIND,
                vocab_size=len(idx_to_word), **summary_splits, skipped=skipped, empty_captions=empty,
                truncated_captions=sum(len(t) > max_words for s in split_tokens.values() for t in s),
                resumed_images=resumed, encoded_images=n_images - resumed, seconds=seconds,
                images_per_second=(n_images - resumed) / max(seconds, 1e-9))
