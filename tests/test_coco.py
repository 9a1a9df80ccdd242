"""Real photos: the COCO 2014 zips from a mirror on 127.0.0.1 -> prepare -> train -> evaluate.

The zips are small but in the real layout, built from the 13 real COCO pictures and their
captions in ../shared/coco/images: train2014.zip, val2014.zip, annotations_trainval2014.zip
and caption_datasets.zip (Karpathy's dataset_coco.json).
"""

import io
import json
import os
import shutil
import threading
import zipfile
from concurrent.futures import Executor, Future
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner import download
from captioner import prepare as P
from captioner import shards as S
from captioner.data import load_coco_data, split_file
from captioner.errors import CaptionerError
from captioner.sources import coco
from fileserver import serving
from helpers import assert_same_dataset, run, zipped

# Karpathy split of the 13 pictures (sorted by name): which folder and split each gets.
PLAN = (
    [("train2014", "train")] * 5
    + [("val2014", "restval")] * 2
    + [("val2014", "val")] * 3
    + [("val2014", "test")] * 3
)
BROKEN = "val2014/COCO_val2014_000000999999.jpg"  # in the zip, listed as train, not a JPEG


def _jpeg(path):
    """The picture's bytes as a JPEG (COCO ships only .jpg; one shared picture is a PNG)."""
    if path.suffix == ".jpg":
        return path.read_bytes()
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def build_release(shared, folder, karpathy_extra=(), member_extra=()):
    """Write the four zips into folder -> {file name: bytes}, and the plan's pictures.

    karpathy_extra: more dataset_coco.json image entries; member_extra: (zip, name, bytes)."""
    src = shared / "coco" / "images"
    ann = json.loads((src / "captions.json").read_text())
    caps = {}
    for a in ann["annotations"]:
        caps.setdefault(a["image_id"], []).append(a["caption"])
    by_name = {im["file_name"]: im["id"] for im in ann["images"]}
    pictures = sorted(src.glob("COCO_*"))
    assert len(pictures) == len(PLAN)
    members = {"train2014": {}, "val2014": {}}
    kimages, official = [], {"train2014": ([], []), "val2014": ([], [])}
    for k, (pic, (zfolder, split)) in enumerate(zip(pictures, PLAN)):
        cocoid = by_name[pic.name]
        file = f"COCO_{zfolder}_{cocoid:012d}.jpg"
        members[zfolder][f"{zfolder}/{file}"] = _jpeg(pic)
        sents = [
            {"raw": c, "tokens": c.lower().split(), "imgid": k, "sentid": 5 * k + j}
            for j, c in enumerate(caps[cocoid])
        ]
        kimages.append(
            {
                "filepath": zfolder,
                "filename": file,
                "cocoid": cocoid,
                "split": split,
                "sentids": [s["sentid"] for s in sents],
                "sentences": sents,
                "imgid": k,
            }
        )
        imgs, anns = official[zfolder]
        imgs.append(
            {
                "id": cocoid,
                "file_name": file,
                "coco_url": f"http://images.cocodataset.org/{zfolder}/{file}",
            }
        )
        anns += [{"id": len(anns), "image_id": cocoid, "caption": c} for c in caps[cocoid]]
    members["val2014"][BROKEN] = b"\xff\xd8\xff\xe0 this is not really a JPEG" * 20
    kimages.append(
        {
            "filepath": "val2014",
            "filename": BROKEN.split("/")[1],
            "cocoid": 999999,
            "split": "train",
            "sentids": [],
            "imgid": 13,
            "sentences": [{"raw": "A broken picture of a cat."}],
        }
    )
    kimages += list(karpathy_extra)
    for zname, name, blob in member_extra:
        members[zname][name] = blob

    files = {}
    for zfolder in members:
        files[f"{zfolder}.zip"] = zipped({f"{zfolder}/": b"", **members[zfolder]})
    files["annotations_trainval2014.zip"] = zipped(
        {
            f"annotations/captions_{z}.json": json.dumps(
                {"info": {}, "images": i, "annotations": a}
            )
            for z, (i, a) in official.items()
        }
    )
    files["caption_datasets.zip"] = zipped(
        {"dataset_coco.json": json.dumps({"dataset": "coco", "images": kimages})}
    )
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    return files


# ----------------------------------------------------------------------------- the mirror


