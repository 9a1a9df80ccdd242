"""Issue 14, classes 1-3: nothing a user has is overwritten by accident (--force to replace, and
then whole); a killed run always resumes; non-finite numbers never reach disk."""

import os

import numpy as np
import pytest
from click.testing import CliRunner
from test_prepare import _pictures

from captioner import checkpoint
from captioner import data as D
from captioner.cli import cli
from captioner.data import load_coco_data
from captioner.errors import CaptionerError
from fixtures import build_dataset
from helpers import run, snapshot

# ---------------------------------------------------------------- prepare --out


@pytest.fixture
def pictures(tmp_path):
    ann = _pictures(tmp_path / "img", 6)
    return tmp_path / "img", ann


def _prepare(pictures, out, *extra):
    images, ann = pictures
    return run(
        "prepare",
        "--images",
        images,
        "--captions",
        ann,
        "--out",
        out,
        "--min-count",
        1,
        "--val-fraction",
        0.3,
        *extra,
    )


def test_prepare_onto_an_existing_dataset_is_refused_without_force(pictures, tmp_path):
    out = tmp_path / "ds"
    assert _prepare(pictures, out).exit_code == 0
    before = snapshot(out)
    result = _prepare(pictures, out, "--max-words", 3)
    # its own dataset, of other settings: named as such (issue 24), still refused
    assert result.exit_code == 2 and f"{out}: holds a dataset captioner prepare built" in (
        result.output
    )
    assert "--force" in result.output
    assert snapshot(out) == before
    load_coco_data(out)


