"""download_coco against an in-process HTTP server on 127.0.0.1 (no other network)."""

import json
import os
import shutil
import stat
import zipfile

import numpy as np
import pytest

from captioner.data import load_coco_data
from captioner.download import (
    COCO_FILES,
    download_coco,
    download_coco_images,
    fetch_resumable,
    install_zip,
)
from captioner.errors import CaptionerError
from fileserver import gets, reset, serving
from fixtures import build_dataset
from helpers import zipped


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """Both CS231n feature kinds (small dims), as the real zip has them."""
    base = tmp_path_factory.mktemp("src") / "coco_captioning"
    build_dataset(
        base,
        n_train_images=10,
        captions_per_image=2,
        n_val_images=3,
        feature_dim=16,
        vocab_size=40,
        kind="fc7",
    )
    build_dataset(
        base,
        n_train_images=10,
        captions_per_image=2,
        n_val_images=3,
        feature_dim=4,
        vocab_size=40,
        kind="pca",
    )
    assert sorted(os.listdir(base)) == sorted(COCO_FILES)
    return base


def make_zip(path, src, skip=(), extra=(), method=zipfile.ZIP_DEFLATED):
    """Zip src's files under the top folder coco_captioning/ (as the real zip);
    extra: (ZipInfo|name, bytes)."""
    with zipfile.ZipFile(path, "w", method) as zf:
        zf.writestr("coco_captioning/", b"")
        for name in sorted(os.listdir(src)):
            if name not in skip:
                zf.write(src / name, f"coco_captioning/{name}")
        for info, data in extra:
            zf.writestr(info, data)
    return path


@pytest.fixture(scope="module")
def good_zip(dataset_dir, tmp_path_factory):
    return make_zip(tmp_path_factory.mktemp("zip") / "good.zip", dataset_dir).read_bytes()


ZIP = "coco_captioning.zip"


@pytest.fixture(scope="module")
def http_server():
    with serving({}) as srv:
        yield srv


@pytest.fixture
def server(http_server, good_zip):
    """The shared server, reset: full Range support, no dropped connections, empty logs."""
    srv = http_server
    reset(srv, {ZIP: good_zip})
    srv.payload, srv.url = good_zip, f"{srv.base}/{ZIP}"
    return srv


def get(dest, server, **kw):
    return download_coco(dest, url=server.url, progress=False, shapes=None, **kw)


def leftovers(dest):
    return [n for n in os.listdir(dest) if n.startswith(".") or n.endswith(".part")]


def test_full_download_installs_and_validates(tmp_path, server, dataset_dir):
    target = get(tmp_path, server)
    assert target == str(tmp_path / "coco_captioning")
    for name in COCO_FILES:
        assert (tmp_path / "coco_captioning" / name).read_bytes() == (
            dataset_dir / name
        ).read_bytes()
    assert load_coco_data(target)["feature_kind"] == "pca"
    assert load_coco_data(target, features="fc7")["feature_dim"] == 16
    assert sorted(os.listdir(tmp_path)) == ["coco_captioning"]  # zip removed, no temp dirs
    assert gets(server) == [None]
    # already installed: no request at all
    assert get(tmp_path, server) == target and len(gets(server)) == 1


def test_resumes_a_partial_file(tmp_path, server, good_zip):
    half = len(good_zip) // 3
    (tmp_path / "coco_captioning.zip.part").write_bytes(good_zip[:half])
    get(tmp_path, server, keep_zip=True)
    assert (tmp_path / "coco_captioning.zip").read_bytes() == good_zip
    assert gets(server) == [f"bytes={half}-"] and server.sent == len(good_zip) - half
    assert sorted(leftovers(tmp_path)) == []


def test_dropped_connection_resumes_byte_identical(tmp_path, server, good_zip):
    server.drops[ZIP] = 2
    get(tmp_path, server, keep_zip=True)
    assert (tmp_path / "coco_captioning.zip").read_bytes() == good_zip
    first, second = (
        len(good_zip) // 2,
        len(good_zip) // 2 + (len(good_zip) - len(good_zip) // 2) // 2,
    )
    assert gets(server) == [None, f"bytes={first}-", f"bytes={second}-"]


