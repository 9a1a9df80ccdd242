"""Datasets in Karpathy's format: dataset_flickr8k.json, dataset_flickr30k.json and
dataset_coco.json (in caption_datasets.zip), or anyone's own pictures described the same way:

    {"dataset": "flickr30k",
     "images": [{"filename": "1000092795.jpg",      the picture
                 "filepath": "train2014",           optional: its folder
                 "split": "train",                  train, restval (-> train), val or test
                 "sentences": [{"raw": "Two young guys with shaggy hair ..."}, ...]}, ...]}

parse() checks the structure (every problem: one line naming the entry and the fix); read()
loads the file (a .json, or a member of a zip) and finds every picture in a folder or inside a
zip, refusing the whole file when some are missing. Items are prepare's:
dict(name, ref, ident, url, captions).
"""

import json
import os
import re

from captioner import limits
from captioner.errors import CaptionerError
from captioner.sources.paths import read_file, read_zip_member

SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
FORMAT = (
    'Karpathy\'s format: {"images": [{"filename", "filepath" (optional), "split": '
    'train|restval|val|test, "sentences": [{"raw"}]}]}'
)
FIX = f"fix the file ({FORMAT})"


def drop_tokens(obj):
    """json object_hook: the pre-made 'tokens' (we tokenise 'raw' ourselves) are dropped as
    each sentence is parsed; for COCO they would be ~7 million strings held at once."""
    obj.pop("tokens", None)
    return obj


def load(path, member=None):
    """Parse a Karpathy .json, or `member` of a zip (caption_datasets.zip) -> (doc, label)."""
    fix = "pass a dataset_*.json of Karpathy's caption_datasets.zip, or a file in its format"
    if member is None:
        if path.endswith(".zip"):
            raise CaptionerError(
                f"{path}: a zip; name the JSON inside it with --karpathy-name "
                f"(e.g. dataset_flickr30k.json)"
            )
        blob, label = read_file(path, limits.MAX_JSON_BYTES, "a JSON file", fix), path
    else:
        blob = read_zip_member(path, member, limits.MAX_JSON_BYTES, "a JSON file", fix)
        label = f"{path}:{member}"
    try:
        return json.loads(blob, object_hook=drop_tokens), label
    except UnicodeDecodeError as e:
        raise CaptionerError(f"{label}: not UTF-8 text (byte {e.start}); {FIX}") from None
    except json.JSONDecodeError as e:
        raise CaptionerError(
            f"{label}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg}); {FIX}"
        ) from None
    except (ValueError, RecursionError) as e:
        raise CaptionerError(f"{label}: not valid JSON ({str(e)[:80]}); {FIX}") from None


def parse(doc, label, fix=FIX):
    """Check a parsed Karpathy file -> [(split, filepath or None, filename, [raw, ...])] in file
    order, split already mapped (restval -> train). Names are checked by the caller."""
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise CaptionerError(f"{label}: no 'images' list; {fix}")
    out, seen = [], {}
    for k, e in enumerate(doc["images"]):
        where = f"{label}: images[{k}]"
        if not isinstance(e, dict):
            raise CaptionerError(f"{where} is not an object; {fix}")
        folder, file, split = e.get("filepath"), e.get("filename"), e.get("split")
        if (
            not isinstance(file, str)
            or not file
            or not (folder is None or isinstance(folder, str))
        ):
            raise CaptionerError(
                f"{where}: 'filename' must be a file name (and 'filepath', when given, a "
                f"folder name); {fix}"
            )
        if split not in SPLITS:
            raise CaptionerError(
                f"{where}: 'split' {split!r} is not one of {', '.join(SPLITS)}; {fix}"
            )
        sents = e.get("sentences")
        if not isinstance(sents, list) or not all(
            isinstance(s, dict) and isinstance(s.get("raw"), str) for s in sents
        ):
            raise CaptionerError(
                f"{where}: 'sentences' must be a list of {{\"raw\": text}}; {fix}"
            )
        key = (folder or "", file)
        if key in seen:
            raise CaptionerError(
                f"{where}: {'/'.join(p for p in key if p)} is listed twice (also "
                f"images[{seen[key]}]); list each picture once: {fix}"
            )
        seen[key] = k
        out.append((SPLITS[split], folder or None, file, [s["raw"] for s in sents]))
    return out


