"""A newcomer's first hour (issue 24): the demo stops and continues cleanly, every command
names the model it picked, outputs carry the demo model's caveat, and the offline first steps
work without a download."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from captioner import demo, report
from captioner.data import captions_file
from captioner.model import CaptioningRNN
from fixtures import build_dataset
from helpers import run

ROOT = Path(__file__).resolve().parents[1]
DEMO = ["--train-images", 40, "--val-images", 8, "--epochs", 2]


def _ctrl_c_at_step(monkeypatch, step):
    """Send this process SIGINT during training step `step`, as a user's Ctrl-C would."""
    loss, calls = CaptioningRNN.loss, [0]

    def loss_then_signal(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == step:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(self, *args, **kwargs)

    monkeypatch.setattr(CaptioningRNN, "loss", loss_then_signal)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """A small demo interrupted by Ctrl-C in its first epoch, then run again to the end
    (in its own folder: the demo writes runs/demo under the current directory)."""
    root = tmp_path_factory.mktemp("first-hour")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        _ctrl_c_at_step(mp, 1)
        stopped = run("demo", "--out", root / "demo", *DEMO)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        again = run("demo", "--out", root / "demo", *DEMO)
    return root, stopped, again


def test_ctrl_c_in_the_demo_is_one_line_and_make_demo_continues(demo_dir):
    root, stopped, again = demo_dir
    assert stopped.exit_code == 130, stopped.output
    last = stopped.output.strip().splitlines()[-1]
    assert last == (
        f"interrupted by SIGINT; saved runs/demo/last.npz; continue with: captioner demo "
        f"--out {root / 'demo'} --train-images 40 --val-images 8 --epochs 2"
    )
    # run again: the same run continues (a stable folder, not a new runs/<time>-demo)
    assert again.exit_code in (0, 1), again.output  # 1: 2 epochs need not ground captions
    assert "[3/5] captioner train --resume runs/demo: continuing the demo's run at epoch 1/2" in (
        again.output
    )
    assert os.listdir(root / "runs") == ["demo"]
    history = json.loads((root / "runs" / "demo" / "history.json").read_text())
    assert [r["epoch"] for r in history["epochs"]] == [1, 2]
    # a finished run folder holds its files, not the writer's lock
    assert "train.lock" not in os.listdir(root / "runs" / "demo")


def test_the_demo_shows_and_reports_the_model_it_kept(demo_dir, monkeypatch):
    root, _, again = demo_dir
    out = again.output
    best = json.loads((root / "runs" / "demo" / "history.json").read_text())["best"]
    assert (
        f"[4/5] captioner evaluate --checkpoint runs/demo/best.npz --data "
        f"{root / 'demo' / 'dataset'} --no-meteor   (best.npz: epoch {best['epoch']} of 2, "
        f"the lowest val loss)"
    ) in out
    assert f"[5/5] captioner sample {root / 'demo' / 'new_picture.jpg'} --checkpoint " in out
    assert "--checkpoint runs/demo/best.npz\n" in out
    # the last line is a fact, not a command still to run
    assert out.strip().splitlines()[-1] == (
        "report written to runs/demo/report.html (the scores above, with curves and a "
        "gallery): open it in a browser"
    )
    # step 4's scores are `captioner evaluate`'s (and the report's) for best.npz
    monkeypatch.chdir(root)
    shown = re.search(r"held-out scenes \(8 images\):  BLEU-4 ([\d.]+)  CIDEr-D ([\d.]+)", out)
    scored = run("evaluate", "--no-meteor", "--json")
    assert scored.exit_code == 0, scored.output
    assert "using runs/demo/best.npz, the newest runs/*/best.npz" in scored.output
    scores = json.loads(scored.output.splitlines()[-1])["scores"]
    assert shown.groups() == (f"{scores['Bleu_4']:.3f}", f"{scores['CIDEr']:.3f}")


def test_sample_names_the_checkpoint_it_picked(demo_dir, monkeypatch):
    root, _, _ = demo_dir
    monkeypatch.chdir(root)
    result = run("sample", "demo/new_picture.jpg")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        "using runs/demo/best.npz, the newest runs/*/best.npz (--checkpoint to choose)"
    )