def test_gives_up_after_retries_keeping_the_part(tmp_path, server, good_zip):
    server.drops[ZIP] = 5
    (tmp_path / "coco_captioning").mkdir()
    with pytest.raises(
        CaptionerError, match=r"download failed after 2 attempts.*captioner download"
    ) as err:
        get(tmp_path, server, retries=1)
    assert err.value.exit_code == 1
    part = (tmp_path / "coco_captioning.zip.part").read_bytes()
    assert 0 < len(part) < len(good_zip) and good_zip.startswith(part)
    server.drops[ZIP] = 0
    get(tmp_path, server, force=True)  # the next run finishes the job
    assert load_coco_data(tmp_path / "coco_captioning")["train_captions"].shape == (20, 17)


def test_server_ignoring_range_restarts_cleanly(tmp_path, server, good_zip):
    server.honour_range = False
    (tmp_path / "coco_captioning.zip.part").write_bytes(b"stale bytes from another file")
    get(tmp_path, server, keep_zip=True)
    assert (tmp_path / "coco_captioning.zip").read_bytes() == good_zip
    assert gets(server) == ["bytes=29-"]


def test_complete_part_answered_416(tmp_path, server, good_zip):
    (tmp_path / "coco_captioning.zip.part").write_bytes(good_zip)
    get(tmp_path, server, keep_zip=True)
    assert (tmp_path / "coco_captioning.zip").read_bytes() == good_zip and server.sent == 0


def test_http_error_is_reported(tmp_path, server):
    server.url = server.url.replace("coco_captioning.zip", "nope.zip")
    with pytest.raises(CaptionerError, match="HTTP 404"):
        get(tmp_path, server)


def test_real_shapes_are_checked_by_default(tmp_path, server):
    (tmp_path / "coco_captioning.zip").write_bytes(server.payload)
    with pytest.raises(CaptionerError) as err:
        download_coco(tmp_path, url=server.url, progress=False)
    assert str(err.value).startswith(
        f"{tmp_path / 'coco_captioning.zip'}: coco2014_captions.h5 'train_captions' "
        "has shape (20, 17), expected (400135, 17); delete the zip"
    )
    assert gets(server) == []  # the finished zip was reused, not fetched
    assert sorted(os.listdir(tmp_path)) == ["coco_captioning.zip"]  # nothing half-installed


# ----------------------------------------------------------------------------- unpacking


@pytest.fixture
def existing(tmp_path):
    """A previously installed data folder that a failed install must leave alone."""
    target = tmp_path / "coco_captioning"
    target.mkdir()
    (target / "marker").write_text("old data")
    return target


def assert_untouched(target):
    assert os.listdir(target) == ["marker"] and (target / "marker").read_text() == "old data"
    assert leftovers(target.parent) == []