def test_prepare_into_a_folder_of_other_files_is_refused(pictures, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    result = _prepare(pictures, out)
    assert result.exit_code == 2 and "notes.txt" in result.output
    assert (out / "notes.txt").read_text() == "my notes" and os.listdir(out) == ["notes.txt"]


def test_prepare_force_replaces_the_dataset_whole(pictures, tmp_path):
    out = tmp_path / "ds"
    assert _prepare(pictures, out).exit_code == 0
    (out / "stale_extra.txt").write_text("from before")
    result = _prepare(pictures, out, "--force", "--max-words", 3)
    assert result.exit_code == 0, result.output
    assert not (out / "stale_extra.txt").exists()  # replaced whole, not file by file
    assert load_coco_data(out)["train_captions"].shape[1] == 5
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_prepare_failing_while_writing_leaves_the_old_dataset(pictures, tmp_path, monkeypatch):
    """A full disk half-way through write_dataset: the old dataset stays complete and loads."""
    out = tmp_path / "ds"
    assert _prepare(pictures, out).exit_code == 0
    before = snapshot(out)
    real = D.atomic.write_text

    def full_after_vocab(path, text, what="file"):
        if path.endswith(".txt"):
            raise CaptionerError(f"{path}: could not write {what} (No space left on device)")
        return real(path, text, what)

    monkeypatch.setattr(D.atomic, "write_text", full_after_vocab)
    result = _prepare(pictures, out, "--force")
    assert result.exit_code == 2 and "No space left" in result.output
    # the work area stays, so the same command resumes
    after = {k: v for k, v in snapshot(out).items() if not k.startswith(".prepare")}
    assert after == before
    load_coco_data(out)
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


# ---------------------------------------------------------------- class 3: no NaN on disk


@pytest.mark.parametrize("save_every,batch", [(1, 4), (0, 100)])  # at a step; at an epoch end
def test_diverging_run_never_saves_nan_over_the_good_checkpoint(tmp_path, save_every, batch):
    d = build_dataset(
        tmp_path / "data",
        n_train_images=6,
        captions_per_image=2,
        n_val_images=3,
        feature_dim=8,
        vocab_size=40,
        seed=1,
    )
    out = tmp_path / "run"
    result = run(
        "train",
        "--data",
        d,
        "--out",
        out,
        "--optimizer",
        "sgd",
        "--lr-decay",
        "1e300",
        "--epochs",
        3,
        "--save-every",
        save_every,
        "--batch-size",
        batch,
        "--hidden-dim",
        8,
        "--wordvec-dim",
        8,
        "--val-size",
        3,
        "--quiet",
    )
    assert result.exit_code == 1, result.output
    model, meta, _, _ = checkpoint.load_model(out / "last.npz")  # loads: every parameter finite
    assert all(np.isfinite(p).all() for p in model.params.values())
    assert meta["training"]["epoch"] >= 1
    assert "NaN" in result.output and "last good one" in result.output


# ---------------------------------------------------------------- classes 1-2: run directories

TRAIN = [
    "--hidden-dim",
    8,
    "--wordvec-dim",
    8,
    "--batch-size",
    10,
    "--val-size",
    5,
    "--lr",
    "5e-3",
    "--seed",
    3,
    "--quiet",
    "--epochs",
    3,
]


class Killed(BaseException):
    """kill -9 at a chosen instant: nothing after it runs (not even `finally` writes)."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A dataset and a straight, never interrupted run's final state."""
    from test_faults import params

    root = tmp_path_factory.mktemp("runs")
    d = build_dataset(
        root / "data",
        n_train_images=30,
        captions_per_image=2,
        n_val_images=3,
        feature_dim=8,
        vocab_size=40,
        seed=2,
    )
    result = run("train", "--data", d, *TRAIN, "--out", root / "straight")
    assert result.exit_code == 0, result.output
    return d, params(root / "straight" / "last.npz")


def _kill_between_best_and_last(monkeypatch, at_epoch):
    """Die right after an epoch end's best.npz is written, before last.npz."""
    from captioner import checkpoint

    real = checkpoint.save

    def save(path, params, meta, *a, **k):
        t = meta["training"]
        if (
            str(path).endswith("last.npz")
            and t["step_in_epoch"] == 0
            and t["epoch"] == at_epoch
            and t["best"]["epoch"] == at_epoch
        ):
            raise Killed
        return real(path, params, meta, *a, **k)

    monkeypatch.setattr(checkpoint, "save", save)


@pytest.mark.parametrize("save_every,at_epoch", [(0, 1), (4, 1), (4, 2)])
def test_killed_between_best_and_last_resumes_bit_exact(
    runs, tmp_path, monkeypatch, save_every, at_epoch
):
    from test_faults import assert_same_params

    d, straight = runs
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _kill_between_best_and_last(m, at_epoch)
        with pytest.raises(Killed):
            CliRunner().invoke(
                cli,
                [
                    str(a)
                    for a in [
                        "train",
                        "--data",
                        d,
                        *TRAIN,
                        "--out",
                        out,
                        "--save-every",
                        save_every,
                    ]
                ],
                catch_exceptions=False,
            )
    assert (out / "best.npz").exists()
    result = run("train", "--resume", out)
    assert result.exit_code == 0, result.output
    assert_same_params(out / "last.npz", straight)


def test_new_run_never_writes_over_a_run_or_other_files(runs, tmp_path):
    d, _ = runs
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.npz").write_bytes(b"my best model")  # a run whose last.npz is gone
    result = run("train", "--data", d, *TRAIN, "--out", out)
    assert result.exit_code == 2 and "already holds a run" in result.output
    assert (out / "best.npz").read_bytes() == b"my best model"
    (out / "best.npz").unlink()
    (out / "notes.txt").write_text("mine")
    result = run("train", "--data", d, *TRAIN, "--out", out)
    assert result.exit_code == 2 and "notes.txt" in result.output
    assert os.listdir(out) == ["notes.txt"]


@pytest.mark.parametrize("command", ["train", "prepare"])
def test_lock_file_symlink_is_not_followed(runs, pictures, tmp_path, command):
    d, _ = runs
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    if command == "train":
        out = tmp_path / "run"
        out.mkdir()
        os.symlink(victim, out / "train.lock")
        result = run("train", "--data", d, *TRAIN, "--out", out)
    else:
        out = tmp_path / "ds"
        (out / ".prepare").mkdir(parents=True)
        os.symlink(victim, out / ".prepare" / "lock")
        result = _prepare(pictures, out)
    assert result.exit_code == 2 and "symbolic link" in result.output, result.output
    assert victim.read_text() == "precious"


def test_download_and_demo_never_replace_a_folder_of_yours(tmp_path):
    from captioner import demo, download

    mine = tmp_path / "data" / "coco_captioning"
    mine.mkdir(parents=True)
    (mine / "my_notes.txt").write_text("mine")
    result = run("download", "--dest", tmp_path / "data", "--url", "http://127.0.0.1:9/x.zip")
    assert result.exit_code == 2 and "my_notes.txt" in result.output
    with pytest.raises(CaptionerError, match="my_notes.txt"):
        download.download_coco(tmp_path / "data", url="http://127.0.0.1:9/x.zip", progress=False)
    pictures = tmp_path / "Pictures"
    pictures.mkdir()
    (pictures / "val_images.txt").write_text("my list")  # a name the demo writes...
    (pictures / "holiday.jpg").write_bytes(b"...")  # ...in a folder that is not a demo's
    result = run("demo", "--out", pictures)
    assert result.exit_code == 2 and "holiday.jpg" in result.output
    assert (pictures / "val_images.txt").read_text() == "my list"
    with pytest.raises(CaptionerError, match="holiday.jpg"):
        demo.run_demo(pictures, log=lambda *_: None)
    assert mine.exists() and (mine / "my_notes.txt").read_text() == "mine"


@pytest.mark.parametrize("command", ["gradients", "compare"])
def test_plot_never_replaces_an_existing_picture_without_force(tmp_path, command):
    d = build_dataset(
        tmp_path / "data",
        n_train_images=6,
        captions_per_image=2,
        n_val_images=3,
        feature_dim=8,
        vocab_size=40,
        seed=1,
    )
    mine = tmp_path / "holiday.png"
    mine.write_bytes(b"my photo")
    args = {
        "gradients": [
            "gradients",
            "--cell",
            "rnn",
            "--data",
            d,
            "--count",
            5,
            "--hidden-dim",
            4,
            "--wordvec-dim",
            4,
        ],
        "compare": [
            "compare",
            "--data",
            d,
            "--epochs",
            1,
            "--hidden-dim",
            4,
            "--wordvec-dim",
            4,
            "--batch-size",
            4,
            "--val-size",
            3,
            "--count",
            5,
            "--quiet",
            "--out",
            tmp_path / "cmp",
        ],
    }[command]
    result = run(*args, "--plot", mine)
    assert result.exit_code == 2 and "already exists; pass --force" in result.output
    assert mine.read_bytes() == b"my photo"
    result = run(*args, "--plot", mine, "--force")
    assert result.exit_code == 0, result.output
    assert mine.read_bytes()[:4] == b"\x89PNG"


def test_report_and_sample_outputs_never_replace_a_file_without_force(tmp_path):
    victim = tmp_path / "best.npz"
    victim.write_bytes(b"my checkpoint")
    result = run("report", tmp_path, "--out", victim)
    assert result.exit_code == 2 and "already exists; pass --force" in result.output
    for flag in ("--json", "--html"):
        result = run("sample", tmp_path / "pic.jpg", flag, victim, "--checkpoint", victim)
        assert result.exit_code == 2 and "already exists; pass --force" in result.output
    assert victim.read_bytes() == b"my checkpoint"
