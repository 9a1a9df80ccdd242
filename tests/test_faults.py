"""Faults injected into real `captioner` processes: kill -9, SIGINT/SIGTERM, a full disk,
two writers, an interrupted prepare. After each, nothing is lost: the run directory holds a
loadable checkpoint and resuming gives the same parameters, bit for bit, as a run that was
never interrupted.

The straight (never interrupted) run is the reference for every resumed one: its
parameters depend only on the settings, not on how often or whether the run stopped.
"""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from captioner import checkpoint, demo, training
from captioner.cli import cli
from fixtures import build_dataset
from helpers import assert_same_dataset

CLI = [sys.executable, "-c", "from captioner.cli import main; main()"]
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONWARNINGS="ignore")
# 600 captions in batches of 10: 60 steps an epoch, a few ms each.
TRAIN = [
    "--hidden-dim",
    "16",
    "--wordvec-dim",
    "8",
    "--batch-size",
    "10",
    "--val-size",
    "20",
    "--lr",
    "5e-3",
    "--seed",
    "3",
    "--quiet",
]
EPOCHS = 3


def start(*args):
    """A `captioner` process; stdout and stderr to pipes (read them after it exits)."""
    return subprocess.Popen(
        CLI + [str(a) for a in args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def captioner(*args, timeout=120):
    return subprocess.run(
        CLI + [str(a) for a in args], env=ENV, capture_output=True, text=True, timeout=timeout
    )


def wait_for(condition, proc=None, timeout=60):
    """Poll until condition() is true; False if `proc` ended first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)
    return True


def saved_step(run):
    """The step recorded in history.json (written right after each checkpoint), or -1."""
    try:
        with open(os.path.join(run, "history.json")) as f:
            return json.load(f)["step"]
    except (OSError, ValueError):  # not written yet
        return -1


def temp_files(run):
    return {n for n in os.listdir(run) if n.startswith(".tmp-")} if os.path.isdir(run) else set()


def params(path):
    """Everything a run's future and its record depend on: parameters, optimizer state, the
    per-step loss history (values, not just its length) and the epoch records without timings."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files if k != "meta"}
        t = json.loads(str(z["meta"]))["training"]
    out["records"] = [{k: v for k, v in r.items() if k != "seconds"} for r in t["epochs"]]
    out["best"], out["step"], out["optim"] = t["best"], t["step"], t["optim"]
    return out


def assert_same_params(path, reference):
    got = params(path)
    assert set(got) == set(reference)
    for k in reference:
        if isinstance(reference[k], np.ndarray):
            np.testing.assert_array_equal(got[k], reference[k], err_msg=k)
        else:
            assert got[k] == reference[k], k


def assert_loadable(run):
    """last.npz loads with every check, and its training state resumes."""
    path = os.path.join(run, "last.npz")
    _, meta, optim, history = checkpoint.load_model(path)
    state = training.resume_state(meta, optim, history, path=path)
    assert len(state["loss_history"]) == state["step"]
    with open(os.path.join(run, "history.json")) as f:
        json.loads(f.read())  # whole, never half-written
    return state


def no_traceback(*texts):
    for t in texts:
        assert "Traceback" not in t, t


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return str(
        build_dataset(
            tmp_path_factory.mktemp("coco"),
            n_train_images=120,
            captions_per_image=5,
            n_val_images=10,
            feature_dim=16,
            vocab_size=40,
            seed=5,
        )
    )


@pytest.fixture(scope="module")
def straight(dataset, tmp_path_factory):
    """Parameters of an uninterrupted EPOCHS-epoch run: what every resumed run must equal."""
    run = tmp_path_factory.mktemp("straight") / "run"
    r = captioner("train", "--data", dataset, *TRAIN, "--epochs", EPOCHS, "--out", run)
    assert r.returncode == 0, r.stderr
    return params(run / "last.npz")


def kill_cycle(dataset, run, how, rng):
    """Start or resume the run, kill -9 it at a moment chosen by `how`. -> True if it was
    killed."""
    resume = os.path.exists(os.path.join(run, "last.npz"))
    args = (
        ["--resume", run]
        if resume
        else ["--data", dataset, *TRAIN, "--epochs", EPOCHS, "--out", run]
    )
    proc = start("train", *args, "--save-every", 1)
    try:
        if how == "startup":
            pass  # at once: imports, loading the data
        elif (
            how == "mid-write"
        ):  # while a new checkpoint temp file exists (old ones: earlier kills)
            stale = temp_files(run)
            wait_for(lambda: temp_files(run) - stale, proc)
        else:  # after a random number of further steps
            target = max(saved_step(run), 0) + rng.randint(1, 40)
            wait_for(lambda: saved_step(run) >= target, proc)
        killed = proc.poll() is None
        proc.kill()
    finally:
        out, err = proc.communicate(timeout=60)
    if not killed:
        assert proc.returncode == 0, err
    no_traceback(out, err)
    return killed


def finish(run, reference):
    r = captioner("train", "--resume", run)
    assert r.returncode == 0, r.stderr
    assert_same_params(os.path.join(run, "last.npz"), reference)
    assert not [
        n for n in os.listdir(run) if n.startswith(".tmp-")
    ]  # killed writers' temp files gone
    with open(os.path.join(run, "history.json")) as f:
        history = json.loads(f.read())
    assert history["epochs"][-1]["epoch"] == EPOCHS


# ---------------------------------------------------------------- kill -9


def test_kill_9_three_times_then_resume_is_exact(dataset, straight, tmp_path):
    run = str(tmp_path / "run")
    rng = random.Random(0)
    for how in ("steps", "mid-write", "steps"):
        assert kill_cycle(dataset, run, how, rng)
        assert_loadable(run)
    finish(run, straight)


@pytest.mark.slow
def test_kill_9_fifty_times_at_random_moments(dataset, straight, tmp_path):
    run = str(tmp_path / "run")
    rng = random.Random(1234)
    kills = 0
    while kills < 50:
        how = rng.choice(["startup", "mid-write", "steps", "steps"])
        if how == "startup" and not os.path.exists(os.path.join(run, "last.npz")):
            how = "steps"
        if kill_cycle(dataset, run, how, rng):
            kills += 1
        else:  # the run finished before the kill: start over in a fresh directory
            assert_same_params(os.path.join(run, "last.npz"), straight)
            run = str(tmp_path / f"run{kills}")
        if os.path.exists(os.path.join(run, "last.npz")):
            assert_loadable(run)
    finish(run, straight)


# ---------------------------------------------------------------- SIGINT / SIGTERM


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_and_resume_is_exact(dataset, straight, tmp_path, signum):
    """The signal waits for the step to finish (so the saved model is not half-updated),
    saves last.npz, exits 128 + signum; resuming ends where a straight run ends."""
    run = str(tmp_path / "run")
    proc = start(
        "train", "--data", dataset, *TRAIN, "--epochs", EPOCHS, "--out", run, "--save-every", 0
    )
    try:
        while "epoch 1/" not in proc.stdout.readline():  # now inside epoch 2
            assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signum)
        proc.wait(timeout=5)  # "within a few seconds"
    finally:
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 128 + signum, err
    assert f"interrupted by {signal.Signals(signum).name}; saved {run}/last.npz" in err
    assert f"captioner train --resume {run}" in err
    no_traceback(out, err)
    state = assert_loadable(run)
    assert state["epoch"] >= 1
    finish(run, straight)  # Ctrl-C and SIGTERM alike: the resumed run is the straight one


def test_second_signal_stops_at_once_without_damage(dataset, tmp_path):
    run = str(tmp_path / "run")
    proc = start(
        "train", "--data", dataset, *TRAIN, "--epochs", 50, "--out", run, "--save-every", 1
    )
    try:
        wait_for(lambda: saved_step(run) >= 5, proc)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=5)
    finally:
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode != 0
    no_traceback(out, err)
    assert_loadable(run)


