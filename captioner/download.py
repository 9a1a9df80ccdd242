"""Fetch and unpack the CS231n coco_captioning zip (~1 GB), resumably and safely.

download_coco() = fetch_resumable() (HTTP Range, continues a .part file) +
install_zip() (refuses unsafe entries, extracts beside the target, checks the
files with load_coco_data and the expected shapes, then renames into place).
A failure at any step leaves an existing data folder untouched.

download_files() fetches the zips of a picture release as they are (never unpacked), each
resumed, checked and only then renamed into place: download_coco_images() (COCO 2014) and
download_flickr8k() (Flickr8k) are it with their release's names, URLs and checks.
"""

import errno
import http.client
import logging
import os
import re
import shutil
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib

import h5py

from captioner import atomic
from captioner.data import CAPTIONS_FILE, FIX_DATA, close_coco_data, load_coco_data
from captioner.errors import CaptionerError, printable
from captioner.sources.paths import unsafe_member

LOG = logging.getLogger("captioner")

COCO_URL = "http://cs231n.stanford.edu/coco_captioning.zip"
COCO_DIR = "coco_captioning"  # the zip's top folder and the installed folder name
COCO_FILES = (
    "coco2014_captions.h5",
    "coco2014_vocab.json",
    "train2014_vgg16_fc7.h5",
    "train2014_vgg16_fc7_pca.h5",
    "train2014_images.txt",
    "train2014_urls.txt",
    "val2014_vgg16_fc7.h5",
    "val2014_vgg16_fc7_pca.h5",
    "val2014_images.txt",
    "val2014_urls.txt",
)
# The shapes of the CS231n release: (file, dataset) -> shape.
COCO_SHAPES = {
    ("coco2014_captions.h5", "train_captions"): (400135, 17),
    ("coco2014_captions.h5", "train_image_idxs"): (400135,),
    ("coco2014_captions.h5", "val_captions"): (195954, 17),
    ("coco2014_captions.h5", "val_image_idxs"): (195954,),
    ("train2014_vgg16_fc7_pca.h5", "features"): (82783, 512),
    ("val2014_vgg16_fc7_pca.h5", "features"): (40504, 512),
    ("train2014_vgg16_fc7.h5", "features"): (82783, 4096),
    ("val2014_vgg16_fc7.h5", "features"): (40504, 4096),
}
CHUNK = 1 << 20
# The most the CS231n zip (~1 GB) may be when a server streams it without a length.
COCO_ZIP_MAX_BYTES = 2 * 10**9
# Without an announced length, a picture release's file may exceed its known size by this share.
SIZE_MARGIN = 0.05


def download_coco(
    dest_dir="data",
    url=COCO_URL,
    progress=None,
    shapes=COCO_SHAPES,
    required=COCO_FILES,
    force=False,
    keep_zip=False,
    retries=3,
    timeout=60,
    again="captioner download",
):
    """Download and install the dataset; returns dest_dir/coco_captioning.

    Skips everything if that folder already holds coco2014_captions.h5 (force=True
    re-installs). A finished dest_dir/coco_captioning.zip is reused, a .part one is
    resumed. shapes: expected {(file, dataset): shape} (None to skip, e.g. for a small
    test zip); required: file names the zip must contain. The zip is deleted after a
    successful install unless keep_zip. again: the command that resumes (in error messages).
    """
    dest_dir = str(dest_dir)
    target = os.path.join(dest_dir, COCO_DIR)
    if not force and os.path.isfile(os.path.join(target, CAPTIONS_FILE)):
        _say(f"{target} already present (pass force=True / --force to reinstall)")
        return target
    # installs are whole-folder swaps, so anything else there is not ours: never replace it
    atomic.check_fresh_dir(target, force, "folder", flag="--dest", can_force=False)
    _make_dest(dest_dir)
    zip_path = os.path.join(dest_dir, COCO_DIR + ".zip")
    if not os.path.isfile(zip_path):
        fetch_resumable(
            url,
            zip_path,
            progress=progress,
            retries=retries,
            timeout=timeout,
            max_bytes=COCO_ZIP_MAX_BYTES,
            again=again,
        )
    install_zip(zip_path, target, shapes=shapes, required=required)
    if not keep_zip:
        os.remove(zip_path)
    return target