@pytest.fixture(scope="session")
def release(shared, tmp_path_factory):
    """(folder, {name: bytes}) of the four zips, built once per session (through `shared`,
    so it is skipped or failed as the other real-data tests are). A fixture, not a module
    global: a second pytest session in the process (mutmut's) gets a folder of its own."""
    folder = tmp_path_factory.mktemp("release")
    return folder, build_release(shared, folder)


@pytest.fixture
def mirror(release):
    with serving({f"coco/{k}": v for k, v in release[1].items()}) as srv:
        srv.url = f"{srv.base}/coco"
        yield srv


# ----------------------------------------------------------------------------- download


def test_download_from_a_mirror_checks_and_resumes(tmp_path, mirror, release):
    dest = tmp_path / "coco2014"
    dest.mkdir()
    blob = release[1]["val2014.zip"]
    (dest / "val2014.zip.part").write_bytes(blob[:1000])  # an earlier, interrupted run
    mirror.drops["coco/train2014.zip"] = 1  # and a connection that drops once
    assert download.download_coco_images(dest, mirror=mirror.url, progress=False) == str(dest)
    assert sorted(os.listdir(dest)) == sorted(coco.FILES)
    for name in coco.FILES:
        assert (dest / name).read_bytes() == release[1][name], name
    gets = [(n, r) for c, n, r in mirror.log if c == "GET"]
    assert ("coco/val2014.zip", "bytes=1000-") in gets  # resumed, not fetched again
    assert [n for n, _ in gets].count("coco/train2014.zip") == 2  # dropped once, then resumed
    mirror.log.clear()
    download.download_coco_images(dest, mirror=mirror.url, progress=False)
    assert [c for c, _, _ in mirror.log] == []  # everything in place: checked, not fetched


