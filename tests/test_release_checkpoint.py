"""A run written by the previous release (tests/data/release-checkpoint, made by
tests/make_release_checkpoint.py with that release's code) still works: info, sample,
evaluate and report read it, and `train --resume` continues it bit-exactly."""

import shutil
from pathlib import Path

import make_release_checkpoint as release
import numpy as np
import pytest

from captioner import checkpoint
from fixtures import build_dataset
from helpers import run


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    data = build_dataset(root / "data", **release.DATASET)
    shutil.copytree(release.OUT, root / "run")
    return root, data


def test_release_checkpoint_reads_everywhere(old_run, tmp_path):
    root, data = old_run
    ckpt = root / "run" / "best.npz"
    result = run("info", "--checkpoint", ckpt)
    assert result.exit_code == 0 and "lstm" in result.output, result.output
    result = run("sample", "--checkpoint", ckpt, "--data", data, "--split", "val", "--count", 2)
    assert result.exit_code == 0, result.output
    result = run("evaluate", "--checkpoint", ckpt, "--data", data, "--no-meteor", "--json")
    assert result.exit_code == 0 and '"CIDEr"' in result.output, result.output
    copy = tmp_path / "run"
    shutil.copytree(root / "run", copy)
    result = run("report", copy, "--out", tmp_path / "report.html", "--no-meteor")
    assert result.exit_code == 0, result.output


def test_release_checkpoint_resumes_bit_exactly(old_run, tmp_path):
    """Epoch 1 by the old release + epoch 2 by this code == two epochs by this code."""
    root, data = old_run
    resumed = tmp_path / "resumed"
    shutil.copytree(root / "run", resumed)
    result = run("train", "--resume", resumed, "--epochs", 2, "--data", data, "--quiet")
    assert result.exit_code == 0, result.output
    straight = tmp_path / "straight"
    result = run("train", "--data", data, *release.TRAIN, "--epochs", 2, "--out", straight)
    assert result.exit_code == 0, result.output
    a, _, _, ha = checkpoint.load_model(resumed / "last.npz")
    b, _, _, hb = checkpoint.load_model(straight / "last.npz")
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)
    np.testing.assert_array_equal(ha["loss"], hb["loss"])
    assert Path(release.OUT / "WRITTEN_BY").read_text().startswith("captioner at commit")
