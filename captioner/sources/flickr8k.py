"""The Flickr8k release as `captioner download --flickr8k` keeps it: two zips, read in place.

    Flickr8k_Dataset.zip   Flicker8k_Dataset/NAME.jpg (sic)    8,091 photographs, ~1 GB
    Flickr8k_text.zip      Flickr8k.token.txt                  NAME.jpg#K<TAB>caption, K = 0..4
                           Flickr_8k.{train,dev,test}Images.txt  6,000 / 1,000 / 1,000 names

read() turns them into prepare's items, {split: [dict(name, ref, ident, url, captions)]} with
dev as val. The release's own gaps are reported, never fatal: a listed picture missing from
the zip or without captions is skipped with the reason, and the captions of pictures in no
list (92 in the release, one of them under the misspelt name NAME.jpg.1) are counted. A token
or list line that cannot be read, or a name given twice, is an error naming the file and line.
"""

import os
import re

from captioner import limits
from captioner.errors import CaptionerError
from captioner.sources.paths import read_zip_member

# The public copy of the release that the usual tutorials download (a GitHub release).
URL = "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/"
FILES = ("Flickr8k_Dataset.zip", "Flickr8k_text.zip")
# Approximate sizes in bytes, for the disk-space check when a server does not say.
SIZES = {"Flickr8k_Dataset.zip": 1_115_419_746, "Flickr8k_text.zip": 2_340_801}
PICTURES = "Flicker8k_Dataset/"
TOKENS = "Flickr8k.token.txt"
LISTS = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
FIX = "delete it and rerun `captioner download --flickr8k`"
FIX_LINE = "fix the line, or delete the zip and rerun `captioner download --flickr8k`"
_TOKEN_LINE = re.compile(r"([^\t#]+)#(\d+)\t(.*)")


def _bad_name(name):
    """Why a name of the token file or a list cannot be one of the release's picture files."""
    from captioner.prepare import unsafe_text

    if "/" in name or "\\" in name or name in (".", ".."):
        return "not a plain file name"
    return unsafe_text(name)


def check_zip(path, name=None, test=False):
    """Check one of FILES -> for the pictures, {file name: ZipInfo} of the pictures (each
    bounded in size: coco.check_zip); for the text, {file name: member} of the files read
    (found in whatever folder they sit)."""
    from captioner import coco

    name = name or os.path.basename(path)
    pictures = name == FILES[0]
    members = coco.check_zip(
        path,
        name,
        test=test,
        layout=(PICTURES,) if pictures else (),
        fix=FIX,
        what=f"the Flickr8k release's {name}",
    )
    found = {}
    for member, info in members.items():
        base = member.rsplit("/", 1)[-1]
        if info.is_dir() or member.startswith("__MACOSX/") or base.startswith("._"):
            continue
        if base in found:
            raise CaptionerError(
                f"{path}: {base} is in the zip twice ({found[base]} and {member}); {FIX}"
            )
        found[base] = member
    if pictures:
        return {base: members[m] for base, m in found.items()}
    lacking = [n for n in (TOKENS, *LISTS.values()) if n not in found]
    if lacking:
        raise CaptionerError(
            f"{path}: no {', '.join(lacking)}; this is not the Flickr8k release's {name}: {FIX}"
        )
    return found


def _lines(zip_path, member):
    """(label, [(line number, text)]) of a text member, blank lines left out."""
    label = f"{zip_path}:{member}"
    blob = read_zip_member(zip_path, member, limits.MAX_TEXT_BYTES, "a text file", FIX)
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as e:
        n = blob[: e.start].count(b"\n") + 1
        raise CaptionerError(f"{label} line {n}: not UTF-8 text; {FIX_LINE}") from None
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1)]
    return label, [(n, line) for n, line in lines if line.strip()]


def parse_tokens(zip_path, member):
    """Flickr8k.token.txt -> {picture name: [caption, ...]} in file order."""
    label, lines = _lines(zip_path, member)
    captions, seen = {}, {}
    for n, line in lines:
        m = _TOKEN_LINE.fullmatch(line)
        if not m:
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise CaptionerError(
                f"{label} line {n}: {shown!r} is not NAME.jpg#K<TAB>caption; {FIX_LINE}"
            )
        name, k, caption = m.group(1), int(m.group(2)), m.group(3)
        why = _bad_name(name)
        if why:
            raise CaptionerError(f"{label} line {n}: picture name {name!r}: {why}; {FIX_LINE}")
        if (name, k) in seen:
            raise CaptionerError(
                f"{label} line {n}: {name}#{k} repeats line {seen[name, k]}; {FIX_LINE}"
            )
        seen[name, k] = n
        captions.setdefault(name, []).append(caption)
    return captions


def parse_list(zip_path, member, listed):
    """A split list -> its picture names; `listed` ({name: label}) holds the names of the lists
    read before, so a name in two lists (or twice in one) is an error."""
    label, lines = _lines(zip_path, member)
    names = []
    for n, line in lines:
        name = line.strip()
        why = _bad_name(name)
        if why:
            raise CaptionerError(f"{label} line {n}: {name!r}: {why}; {FIX_LINE}")
        if name in listed:
            raise CaptionerError(
                f"{label} line {n}: {name} is already listed ({listed[name]}); each "
                f"picture goes in one split, once: {FIX_LINE}"
            )
        listed[name] = f"{label} line {n}"
        names.append(name)
    return names


def read(folder):
    """The folder of `download --flickr8k` -> ({split: [item]} for train, val, test; skipped
    [(name, why)]; notes: one line per gap of the release that was worked around)."""
    folder = os.path.abspath(str(folder))
    if not os.path.isdir(folder):
        raise CaptionerError(
            f"{folder}: folder not found; run `captioner download --flickr8k --dest {folder}`"
        )
    pictures_zip, text_zip = (os.path.join(folder, f) for f in FILES)
    text = check_zip(text_zip)
    pictures = check_zip(pictures_zip)
    captions = parse_tokens(text_zip, text[TOKENS])
    listed = {}
    lists = {s: parse_list(text_zip, text[f], listed) for s, f in LISTS.items()}
    splits, skipped = {s: [] for s in LISTS}, []
    for split, names in lists.items():
        for name in names:
            info = pictures.get(name)
            if info is None:
                skipped.append((name, f"listed in {LISTS[split]} but not in {FILES[0]}"))
            elif name not in captions:
                skipped.append((name, f"listed in {LISTS[split]} but has no captions in {TOKENS}"))
            else:
                splits[split].append(
                    dict(
                        name=name,
                        ref=[pictures_zip, info.filename],
                        ident=[info.CRC, info.file_size],
                        url=f"{pictures_zip}:{info.filename}",
                        captions=captions[name],
                    )
                )
    unlisted = [n for n in captions if n not in listed]
    notes = []
    if unlisted:
        notes.append(
            f"{len(unlisted):,} captioned picture(s) of {TOKENS} are in no split list and "
            f"were left out (first: {unlisted[0]})"
        )
    return splits, skipped, notes