# ---------------------------------------------------------------- exact resume


def test_stop_after_one_epoch_then_resume_is_exact(dataset, straight, tmp_path):
    run = str(tmp_path / "run")
    r = captioner("train", "--data", dataset, *TRAIN, "--epochs", 1, "--out", run)
    assert r.returncode == 0, r.stderr
    r = captioner("train", "--resume", run, "--epochs", EPOCHS)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout and f"epoch {EPOCHS}/{EPOCHS}" in r.stdout
    assert_same_params(os.path.join(run, "last.npz"), straight)


# ---------------------------------------------------------------- disk full


def _mount_tmpfs(path, size):
    import conftest

    path.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if r.returncode != 0:
        conftest._unavailable(f"cannot mount a tmpfs here ({r.stderr.decode().strip()})")


@pytest.mark.usefixtures("root")
def test_disk_full_on_tmpfs_keeps_last_checkpoint(dataset, straight, tmp_path):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "200k")
    try:
        run = disk / "run"
        # Leave room for about two checkpoints: the end-of-epoch `best` plus a new `last` overflow
        # it.
        (disk / "filler").write_bytes(b"\0" * 60_000)
        r = captioner(
            "train", "--data", dataset, *TRAIN, "--epochs", EPOCHS, "--out", run, "--save-every", 1
        )
        assert r.returncode == 2, r.stdout + r.stderr
        errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(errors) == 1 and errors[0].startswith("captioner: error: ")
        assert "No space left on device" in errors[0] and (
            ".npz" in errors[0] or "history.json" in errors[0]
        )
        no_traceback(r.stdout, r.stderr)
        state = assert_loadable(run)
        assert state["step"] > 0
        assert not [n for n in os.listdir(run) if n.startswith(".tmp-")]
        # Free the space: the run continues from its last checkpoint and nothing was lost.
        (disk / "filler").unlink()
        shutil.copytree(run, tmp_path / "run")  # and off the small disk, to finish
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
    finish(str(tmp_path / "run"), straight)


