"""Flickr8k and Karpathy-format datasets: a Flickr8k release built from the real pictures of
../shared (coco/images with their real captions, photos/ with captions written for them),
served from 127.0.0.1 -> download -> prepare -> train -> evaluate --split test -> sample.

The release has the real one's layout and its known gaps: pictures under Flicker8k_Dataset/
(sic), __MACOSX/ entries, a listed picture missing from the zip, a listed picture whose
captions sit under a misspelt name (NAME.jpg.1, in no list), and a captioned picture in no
list. dataset_flickr8k.json describes the same pictures in Karpathy's format.
"""

import hashlib
import io
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_coco import _jpeg

from captioner import data, download, limits
from captioner import prepare as P
from captioner.errors import CaptionerError
from captioner.sources import flickr8k, karpathy
from fileserver import serving
from helpers import run, zipped

PHOTO_CAPTIONS = {
    "astronaut.png": [
        "An astronaut in an orange suit poses in front of a flag.",
        "A woman astronaut smiling for a portrait.",
    ],
    "camera.png": [
        "A man looks through a camera on a tripod.",
        "A black and white photo of a photographer.",
    ],
    "chelsea.png": ["A tabby cat looks to the side.", "A close up of a striped cat."],
    "china.jpg": [
        "A temple with a curved roof under a blue sky.",
        "An old building with trees in front of it.",
    ],
    "coffee.png": ["A cup of coffee on a saucer.", "A white cup filled with coffee on a table."],
    "flower.jpg": ["A pink flower with green leaves.", "A close up of a flower in bloom."],
    "grace_hopper.jpg": [
        "A woman in a navy uniform poses for a portrait.",
        "An old photo of a woman in uniform.",
    ],
    "motorcycle_left.png": [
        "A red motorcycle parked on a white background.",
        "A side view of a motorcycle.",
    ],
    "rocket.jpg": ["A rocket launches into the sky.", "A space shuttle lifting off with smoke."],
}
# Of the 22 pictures (sorted by Flickr-style name): these many per list, then the gaps.
PLAN = ["train"] * 10 + ["val"] * 4 + ["test"] * 4 + ["gone", "misspelt", "unlisted", "unlisted 2"]


def _flickr_name(blob, k):
    """A Flickr-style file name (1000268201_693b08cb0e.jpg): photo id, then a 10-hex secret."""
    return f"{1000268201 + 7919 * k}_{hashlib.sha1(blob).hexdigest()[:10]}.jpg"


def build_release(shared):
    """-> {file name: bytes} of Flickr8k_Dataset.zip, Flickr8k_text.zip, dataset_flickr8k.json
    and caption_datasets.zip, and a summary of the plan."""
    ann = json.loads((shared / "coco" / "images" / "captions.json").read_text())
    by_id = {}
    for a in ann["annotations"]:
        by_id.setdefault(a["image_id"], []).append(a["caption"])
    pictures = [
        (_jpeg(shared / "coco" / "images" / im["file_name"]), by_id[im["id"]])
        for im in ann["images"]
    ]
    pictures += [
        (_jpeg(shared / "photos" / n), caps) for n, caps in sorted(PHOTO_CAPTIONS.items())
    ]
    named = sorted((_flickr_name(b, k), b, c) for k, (b, c) in enumerate(pictures))
    assert len(named) == len(PLAN)
    members, tokens, lists = {"Flicker8k_Dataset/": b""}, [], {"train": [], "val": [], "test": []}
    kimages = []
    for (name, blob, caps), plan in zip(named, PLAN):
        if plan != "gone":
            members[f"Flicker8k_Dataset/{name}"] = blob
            members[f"__MACOSX/Flicker8k_Dataset/._{name}"] = b"\x00\x05\x16\x07 mac"
        token_name = name + ".1" if plan == "misspelt" else name
        tokens += [f"{token_name}#{k}\t{c}" for k, c in enumerate(caps)]
        if plan in lists:
            lists[plan].append(name)
        elif plan in ("gone", "misspelt"):  # listed, but missing from the zip / captions misspelt
            lists["train"].append(name)
        if plan in lists or plan == "unlisted":
            split = {"unlisted": "restval"}.get(plan, plan)
            sents = [{"raw": c, "tokens": c.lower().split()} for c in caps]
            kimages.append({"filename": name, "split": split, "sentences": sents})
    text = {
        "Flickr8k.token.txt": "\n".join(tokens) + "\n",
        "Flickr8k.lemma.token.txt": "\n".join(tokens) + "\n",
        "readme.txt": "Flickr8k text files\n",
        **{flickr8k.LISTS[s]: "".join(f"{n}\n" for n in names) for s, names in lists.items()},
    }
    kjson = json.dumps({"dataset": "flickr8k", "images": kimages})
    return {
        "Flickr8k_Dataset.zip": zipped(members),
        "Flickr8k_text.zip": zipped(text),
        "dataset_flickr8k.json": kjson.encode(),
        "caption_datasets.zip": zipped({"dataset_flickr8k.json": kjson}),
        "names": {p: n for (n, _, _), p in zip(named, PLAN) if p not in ("train", "val", "test")},
        "lists": lists,
    }


