"""Bounds that keep memory and time proportional to real work, not to what a file declares.

A file's header can claim any shape; before anything is allocated or scanned, the claim is
checked against the bytes the file really holds and against the memory the machine has.
The CLI's upper bounds on options live here too, so the README and the help agree.
"""

import os

from .errors import CaptionerError

# The most a compressor h5py can read (deflate, at ~1032:1) shrinks data; a dataset declaring
# more than this many times its stored bytes is mostly unwritten chunks (fill values) or a lie.
MAX_COMPRESSION = 1100
# Option bounds (documented in each --help and in the README).
MAX_LENGTH = 100  # --max-length: words per generated caption (COCO captions: <= 16 + a few)
MAX_BEAM = 50  # --beam-size
MAX_N_BEST = 50  # --n-best
MAX_WORDS = 100  # prepare --max-words
MAX_DIM = 4096  # --hidden-dim, --wordvec-dim (an LSTM of 4096 holds 0.5 GB with Adam)
MAX_PREPARE_BATCH = 256  # prepare --batch-size: pictures decoded and held at once
MAX_CAPTION_CHARS = 2000  # one caption in a results/annotations file (COCO's longest: ~250)
# Files read whole, checked by their (declared) size before a byte is read: Karpathy's biggest
# JSON (dataset_coco.json) is 160 MB (coco.JSON_BYTES allows it 400 MiB); Flickr8k.token.txt
# 3 MB. Pictures: encoder.MAX_DECODE_BYTES.
MAX_JSON_BYTES = 400 * 2**20
MAX_TEXT_BYTES = 64 * 2**20


def available_memory():
    """Bytes the machine can give us now (MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(path, what, nbytes, fix):
    """Refuse (one line naming path) to allocate nbytes that the machine does not have."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise CaptionerError(
            f"{path}: {what} needs {nbytes / 2**30:.1f} GiB of memory but only "
            f"{free / 2**30:.1f} GiB is available; {fix}"
        )


def check_h5_dataset(ds, path, fix, in_memory=True):
    """An HDF5 dataset's declared size must be backed by stored bytes (and fit in memory when
    it is to be read whole); external or virtual storage (other files, FIFOs, devices) is
    refused, since reading it could hang or read outside what the user named."""
    name = ds.name.lstrip("/")
    if ds.external:
        raise CaptionerError(
            f"{path}: '{name}' keeps its data in external files, which captioner "
            f"does not read; {fix}"
        )
    if ds.is_virtual:
        raise CaptionerError(
            f"{path}: '{name}' is a virtual dataset mapping other files, which "
            f"captioner does not read; {fix}"
        )
    declared = ds.size * ds.dtype.itemsize
    stored = min(ds.id.get_storage_size(), os.path.getsize(path))
    ratio = MAX_COMPRESSION if ds.compression or ds.chunks else 1
    if declared > max(stored, 1) * ratio:
        raise CaptionerError(
            f"{path}: '{name}' declares shape {ds.shape} ({declared:,} bytes) "
            f"but the file stores only {stored:,} bytes of it; the file is "
            f"damaged or forged: {fix}"
        )
    if in_memory:
        check_memory(path, f"'{name}' of shape {ds.shape}", declared, fix)