def test_sample_outputs_name_the_model_and_carry_the_demo_note(demo_dir, tmp_path):
    root, _, _ = demo_dir
    ckpt = root / "runs" / "demo" / "best.npz"
    picture = root / "demo" / "new_picture.jpg"
    out_json, out_html = tmp_path / "c.json", tmp_path / "c.html"
    result = run("sample", picture, "--checkpoint", ckpt, "--json", out_json, "--html", out_html)
    assert result.exit_code == 0, result.output
    (record,) = json.loads(out_json.read_text())
    assert record["checkpoint"] == str(ckpt)
    assert "trained by `captioner demo` on rendered shapes" in record["note"]
    html = out_html.read_text()
    assert f"captioned by <code>{ckpt}</code>" in html
    banner = re.search(r'<div class="warning" id="note">Note: (.*?)</div>', html, re.S)
    assert banner and "cannot describe photographs" in banner.group(1)
    assert "<h2>1 picture</h2>" in html


def test_no_note_for_a_model_not_trained_by_the_demo(tmp_path):
    from captioner.picture_files import demo_note, results_of

    assert demo_note({"training": {"settings": {"data_dir": str(tmp_path)}}}) is None
    (record,) = results_of(["a.jpg"], [("a cat", -1.0)], checkpoint="runs/x/best.npz")
    assert record == {
        "file_name": "a.jpg",
        "caption": "a cat",
        "log_prob": -1.0,
        "checkpoint": "runs/x/best.npz",
    }


# ---------------------------------------------------------------- overfit and train offline


def test_overfit_without_a_download_uses_or_points_at_synthetic_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = run("overfit", "--small", "--n", 4, "--epochs", 1)
    assert missing.exit_code == 2
    assert "python scripts/make_synthetic_coco.py data/synthetic" in missing.output
    assert "make demo" in missing.output
    build_dataset(tmp_path / "data" / "synthetic", n_train_images=10, n_val_images=2)
    result = run("overfit", "--small", "--n", 4, "--epochs", 2, "--cell", "lstm")
    assert result.exit_code in (0, 1), result.output  # 2 epochs: the verdict does not matter
    assert (
        "note: data/coco_captioning is not downloaded (`captioner download`); using "
        "data/synthetic (--data chooses)"
    ) in result.output
    # a short summary: the loss table and the verdict, the captions only on request
    assert "truth:" not in result.output and "lstm: final loss" in result.output
    shown = run("overfit", "--small", "--n", 4, "--epochs", 2, "--cell", "lstm", "--captions")
    assert shown.output.count("truth:") == 4 and "4 memorised images" in shown.output


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_overfit_small_passes_on_the_synthetic_dataset(tmp_path, cell):
    """The README's offline first check: CS231n's settings memorise the synthetic captions with
    both cells (the RNN's lr decay was 0.95: its loss stopped at 0.116, above the 0.1 bar)."""
    script = ROOT / "scripts" / "make_synthetic_coco.py"
    subprocess.run([sys.executable, script, tmp_path / "syn"], check=True, capture_output=True)
    result = run("overfit", "--small", "--cell", cell, "--data", tmp_path / "syn")
    assert result.exit_code == 0, result.output
    assert f"{cell}: final loss" in result.output and "(PASS" in result.output
    assert "50/50 sampled captions equal their ground truth" in result.output


def test_train_without_a_download_trains_on_the_demo_scenes(demo_dir, tmp_path, monkeypatch):
    root, _, _ = demo_dir
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "demo").mkdir(parents=True)
    os.symlink(root / "demo" / "dataset", tmp_path / "data" / "demo" / "dataset")
    result = run("train", "--epochs", 1, "--hidden-dim", 8, "--wordvec-dim", 8, "--out", "r")
    assert result.exit_code == 0, result.output
    assert "using data/demo/dataset (--data chooses)" in result.output
    # relative paths stay relative, also on --resume
    assert "-> r\n" in result.output and "done: r/last.npz" in result.output
    resumed = run("train", "--resume", "r", "--epochs", 2)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming r/last.npz at epoch 2" in resumed.output
    assert "done: r/last.npz" in resumed.output
    assert sorted(os.listdir("r")) == ["best.npz", "history.json", "last.npz"]


# ---------------------------------------------------------------- prepare


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """13 scenes whose captions each end with two words no other caption has: like a few
    real photographs' captions, most words are rare."""
    root = tmp_path_factory.mktemp("pictures")
    path = Path(demo.write_demo_images(root / "images", 13, seed=5))
    ann = json.loads(path.read_text())
    for a in ann["annotations"]:
        a["caption"] += f" near house{a['id']} and tree{a['id']}"
    path.write_text(json.dumps(ann))
    return root, path


