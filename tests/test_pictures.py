"""From picture files to captions through the CLI: prepare, train, sample, encode, demo."""

import os

import numpy as np
import pytest

from captioner import demo
from captioner import encoder as E
from captioner.data import load_vocab
from captioner.errors import CaptionerError
from captioner.model import CaptioningRNN
from captioner.pictures import caption_images
from fixtures import build_dataset
from helpers import run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on 40 rendered scenes prepared by `captioner prepare`."""
    root = tmp_path_factory.mktemp("pictures")
    annotations = demo.write_demo_images(root / "images", 40, seed=3)
    result = run(
        "prepare",
        "--images",
        root / "images",
        "--captions",
        annotations,
        "--out",
        root / "data",
        "--min-count",
        1,
        "--val-fraction",
        0.2,
    )
    assert result.exit_code == 0, result.output
    assert "train: 32 images, 160 captions" in result.output
    result = run(
        "train",
        "--data",
        root / "data",
        "--epochs",
        2,
        "--hidden-dim",
        32,
        "--wordvec-dim",
        16,
        "--batch-size",
        40,
        "--quiet",
        "--out",
        root / "run",
    )
    assert result.exit_code == 0, result.output
    return root


def test_sample_pictures_good_and_bad(trained, tmp_path):
    good = tmp_path / "scene.png"
    demo.render_scene(demo.random_scene(np.random.default_rng(7))).save(good)
    text = tmp_path / "text.jpg"
    text.write_text("not a picture")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((trained / "images" / "demo_000000000001.jpg").read_bytes()[:300])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    folder = tmp_path / "folder"
    folder.mkdir()
    result = run(
        "sample",
        good,
        text,
        truncated,
        empty,
        folder,
        tmp_path / "missing.jpg",
        "--checkpoint",
        trained / "run" / "best.npz",
        "--n-best",
        2,
        "--beam-size",
        3,
    )
    assert result.exit_code == 1
    out = result.output.splitlines()
    # The good picture is still captioned: its name, then two beams with log-probabilities.
    i = out.index(str(good))
    assert all("log p" in line for line in out[i + 1 : i + 3])
    for bad in (text, truncated, empty, folder, tmp_path / "missing.jpg"):
        assert sum(line.startswith(f"captioner: error: {bad}") for line in out) == 1, (
            bad,
            result.output,
        )


def test_sample_temperature_gives_captions(trained):
    picture = trained / "images" / "demo_000000000002.jpg"
    result = run(
        "sample",
        picture,
        "--checkpoint",
        trained / "run" / "best.npz",
        "--temperature",
        1.5,
        "--n-best",
        3,
        "--seed",
        0,
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert (
        lines[0] == str(picture)
        and len(lines) == 4
        and all(ln.startswith("  ") for ln in lines[1:])
    )


def test_sample_refuses_features_a_picture_cannot_give(tmp_path):
    data = build_dataset(tmp_path / "coco", n_train_images=20, n_val_images=5, feature_dim=16)
    result = run(
        "train",
        "--data",
        data,
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
    assert result.exit_code == 0, result.output
    picture = tmp_path / "p.png"
    demo.render_scene(demo.random_scene(np.random.default_rng(0))).save(picture)
    result = run("sample", picture, "--checkpoint", tmp_path / "run" / "best.npz")
    assert result.exit_code == 2
    assert (
        "cannot be computed from a picture" in result.output
        and "captioner prepare" in result.output
    )


def test_encode_prints_top_classes(shared):
    result = run("encode", shared / "photos" / "coffee.png", "--top", 3)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 4 and "espresso" in lines[1]


def test_demo_pipeline_small(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run(
        "demo", "--out", tmp_path / "demo", "--train-images", 40, "--val-images", 8, "--epochs", 2
    )
    # Two epochs on 40 scenes are not expected to ground the captions; the pipeline must run.
    assert result.exit_code in (0, 1), result.output
    assert "[5/5]" in result.output and "generated:" in result.output
    assert "CIDEr-D" in result.output and "grounding:" in result.output
    assert os.listdir(tmp_path / "runs") == ["demo"]
    assert os.path.exists(tmp_path / "runs" / "demo" / "last.npz")
    # it ends with the run's report, and says where it is
    page = os.path.join("runs", "demo", "report.html")
    assert f"report written to {page}" in result.output.splitlines()[-1]
    assert 'id="gallery"' in (tmp_path / page).read_text()
    # A second run reuses the prepared scenes and the finished run (never cut to 1 epoch).
    again = run(
        "demo", "--out", tmp_path / "demo", "--train-images", 40, "--val-images", 8, "--epochs", 1
    )
    assert "using the scenes already prepared" in again.output
    assert "[3/5] runs/demo: already trained, 2 epochs (delete it to retrain)" in again.output
    assert os.listdir(tmp_path / "runs") == ["demo"]
    # The demo's model captions a photograph only after saying, once, what it was trained on.
    photos = [tmp_path / "demo" / "new_picture.jpg", tmp_path / "demo" / "new_picture.jpg"]
    result = run("sample", *photos, "--checkpoint", tmp_path / "runs" / "demo" / "last.npz")
    assert result.exit_code == 0, result.output
    assert result.output.count("trained by `captioner demo` on rendered shapes") == 1
    assert result.output.count(str(photos[0])) == 2


def test_no_demo_note_for_other_models(trained):
    picture = trained / "images" / "demo_000000000002.jpg"
    result = run("sample", picture, "--checkpoint", trained / "run" / "best.npz")
    assert result.exit_code == 0 and "rendered shapes" not in result.output


# ---------------------------------------------------------------- captioner.pictures (library)


def test_caption_images_good_pictures_and_a_bad_one(shared, tmp_path):
    idx_to_word = load_vocab(shared / "coco" / "coco2014_vocab.json")[1]
    model = CaptioningRNN(
        {w: i for i, w in enumerate(idx_to_word)},
        input_dim=E.FEATURE_DIM,
        wordvec_dim=16,
        hidden_dim=32,
        cell_type="lstm",
        seed=0,
    )
    bad = tmp_path / "notes.jpg"
    bad.write_text("shopping list: milk, eggs")
    pics = sorted((shared / "coco" / "images").glob("*.jpg"))[:3]
    paths = [pics[0], bad, pics[1], pics[2]]
    out = caption_images(model, paths, beam_size=2, n_best=2, max_length=5, batch_size=2)
    assert [p for p, _, _ in out] == paths
    _, caps, err = out[1]
    assert caps is None and "notes.jpg" in err and "not an image" in err
    for _, caps, err in (out[0], out[2], out[3]):
        assert err is None and len(caps) == 2 and caps[0][1] >= caps[1][1]
        for text, logprob in caps:
            words = text.split()
            assert 1 <= len(words) <= 5 and set(words) <= set(idx_to_word[4:]) and logprob < 0
    small = CaptioningRNN(
        {w: i for i, w in enumerate(idx_to_word)}, input_dim=512, wordvec_dim=8, hidden_dim=8
    )
    with pytest.raises(CaptionerError, match="takes 512-d features"):
        caption_images(small, paths)
    # temperature sampling: n_best draws each, no log-probabilities, reproducible by seed
    a = caption_images(model, paths, n_best=3, max_length=5, temperature=1.5, rng=7)
    b = caption_images(model, paths, n_best=3, max_length=5, temperature=1.5, rng=7)
    assert a == b and a[1][1] is None
    assert all(len(caps) == 3 and all(lp is None for _, lp in caps) for _, caps, _ in a[::2])