def _make_dest(dest_dir):
    try:
        os.makedirs(dest_dir, exist_ok=True)
    except OSError as e:
        raise CaptionerError(
            f"{dest_dir}: cannot create the download folder ({e.strerror}); "
            f"pick another with --dest"
        ) from None


def _say(msg):
    LOG.info(printable(msg))  # the CLI shows the "captioner" log on stderr


# ----------------------------------------------------------------------------- fetching


def _content_range(header):
    """'bytes 100-199/1000' -> (100, 1000); 'bytes */1000' -> (None, 1000); total None if '*'."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _part_size(part):
    """Bytes already in the part file (0 if none); a symbolic link or anything but a regular
    file planted under its name is refused: writing through it would overwrite its target."""
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        return 0
    if not stat.S_ISREG(st.st_mode):
        raise _not_a_part_file(part, "it is a symbolic link or not a regular file")
    return st.st_size


def _not_a_part_file(part, why):
    return CaptionerError(
        f"{part}: captioner never writes a download through this ({why}); remove it and "
        f"rerun `captioner download`"
    )


def _open_part(part, append):
    """The part file opened for writing without following a symbolic link (O_NOFOLLOW) or
    blocking on a FIFO (O_NONBLOCK) planted under its name."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(part, flags | (os.O_APPEND if append else os.O_TRUNC), 0o644)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO):
            raise _not_a_part_file(part, "it is a symbolic link or a FIFO") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _not_a_part_file(part, "it is not a regular file")
    return os.fdopen(fd, "ab" if append else "wb")


def _fetch_once(url, part, progress, timeout, max_bytes=None):
    """One request continuing `part`. True when the file is complete. The file may grow to
    the length the response announces, else to max_bytes; past it the part file is deleted
    and the download refused (a server streaming without end must not fill the disk)."""
    have = _part_size(part)
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: complete, or a stale longer file
            _, total = _content_range(e.headers.get("Content-Range"))
            e.close()
            if total == have:
                return True
            os.remove(part)
            return False
        raise
    with resp:
        if resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != have:  # not the bytes we asked for: start over
                os.remove(part)
                return False
            append = True
        else:  # 200: the server ignored Range, so the body is the whole file again
            have, append = 0, False
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        limit = total if total is not None else max_bytes
        size = have
        desc = os.path.basename(part)
        if progress:
            progress(desc, have, total, "B")
        with _open_part(part, append) as f:
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if limit is not None and size > limit:
                    break
                f.write(chunk)
                if progress:
                    progress(desc, size, total, "B")
    if limit is not None and size > limit:
        os.remove(part)
        said = "announced" if total is not None else "expected"
        raise CaptionerError(
            f"{url}: the server sent more than the {limit:,} bytes {said} for this "
            f"file; {part} was deleted: check the mirror (--mirror/--url) or try later",
            exit_code=1,
        )
    size = os.path.getsize(part)
    if total is None or size == total:  # without a length, a clean end of stream is all we know
        return True
    if size > total:
        os.remove(part)
    return False


