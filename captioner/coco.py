"""The COCO 2014 release as `captioner download --images` keeps it: four zips, read in place.

    train2014.zip                 train2014/COCO_train2014_000000xxxxxx.jpg  82,783 pictures
    val2014.zip                   val2014/COCO_val2014_000000xxxxxx.jpg      40,504 pictures
    annotations_trainval2014.zip  annotations/captions_{train,val}2014.json  COCO's captions
    caption_datasets.zip          dataset_coco.json                          Karpathy's split

The pictures are never unpacked: captioner.shards reads each one out of its zip. check_zip
refuses a file that is not a zip (or is truncated: its directory sits at the end), that has
absolute or '..' member paths, or that lacks the folder or files it must hold. read_split
turns the captions into prepare's items: {split: [dict(name, ref=[zip, member],
ident=[crc, size], url, captions)]}; names that cannot be a line of *_images.txt are
skipped with the reason, and pictures the captions name but the zips lack are an error.
"""

import json
import os
import re
import zipfile

from captioner.errors import CaptionerError
from captioner.sources.paths import check_member, read_zip_member

FILES = ("train2014.zip", "val2014.zip", "annotations_trainval2014.zip", "caption_datasets.zip")
URLS = {
    "train2014.zip": "http://images.cocodataset.org/zips/train2014.zip",
    "val2014.zip": "http://images.cocodataset.org/zips/val2014.zip",
    "annotations_trainval2014.zip": "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
    "caption_datasets.zip": "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
}
# Sizes of the official files in bytes, for the disk-space check when a server does not
# say (train2014 13.5 GB, val2014 6.6 GB, annotations 253 MB, Karpathy's 36 MB).
SIZES = {
    "train2014.zip": 13_510_573_713,
    "val2014.zip": 6_645_013_297,
    "annotations_trainval2014.zip": 252_872_794,
    "caption_datasets.zip": 36_745_453,
}
# What each zip must hold: a folder of pictures, or these files.
LAYOUT = {
    "train2014.zip": ("train2014/",),
    "val2014.zip": ("val2014/",),
    "annotations_trainval2014.zip": (
        "annotations/captions_train2014.json",
        "annotations/captions_val2014.json",
    ),
    "caption_datasets.zip": ("dataset_coco.json",),
}
# The most each JSON member may declare uncompressed (the real ones: 160 MB, 66 MB and 32 MB):
# parsing takes several times a file's size in memory, so a bomb is refused by its header.
JSON_BYTES = {
    "dataset_coco.json": 400 * 2**20,
    "annotations/captions_train2014.json": 200 * 2**20,
    "annotations/captions_val2014.json": 200 * 2**20,
}
PICTURE_URL = "http://images.cocodataset.org/{}"
FIX = "delete it and rerun `captioner download --images`"


def _unsafe_member(name):
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "'..' in path"
    return None


def check_zip(path, name=None, test=False, layout=None, fix=FIX, what=None):
    """Open and check one of FILES -> {member name: ZipInfo}. name: which of FILES it is
    (default: its base name). test: also check every member's CRC (reads it all), after
    the directory's checks (sizes included), so a bomb is refused before it is inflated.
    Other releases' zips: layout (what it must hold, default LAYOUT[name]; pictures in its
    folders are size-checked), fix (the advice in errors) and what (whose file it is,
    default "COCO's NAME")."""
    name = name or os.path.basename(path)
    layout = LAYOUT.get(name, ()) if layout is None else layout
    what = what or f"COCO's {name}"
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        hint = (
            f"run `captioner download --images --dest {os.path.dirname(path) or '.'}`"
            if fix == FIX
            else fix
        )
        raise CaptionerError(f"{path}: not found; {hint}") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CaptionerError(f"{path}: not a valid zip file, or truncated ({e}); {fix}") from None
    with zf:
        members = _members(path, zf.infolist(), layout, fix, what)
        try:
            bad = zf.testzip() if test else None
        except Exception as e:  # zlib errors, truncated data, I/O
            raise CaptionerError(f"{path}: corrupt zip ({e}); {fix}") from None
    if bad is not None:
        raise CaptionerError(f"{path}: member {bad!r} is corrupt (bad CRC); {fix}")
    return members


