"""Picture files for batch captioning: folders expanded, results as JSON other tools read.

files, errors = find_pictures(["photos/", "extra.jpg"])   # folders recursively
write_results("captions.json", results_of(files, captions))
"""

import os
import re

from . import atomic
from .errors import CaptionerError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def find_pictures(paths):
    """Paths given on the command line -> (files, errors).

    A folder stands for the picture files under it (recursively, by extension, hidden
    files and folders skipped, sorted); a folder without any is an error
    (path, one-line message). Anything else is kept as given: reading it is what
    tells whether it is a picture.
    """
    files, errors = [], []
    for p in paths:
        p = os.fspath(p)
        if not os.path.isdir(p):
            files.append(p)
            continue
        found = []
        for root, dirs, names in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [
                os.path.join(root, n)
                for n in sorted(names)
                if not n.startswith(".") and n.lower().endswith(EXTENSIONS)
            ]
        if found:
            files += found
        else:
            kinds = ", ".join(EXTENSIONS)
            errors.append((p, f"{p}: a directory without pictures ({kinds}) in it"))
    return files, errors


def image_id(file_name):
    """COCO_val2014_000000391895.jpg or 000000391895.jpg -> 391895; None when the name
    carries no id (a number alone or after an underscore, before the extension)."""
    m = re.search(r"(?:^|_)(\d+)\.\w+$", os.path.basename(file_name))
    return int(m.group(1)) if m else None


def results_of(files, captions, checkpoint=None, note=None):
    """files (N,) and their best (caption, log_prob or None) -> the JSON records
    [{"file_name", "caption", "log_prob"[, "image_id"], "checkpoint"[, "note"]}]: each
    record names the model that wrote it and carries its caveat (demo_note), if any."""
    out = []
    for f, (caption, log_prob) in zip(files, captions):
        r = {
            "file_name": f,
            "caption": caption,
            "log_prob": None if log_prob is None else round(float(log_prob), 4),
        }
        i = image_id(f)
        if i is not None:
            r["image_id"] = i
        if checkpoint is not None:
            r["checkpoint"] = os.fspath(checkpoint)
        if note:
            r["note"] = note
        out.append(r)
    return out


def demo_note(meta):
    """The caveat of a checkpoint trained by `captioner demo` (it knows only rendered
    shapes), or None for any other model."""
    from .data import DEMO_SOURCE, dataset_source

    saved = meta.get("training", {}).get("settings", {}).get("data_dir")
    if saved and dataset_source(saved) == DEMO_SOURCE:
        return (
            "this model was trained by `captioner demo` on rendered shapes (coloured "
            "circles, squares, stars... on plain backgrounds); it cannot describe "
            "photographs. For photos see README, 'Caption your own photos'."
        )
    return None


def check_writable(path):
    """Refuse an output file that cannot be written, before any slow work."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CaptionerError(f"{path}: is a directory; pass a file name")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise CaptionerError(
            f"{path}: folder {folder} does not exist or is not writable; choose another file"
        )


def write_results(path, results, replace=True):
    """Atomically write the records of results_of as JSON (replace=False: only as a new
    file, see atomic.atomic_path)."""
    atomic.write_json(path, results, what="captions", replace=replace)
