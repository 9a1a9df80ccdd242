"""Write tests/data/release-checkpoint/: a run of one epoch trained by an older captioner,
so tests/test_release_checkpoint.py can prove the current code still loads and resumes it.

    git worktree add /tmp/old 890892a
    PYTHONPATH=/tmp/old .venv/bin/python tests/make_release_checkpoint.py

PYTHONPATH picks the captioner that writes the files; the dataset is rebuilt by the
tests from tests/fixtures.py (same arguments, same bytes), so only the run is stored.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "data" / "release-checkpoint"
DATASET = dict(
    n_train_images=12, captions_per_image=2, n_val_images=4, feature_dim=8, vocab_size=40, seed=3
)
TRAIN = ["--cell", "lstm", "--epochs", "1", "--batch-size", "8", "--hidden-dim", "6"]
TRAIN += ["--wordvec-dim", "5", "--val-size", "4", "--save-every", "0", "--quiet"]


def main():
    sys.path.insert(1, str(HERE))
    import captioner
    from captioner.cli import main as cli
    from fixtures import build_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = build_dataset(Path(tmp) / "data", **DATASET)
        OUT.mkdir(parents=True, exist_ok=True)
        for f in OUT.glob("*"):
            f.unlink()
        try:
            cli(["train", "--data", str(data), *TRAIN, "--out", str(OUT)])
        except SystemExit as e:
            assert not e.code, e.code
        (OUT / "train.lock").unlink(missing_ok=True)
    commit = subprocess.run(
        ["git", "-C", str(Path(captioner.__file__).parents[1]), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    (OUT / "WRITTEN_BY").write_text(f"captioner at commit {commit}\n")


if __name__ == "__main__":
    main()