def symlink_entry():
    info = zipfile.ZipInfo("coco_captioning/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, b"/etc/passwd"


@pytest.mark.parametrize(
    "entry,why",
    [
        ("../x", r"'\.\.' in path"),
        ("coco_captioning/../../x", r"'\.\.' in path"),
        ("/abs", "absolute path"),
        ("C:/win", "absolute path"),
        (None, "symlink"),
    ],
)
def test_refuses_unsafe_entries(tmp_path, dataset_dir, existing, entry, why):
    extra = [symlink_entry()] if entry is None else [(entry, b"evil")]
    zpath = make_zip(tmp_path / "coco_captioning.zip", dataset_dir, extra=extra)
    with pytest.raises(
        CaptionerError, match=f"coco_captioning.zip: refusing unsafe entry .*{why}"
    ):
        install_zip(zpath, existing, shapes=None)
    assert_untouched(existing)
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


def test_corrupt_zip(tmp_path, existing):
    zpath = tmp_path / "coco_captioning.zip"
    zpath.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(
        CaptionerError, match=r"coco_captioning.zip: not a valid zip file.*delete it"
    ):
        install_zip(zpath, existing, shapes=None)
    assert_untouched(existing)


def test_corrupt_entry_fails_crc(tmp_path, dataset_dir, existing):
    zpath = make_zip(tmp_path / "coco_captioning.zip", dataset_dir, method=zipfile.ZIP_STORED)
    raw = bytearray(zpath.read_bytes())
    with zipfile.ZipFile(zpath) as zf:
        info = zf.getinfo("coco_captioning/train2014_vgg16_fc7.h5")
    pos = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2
    raw[pos] ^= 0xFF
    zpath.write_bytes(bytes(raw))
    with pytest.raises(
        CaptionerError, match=r"entry 'coco_captioning/train2014_vgg16_fc7.h5' is corrupt"
    ):
        install_zip(zpath, existing, shapes=None)
    assert_untouched(existing)


def test_missing_files(tmp_path, dataset_dir, existing):
    zpath = make_zip(
        tmp_path / "coco_captioning.zip",
        dataset_dir,
        skip=("val2014_vgg16_fc7.h5", "coco2014_vocab.json"),
    )
    with pytest.raises(
        CaptionerError,
        match=r"coco_captioning.zip: missing coco2014_vocab.json, "
        r"val2014_vgg16_fc7.h5",
    ):
        install_zip(zpath, existing, shapes=None)
    assert_untouched(existing)


def test_bad_content_named_by_file_in_zip(tmp_path, dataset_dir, existing):
    src = tmp_path / "src"
    shutil.copytree(dataset_dir, src)
    (src / "val2014_urls.txt").write_text("only one line\n")
    zpath = make_zip(tmp_path / "coco_captioning.zip", src)
    with pytest.raises(CaptionerError) as err:
        install_zip(zpath, existing, shapes=None)
    msg = str(err.value)
    assert (
        msg.startswith(f"{zpath}: bad content: val2014_urls.txt: has 1 lines")
        and ".tmp-" not in msg
    )
    assert "delete the zip" in msg
    assert_untouched(existing)


def test_custom_shapes_and_replacing_existing_data(tmp_path, dataset_dir, existing):
    zpath = make_zip(tmp_path / "coco_captioning.zip", dataset_dir)
    shapes = {
        ("coco2014_captions.h5", "val_captions"): (6, 17),
        ("val2014_vgg16_fc7.h5", "features"): (3, 16),
    }
    install_zip(zpath, existing, shapes=shapes)
    assert sorted(os.listdir(existing)) == sorted(COCO_FILES)  # old folder replaced as a whole
    assert leftovers(tmp_path) == []
    shapes[("val2014_vgg16_fc7.h5", "features")] = (3, 4096)
    with pytest.raises(
        CaptionerError, match=r"val2014_vgg16_fc7.h5 'features' has shape \(3, 16\), expected"
    ):
        install_zip(zpath, existing, shapes=shapes)
    assert sorted(os.listdir(existing)) == sorted(COCO_FILES)


# ---------------------------------------------------------------- COCO 2014 zips: CRC


def _coco_zips():
    """The four COCO 2014 zips, tiny, their members stored (so a flipped byte still unpacks
    and only the CRC can tell)."""

    stored = lambda entries: zipped(entries, zipfile.ZIP_STORED)
    doc = {"images": [], "annotations": []}
    return {
        "train2014.zip": stored({"train2014/": b"", "train2014/COCO_train2014_1.jpg": b"x" * 99}),
        "val2014.zip": stored({"val2014/": b"", "val2014/COCO_val2014_2.jpg": b"y" * 99}),
        "annotations_trainval2014.zip": stored(
            {f"annotations/captions_{s}2014.json": json.dumps(doc) for s in ("train", "val")}
        ),
        "caption_datasets.zip": stored({"dataset_coco.json": json.dumps({"images": []})}),
    }


@pytest.mark.parametrize("name", ["annotations_trainval2014.zip", "caption_datasets.zip"])
def test_a_small_coco_zip_with_a_flipped_byte_is_refused_deleted_not_installed(tmp_path, name):
    from captioner import download
    from captioner.sources import coco

    files = _coco_zips()
    blob = bytearray(files[name])
    at = blob.index(b'"images": []')  # inside a member's stored data
    blob[at + 1] ^= 0x20  # "images" -> "Images": still a zip with COCO's layout
    files[name] = bytes(blob)
    with serving({f"coco/{k}": v for k, v in files.items()}) as srv:
        with pytest.raises(CaptionerError, match=rf"{name}\.part: .*bad CRC.*; deleted"):
            download.download_coco_images(tmp_path, mirror=f"{srv.base}/coco", progress=False)
        assert name not in os.listdir(tmp_path) and f"{name}.part" not in os.listdir(tmp_path)
        # the same byte flipped in a zip already in place is refused too
        (tmp_path / name).write_bytes(files[name])
        with pytest.raises(CaptionerError, match=rf"{name}: member .* is corrupt \(bad CRC\)"):
            download.download_coco_images(tmp_path, mirror=f"{srv.base}/coco", progress=False)
    assert coco.check_zip(str(tmp_path / "train2014.zip"))  # the intact ones went in


# ----------------------------------------------------------------------------- hostile servers


def test_a_stream_longer_than_expected_is_cut_and_deleted(tmp_path, server, good_zip):
    """No length in the response: the file may grow to the size expected of it, no more."""
    server.endless[ZIP] = 64 << 20
    with pytest.raises(CaptionerError) as err:
        fetch_resumable(server.url, str(tmp_path / ZIP), progress=False, max_bytes=1000)
    assert str(err.value) == (
        f"{server.url}: the server sent more than the 1,000 bytes expected for this file; "
        f"{tmp_path / ZIP}.part was deleted: check the mirror (--mirror/--url) or try later"
    )
    assert os.listdir(tmp_path) == [] and server.sent < 32 << 20  # stopped, not drained


def test_coco_images_mirror_held_to_the_announced_length(tmp_path, server, monkeypatch):
    """HEAD announces 1,000 bytes, the GET streams on without a length: the download stops
    past the announced 1,000 (not at the 13.5 GB known for train2014.zip)."""
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10**12))
    reset(server, {"m/train2014.zip": b"x" * 1000})
    server.endless["m/train2014.zip"] = 8 << 20
    with pytest.raises(CaptionerError, match=r"more than the 1,000 bytes expected") as err:
        download_coco_images(tmp_path / "d", mirror=f"{server.base}/m", progress=False)
    assert str(err.value).startswith(f"{server.base}/m/train2014.zip: ")
    assert os.listdir(tmp_path / "d") == []