def test_download_states_the_disk_space_it_needs(tmp_path, mirror, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(download.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(CaptionerError, match=r"need 0\.\d+ GB more and only 0\.0 GB are free"):
        download.download_coco_images(tmp_path / "d", mirror=mirror.url, progress=False)
    assert os.listdir(tmp_path / "d") == []


def _bad_zips():
    def zipped(entries):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, blob in entries.items():
                zf.writestr(name, blob)
        return buf.getvalue()

    return {
        "not a zip": (b"<html>404 not found</html>" * 50, "not a valid zip file"),
        "unsafe member": (
            zipped({"dataset_coco.json": "{}", "../evil.sh": "rm -rf ~"}),
            r"refusing unsafe member '\.\./evil\.sh'",
        ),
        "absolute member": (
            zipped({"dataset_coco.json": "{}", "/etc/cron.d/x": "x"}),
            "refusing unsafe member '/etc/cron.d/x' .absolute path",
        ),
        "missing file": (zipped({"readme.txt": "hello"}), "no dataset_coco.json"),
    }


@pytest.mark.parametrize("case", sorted(_bad_zips()))
def test_download_refuses_a_bad_zip_and_installs_nothing(tmp_path, mirror, case):
    blob, message = _bad_zips()[case]
    mirror.files["coco/caption_datasets.zip"] = blob
    dest = tmp_path / "d"
    with pytest.raises(CaptionerError, match=rf"caption_datasets\.zip\.part: .*{message}") as e:
        download.download_coco_images(dest, mirror=mirror.url, progress=False)
    assert e.value.exit_code == 2
    # the earlier files are installed (checked); the bad one neither installed nor kept
    assert sorted(os.listdir(dest)) == [
        "annotations_trainval2014.zip",
        "train2014.zip",
        "val2014.zip",
    ]


def test_a_truncated_or_foreign_zip_in_place_is_refused(tmp_path, release):
    good = release[1]["train2014.zip"]
    (tmp_path / "train2014.zip").write_bytes(good[: len(good) - 100])  # its directory is cut off
    with pytest.raises(CaptionerError, match=r"train2014\.zip: not a valid zip file, or trunc"):
        coco.check_zip(str(tmp_path / "train2014.zip"))
    (tmp_path / "train2014.zip").write_bytes(release[1]["val2014.zip"])  # wrong folder inside
    with pytest.raises(CaptionerError, match=r"train2014\.zip: no pictures in a train2014/ fo"):
        coco.check_zip(str(tmp_path / "train2014.zip"))
    with pytest.raises(CaptionerError, match="no pictures in a train2014/ folder"):
        P.prepare_coco(tmp_path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- prepare --coco


def test_karpathy_split_from_the_zips(release, tmp_path):
    s = P.prepare_coco(
        release[0], tmp_path / "w1", workers=1, batch_size=4, min_count=1, progress=False
    )
    assert (s["train"]["images"], s["val"]["images"], s["test"]["images"]) == (7, 3, 3)
    assert s["skipped"] == [(BROKEN, s["skipped"][0][1])]  # undecodable: listed, not fatal
    assert "val2014.zip:" + BROKEN in s["skipped"][0][1]
    d = load_coco_data(tmp_path / "w1", splits=("train", "val", "test"))
    names = [
        n
        for _, n in zip(
            PLAN,
            sorted(d["train_images"] + d["val_images"] + d["test_images"], key=lambda n: n[-16:]),
        )
    ]
    assert len(names) == 13
    assert all(n.startswith(("train2014/COCO_train2014_", "val2014/COCO_val2014_")) for n in names)
    assert d["test_urls"] == [f"http://images.cocodataset.org/{n}" for n in d["test_images"]]
    assert d["test_features"].shape == (3, 2560) and len(d["test_captions"]) == 15  # Lite0
    # workers 2 through real processes: the same dataset, bit for bit; and shards run by
    # spawned processes finishing in the reverse of the order they were handed out
    s2 = P.prepare_coco(
        release[0], tmp_path / "w2", workers=2, batch_size=4, min_count=1, progress=False
    )
    assert s2["workers"] == 2 and s2["skipped"] == s["skipped"]
    assert_same_dataset(tmp_path / "w1", tmp_path / "w2")
    with S.default_executor(2) as pool, Reversing(pool, hold=4) as backwards:
        s3 = P.prepare_coco(
            release[0],
            tmp_path / "w3",
            workers=4,
            batch_size=4,
            min_count=1,
            progress=False,
            executor=backwards,
        )
    assert backwards.finished == sorted(backwards.finished, reverse=True)  # 4 shards, backwards
    assert len(backwards.finished) == 4 and s3["skipped"] == s["skipped"]
    assert_same_dataset(tmp_path / "w1", tmp_path / "w3")


class Reversing(Executor):
    """Holds the first `hold` submissions, then runs what it holds newest first through
    `inner`, one at a time: shards finish in the reverse of the order they were handed out
    (a writer that keyed results by arrival would show). .finished: their indices, in order."""

    def __init__(self, inner, hold):
        self.inner, self.hold, self.stack, self.finished = inner, hold, [], []
        self.ready = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._work, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        with self.ready:
            self.closed = True
            self.ready.notify()
        self.thread.join()

    def submit(self, fn, /, *args, **kwargs):
        future = Future()
        with self.ready:
            self.stack.append((future, fn, args, kwargs))
            self.ready.notify()
        return future

    def _work(self):
        while True:
            with self.ready:
                while not self.closed and (
                    not self.stack or len(self.finished) + len(self.stack) < self.hold
                ):
                    self.ready.wait()
                if not self.stack:
                    return
                future, fn, args, kwargs = self.stack.pop()
            try:
                result = self.inner.submit(fn, *args, **kwargs).result()
            except BaseException as e:  # noqa: BLE001 -- handed on through the future
                future.set_exception(e)
            else:
                self.finished.append(args[0]["index"])
                future.set_result(result)


def test_official_split_from_the_annotations(release, tmp_path):
    s = P.prepare_coco(
        release[0], tmp_path / "o", split="official", workers=1, min_count=1, progress=False
    )
    assert (s["train"]["images"], s["val"]["images"]) == (5, 8) and "test" not in s
    d = load_coco_data(tmp_path / "o")
    assert all(n.startswith("train2014/") for n in d["train_images"])
    assert d["val_urls"][0].startswith("http://images.cocodataset.org/val2014/COCO_val2014_")


def test_an_official_picture_with_an_unsafe_url_is_skipped_with_the_reason(release, tmp_path):
    """A coco_url with a line break would break the one-URL-a-line *_urls.txt."""
    folder = tmp_path / "r"
    shutil.copytree(release[0], folder)
    with zipfile.ZipFile(folder / "annotations_trainval2014.zip") as zf:
        anns = {n: json.loads(zf.read(n)) for n in zf.namelist() if n.endswith(".json")}
    first = anns["annotations/captions_val2014.json"]["images"][0]
    first["coco_url"] += "\nhttp://elsewhere/"
    (folder / "annotations_trainval2014.zip").write_bytes(
        zipped({n: json.dumps(a) for n, a in anns.items()})
    )
    splits, skipped = coco.read_split(folder, "official")
    name = f"val2014/{first['file_name']}"
    assert [n for n, _ in skipped] == [name]
    assert skipped[0][1].startswith("coco_url contains a line break")
    assert name not in [it["name"] for it in splits["val"]] and len(splits["val"]) == 7


def test_karpathy_file_naming_pictures_not_in_the_zips_is_refused(shared, tmp_path):
    ghost = {
        "filepath": "train2014",
        "filename": "COCO_train2014_000000000001.jpg",
        "split": "test",
        "sentences": [{"raw": "A ghost."}],
    }
    build_release(shared, tmp_path / "r", karpathy_extra=[ghost])
    with pytest.raises(
        CaptionerError,
        match=r"caption_datasets\.zip: 1 of its pictures are not "
        r"in the zips \(first: train2014/COCO_train2014_0+1",
    ):
        P.prepare_coco(tmp_path / "r", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "doc, message",
    [
        ([1, 2], "no 'images' list"),
        (
            {
                "images": [
                    {
                        "filepath": "test2015",
                        "filename": "x.jpg",
                        "split": "train",
                        "sentences": [],
                    }
                ]
            },
            r"images\[0\]: 'filepath' must be train2014 or val2014",
        ),
        (
            {
                "images": [
                    {"filepath": "val2014", "filename": "x.jpg", "split": "dev", "sentences": []}
                ]
            },
            r"images\[0\]: 'split' 'dev' is not one of",
        ),
        (
            {
                "images": [
                    {
                        "filepath": "val2014",
                        "filename": "x.jpg",
                        "split": "val",
                        "sentences": ["hi"],
                    }
                ]
            },
            r"images\[0\]: 'sentences' must be a list",
        ),
    ],
)
def test_bad_karpathy_file_is_refused(release, tmp_path, doc, message):
    folder = tmp_path / "r"
    shutil.copytree(release[0], folder)
    with zipfile.ZipFile(folder / "caption_datasets.zip", "w") as zf:
        zf.writestr("dataset_coco.json", json.dumps(doc))
    with pytest.raises(
        CaptionerError, match=rf"caption_datasets\.zip:dataset_coco\.json: {message}"
    ) as err:
        P.prepare_coco(folder, tmp_path / "out", progress=False)
    assert "; not Karpathy's dataset_coco.json ({" in str(err.value)  # and what it should be


def test_bad_coco_annotations_are_refused(release, tmp_path):
    folder = tmp_path / "r"
    shutil.copytree(release[0], folder)
    with zipfile.ZipFile(folder / "annotations_trainval2014.zip", "w") as zf:
        zf.writestr("annotations/captions_train2014.json", json.dumps({"images": []}))
        zf.writestr("annotations/captions_val2014.json", "{not json")
    with pytest.raises(
        CaptionerError,
        match=r"annotations_trainval2014\.zip:annotations/"
        r"captions_train2014\.json: no 'annotations' list",
    ):
        P.prepare_coco(folder, tmp_path / "out", split="official", progress=False)


def test_unsafe_names_in_the_karpathy_file_are_skipped_with_the_reason(shared, tmp_path):
    """Issue 14, class 6, for zips: names that would break *_images.txt or leave the folder."""
    pic = (shared / "coco" / "images" / "COCO_val2014_000000027440.jpg").read_bytes()
    odd = [
        "COCO_val2014_0000000000\n1.jpg",
        "COCO_val2014_0000000000\u20282.jpg",
        "../val2014/COCO_val2014_000000000003.jpg",
    ]
    build_release(
        shared,
        tmp_path / "r",
        karpathy_extra=[
            {
                "filepath": "val2014",
                "filename": f,
                "split": "train",
                "sentences": [{"raw": "A cat on a bed."}],
            }
            for f in odd
        ],
        member_extra=[("val2014", f"val2014/{f}", pic) for f in odd[:2]],
    )
    s = P.prepare_coco(tmp_path / "r", tmp_path / "out", workers=1, min_count=1, progress=False)
    why = dict(s["skipped"])
    assert "line break" in why[f"val2014/{odd[0]}"] and "line break" in why[f"val2014/{odd[1]}"]
    assert "'..'" in why[f"val2014/{odd[2]}"]
    d = load_coco_data(tmp_path / "out", splits=("train", "val", "test"))
    with open(tmp_path / "out" / "train2014_images.txt", encoding="utf-8") as f:
        assert len(f.read().splitlines()) == len(d["train_features"]) == 7


class Boom(Exception):
    pass


def test_interrupted_coco_prepare_resumes_to_the_same_dataset(release, tmp_path):
    args = dict(workers=1, batch_size=2, min_count=1, progress=False)
    P.prepare_coco(release[0], tmp_path / "once", **args)
    done = []

    def dies_after_three(k):
        done.append(k)
        if len(done) == 3:
            raise Boom

    with pytest.raises(Boom):
        P.prepare_coco(release[0], tmp_path / "b", on_shard=dies_after_three, **args)
    assert len(list((tmp_path / "b" / P.WORK_DIR).glob("chunk_*.npz"))) == 3
    s = P.prepare_coco(release[0], tmp_path / "b", **args)
    assert s["resumed_images"] == 6 and s["encoded_images"] == 8
    assert_same_dataset(tmp_path / "once", tmp_path / "b")


# ----------------------------------------------------------------------------- issue 14, class 9


def _colour_pictures(folder, colours):
    folder.mkdir(exist_ok=True)
    images, anns = [], []
    for i, c in enumerate(colours):
        Image.new("RGB", (40, 40), c).save(folder / f"p{i}.png")
        images.append({"id": i, "file_name": f"p{i}.png"})
        anns.append({"id": i, "image_id": i, "caption": f"picture number {i}"})
    (folder / "captions.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return folder / "captions.json"


@pytest.mark.parametrize("change", ["same size", "other size"])
def test_resume_notices_pictures_replaced_in_between(tmp_path, change):
    """Interrupted, then pictures replaced, then rerun: no stale features are reused."""
    colours = [(200, 10 * i, 30) for i in range(6)]
    ann = _colour_pictures(tmp_path / "img", colours)
    args = dict(val_fraction=0.3, min_count=1, batch_size=2, workers=1, progress=False)

    def dies_after_two(k, done=[]):  # noqa: B006 -- a counter for this one test
        done.append(k)
        if len(done) == 2:
            raise Boom

    with pytest.raises(Boom):
        P.prepare_dataset(tmp_path / "img", ann, tmp_path / "b", on_shard=dies_after_two, **args)
    new = [(10, 200, 10 * i) for i in range(6)]
    for i, c in enumerate(new):  # every picture replaced under the same name
        size = 40 if change == "same size" else 44
        Image.new("RGB", (size, size), c).save(tmp_path / "img" / f"p{i}.png")
        os.utime(tmp_path / "img" / f"p{i}.png", ns=(1, 10**9 * (i + 7)))
    s = P.prepare_dataset(tmp_path / "img", ann, tmp_path / "b", **args)
    assert s["resumed_images"] == 0
    P.prepare_dataset(tmp_path / "img", ann, tmp_path / "fresh", **args)
    assert_same_dataset(tmp_path / "fresh", tmp_path / "b")


def test_resume_notices_a_zip_member_replaced_in_between(shared, release, tmp_path):
    folder = tmp_path / "r"
    shutil.copytree(release[0], folder)
    args = dict(workers=1, batch_size=2, min_count=1, progress=False)

    written = []

    def dies_at_once(k):
        written.append(k)
        raise Boom

    with pytest.raises(Boom):
        P.prepare_coco(folder, tmp_path / "b", on_shard=dies_at_once, **args)
    # a picture of the one finished shard replaced by another real one, under the same name
    with np.load(tmp_path / "b" / P.WORK_DIR / f"chunk_{written[0]:05d}.npz") as z:
        first = str(z["names"][0])
    assert first.startswith("train2014/")
    with zipfile.ZipFile(folder / "train2014.zip") as zf:
        entries = {i.filename: zf.read(i) for i in zf.infolist()}
    entries[first] = (shared / "coco" / "images" / "COCO_val2014_000000577526.jpg").read_bytes()
    with zipfile.ZipFile(folder / "train2014.zip", "w") as zf:
        for name, blob in entries.items():
            zf.writestr(name, blob)
    s = P.prepare_coco(folder, tmp_path / "b", **args)
    assert s["resumed_images"] == 0
    P.prepare_coco(folder, tmp_path / "fresh", **args)
    assert_same_dataset(tmp_path / "fresh", tmp_path / "b")


# ----------------------------------------------------------------------------- issue 14, class 6


def test_file_names_outside_the_folder_or_unsafe_are_skipped(tmp_path):
    """Names are checked once, when the annotations are read; nothing outside is opened."""
    ann = _colour_pictures(tmp_path / "img", [(200, 0, 0), (0, 200, 0), (0, 0, 200)])
    Image.new("RGB", (40, 40), (9, 9, 9)).save(tmp_path / "secret.png")  # outside --images
    os.symlink(tmp_path / "secret.png", tmp_path / "img" / "link.png")
    doc = json.loads(ann.read_text())
    bad = [
        "../secret.png",
        str(tmp_path / "secret.png"),
        "link.png",
        "p\x000.png",
        "p\n1.png",
        "p\x851.png",
        "p\u20282.png",
        "p\x0c2.png",
        "\udc80.png",
    ]
    for k, name in enumerate(bad):
        doc["images"].append({"id": 100 + k, "file_name": name})
        doc["annotations"].append({"id": 100 + k, "image_id": 100 + k, "caption": "a dark square"})
    doc["images"][0]["coco_url"] = "http://x/p0.png\nhttp://x/evil"
    ann.write_text(json.dumps(doc))
    opened = []
    real = P.shards.open_picture
    P.shards.open_picture = lambda ref: opened.append(ref) or real(ref)
    try:
        s = P.prepare_dataset(
            tmp_path / "img",
            ann,
            tmp_path / "out",
            val_fraction=0.5,
            min_count=1,
            workers=1,
            progress=False,
        )
    finally:
        P.shards.open_picture = real
    why = dict(s["skipped"])
    assert sorted(why) == sorted(bad + ["p0.png"])
    assert "'..'" in why["../secret.png"] and "absolute path" in why[str(tmp_path / "secret.png")]
    assert "outside the pictures folder" in why["link.png"] and "NUL" in why["p\x000.png"]
    assert all(
        "line break" in why[n] for n in ["p\n1.png", "p\x851.png", "p\u20282.png", "p\x0c2.png"]
    )
    assert "coco_url contains a line break" in why["p0.png"] and "Unicode" in why["\udc80.png"]
    assert sorted(os.path.basename(r) for r in opened) == ["p1.png", "p2.png"]
    for split in ("train", "val"):
        for kind in ("images", "urls"):
            lines = (
                Path(split_file(tmp_path / "out", split, f"{kind}.txt")).read_text().splitlines()
            )
            assert len(lines) == 1


def test_cli_lists_unsafe_names_quoted_on_one_line(tmp_path):
    ann = _colour_pictures(tmp_path / "img", [(200, 0, 0), (0, 200, 0)])
    doc = json.loads(ann.read_text())
    doc["images"].append({"id": 9, "file_name": "a\nb.png"})
    doc["annotations"].append({"id": 9, "image_id": 9, "caption": "odd"})
    ann.write_text(json.dumps(doc))
    result = run(
        "prepare",
        "--images",
        tmp_path / "img",
        "--captions",
        ann,
        "--out",
        tmp_path / "o",
        "--min-count",
        1,
        "--val-fraction",
        0.5,
        "--workers",
        1,
    )
    assert result.exit_code == 0, result.output
    assert "  skipped 'a\\nb.png': file name contains a line break" in result.output


# ----------------------------------------------------------------------------- end to end


def test_download_prepare_train_evaluate_test_split_and_sample(
    tmp_path, mirror, shared, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    r = run("download", "--images", "--dest", "coco", "--mirror", mirror.url)
    assert r.exit_code == 0, r.output
    assert "ready in coco" in r.output
    r = run(
        "prepare",
        "--coco",
        "coco",
        "--out",
        "ds",
        "--min-count",
        1,
        "--batch-size",
        4,
        "--workers",
        2,
    )
    assert r.exit_code == 0, r.output
    assert "  test: 3 images, 15 captions" in r.output and "with 2 worker(s)" in r.output
    assert f"  skipped {BROKEN}: " in r.output
    r = run("info", "--data", "ds")
    assert "  test: 15 captions of 3 images" in r.output, r.output
    r = run(
        "train",
        "--data",
        "ds",
        "--epochs",
        2,
        "--hidden-dim",
        16,
        "--wordvec-dim",
        8,
        "--batch-size",
        20,
        "--quiet",
        "--out",
        "runs/tiny",
    )
    assert r.exit_code == 0, r.output
    r = run(
        "evaluate",
        "--checkpoint",
        "runs/tiny/best.npz",
        "--split",
        "test",
        "--no-meteor",
        "--json",
    )
    assert r.exit_code == 0, r.output
    scores = json.loads(r.output)["scores"]
    assert set(scores) >= {"Bleu_4", "CIDEr", "ROUGE_L"}
    r = run("sample", "--checkpoint", "runs/tiny/best.npz", "--split", "test", "--count", 2)
    assert r.exit_code == 0 and r.output.count("http://images.cocodataset.org/val2014/") == 2
    photo = shared / "photos" / "chelsea.png"
    r = run("sample", photo, "--checkpoint", "runs/tiny/best.npz")
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == str(photo) and len(r.output.splitlines()[1].split()) >= 1
    assert "rendered shapes" not in r.output  # not a demo model: no demo note


def test_an_official_dataset_has_no_test_split(release, tmp_path):
    P.prepare_coco(
        release[0], tmp_path / "o", split="official", workers=1, min_count=1, progress=False
    )
    r = run(
        "train",
        "--data",
        tmp_path / "o",
        "--epochs",
        1,
        "--hidden-dim",
        8,
        "--wordvec-dim",
        8,
        "--quiet",
        "--out",
        tmp_path / "run",
    )
    assert r.exit_code == 0, r.output
    r = run("evaluate", "--checkpoint", tmp_path / "run" / "best.npz", "--split", "test")
    assert r.exit_code == 2
    assert "no test split (it has train, val)" in r.output and "--split karpathy" in r.output


def test_prepare_usage_errors():
    assert (
        "give --images and --captions, or --flickr8k DIR, --karpathy FILE or --coco DIR"
        in run("prepare", "--out", "x").output
    )
    r = run("prepare", "--coco", ".", "--images", ".", "--out", "x")
    assert r.exit_code == 2 and "drop --images" in r.output
    r = run("download", "--mirror", "http://127.0.0.1:1/")
    assert r.exit_code == 2 and "--mirror goes with --images" in r.output


# ----------------------------------------------------------------------------- BLAS threads


def test_blas_thread_count_decides_where_one_worker_runs(monkeypatch):
    from captioner import shards

    for var in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(shards.os, "cpu_count", lambda: 2)
    assert not shards.blas_single_threaded()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert shards.blas_single_threaded()
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")  # OpenBLAS reads its own variable first
    assert not shards.blas_single_threaded()
    with shards.default_executor(1) as ex:
        assert not isinstance(ex, shards.InlineExecutor)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    with shards.default_executor(1) as ex:
        assert isinstance(ex, shards.InlineExecutor)


def test_one_worker_with_multithreaded_blas_gives_the_bits_of_two(release, tmp_path):
    """OpenBLAS with 2 threads sums in another order than with 1: a CLI run of 1 worker in a
    process whose BLAS has all cores must still give the bits of the 2-worker run."""
    import subprocess
    import sys

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    }
    env["PYTHONPATH"] = str(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for workers in (1, 2):
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                "from captioner.cli import main; main()",
                "prepare",
                "--coco",
                str(release[0]),
                "--out",
                str(tmp_path / f"w{workers}"),
                "--min-count",
                "1",
                "--workers",
                str(workers),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-500:]
    assert_same_dataset(tmp_path / "w1", tmp_path / "w2")


# ----------------------------------------------------------------------------- kill -9


def _children(pid):
    """PIDs whose parent is pid (from /proc)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                kids.append(int(entry))
    return kids


def _poll(condition, proc=None, timeout=60):
    """Poll until condition() is true; False if `proc` ended first."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)
    return True


def test_prepare_coco_killed_with_workers_leaves_no_worker_and_resumes(release, tmp_path):
    """kill -9 of `prepare --coco --workers 2` mid-run: its workers end too (they would wait
    for work forever), and the rerun finishes the same dataset as a run never killed."""
    import signal
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cmd = [
        sys.executable,
        "-c",
        "from captioner.cli import main; main()",
        "prepare",
        "--coco",
        str(release[0]),
        "--min-count",
        "1",
        "--batch-size",
        "1",
        "--workers",
        "2",
        "--out",
    ]
    once = subprocess.run(
        cmd + [str(tmp_path / "once")], env=env, capture_output=True, text=True, timeout=300
    )
    assert once.returncode == 0, once.stderr[-500:]
    work = tmp_path / "b" / P.WORK_DIR
    chunks = lambda: len(list(work.glob("chunk_*.npz"))) if work.is_dir() else 0  # noqa: E731
    proc = subprocess.Popen(
        cmd + [str(tmp_path / "b")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert _poll(lambda: chunks() >= 2, proc), "finished before it could be killed"
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
    finally:
        out, err = proc.communicate(timeout=60)  # returns once no worker holds the pipes
    assert "Traceback" not in out + err
    assert workers and _poll(lambda: not any(_alive(w) for w in workers))
    r = subprocess.run(
        cmd + [str(tmp_path / "b")], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-500:]
    resumed = int(r.stdout.split(" resumed)")[0].rsplit("(", 1)[1])
    assert 2 <= resumed < 14
    assert_same_dataset(tmp_path / "once", tmp_path / "b")


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ----------------------------------------------------------------------------- issue 23: zip bombs


def _zip(path, members, **kw):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, **kw) as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    return str(path)


def test_zip_members_are_bounded_by_their_declared_size(tmp_path, monkeypatch):
    """Class 2: a member declaring more than its kind's limit is refused from the zip's
    directory, before a byte of it is inflated, in one line naming the member: JSON files by
    coco.JSON_BYTES, pictures by the picture byte budget (encoder.MAX_DECODE_BYTES)."""
    from captioner import encoder, shards

    limits = {**getattr(coco, "JSON_BYTES", {}), "dataset_coco.json": 1000}
    monkeypatch.setattr(coco, "JSON_BYTES", limits, raising=False)
    doc = json.dumps({"images": [], "pad": " " * 5000})
    path = _zip(tmp_path / "caption_datasets.zip", {"dataset_coco.json": doc})
    message = (
        f"{path}:dataset_coco.json: declares {len(doc):,} bytes uncompressed, over the "
        f"1,000-byte limit for this JSON file; {coco.FIX}"
    )
    for read in (coco.check_zip, lambda p: coco._read_json(p, "dataset_coco.json")):
        with pytest.raises(CaptionerError) as err:
            read(path)
        assert str(err.value) == message
    monkeypatch.setattr(encoder, "MAX_DECODE_BYTES", 1000)
    member = "train2014/COCO_train2014_000000000001.jpg"
    path = _zip(tmp_path / "train2014.zip", {"train2014/": b"", member: b"\xff" * 5000})
    with pytest.raises(CaptionerError, match=rf"{member}: declares 5,000 bytes .* for a picture"):
        coco.check_zip(path)
    with pytest.raises(CaptionerError, match=rf"{member}: declares 5,000 bytes .* for a picture"):
        shards.open_picture([path, member])  # a worker reading a zip replaced since


def test_zip_with_a_member_twice_is_refused(tmp_path):
    member = "train2014/COCO_train2014_000000000001.jpg"
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = _zip(tmp_path / "train2014.zip", {"train2014/": b"", member: b"a"})
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr(member, b"b")
    with pytest.raises(CaptionerError, match=rf"member '{member}' appears twice; this is not"):
        coco.check_zip(path)


@pytest.mark.slow
def test_prepare_refuses_a_real_zip_bomb_at_once(tmp_path):
    """A 2 MB caption_datasets.zip whose dataset_coco.json inflates to 416 MiB (over the
    400 MiB allowed): refused from its header, nothing inflated, nothing written."""
    pic = "train2014/COCO_train2014_000000000001.jpg"
    _zip(tmp_path / "train2014.zip", {"train2014/": b"", pic: b"x"})
    _zip(tmp_path / "val2014.zip", {"val2014/": b"", pic.replace("train", "val"): b"x"})
    with zipfile.ZipFile(tmp_path / "caption_datasets.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("dataset_coco.json", "w", force_zip64=True) as f:
            for _ in range(26):
                f.write(b" " * (1 << 24))
    assert os.path.getsize(tmp_path / "caption_datasets.zip") < 3e6
    result = run("prepare", "--coco", tmp_path, "--out", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert "caption_datasets.zip:dataset_coco.json: declares 436,207,616 bytes" in result.output
    assert not (tmp_path / "out").exists()
