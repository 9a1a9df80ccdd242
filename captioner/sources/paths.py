"""Reading the files of a data source safely.

The path-safety check every source uses: a picture name, URL or zip member that could
lead outside its folder, or break the one-name-a-line *_images.txt, is refused here.
read_member is the one way a zip member is read: its declared size is checked against a
limit for its kind before a byte is inflated (a 2 MB zip can declare, and inflate to,
gigabytes), and zipfile never inflates a member past its declared size. read_file does the
same for a file on disk (a Karpathy-format JSON).
"""

import os
import re
import zipfile

from captioner.errors import CaptionerError

# Everything str.splitlines() breaks at: a name holding one would shift every later
# line of the one-name-a-line {split}2014_images.txt / _urls.txt.
LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def unsafe_text(text, what="file name"):
    """Why `text` cannot be a picture name or URL in the dataset, or None."""
    if "\x00" in text:
        return f"{what} contains a NUL byte"
    if any(c in LINE_BREAKS for c in text):
        return f"{what} contains a line break (it would break the one-name-a-line *_images.txt)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return f"{what} is not valid Unicode (a lone surrogate)"
    return None


def unsafe_member(name):
    """Why a relative path (a zip member, a picture name) would leave its folder: "absolute
    path" or "'..' in path"; None if it stays inside."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "'..' in path"
    return None


def unsafe_name(name, root=None):
    """Why picture `name` must not be read (None if it may): unrepresentable, absolute,
    '..', or (root given) resolving outside root through a symbolic link."""
    why = unsafe_text(name)
    if why:
        return why
    why = "absolute path" if os.path.isabs(name) else unsafe_member(name)
    if why == "absolute path":
        return "absolute path; file names must be relative to the pictures folder"
    if why:
        return "'..' in the file name leads outside the pictures folder"
    if root is not None:
        real = os.path.realpath(os.path.join(root, name))
        if os.path.commonpath([real, os.path.realpath(root)]) != os.path.realpath(root):
            return "resolves outside the pictures folder (a symbolic link)"
    return None


def check_member(info, limit, label, what, fix):
    """Refuse (one line naming label) a zip member declaring more than `limit` bytes."""
    if info.file_size > limit:
        raise CaptionerError(
            f"{label}: declares {info.file_size:,} bytes uncompressed, over the "
            f"{limit:,}-byte limit for {what}; {fix}",
            exit_code=1,
        )


def read_member(zf, member, limit, label, what, fix):
    """The bytes of `member` (a name or a ZipInfo) of the open ZipFile zf, at most `limit`
    of them (check_member first). KeyError if the zip has no such member."""
    info = member if isinstance(member, zipfile.ZipInfo) else zf.getinfo(member)
    check_member(info, limit, label, what, fix)
    with zf.open(info) as f:
        return f.read(limit + 1)


def read_zip_member(zip_path, member, limit, what, fix):
    """read_member of the zip at zip_path; a missing member, a bad CRC, truncated data or an
    I/O error is one line naming zip_path:member."""
    label = f"{zip_path}:{member}"
    try:
        with zipfile.ZipFile(zip_path) as zf:
            return read_member(zf, member, limit, label, what, fix)
    except CaptionerError:
        raise
    except KeyError:
        raise CaptionerError(f"{label}: no such member in the zip; {fix}") from None
    except Exception as e:  # bad CRC, truncated data, zlib errors, I/O
        raise CaptionerError(f"{label}: cannot read it from the zip ({e}); {fix}") from None


def read_file(path, limit, what, fix):
    """The bytes of a regular file, refused unread when it is larger than `limit`."""
    if not os.path.isfile(path):
        raise CaptionerError(f"{path}: not found or not a regular file; {fix}")
    size = os.path.getsize(path)
    if size > limit:
        raise CaptionerError(
            f"{path}: {size:,} bytes, over the {limit:,}-byte limit for {what}; {fix}",
            exit_code=1,
        )
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except OSError as e:
        raise CaptionerError(f"{path}: cannot read it ({e.strerror}); {fix}") from None