def test_disk_full_injected_at_write(dataset, tmp_path, monkeypatch):
    """ENOSPC on the 5th checkpoint write, in process: one error line, exit 2, last.npz intact."""
    run = tmp_path / "run"
    real_savez, calls = np.savez, []

    def savez(f, **arrays):
        calls.append(1)
        if len(calls) == 5:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_savez(f, **arrays)

    monkeypatch.setattr(np, "savez", savez)
    result = CliRunner().invoke(
        cli,
        ["train", "--data", dataset, *TRAIN, "--epochs", 1, "--out", str(run), "--save-every", 10],
    )
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert (
        f"captioner: error: {run / 'last.npz'}: "
        "could not write checkpoint (No space left on device)" in result.output
    )
    state = assert_loadable(str(run))
    assert state["step"] == 40  # the 4th save survived
    assert sorted(os.listdir(run)) == ["history.json", "last.npz", "train.lock"]


# ---------------------------------------------------------------- two writers


def test_second_writer_refused_and_first_unharmed(dataset, straight, tmp_path):
    run = str(tmp_path / "run")
    first = start(
        "train", "--data", dataset, *TRAIN, "--epochs", EPOCHS, "--out", run, "--save-every", 0
    )
    try:
        assert wait_for(lambda: saved_step(run) >= 1, first)
        first.send_signal(signal.SIGSTOP)  # hold it mid-run (lock held) while the others try
        for args in (
            ["--data", dataset, *TRAIN, "--epochs", EPOCHS, "--out", run],
            ["--resume", run],
        ):
            r = captioner("train", *args)
            assert r.returncode == 2, r.stderr
            errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
            assert errors == [
                f"captioner: error: {run}: another `captioner train` is writing to this run "
                "directory; wait for it to finish or choose another --out"
            ]
        assert first.poll() is None
        first.send_signal(signal.SIGCONT)
        first.wait(timeout=120)
    finally:
        first.kill()
        out, err = first.communicate()
    assert first.returncode == 0, err
    assert_same_params(os.path.join(run, "last.npz"), straight)  # no interleaved writes
    # Once the first is done, a new run on the same directory is refused (no overwriting).
    r = captioner("train", "--data", dataset, *TRAIN, "--out", run)
    assert r.returncode == 2 and "already holds a run" in r.stderr


# ---------------------------------------------------------------- prepare


def _prepare_kills(tmp_path, n_images, kills, rng):
    images = tmp_path / "images"
    annotations = demo.write_demo_images(images, n_images, seed=4)
    args = [
        "prepare",
        "--images",
        images,
        "--captions",
        annotations,
        "--min-count",
        1,
        "--batch-size",
        8,
        "--val-fraction",
        0.2,
    ]
    r = captioner(*args, "--out", tmp_path / "once")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "interrupted"
    work = out / ".prepare"
    chunks = lambda: (
        len([n for n in os.listdir(work) if n.startswith("chunk_") and n.endswith(".npz")])
        if work.is_dir()
        else 0
    )  # noqa: E731
    n_chunks = -(-n_images // 8) + 1
    for _ in range(kills):
        target = min(chunks() + rng.randint(1, 3), n_chunks - 1)
        proc = start(*args, "--out", out)
        try:
            wait_for(lambda target=target: chunks() >= target, proc)
            proc.kill()
        finally:
            o, e = proc.communicate(timeout=60)
        no_traceback(o, e)
    r = captioner(*args, "--out", out)
    assert r.returncode == 0, r.stderr
    resumed = int(r.stdout.split(" resumed)")[0].rsplit("(", 1)[1].replace(",", ""))
    assert resumed > 0, r.stdout  # the rerun used the work of the killed ones
    assert_same_dataset(tmp_path / "once", out)
    assert not work.exists()


def test_prepare_killed_then_rerun_equals_single_run(tmp_path):
    _prepare_kills(tmp_path, 32, 1, random.Random(0))


@pytest.mark.slow
def test_prepare_killed_repeatedly_on_200_scenes(tmp_path):
    _prepare_kills(tmp_path, 200, 8, random.Random(7))
