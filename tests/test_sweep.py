"""`captioner sweep`: one ordinary run per grid combination, run locally in parallel,
resumed after a kill, summarised in a table."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from captioner import checkpoint, sweep, training
from captioner.errors import CaptionerError
from fixtures import build_dataset
from helpers import assert_same_checkpoint, run

CLI = [sys.executable, "-c", "from captioner.cli import main; main()"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore")
SMALL = [
    "--hidden-dim",
    "16",
    "--wordvec-dim",
    "8",
    "--batch-size",
    "20",
    "--val-size",
    "20",
    "--save-every",
    "1",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return str(
        build_dataset(
            tmp_path_factory.mktemp("coco"),
            n_train_images=60,
            captions_per_image=5,
            n_val_images=10,
            feature_dim=16,
            vocab_size=40,
            seed=4,
        )
    )


def test_grid_parsing_and_plan():
    grid = sweep.parse_grid(["cell=rnn,lstm", "--hidden-dim=8, 16"], lambda _, t: t.upper())
    assert grid == [
        ("cell", [("rnn", "RNN"), ("lstm", "LSTM")]),
        ("hidden_dim", [("8", "8"), ("16", "16")]),
    ]
    runs = sweep.plan({"seed": 0}, grid)
    assert [n for n, _ in runs] == [
        "cell=rnn,hidden-dim=8",
        "cell=rnn,hidden-dim=16",
        "cell=lstm,hidden-dim=8",
        "cell=lstm,hidden-dim=16",
    ]
    assert runs[3][1] == {"seed": 0, "cell": "LSTM", "hidden_dim": "16"}
    for bad, why in [
        ("cell", "NAME=V1,V2"),
        ("cell=", "NAME=V1,V2"),
        ("colour=red", "not a setting"),
        ("data=a,b", "not a setting"),
        ("lr=1,1", "repeats"),
    ]:
        with pytest.raises(CaptionerError, match=why):
            sweep.parse_grid([bad], lambda _, t: t)
    with pytest.raises(CaptionerError, match="already in the grid"):
        sweep.parse_grid(["lr=1", "lr=2"], lambda _, t: t)


def test_cli_refuses_bad_grids_in_one_line(dataset, tmp_path):
    out = tmp_path / "sw"
    for args, why in [
        ([], "--grid NAME=V1"),
        (["--grid", "lr=0,1e-3"], "lr=0"),
        (["--grid", "cell=rnn,gru"], "cell=gru"),
        (["--grid", "cell=rnn,lstm", "--cell", "rnn"], "both an option and in --grid"),
        (["--grid", "keep-best=loss,cider"], "--eval-every"),
    ]:
        result = run("sweep", "--data", dataset, "--out", out, *args)
        assert result.exit_code == 2 and why in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert not out.exists()  # refused before anything is written
    result = run("sweep", "--summary", tmp_path)
    assert result.exit_code == 2 and "no sweep runs here" in result.output


def test_sweep_runs_ranks_skips_and_its_runs_are_ordinary(dataset, tmp_path):
    out = tmp_path / "sw"

    def command(epochs=2, *more):
        return [
            "sweep",
            "--data",
            dataset,
            *SMALL,
            "--epochs",
            epochs,
            "--grid",
            "cell=rnn,lstm",
            "--grid",
            "lr=5e-3,2e-2",
            "--parallel",
            2,
            "--out",
            out,
            *more,
        ]

    result = run(*command())
    assert result.exit_code == 0, result.output
    names = ["cell=rnn,lr=5e-3", "cell=rnn,lr=2e-2", "cell=lstm,lr=5e-3", "cell=lstm,lr=2e-2"]
    assert sorted(os.listdir(out)) == sorted(names + ["sweep.json"])
    table = result.output.split("\n\n")[-1].splitlines()
    assert table[0].split()[:5] == ["cell", "lr", "best", "val", "loss"]
    losses = [float(line.split()[2]) for line in table[1:]]
    assert len(losses) == 4 and losses == sorted(losses)

    # Each run is what `captioner train` with the same settings writes, bit for bit.
    ref = tmp_path / "ref"
    r = run(
        "train",
        "--data",
        dataset,
        *SMALL,
        "--epochs",
        2,
        "--cell",
        "lstm",
        "--lr",
        "2e-2",
        "--quiet",
        "--out",
        ref,
    )
    assert r.exit_code == 0, r.output
    assert_same_checkpoint(out / "cell=lstm,lr=2e-2" / "last.npz", ref / "last.npz")
    assert_same_checkpoint(out / "cell=lstm,lr=2e-2" / "best.npz", ref / "best.npz")
    got = json.loads((out / "cell=lstm,lr=2e-2" / "history.json").read_text())
    assert got["settings"] == json.loads((ref / "history.json").read_text())["settings"]
    r = run("evaluate", "--checkpoint", out / "cell=rnn,lr=5e-3" / "best.npz", "--no-meteor")
    assert r.exit_code == 0 and "CIDEr" in r.output, r.output

    # Summary as JSON, sorted by CIDEr-D; the figures are the runs' result.json.
    r = run("sweep", "--summary", out, "--json", "--sort-by", "cider")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [sorted(row["settings"]) for row in rows] == [["cell", "lr"]] * 4
    ciders = [row["CIDEr"] for row in rows]
    assert ciders == sorted(ciders, reverse=True)
    assert all(row["status"] == "finished" for row in rows)
    for row in rows:
        saved = json.loads((out / os.path.basename(row["run"]) / "result.json").read_text())
        assert row["best_val_loss"] == saved["best_val_loss"] and row["epochs"] == 2

    # The same command again skips every run; a longer one resumes them (epochs 2 -> 3).
    before = {n: os.stat(out / n / "last.npz").st_mtime_ns for n in names}
    r = run(*command())
    assert r.exit_code == 0 and r.output.count("finished, skipped") == 4, r.output
    assert {n: os.stat(out / n / "last.npz").st_mtime_ns for n in names} == before
    r = run(*command(3, "--json"))
    assert r.exit_code == 0, r.output
    assert [row["epochs"] for row in json.loads(r.stdout)] == [3] * 4
    assert "resuming" in (out / "cell=rnn,lr=5e-3" / "train.log").read_text()
    # a resumed sweep run is what `captioner train --resume` writes
    r = run("train", "--resume", ref, "--epochs", 3, "--quiet")
    assert r.exit_code == 0, r.output
    assert_same_checkpoint(out / "cell=lstm,lr=2e-2" / "last.npz", ref / "last.npz")
    r = run(*command(3, "--batch-size", 10))
    assert r.exit_code == 2 and "holds a run with other settings (batch_size)" in r.output


def saved_step(run_dir):
    """The step in run_dir/history.json (rewritten after every checkpoint), or -1."""
    try:
        return json.loads((run_dir / "history.json").read_text())["step"]
    except (OSError, ValueError):
        return -1


def test_killed_sweep_resumes_unfinished_runs_and_skips_finished(dataset, tmp_path):
    """kill -9 of the sweep while a run trains: its children save and stop (they die with
    it), the same command finishes the job, and every run equals an uninterrupted sweep's."""
    grid = ["--grid", "cell=rnn,lstm", "--grid", "hidden-dim=16,64"]
    common = [
        "sweep",
        "--data",
        dataset,
        *SMALL[2:],
        "--wordvec-dim",
        8,
        "--epochs",
        4,
        *grid,
        "--parallel",
        2,
    ]
    straight = tmp_path / "straight"
    r = subprocess.run(
        CLI + [str(a) for a in common + ["--out", straight]],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    names = [n for n in os.listdir(straight) if n != "sweep.json"]
    assert len(names) == 4

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        CLI + [str(a) for a in common + ["--out", out]],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    try:
        # Wait until a run is part-way (a checkpoint saved, no result yet), then kill -9.
        while not any(
            0 < saved_step(out / n) < 4 * 15 and not (out / n / "result.json").exists()
            for n in names
        ):
            assert proc.poll() is None, "the sweep ended before a run was caught mid-way"
            assert time.monotonic() < deadline
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    done = [n for n in names if (out / n / "result.json").exists()]
    assert len(done) < 4

    r = subprocess.run(
        CLI + [str(a) for a in common + ["--out", out]],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("finished, skipped") == len(done)
    assert any("resuming" in (out / n / "train.log").read_text() for n in names)
    for name in names:
        assert_same_checkpoint(out / name / "last.npz", straight / name / "last.npz")
        path = str(out / name / "last.npz")
        model, meta, optim, history = checkpoint.load_model(path)
        state = training.resume_state(meta, optim, history, path=path)
        assert state["step"] == len(state["loss_history"]) == 4 * 15  # no step done twice
        assert not [n for n in os.listdir(out / name) if n.startswith(".tmp-")]


def test_sweep_children_get_cores_over_parallel_blas_threads(dataset, tmp_path, monkeypatch):
    """Each local run's interpreter starts with BLAS held to cores // parallel threads (a
    sitecustomize on PYTHONPATH records the environment every child starts with)."""
    spy, seen = tmp_path / "spy", tmp_path / "seen"
    spy.mkdir()
    seen.mkdir()
    (spy / "sitecustomize.py").write_text(
        "import json, os\n"
        "if os.environ.get('BLAS_SPY'):\n"
        "    with open(os.path.join(os.environ['BLAS_SPY'], str(os.getpid())), 'w') as f:\n"
        f"        json.dump({{v: os.environ.get(v) for v in {sweep.BLAS_VARS!r}}}, f)\n"
    )
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(spy), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv("BLAS_SPY", str(seen))
    monkeypatch.setattr(sweep.os, "sched_getaffinity", lambda _pid: set(range(8)))  # 8 cores
    for parallel, threads in ((3, "2"), (2, "4")):
        r = run(
            "sweep",
            "--data",
            dataset,
            *SMALL,
            "--epochs",
            1,
            "--grid",
            "lr=1e-3,2e-3,3e-3",
            "--parallel",
            parallel,
            "--out",
            tmp_path / f"p{parallel}",
        )
        assert r.exit_code == 0, r.output
        children = [json.loads(p.read_text()) for p in seen.iterdir()]
        assert children == [dict.fromkeys(sweep.BLAS_VARS, threads)] * 3, parallel
        for p in seen.iterdir():
            p.unlink()


def _one_line_error(r, *words):
    lines = [ln for ln in r.output.splitlines() if ln.startswith("captioner: error: ")]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_tampered_sweep_state_is_one_line_naming_the_file(dataset, tmp_path):
    """Issue 23, class 5: a run.json holding a list, a result.json with "epochs": "1", a
    history.json without numbers: resume and --summary name the file and the fix."""
    out = tmp_path / "sw"
    command = ["sweep", "--data", dataset, *SMALL, "--epochs", 1, "--grid", "cell=rnn,lstm"]
    command += ["--out", out]
    assert run(*command).exit_code == 0
    result = out / "cell=rnn" / "result.json"
    good = result.read_text()
    for name, text, why in [
        ("result.json", good.replace('"epochs": 1', '"epochs": "1"'), "'epochs' is '1'"),
        ("result.json", good.replace('"CIDEr": ', '"CIDEr": [], "x": '), "'CIDEr' is []"),
        ("result.json", "[1, 2]", "holds a JSON list"),
        ("run.json", json.dumps([1, 2]), "holds a JSON list"),
        ("run.json", json.dumps({"epochs": 0}), "'epochs' is 0"),
    ]:
        path = out / "cell=rnn" / name
        saved = path.read_text()
        path.write_text(text)
        for r in (run("sweep", "--summary", out), run(*command)):
            _one_line_error(r, f"{path}: {why}", "delete it to redo that part of the sweep")
        path.write_text(saved)
    # a history.json of an unfinished run, read by the summary
    os.remove(result)
    (out / "cell=rnn" / "history.json").write_text('{"epochs": [{"seconds": "slow"}]}')
    _one_line_error(run("sweep", "--summary", out), "history.json: epochs[0] has no 'seconds'")
    # deleting the file redoes that part: the run is scored again
    os.remove(out / "cell=rnn" / "history.json")
    r = run(*command)
    assert r.exit_code == 0 and json.loads(result.read_text()) == json.loads(good), r.output


def test_a_sweep_folder_named_in_another_encoding_works(dataset, tmp_path):
    """Issue 23, class 9: `sweep --out` with a non-UTF-8 name works as `train --out` does;
    train.log keeps the name's own bytes and the terminal shows them escaped."""
    out = tmp_path / os.fsdecode(b"sw\xff")
    r = run("sweep", "--data", dataset, *SMALL, "--epochs", 1, "--grid", "cell=rnn", "--out", out)
    assert r.exit_code == 0, r.output
    assert "finished" in r.output and f"{tmp_path}/sw\\xff/cell=rnn" in r.output
    log = os.path.join(os.fsencode(out), b"cell=rnn", b"train.log")
    with open(log, "rb") as f:
        assert os.fsencode(out) + b"/cell=rnn" in f.read()
