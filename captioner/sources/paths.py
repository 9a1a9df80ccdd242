"""Reading the files of a data source safely.

read_member is the one way a zip member is read: its declared size is checked against a
limit for its kind before a byte is inflated (a 2 MB zip can declare, and inflate to,
gigabytes), and zipfile never inflates a member past its declared size. read_file does the
same for a file on disk (a Karpathy-format JSON).
"""

import os
import zipfile

from captioner.errors import CaptionerError


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