def test_prepare_recognises_its_own_finished_dataset(pictures, tmp_path):
    root, captions = pictures
    args = ["prepare", "--images", root / "images", "--captions", captions, "--workers", 1]
    first = run(*args, "--min-count", 1, "--val-fraction", 0.4, "--out", tmp_path / "d")
    assert first.exit_code == 0, first.output
    before = {n: os.path.getmtime(tmp_path / "d" / n) for n in os.listdir(tmp_path / "d")}
    again = run(*args, "--min-count", 1, "--val-fraction", 0.4, "--out", tmp_path / "d")
    assert again.exit_code == 0, again.output
    assert f"{tmp_path / 'd'}: already built by this command" in again.output
    assert "nothing to do" in again.output and "encoded" not in again.output
    assert {n: os.path.getmtime(tmp_path / "d" / n) for n in before} == before
    # other settings over it: refused, it is not the dataset asked for
    other = run(*args, "--min-count", 2, "--val-fraction", 0.4, "--out", tmp_path / "d")
    assert other.exit_code == 2
    assert "holds a dataset captioner prepare built from other pictures" in other.output
    # another encoder (the default is EfficientNet-Lite0): not this dataset either
    other = run(*args, "--min-count", 1, "--val-fraction", 0.4, "--encoder", "squeezenet",
                "--out", tmp_path / "d")  # fmt: skip
    assert other.exit_code == 2 and "nothing to do" not in other.output
    assert "holds a dataset captioner prepare built from other pictures" in other.output
    # a folder with a file prepare did not make is still refused
    (tmp_path / "d" / "notes.txt").write_text("mine")
    mine = run(*args, "--min-count", 1, "--val-fraction", 0.4, "--out", tmp_path / "d")
    assert mine.exit_code == 2 and "not made by captioner" in mine.output


def test_prepare_warns_about_a_degenerate_dataset(pictures, tmp_path):
    root, captions = pictures
    args = ["prepare", "--images", root / "images", "--captions", captions, "--workers", 1]
    result = run(*args, "--out", tmp_path / "d")
    assert result.exit_code == 0, result.output
    assert "val: 1 image, 5 captions" in result.output  # singular
    warnings = [ln for ln in result.output.splitlines() if ln.startswith("captioner: warning:")]
    assert len(warnings) == 2, result.output
    assert "of the train caption words become <UNK>" in warnings[0]
    assert "pass --min-count 1" in warnings[0]
    assert warnings[1].endswith(
        "the val split has only 1 image: its loss and scores say little; hold out more with "
        "--val-fraction 0.4"
    )
    fine = run(*args, "--min-count", 1, "--val-fraction", 0.4, "--out", tmp_path / "e")
    assert fine.exit_code == 0 and "warning" not in fine.output, fine.output


# ---------------------------------------------------------------- report layout (library)


def test_gallery_sections_never_repeat_a_picture():
    for n in (1, 2, 3, 5, 24, 200):
        picks = report.gallery_picks(np.linspace(1, 0, n), count=24, seed=0)
        rows = [int(j) for section in picks.values() for j in section]
        assert len(rows) == len(set(rows)) == min(n, 24)
        if n >= 3:
            assert all(len(picks[s]) >= 1 for s in ("best", "worst", "random"))
        assert all(int(j) < n for j in rows)
    three = report.gallery_picks([0.5, 0.9, 0.1], count=24)
    assert (list(three["best"]), list(three["worst"]), list(three["random"])) == ([1], [2], [0])


def _fake_run(name, steps, epochs, clip=0.0):
    per = steps // epochs
    return {
        "card": {"name": name},
        "loss": np.linspace(20, 5, steps),
        "grad_norm": np.linspace(3, 1, steps),
        "clipped": np.zeros(steps),
        "settings": {"clip_norm": clip},
        "epochs": [
            {"step": per * (e + 1), "val_loss": 10 - e, "lr": 1e-3, "Bleu_4": 0.1, "CIDEr": 0.5}
            for e in range(epochs)
        ],
    }