_RELEASE = {}


@pytest.fixture
def release(shared):
    if "r" not in _RELEASE:
        _RELEASE["r"] = build_release(shared)
    return _RELEASE["r"]


@pytest.fixture
def mirror(release):
    files = {f"f8k/{n}": release[n] for n in flickr8k.FILES}
    with serving(files) as srv:
        srv.url = f"{srv.base}/f8k"
        yield srv


def _write(folder, release, names=flickr8k.FILES):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(release[n])
    return folder


def _unpack(folder, release):
    """The pictures of Flickr8k_Dataset.zip as a folder (what a user of --karpathy may have)."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(release["Flickr8k_Dataset.zip"])) as zf:
        for info in zf.infolist():
            if info.filename.startswith("Flicker8k_Dataset/") and not info.is_dir():
                (folder / os.path.basename(info.filename)).write_bytes(zf.read(info))
    return folder


TRAIN = ("--epochs", 2, "--hidden-dim", 16, "--wordvec-dim", 8, "--batch-size", 20, "--quiet")


def _train_evaluate_sample(ds, run_dir, shared, name):
    r = run("train", "--data", ds, *TRAIN, "--out", run_dir)
    assert r.exit_code == 0, r.output
    ckpt = f"{run_dir}/best.npz"
    r = run("evaluate", "--checkpoint", ckpt, "--split", "test", "--no-meteor", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert (out["split"], out["dataset"]) == ("test", name)
    assert set(out["scores"]) >= {"Bleu_4", "CIDEr", "ROUGE_L"}
    r = run("evaluate", "--checkpoint", ckpt, "--split", "test", "--no-meteor")
    assert f"on 4 test images of {name}, beam 3" in r.output.splitlines()[0]
    r = run("report", run_dir, "--split", "test", "--out", f"{run_dir}/r.html", "--no-meteor")
    assert r.exit_code == 0, r.output
    html = Path(run_dir, "r.html").read_text(encoding="utf-8")
    assert "data:image/jpeg;base64," in html and "picture not found" not in html  # from the zip
    r = run("sample", "--checkpoint", ckpt, "--split", "test", "--count", 2)
    assert r.exit_code == 0 and r.output.count("Flicker8k_Dataset/") == 2, r.output
    photo = shared / "photos" / "coffee.png"
    r = run("sample", photo, "--checkpoint", ckpt)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == str(photo) and len(r.output.splitlines()[1].split()) >= 1


# ----------------------------------------------------------------------------- end to end


def test_flickr8k_download_prepare_train_evaluate_test_and_sample(
    tmp_path, mirror, release, shared, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    os.makedirs("flickr8k")
    blob = release["Flickr8k_Dataset.zip"]
    (tmp_path / "flickr8k" / "Flickr8k_Dataset.zip.part").write_bytes(blob[:5000])  # interrupted
    mirror.drops["f8k/Flickr8k_text.zip"] = 1  # and a connection that drops once
    r = run("download", "--flickr8k", "--dest", "flickr8k", "--mirror", mirror.url)
    assert r.exit_code == 0, r.output
    assert "ready in flickr8k; next: captioner prepare --flickr8k flickr8k" in r.output
    for n in flickr8k.FILES:
        assert (tmp_path / "flickr8k" / n).read_bytes() == release[n]
    gets = [(n, rng) for c, n, rng in mirror.log if c == "GET"]
    assert ("f8k/Flickr8k_Dataset.zip", "bytes=5000-") in gets  # resumed, not fetched again
    assert [n for n, _ in gets].count("f8k/Flickr8k_text.zip") == 2  # dropped, then resumed

    r = run("prepare", "--flickr8k", "flickr8k", "--out", "ds", "--min-count", 1, "--workers", 1)
    assert r.exit_code == 0, r.output
    names, out = release["names"], r.output
    assert "ds: flickr8k, " in out
    assert "  train: 10 images, " in out and "  val: 4 images, " in out
    assert "  test: 4 images, " in out
    assert "  skipped 2 picture(s):" in out  # the release's gaps: reported, not fatal
    assert f"  skipped {names['gone']}: listed in Flickr_8k.trainImages.txt but not in " in out
    assert f"  skipped {names['misspelt']}: listed in Flickr_8k.trainImages.txt but has no " in out
    note = (
        "  note: 3 captioned picture(s) of Flickr8k.token.txt are in no split list and were "
        "left out"
    )
    assert note in out, out[-700:]
    assert not any("2014" in n for n in os.listdir("ds"))  # not COCO 2014: plain names
    assert "captions.h5" in os.listdir("ds")
    r = run("info", "--data", "ds")
    assert "dataset ds: flickr8k, 10/4/4 images, vocabulary" in r.output, r.output
    _train_evaluate_sample("ds", "runs/f8k", shared, "flickr8k")


def test_karpathy_format_with_a_folder_and_with_a_zip(tmp_path, release, shared, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "rel", release, flickr8k.FILES + ("dataset_flickr8k.json",))
    _write(tmp_path / "rel", release, ("caption_datasets.zip",))
    folder = _unpack(tmp_path / "pictures", release)
    common = ("--min-count", 1, "--workers", 1)
    r = run(
        "prepare", "--karpathy", "rel/dataset_flickr8k.json", "--images", folder, "--out", "kf",
        *common,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "  train: 11 images" in r.output  # train + restval (the unlisted picture)
    r = run(
        "prepare", "--karpathy", "rel/caption_datasets.zip", "--karpathy-name",
        "dataset_flickr8k.json", "--images", "rel/Flickr8k_Dataset.zip", "--out", "kz", *common,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    a = data.load_coco_data("kf", splits=("train", "val", "test"))
    b = data.load_coco_data("kz", splits=("train", "val", "test"))
    for split in ("train", "val", "test"):
        assert a[f"{split}_images"] == b[f"{split}_images"]
        np.testing.assert_array_equal(a[f"{split}_features"], b[f"{split}_features"])
        np.testing.assert_array_equal(a[f"{split}_captions"], b[f"{split}_captions"])
    assert a["dataset"] == b["dataset"] == "flickr8k"
    assert b["test_urls"][0].endswith(
        "Flickr8k_Dataset.zip:Flicker8k_Dataset/" + b["test_images"][0]
    )
    assert a["test_urls"][0] == str(folder / a["test_images"][0])
    # the same pictures as prepare --flickr8k: the same test split, feature for feature
    P.prepare_flickr8k(tmp_path / "rel", "f8", min_count=1, workers=1, progress=False)
    c = data.load_coco_data("f8", splits=("train", "val", "test"))
    assert c["test_images"] == b["test_images"] == release["lists"]["test"]
    np.testing.assert_array_equal(c["test_features"], b["test_features"])
    _train_evaluate_sample("kz", "runs/kz", shared, "flickr8k")


# ----------------------------------------------------------------------------- bad input


def _kdoc(release, change):
    doc = json.loads(release["dataset_flickr8k.json"])
    change(doc)
    return doc


def _set(k, key, value):
    def change(doc):
        doc["images"][k][key] = value

    return change


BAD_KARPATHY = {
    "no images": (lambda d: d.pop("images"), r"json: no 'images' list; fix the file"),
    "bad split": (_set(3, "split", "dev"), r"json: images\[3\]: 'split' 'dev' is not one of t"),
    "dotdot": (_set(0, "filename", "../secret.jpg"), r"images\[0\]: '\.\./secret\.jpg': '\.\.'"),
    "absolute": (_set(1, "filename", "/etc/passwd"), r"images\[1\]: '/etc/passwd': absolute path"),
    "bad filepath": (_set(2, "filepath", ".."), r"images\[2\]: '\.\./.*': '\.\.'"),
    "line break": (
        _set(2, "filename", "a\nb.jpg"),
        r"images\[2\]: 'a\\nb\.jpg': file name contains",
    ),
    "no sentences": (_set(0, "sentences", "hi"), r"images\[0\]: 'sentences' must be a list"),
    "twice": (
        lambda d: d["images"].append(dict(d["images"][0])),
        r"images\[19\]: .*\.jpg is listed twice \(also images\[0\]\)",
    ),
    "missing": (
        _set(4, "filename", "999_0000000000.jpg"),
        r"json: 1 of its 19 pictures are not in .* \(first: 999_0000000000\.jpg\)",
    ),
}


@pytest.mark.parametrize("images", ["zip", "folder"])
@pytest.mark.parametrize("case", sorted(BAD_KARPATHY))
def test_a_bad_karpathy_file_is_one_line_exit_2_and_writes_nothing(
    tmp_path, release, case, images
):
    change, message = BAD_KARPATHY[case]
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text(json.dumps(_kdoc(release, change)))
    if images == "zip":
        pics = _write(tmp_path, release, ("Flickr8k_Dataset.zip",)) / "Flickr8k_Dataset.zip"
    else:
        pics = _unpack(tmp_path / "pictures", release)
    r = run("prepare", "--karpathy", path, "--images", pics, "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"captioner: error: {path}")
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


def test_karpathy_zip_needs_the_member_name_and_json_is_bounded(tmp_path, release, monkeypatch):
    _write(tmp_path, release, ("caption_datasets.zip", "Flickr8k_Dataset.zip"))
    pics = tmp_path / "Flickr8k_Dataset.zip"
    with pytest.raises(
        CaptionerError, match="a zip; name the JSON inside it with --karpathy-name"
    ):
        karpathy.read(tmp_path / "caption_datasets.zip", pics)
    with pytest.raises(CaptionerError, match=r"caption_datasets\.zip:dataset_x\.json: no such m"):
        karpathy.read(tmp_path / "caption_datasets.zip", pics, "dataset_x.json")
    monkeypatch.setattr(limits, "MAX_JSON_BYTES", 1000)  # both forms refused before reading
    size = len(release["dataset_flickr8k.json"])
    with pytest.raises(CaptionerError, match=rf"flickr8k\.json: declares {size:,} bytes uncompr"):
        karpathy.read(tmp_path / "caption_datasets.zip", pics, "dataset_flickr8k.json")
    (tmp_path / "k.json").write_bytes(release["dataset_flickr8k.json"])
    with pytest.raises(CaptionerError, match=rf"k\.json: {size:,} bytes, over the 1,000-byte lim"):
        karpathy.read(tmp_path / "k.json", pics)


def test_a_zip_bomb_member_is_refused_unread(tmp_path, release, monkeypatch):
    """A 50 MB token file compresses to ~50 KB: refused by its declared size, never inflated."""
    folder = _write(tmp_path / "rel", release)
    with zipfile.ZipFile(io.BytesIO(release["Flickr8k_text.zip"])) as zf:
        text = {i.filename: zf.read(i) for i in zf.infolist()}
    text["Flickr8k.token.txt"] = b"\n" * 50_000_000
    (folder / "Flickr8k_text.zip").write_bytes(zipped(text))
    assert os.path.getsize(folder / "Flickr8k_text.zip") < 200_000
    monkeypatch.setattr(limits, "MAX_TEXT_BYTES", 10_000_000)
    read = []
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *a, **_k: read.append(a))
    with pytest.raises(
        CaptionerError, match=r"token\.txt: declares 50,000,000 bytes uncompressed"
    ):
        flickr8k.read(folder)
    assert read == []


def test_a_picture_too_big_is_refused_in_the_release_and_skipped_from_a_karpathy_zip(
    tmp_path, release, monkeypatch
):
    from captioner import encoder

    folder = _write(tmp_path / "rel", release)
    zip_path = folder / "Flickr8k_Dataset.zip"
    with zipfile.ZipFile(zip_path) as zf:
        size = {n: zf.getinfo(f"Flicker8k_Dataset/{n}").file_size for n in release["lists"]["val"]}
    biggest = max(size, key=size.get)
    monkeypatch.setattr(encoder, "MAX_DECODE_BYTES", size[biggest] - 1)
    with pytest.raises(CaptionerError, match=r"Flickr8k_Dataset\.zip:Flicker8k_Dataset/.*: decl"):
        flickr8k.read(folder)  # refused by its directory, before a byte is inflated
    (tmp_path / "k.json").write_bytes(release["dataset_flickr8k.json"])
    splits, skipped, _ = karpathy.read(tmp_path / "k.json", zip_path)
    assert biggest not in [it["name"] for it in splits["val"]] and len(splits["val"]) == 3
    assert [n for n, why in skipped if why.endswith("too big for a photograph")] == [biggest]


def _text_with(release, name, edit):
    with zipfile.ZipFile(io.BytesIO(release["Flickr8k_text.zip"])) as zf:
        text = {i.filename: zf.read(i) for i in zf.infolist()}
    text[name] = edit(text[name].decode(), release)
    return zipped(text)


BAD_TEXT = {
    "no tab": (
        "Flickr8k.token.txt",
        lambda t, _r: t.replace("\t", " ", 1),
        r"Flickr8k\.token\.txt line 1: '.*' is not NAME\.jpg#K<TAB>caption; fix the line",
    ),
    "no number": (
        "Flickr8k.token.txt",
        lambda t, _r: t.replace("#0\t", "#\t", 1),
        r"Flickr8k\.token\.txt line 1: .* is not NAME\.jpg#K<TAB>caption",
    ),
    "repeated caption": (
        "Flickr8k.token.txt",
        lambda t, _r: t + t.splitlines()[0] + "\n",
        r"Flickr8k\.token\.txt line \d+: .*\.jpg#0 repeats line 1; fix the line",
    ),
    "path as name": (
        "Flickr8k.token.txt",
        lambda t, _r: "../x.jpg#0\tA cat.\n" + t,
        r"Flickr8k\.token\.txt line 1: picture name '\.\./x\.jpg': not a plain file name",
    ),
    "listed twice": (
        "Flickr_8k.testImages.txt",
        lambda t, _r: t + t.splitlines()[0] + "\n",
        r"testImages\.txt line 5: .*\.jpg is already listed \(.*testImages\.txt line 1\)",
    ),
    "in two lists": (
        "Flickr_8k.devImages.txt",
        lambda t, r: t + "\n\n" + r["lists"]["train"][0] + "\n",
        r"devImages\.txt line 7: .* is already listed \(.*trainImages\.txt line 1\)",
    ),
    "not utf-8": (
        "Flickr_8k.trainImages.txt",
        lambda t, _r: t.encode().replace(b"\n", b"\n\xff", 1),
        r"Flickr_8k\.trainImages\.txt line 2: not UTF-8 text",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TEXT))
def test_bad_release_text_is_one_line_naming_file_and_line(tmp_path, release, case):
    name, edit, message = BAD_TEXT[case]
    folder = _write(tmp_path / "rel", release)
    (folder / "Flickr8k_text.zip").write_bytes(_text_with(release, name, edit))
    r = run("prepare", "--flickr8k", folder, "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), lines
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- download


def test_download_states_the_disk_space_it_needs(tmp_path, mirror, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(download.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(CaptionerError, match=r"the Flickr8k zips need 0\.\d+ GB more and only 0"):
        download.download_flickr8k(tmp_path / "d", mirror=mirror.url, progress=False)
    assert os.listdir(tmp_path / "d") == []


@pytest.mark.parametrize(
    "name, blob, message",
    [
        ("Flickr8k_text.zip", b"<html>404</html>" * 9, "not a valid zip file"),
        ("Flickr8k_text.zip", zipped({"readme.txt": "hi"}), "no Flickr8k.token.txt, Flickr_8k"),
        ("Flickr8k_Dataset.zip", zipped({"x/a.jpg": "x"}), "no pictures in a Flicker8k_Dataset/"),
        ("Flickr8k_Dataset.zip", zipped({"../a.jpg": "x"}), r"refusing unsafe member '\.\./a"),
    ],
)
def test_download_refuses_a_bad_file_and_keeps_nothing_of_it(
    tmp_path, mirror, name, blob, message
):
    mirror.files[f"f8k/{name}"] = blob
    r = run("download", "--flickr8k", "--dest", tmp_path / "d", "--mirror", mirror.url)
    assert r.exit_code == 2, r.output
    line = r.output.strip().splitlines()[-1]
    assert re.search(rf"{name}\.part: .*{message}.*; deleted\. It came from .*--flickr8k", line)
    assert name not in os.listdir(tmp_path / "d") and f"{name}.part" not in os.listdir(
        tmp_path / "d"
    )


def test_usage_errors_name_the_option():
    r = run("prepare", "--flickr8k", ".", "--captions", __file__, "--out", "x")
    assert (
        r.exit_code == 2
        and "--flickr8k takes its splits from its own files; drop --captions" in r.output
    )
    r = run("prepare", "--karpathy", __file__, "--out", "x")
    assert r.exit_code == 2 and "--karpathy needs --images" in r.output
    r = run(
        "prepare", "--karpathy", __file__, "--images", ".", "--split-by", __file__, "--out", "x"
    )
    assert r.exit_code == 2 and "drop --split-by" in r.output
    r = run(
        "prepare",
        "--images",
        ".",
        "--captions",
        __file__,
        "--karpathy-name",
        "a.json",
        "--out",
        "x",
    )
    assert r.exit_code == 2 and "--karpathy-name goes with --karpathy ZIP" in r.output
    r = run("prepare", "--flickr8k", ".", "--coco", ".", "--out", "x")
    assert r.exit_code == 2 and "--coco and --flickr8k do not go together" in r.output
    r = run("download", "--flickr8k", "--images")
    assert r.exit_code == 2 and "--flickr8k goes alone" in r.output


def test_old_and_new_file_names_load_alike(tmp_path):
    """A COCO-named folder (every dataset written before plain names) and a plain-named one
    hold the same data; each is read by its own names, and info names the dataset."""
    from test_data import VOCAB10, tiny_splits

    splits = tiny_splits(np.random.default_rng(0))
    data.write_dataset(tmp_path / "old", splits, VOCAB10)
    data.write_dataset(tmp_path / "new", splits, VOCAB10, name="mine", names="plain")
    assert sorted(os.listdir(tmp_path / "new")) == sorted(
        n.replace("2014", "").replace("coco_", "") for n in os.listdir(tmp_path / "old")
    )
    a, b = data.load_coco_data(tmp_path / "old"), data.load_coco_data(tmp_path / "new")
    assert (a["dataset"], b["dataset"]) == (None, "mine")
    for k in ("train_captions", "val_features", "val_image_idxs"):
        np.testing.assert_array_equal(a[k], b[k])
    assert (
        "dataset " + str(tmp_path / "new") + ": mine, "
        in run("info", "--data", tmp_path / "new").output
    )


def test_a_karpathy_name_linking_outside_the_pictures_folder_is_refused(tmp_path):
    """A picture of --images that is a symbolic link to a file outside it is not read."""
    (tmp_path / "pics").mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"not for the dataset")
    (tmp_path / "pics" / "in.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "secret.jpg", tmp_path / "pics" / "link.jpg")
    entry = lambda f: {"filename": f, "split": "train", "sentences": [{"raw": "a dog"}]}
    doc = {"images": [entry("in.jpg")]}
    (tmp_path / "k.json").write_text(json.dumps(doc))
    splits, skipped, _ = karpathy.read(tmp_path / "k.json", tmp_path / "pics")
    assert [it["name"] for it in splits["train"]] == ["in.jpg"] and skipped == []
    doc["images"].append(entry("link.jpg"))
    (tmp_path / "k.json").write_text(json.dumps(doc))
    with pytest.raises(CaptionerError, match=r"'link.jpg': resolves outside the pictures"):
        karpathy.read(tmp_path / "k.json", tmp_path / "pics")


def test_karpathy_filepath_names_a_folder_inside_the_pictures(tmp_path, release):
    """COCO-style entries carry a folder ('filepath'): looked up under --images, in a zip too."""
    doc = json.loads(release["dataset_flickr8k.json"])
    for e in doc["images"]:
        e["filepath"] = "Flicker8k_Dataset"
    (tmp_path / "k.json").write_text(json.dumps(doc))
    zip_path = _write(tmp_path, release, ("Flickr8k_Dataset.zip",)) / "Flickr8k_Dataset.zip"
    _unpack(tmp_path / "pics" / "Flicker8k_Dataset", release)
    for images in (zip_path, tmp_path / "pics"):
        splits, skipped, name = karpathy.read(tmp_path / "k.json", images)
        assert (name, skipped) == ("flickr8k", [])
        assert [len(splits[s]) for s in ("train", "val", "test")] == [11, 4, 4]
        assert all(it["name"].startswith("Flicker8k_Dataset/") for it in splits["test"])
    assert splits["test"][0]["ref"] == str(tmp_path / "pics" / splits["test"][0]["name"])