def _members(path, infos, layout, fix, what):
    """check_zip's checks of the directory -> {member name: ZipInfo}."""
    from captioner.encoder import MAX_DECODE_BYTES

    folders = tuple(n for n in layout if n.endswith("/"))
    members = {}
    for info in infos:
        why = _unsafe_member(info.filename)
        if why:
            raise CaptionerError(
                f"{path}: refusing unsafe member {info.filename!r} ({why}); this "
                f"is not {what}: {fix}"
            )
        if info.filename in members:  # zipfile would read the last one, another tool the first
            raise CaptionerError(
                f"{path}: member {info.filename!r} appears twice; this is not {what}: {fix}"
            )
        members[info.filename] = info
        label = f"{path}:{info.filename}"
        if info.filename in JSON_BYTES:
            check_member(info, JSON_BYTES[info.filename], label, "this JSON file", fix)
        elif info.filename.startswith(folders) and not info.is_dir():
            check_member(info, MAX_DECODE_BYTES, label, "a picture", fix)
    for need in layout:
        found = (
            any(m.startswith(need) and not m.endswith("/") for m in members)
            if need.endswith("/")
            else need in members
        )
        if not found:
            lacks = f"no pictures in a {need} folder" if need.endswith("/") else f"no {need}"
            raise CaptionerError(f"{path}: {lacks}; this is not {what}: {fix}")
    return members


def _read_json(zip_path, member):
    from captioner.sources.karpathy import drop_tokens

    label = f"{zip_path}:{member}"
    blob = read_zip_member(zip_path, member, JSON_BYTES[member], "this JSON file", FIX)
    try:
        return json.loads(blob, object_hook=drop_tokens), label
    except (ValueError, RecursionError) as e:
        raise CaptionerError(f"{label}: not valid JSON ({str(e)[:80]}); {FIX}") from None


def _item(zip_path, info, name, url, captions):
    return dict(
        name=name,
        ref=[zip_path, info.filename],
        ident=[info.CRC, info.file_size],
        url=url or PICTURE_URL.format(name),
        captions=captions,
    )


def _karpathy(coco_dir):
    """-> [(split, name, url, captions)] from dataset_coco.json, in file order."""
    from captioner.sources import karpathy

    path = os.path.join(coco_dir, "caption_datasets.zip")
    check_zip(path, test=True)
    doc, label = _read_json(path, "dataset_coco.json")
    fix = (
        'not Karpathy\'s dataset_coco.json ({"images": [{"filepath", "filename", '
        '"split", "sentences": [{"raw"}]}]}); ' + FIX
    )
    out = []
    for k, (split, folder, file, captions) in enumerate(karpathy.parse(doc, label, fix)):
        if folder not in ("train2014", "val2014"):
            raise CaptionerError(
                f"{label}: images[{k}]: 'filepath' must be train2014 or val2014; {fix}"
            )
        out.append((split, f"{folder}/{file}", None, captions))
    return out, path


def _official(coco_dir):
    from captioner.prepare import parse_annotations

    path = os.path.join(coco_dir, "annotations_trainval2014.zip")
    check_zip(path)
    out = []
    for split, folder in (("train", "train2014"), ("val", "val2014")):
        ann, label = _read_json(path, f"annotations/captions_{folder}.json")
        images, captions = parse_annotations(ann, label)
        out += [(split, f"{folder}/{file}", url, captions.get(i, [])) for i, file, url in images]
    return out, path


def read_split(coco_dir, split="karpathy"):
    """-> ({split: [item]} for train, val (and test for karpathy), skipped [(name, why)])."""
    from captioner.prepare import unsafe_name, unsafe_text

    if split not in ("karpathy", "official"):
        raise CaptionerError(f"split must be karpathy or official, got {split!r}")
    coco_dir = os.path.abspath(coco_dir)
    if not os.path.isdir(coco_dir):
        raise CaptionerError(
            f"{coco_dir}: folder not found; download the zips with "
            f"`captioner download --images --dest {coco_dir}`"
        )
    zips = {f: os.path.join(coco_dir, f"{f}.zip") for f in ("train2014", "val2014")}
    members = {f: check_zip(p) for f, p in zips.items()}
    entries, source = _karpathy(coco_dir) if split == "karpathy" else _official(coco_dir)
    names = ("train", "val", "test") if split == "karpathy" else ("train", "val")
    splits = {s: [] for s in names}
    skipped, missing = [], []
    for s, name, url, captions in entries:
        why = unsafe_name(name) or (unsafe_text(url, "coco_url") if url else None)
        if why:
            skipped.append((name, why))
            continue
        folder = name.split("/", 1)[0]
        info = members[folder].get(name)
        if info is None:
            missing.append((name, zips[folder]))
            continue
        splits[s].append(_item(zips[folder], info, name, url, captions))
    if missing:
        name, where = missing[0]
        raise CaptionerError(
            f"{source}: {len(missing):,} of its pictures are not in the zips "
            f"(first: {name} in {where}); the zips are incomplete or from "
            f"another release: {FIX}"
        )
    return splits, skipped