def dataset_name(doc, path):
    """The file's own 'dataset' (e.g. flickr30k) when it is a plain word, else its file name's
    (dataset_flickr30k.json -> flickr30k)."""
    name = doc.get("dataset")
    if isinstance(name, str) and re.fullmatch(r"[\w.-]{1,40}", name):
        return name
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem[len("dataset_") :] if stem.startswith("dataset_") and len(stem) > 8 else stem


def _zip_pictures(zip_path):
    """{member name: ZipInfo} of a zip of pictures, and the one top folder all its files sit
    in ('' when there is none): Flickr8k_Dataset.zip keeps its pictures in Flicker8k_Dataset/,
    flickr30k-images.zip in flickr30k-images/, while Karpathy's names lack that folder."""
    from captioner import coco

    members = coco.check_zip(
        zip_path,
        layout=(),
        fix="pass the zip of the pictures the Karpathy file names",
        what="a zip of pictures",
    )
    files = [m for m, i in members.items() if not i.is_dir() and not m.startswith("__MACOSX/")]
    tops = {m.split("/", 1)[0] for m in files}
    top = tops.pop() + "/" if len(tops) == 1 and all("/" in m for m in files) else ""
    return members, top


def read(karpathy, images, member=None):
    """Karpathy file (a .json, or `member` of a zip) + pictures (a folder or a zip) ->
    ({split: [item]} for train, val, test; skipped [(name, why)]; dataset name).

    A name that is unsafe (absolute, '..', a line break) or a picture that is missing makes
    the whole file an error; a picture whose zip member is too big to be a photograph is
    skipped with the reason."""
    from captioner.encoder import MAX_DECODE_BYTES
    from captioner.prepare import _file_identity, unsafe_name

    karpathy, images = str(karpathy), os.path.abspath(str(images))
    doc, label = load(karpathy, member)
    entries = parse(doc, label)
    in_zip = os.path.isfile(images)
    if in_zip:
        members, top = _zip_pictures(images)
    elif not os.path.isdir(images):
        raise CaptionerError(
            f"{images}: not found; pass the folder (or zip) of the pictures the Karpathy "
            f"file names with --images"
        )
    splits = {s: [] for s in ("train", "val", "test")}
    skipped, missing = [], []
    for k, (split, folder, file, captions) in enumerate(entries):
        name = f"{folder}/{file}" if folder else file
        why = unsafe_name(name, None if in_zip else images)
        if why:
            raise CaptionerError(
                f"{label}: images[{k}]: {name!r}: {why}; name pictures by their path "
                f"inside --images: {FIX}"
            )
        if in_zip:
            info = members.get(name) or members.get(top + name)
            if info is None or info.is_dir():
                missing.append(name)
                continue
            if info.file_size > MAX_DECODE_BYTES:
                skipped.append((name, f"{images}:{info.filename}: too big for a photograph"))
                continue
            ref, ident = [images, info.filename], [info.CRC, info.file_size]
            url = f"{images}:{info.filename}"
        else:
            path = os.path.join(images, name)
            if not os.path.isfile(path):
                missing.append(name)
                continue
            ref, ident, url = path, _file_identity(path), path
        splits[split].append(dict(name=name, ref=ref, ident=ident, url=url, captions=captions))
    if missing:
        raise CaptionerError(
            f"{label}: {len(missing):,} of its {len(entries):,} pictures are not in "
            f"{images} (first: {missing[0]}); pass the folder or zip that holds them "
            f"with --images"
        )
    return splits, skipped, dataset_name(doc, member or karpathy)