def _check_url(url, flag="--url"):
    """An http(s) URL with a host, checked before any request (urllib raises ValueError)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- parsing the port is what refuses 'http://host:x/'
    except ValueError as e:
        raise CaptionerError(
            f"{url}: not a valid URL ({e}); give {flag} http(s)://host/path"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CaptionerError(
            f"{url}: not an http(s) URL with a host; give {flag} http(s)://host/path"
        )


def _one_line(text):
    """A server's or urllib's message on one line (a redirect loop's spans three)."""
    return " ".join(str(text).split())


def fetch_resumable(
    url,
    dest,
    progress=None,
    retries=3,
    timeout=60,
    check=None,
    max_bytes=None,
    again="captioner download",
):
    """Download url to dest via dest.part, continuing a partial file with HTTP Range.

    Retries dropped connections up to `retries` times, each resuming where the last
    stopped; dest appears (by rename) only when complete, and, given check(part_path)
    (raising CaptionerError), only when it passes: a failing file is deleted.
    max_bytes: the most the file may be when a response does not announce its length.
    again: the command the user reruns to resume, named in the error.
    """
    _check_url(url)
    part = dest + ".part"
    last = "connection closed early"
    for _ in range(retries + 1):
        try:
            if _fetch_once(url, part, progress, timeout, max_bytes):
                if check is not None:
                    try:
                        check(part)
                    except CaptionerError:
                        os.remove(part)
                        raise
                os.replace(part, dest)
                return dest
        except urllib.error.HTTPError as e:
            if e.code < 500:
                raise CaptionerError(
                    f"{url}: HTTP {e.code} {_one_line(e.reason)}; check the URL or download "
                    f"the zip by hand to {dest}",
                    exit_code=1,
                ) from None
            last = f"HTTP {e.code} {_one_line(e.reason)}"
        except (OSError, http.client.HTTPException) as e:  # URLError, resets, timeouts
            last = _one_line(getattr(e, "reason", None) or str(e) or type(e).__name__)
    have = _part_size(part)
    kept = f"{have:,} bytes kept in {part}" if have else "nothing received yet"
    raise CaptionerError(
        f"{url}: download failed after {retries + 1} attempts ({last}); {kept}: "
        f"rerun `{again}` to resume",
        exit_code=1,
    )


# ----------------------------------------------------------------------------- unpacking


def _unsafe(info):
    """Why a zip entry must not be extracted, or None."""
    why = unsafe_member(info.filename)
    if why:
        return why
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symlink"
    return None


def _members(zf, zip_path):
    """{path inside the data folder: ZipInfo} for the files to extract; refuses unsafe entries."""
    members = {}
    for info in zf.infolist():
        why = _unsafe(info)
        if why:
            raise CaptionerError(
                f"{zip_path}: refusing unsafe entry '{info.filename}' ({why}); this is "
                f"not the CS231n zip: delete it and rerun `captioner download`"
            )
        if info.is_dir() or info.filename.startswith("__MACOSX/"):
            continue
        rel = info.filename
        if rel.startswith(COCO_DIR + "/"):
            rel = rel[len(COCO_DIR) + 1 :]
        if rel in members:  # which copy is "the" file would depend on the tool
            raise CaptionerError(
                f"{zip_path}: entry '{info.filename}' appears twice; this is not the "
                f"CS231n zip: delete it and rerun `captioner download`"
            )
        members[rel] = info
    return members


def _check_shapes(folder, shapes, zip_path):
    for (name, dataset), want in shapes.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue  # files not required are not checked
        with h5py.File(path, "r") as f:
            got = f[dataset].shape if dataset in f else None
        if got != tuple(want):
            raise CaptionerError(
                f"{zip_path}: {name} '{dataset}' has shape {got}, expected {tuple(want)}; "
                f"delete the zip and rerun `captioner download`"
            )


def _validate(folder, shapes, zip_path):
    """Open every feature kind in `folder` with load_coco_data (all its checks), then shapes."""
    kinds = sorted(
        {
            n[len("train2014_") : -3]
            for n in os.listdir(folder)
            if n.startswith("train2014_") and n.endswith(".h5")
        }
    )
    try:
        for suffix in kinds or ["auto"]:
            close_coco_data(load_coco_data(folder, features=suffix, lazy=True))
    except CaptionerError as e:
        # Name the file by its place in the zip, not the temp folder that is about to vanish.
        msg = str(e).replace(folder + os.sep, "").replace(folder, "")
        msg = msg.replace(FIX_DATA, "delete the zip and rerun `captioner download`")
        raise CaptionerError(f"{zip_path}: bad content: {msg}") from None
    if shapes:
        _check_shapes(folder, shapes, zip_path)


def _check_sizes(members, zip_path, parent):
    """Before unpacking: the whole fits on the disk (zipfile never inflates an entry past its
    declared size), so a full disk or a zip bomb is found before, not during, unpacking."""
    need = sum(info.file_size for info in members.values())
    free = shutil.disk_usage(parent).free
    if need > free:
        raise CaptionerError(
            f"{parent}: unpacking {zip_path} needs {need / 2**30:.1f} GiB but "
            f"only {free / 2**30:.1f} GiB is free; free some space or pick "
            f"another --dest"
        )


def install_zip(zip_path, target, shapes=COCO_SHAPES, required=COCO_FILES):
    """Safely unpack a coco_captioning zip into `target` (replacing it only on success)."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CaptionerError(
            f"{zip_path}: not a valid zip file ({e}); delete it and rerun `captioner download`"
        ) from None
    parent = os.path.dirname(os.path.abspath(target))
    with zf:
        members = _members(zf, zip_path)
        missing = [n for n in required if n not in members]
        if missing:
            raise CaptionerError(
                f"{zip_path}: missing {', '.join(missing)}; not a complete CS231n "
                f"coco_captioning zip: delete it and rerun `captioner download`"
            )
        _check_sizes(members, zip_path, parent)
        tmp = tempfile.mkdtemp(prefix=f".{COCO_DIR}.tmp-", dir=parent)
        try:
            _say(f"extracting {zip_path} ...")
            for rel, info in members.items():
                out = os.path.join(tmp, rel)
                os.makedirs(os.path.dirname(out), exist_ok=True)
                try:
                    with zf.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
                    raise CaptionerError(
                        f"{zip_path}: entry '{info.filename}' is corrupt ({e}); delete "
                        f"the zip and rerun `captioner download`"
                    ) from None
            _say("checking the files ...")
            _validate(tmp, shapes, zip_path)
            _swap_in(tmp, target)
        except OSError as e:  # a full disk, a read-only folder: the old data stays as it was
            raise CaptionerError(
                f"{target}: could not unpack {zip_path} ({e.strerror or e}); "
                f"free some space (or pick another --dest) and rerun "
                f"`captioner download`; any previous data there is "
                f"untouched"
            ) from None
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp)
    return target


def _swap_in(new, target):
    """Rename `new` to `target`; an old target is moved aside first and removed after."""
    if not os.path.exists(target):
        os.replace(new, target)
        return
    old = tempfile.mkdtemp(
        prefix=f".{COCO_DIR}.old-", dir=os.path.dirname(os.path.abspath(target))
    )
    os.rmdir(old)
    os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old)


# ----------------------------------------------------------------------------- COCO 2014 pictures


def _remote_size(url, timeout):
    """The size a server announces for url (HEAD), or None."""
    try:
        req = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
    except (OSError, http.client.HTTPException, ValueError):
        return None
    return int(length) if length and length.isdigit() else None


def _check_fetched(check, name, part, url, again):
    """check(part, name) on a file just fetched; its error says the file was deleted."""
    try:
        check(part, name)
    except CaptionerError as e:
        why = str(e).split(": ", 1)[1].split("; ")[0]
        raise CaptionerError(
            f"{part}: {why}; deleted. It came from {url}: rerun `{again}` (or check the --mirror)"
        ) from None


def download_files(
    dest_dir, urls, sizes, check, what, again, progress=None, retries=3, timeout=60
):
    """Fetch the files of a release into dest_dir, each kept as it is (never unpacked).

    urls: {file name: URL}, in order; sizes: {file name: bytes} when the server does not
    say (a file may then be at most SIZE_MARGIN longer); check(path, name): raises
    CaptionerError when the file is not what it should be. Each file is resumed if a .part
    is there, checked and only then renamed into place; files already in place are
    checked, not fetched again. The free disk space is checked first. what: the release's
    name in messages; again: the command that resumes (in error messages). -> dest_dir.
    """
    dest_dir = str(dest_dir)
    _make_dest(dest_dir)
    todo = [n for n in urls if not os.path.isfile(os.path.join(dest_dir, n))]
    need, max_bytes = 0, {}
    for n in todo:
        part = os.path.join(dest_dir, n + ".part")
        announced = _remote_size(urls[n], timeout)
        max_bytes[n] = announced or int(sizes[n] * (1 + SIZE_MARGIN))
        size = announced or sizes[n]
        need += max(0, size - _part_size(part))
    free = shutil.disk_usage(dest_dir).free
    if need > free:
        raise CaptionerError(
            f"{dest_dir}: the {what} zips need {need / 1e9:.1f} GB more and "
            f"only {free / 1e9:.1f} GB are free; free some space or choose "
            f"another --dest"
        )
    _say(
        f"{dest_dir}: {len(todo)} file(s) to fetch, {need / 1e9:.2f} GB "
        f"({free / 1e9:.1f} GB free); the zips are kept as they are (never unpacked)",
    )
    for n, url in urls.items():
        path = os.path.join(dest_dir, n)
        if n in todo:
            fetch_resumable(
                url,
                path,
                progress=progress,
                retries=retries,
                timeout=timeout,
                check=lambda p, n=n, url=url: _check_fetched(check, n, p, url, again),
                max_bytes=max_bytes[n],
                again=again,
            )
        else:
            check(path, n)
    return dest_dir


def _urls(files, official, mirror):
    """{name: URL}: each file from its official place, or mirror + '/' + its name; the
    mirror is checked before anything (a file:// mirror naming a FIFO would hang the HEADs)."""
    if mirror:
        _check_url(mirror, flag="--mirror")
    return {n: (mirror.rstrip("/") + "/" + n) if mirror else official[n] for n in files}


def download_coco_images(
    dest_dir="data/coco2014",
    mirror=None,
    progress=None,
    retries=3,
    timeout=60,
    again="captioner download --images",
):
    """Fetch the COCO 2014 pictures and captions (captioner.sources.coco.FILES) into dest_dir
    (download_files): from their official hosts or `mirror`; each checked to be a zip with
    COCO's layout, the two small ones also by CRC. -> dest_dir."""
    from captioner.sources import coco

    def check(path, name):  # CRC-check what is cheap to read
        coco.check_zip(path, name, test=name not in ("train2014.zip", "val2014.zip"))

    urls = _urls(coco.FILES, coco.URLS, mirror)
    return download_files(
        dest_dir, urls, coco.SIZES, check, "COCO 2014", again, progress, retries, timeout
    )


def download_flickr8k(
    dest_dir="data/flickr8k",
    mirror=None,
    progress=None,
    retries=3,
    timeout=60,
    again="captioner download --flickr8k",
):
    """Fetch Flickr8k_Dataset.zip and Flickr8k_text.zip (captioner.sources.flickr8k) into
    dest_dir (download_files): from the public GitHub release or `mirror`; each checked to
    be a zip with the release's layout, the small text zip also by CRC. -> dest_dir."""
    from captioner.sources import flickr8k

    def check(path, name):
        flickr8k.check_zip(path, name, test=name == "Flickr8k_text.zip")

    urls = _urls(flickr8k.FILES, {n: flickr8k.URL + n for n in flickr8k.FILES}, mirror)
    return download_files(
        dest_dir, urls, flickr8k.SIZES, check, "Flickr8k", again, progress, retries, timeout
    )