def test_a_part_file_planted_as_a_link_is_never_followed(tmp_path, server):
    victim = tmp_path / "victim" / "notes.txt"
    victim.parent.mkdir()
    victim.write_text("my notes")
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / f"{ZIP}.part").symlink_to(victim)
    with pytest.raises(CaptionerError) as err:
        get(dest, server)
    assert str(err.value).startswith(f"{dest / ZIP}.part: captioner never writes a download ")
    assert "symbolic link" in str(err.value) and "\n" not in str(err.value)
    assert victim.read_text() == "my notes" and gets(server) == []
    os.remove(dest / f"{ZIP}.part")  # a dangling link, then: created, not followed
    (dest / f"{ZIP}.part").symlink_to(tmp_path / "victim" / "new.txt")
    with pytest.raises(CaptionerError, match="symbolic link"):
        get(dest, server)
    assert os.listdir(victim.parent) == ["notes.txt"]


def test_the_mirror_is_checked_before_any_request(tmp_path, monkeypatch):
    def no_request(*args, **kwargs):
        raise AssertionError("a request was made")

    monkeypatch.setattr("urllib.request.urlopen", no_request)
    for mirror in ("file:///tmp/fifo", "ftp://host/coco", "http://"):
        with pytest.raises(CaptionerError, match="give --mirror http") as err:
            download_coco_images(tmp_path / "d", mirror=mirror, progress=False)
        assert str(err.value).startswith(f"{mirror}: not ")
    assert not (tmp_path / "d").exists()


def test_a_redirect_loop_is_one_line(tmp_path, server):
    server.redirects[ZIP] = ZIP
    with pytest.raises(CaptionerError, match="HTTP 302") as err:
        get(tmp_path, server)
    assert "\n" not in str(err.value) and "infinite loop" in str(err.value)


def test_a_zip_naming_one_file_twice_is_refused(tmp_path, dataset_dir, existing):
    with pytest.warns(UserWarning, match="Duplicate name"):
        zpath = make_zip(
            tmp_path / ZIP,
            dataset_dir,
            extra=[("coco_captioning/coco2014_vocab.json", b'{"idx_to_word": []}')],
        )
    with pytest.raises(
        CaptionerError, match="entry 'coco_captioning/coco2014_vocab.json' appears twice"
    ):
        install_zip(zpath, existing, shapes=None)
    assert_untouched(existing)