@pytest.mark.parametrize("n_runs", [1, 4, 8])
def test_plot_legends_never_cover_the_curves_and_steps_are_whole(monkeypatch, n_runs):
    figures = []
    monkeypatch.setattr(report, "_png", lambda fig: figures.append(fig) or "data:")
    report.plot_curves(
        [_fake_run(f"lstm-with-a-long-name-{k}", 2, 2, clip=1.0) for k in range(n_runs)]
    )
    assert len(figures) == 5
    # every run is drawn (there are 7 colours: the 8th run once went missing)
    assert len(figures[0].axes[0].get_legend().get_texts()) == 3 * n_runs
    for fig in figures:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        (ax,) = fig.axes
        legend = ax.get_legend()
        if legend is not None and len(legend.get_texts()) > 3:
            box, plot = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
            assert not box.overlaps(plot), (ax.get_title(), len(legend.get_texts()))
            label = ax.xaxis.label.get_window_extent(renderer)
            assert not box.overlaps(label), ax.get_title()
            # no wider than the figure: the PNG keeps its width, the plot its size in the page
            assert box.x0 >= 0 and box.x1 <= fig.bbox.width, ax.get_title()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)


# ---------------------------------------------------------------- small things


def test_progress_bars_stay_out_of_logs(tmp_path):
    data = build_dataset(tmp_path / "d", n_train_images=30, n_val_images=4)
    result = run(
        "train", "--data", data, "--epochs", 1, "--hidden-dim", 8, "--out", tmp_path / "r"
    )
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output and "batch/s" not in result.output


def test_one_progress_bar_draws_every_kind_of_library_progress(monkeypatch):
    """The CLI's bar over the library's progress(desc, done, total, unit, **figures): a new
    bar per task, figures as its postfix, quiet draws nothing."""
    import io

    from captioner.cli.output import progress_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    assert progress_bar(quiet=True) is None
    show = progress_bar()
    show("epoch 1/2", 0, 3, "batch")
    for step in (1, 2, 3):
        show("epoch 1/2", step, 3, "batch", loss=0.5)
    show("coco.zip.part", 0, 2**20, "B")
    show("coco.zip.part", 2**20, 2**20, "B")
    text = screen.getvalue()
    assert "epoch 1/2" in text and "3/3" in text and "loss=0.500" in text
    assert "coco.zip.part" in text and "1.05M/1.05M" in text


def test_download_error_names_what_is_kept_and_the_users_own_command(tmp_path, monkeypatch):
    import collections
    import shutil

    from captioner import download

    # as if the disk had room for the 20 GB; nothing listens on port 9 of loopback, so every
    # attempt fails and nothing is received
    usage = collections.namedtuple("usage", "total used free")(10**14, 0, 10**14)
    monkeypatch.setattr(download.shutil, "disk_usage", lambda _: usage)
    assert shutil.disk_usage is download.shutil.disk_usage
    url = "http://127.0.0.1:9"
    result = run("download", "--images", "--dest", tmp_path / "c", "--mirror", url)
    assert result.exit_code == 1, result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("captioner: error:")]
    assert ".part" not in line and "nothing received yet" in line
    assert f"rerun `captioner download --dest {tmp_path / 'c'} --images --mirror {url}`" in line


def test_encode_reads_folders_like_sample(tmp_path):
    pics = tmp_path / "pics"
    demo.write_demo_images(pics / "sub", 2, seed=1)
    result = run("encode", pics, "--top", 1)
    assert result.exit_code == 0, result.output
    assert [ln for ln in result.output.splitlines() if not ln.startswith(" ")] == [
        str(pics / "sub" / "demo_000000000001.jpg"),
        str(pics / "sub" / "demo_000000000002.jpg"),
    ]


def test_help_texts_are_whole():
    assert "Show this checkpoint" in run("info", "--help").output
    script = ROOT / "scripts" / "make_synthetic_coco.py"
    text = subprocess.run(
        [sys.executable, script, "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "to try captioner without the 1 GB download." in " ".join(text.split())


def test_prepare_stamps_its_record_on_the_captions_file(pictures, tmp_path):
    root, captions = pictures
    args = ["--images", root / "images", "--captions", captions, "--workers", 1]
    assert run("prepare", *args, "--min-count", 1, "--out", tmp_path / "d").exit_code == 0
    with h5py.File(captions_file(tmp_path / "d"), "r") as f:
        assert len(f.attrs["prepare_record"]) == 64
        assert json.loads(f.attrs["prepare_summary"])["vocab_size"] > 4
