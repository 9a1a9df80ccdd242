"""Reading the files of a release with bounded memory: a zip member or a file is checked by its
(declared) size before it is read, so a small zip cannot inflate to gigabytes in memory."""

import os
import zipfile

from captioner.errors import CaptionerError


def check_size(size, limit, label, fix):
    """Refuse (one line naming label) a file or member of `size` bytes above `limit`."""
    if size > limit:
        raise CaptionerError(
            f"{label}: {size:,} bytes, more than the {limit:,} such a file may have; {fix}"
        )


def read_member(zip_path, member, limit, fix):
    """The bytes of `member` of zip_path, refused unread when it declares more than `limit`
    (zipfile never inflates a member past its declared size)."""
    label = f"{zip_path}:{member}"
    try:
        with zipfile.ZipFile(zip_path) as zf:
            info = zf.getinfo(member)
            check_size(info.file_size, limit, label, fix)
            return zf.read(info)
    except CaptionerError:
        raise
    except KeyError:
        raise CaptionerError(f"{label}: no such member in the zip; {fix}") from None
    except Exception as e:  # bad CRC, truncated data, zlib errors, I/O
        raise CaptionerError(f"{label}: cannot read it from the zip ({e}); {fix}") from None


def read_file(path, limit, fix):
    """The bytes of a regular file, refused unread when it is larger than `limit`."""
    if not os.path.isfile(path):
        raise CaptionerError(f"{path}: not found or not a regular file; {fix}")
    check_size(os.path.getsize(path), limit, path, fix)
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except OSError as e:
        raise CaptionerError(f"{path}: cannot read it ({e.strerror}); {fix}") from None
