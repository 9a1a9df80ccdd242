"""Reading the files of a data source safely.

read_member is the one way a zip member is read: its declared size is checked against a
limit for its kind before a byte is inflated (a 2 MB zip can declare, and inflate to,
gigabytes), and zipfile never inflates a member past its declared size.
"""

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
