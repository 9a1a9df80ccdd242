"""Checkpoints, the training loop, exact resume and the CLI around them."""

import errno
import json
import os
import pickle
import signal
from pathlib import Path

import numpy as np
import pytest

from captioner import checkpoint, runs, training
from captioner.data import load_coco_data
from captioner.errors import CaptionerError
from captioner.model import CaptioningRNN
from fixtures import build_dataset
from helpers import run


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return str(
        build_dataset(
            tmp_path_factory.mktemp("coco"),
            n_train_images=60,
            captions_per_image=5,
            n_val_images=10,
            feature_dim=48,
            seed=1,
        )
    )


def small_model(data, cell="lstm", seed=0):
    return CaptioningRNN(
        data["word_to_idx"],
        input_dim=data["feature_dim"],
        wordvec_dim=16,
        hidden_dim=24,
        cell_type=cell,
        seed=seed,
    )


SMALL = dict(batch_size=16, lr=5e-3, val_size=20, save_every=0)


@pytest.mark.parametrize(
    ("cell", "optimizer"),
    [("rnn", "adam"), ("lstm", "adam"), ("gru", "adam"), ("rnn", "sgd")],
)
def test_resume_is_bit_identical(dataset, tmp_path, cell, optimizer):
    """Also with SGD, whose optimizer state holds no arrays at all."""
    data = load_coco_data(dataset)
    straight = small_model(data, cell)
    settings = dict(SMALL, optimizer=optimizer)
    want = runs.train_in(
        data, straight, None, progress=False, log=lambda *_: None, epochs=3, **settings
    )

    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    first = small_model(data, cell)
    runs.train_in(data, first, run_dir, progress=False, log=lambda *_: None, epochs=2, **settings)
    model, meta, optim, history = checkpoint.load_model(os.path.join(run_dir, "last.npz"))
    state = training.resume_state(meta, optim, history)
    assert state["epoch"] == 2 and len(state["loss_history"]) == state["step"]
    got = runs.train_in(
        data,
        model,
        run_dir,
        state=state,
        progress=False,
        log=lambda *_: None,
        epochs=3,
        **settings,
    )
    assert_same_training(got, model, want, straight)
    h = json.loads((tmp_path / "run" / "history.json").read_text())
    assert h["loss"] == [round(x, 5) for x in want["loss_history"]]


def assert_same_training(state, model, want, want_model):
    """Two training states are the same run: parameters, optimizer state (Adam's m, v, t and
    the decayed learning rate), the per-step loss, gradient-norm and clipping histories and
    the per-epoch records (timings aside), bit for bit."""
    for k in want_model.params:
        np.testing.assert_array_equal(model.params[k], want_model.params[k], err_msg=k)
    assert state["optim"].keys() == want["optim"].keys()
    for k, cfg in want["optim"].items():
        assert state["optim"][k].keys() == cfg.keys(), k
        for name, v in cfg.items():
            np.testing.assert_array_equal(state["optim"][k][name], v, err_msg=f"{k}/{name}")
    for key in ("loss_history", "grad_norm_history", "clipped_history"):
        assert state[key] == want[key], key
    untimed = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]
    assert untimed(state["epochs"]) == untimed(want["epochs"])
    assert (state["step"], state["epoch"], state["best"]) == (
        want["step"],
        want["epoch"],
        want["best"],
    )


def test_resume_mid_epoch_is_bit_identical(dataset, tmp_path):
    """A checkpoint saved every few steps (as on Ctrl-C) resumes inside the epoch."""
    data = load_coco_data(dataset)
    straight = small_model(data)
    settings = dict(SMALL, epochs=2)
    want = runs.train_in(data, straight, None, progress=False, log=lambda *_: None, **settings)

    run_dir = str(tmp_path)
    partial = small_model(data)
    settings_partial = dict(settings, save_every=7)
    # Keep a copy of the checkpoint saved at step 7 (inside epoch 1), then resume from it.
    saved = {}
    real_save = checkpoint.save

    def spy(path, params, meta, optim_arrays=None, history=None):
        real_save(path, params, meta, optim_arrays, history)
        if meta["training"]["step"] == 7 and "step7" not in saved:
            saved["step7"] = path + ".step7"
            real_save(saved["step7"], params, meta, optim_arrays, history)

    checkpoint.save = spy
    try:
        runs.train_in(
            data, partial, run_dir, progress=False, log=lambda *_: None, **settings_partial
        )
    finally:
        checkpoint.save = real_save
    model, meta, optim, history = checkpoint.load_model(saved["step7"])
    state = training.resume_state(meta, optim, history)
    assert state["epoch"] == 0 and state["step_in_epoch"] == 7
    got = runs.train_in(
        data, model, None, state=state, progress=False, log=lambda *_: None, **settings
    )
    assert_same_training(got, model, want, straight)


def test_nan_loss_stops_with_clear_message(dataset, tmp_path):
    data = load_coco_data(dataset)
    model = small_model(data)
    model.params["W_vocab"][:] = np.nan
    with pytest.raises(CaptionerError, match="diverged"):
        runs.train_in(
            data, model, str(tmp_path), progress=False, log=lambda *_: None, epochs=1, **SMALL
        )
    assert not os.path.exists(tmp_path / "last.npz")  # nothing NaN was saved


def test_a_signal_mid_epoch_stops_after_the_step_and_saves_it(dataset, tmp_path):
    """A SIGTERM as step 1 ends: training stops at that step boundary, last.npz holds step 1,
    and Interrupted names the signal (the CLI exits with 128 + its number)."""
    data = load_coco_data(dataset)

    def progress(desc, done, total, unit, **figures):
        if done == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(training.Interrupted) as err:
        runs.train_in(
            data,
            small_model(data),
            str(tmp_path),
            progress=progress,
            log=lambda *_: None,
            epochs=1,
            **SMALL,
        )
    assert (err.value.signum, err.value.path) == (signal.SIGTERM, str(tmp_path / "last.npz"))
    assert checkpoint.load_model(tmp_path / "last.npz")[1]["training"]["step"] == 1


def test_an_infinite_gradient_stops_training_even_with_a_finite_loss(dataset, tmp_path):
    data = load_coco_data(dataset)
    model = small_model(data)
    real_loss = model.loss

    def loss(*args):
        value, grads = real_loss(*args)
        grads["W_vocab"][0, 0] = np.inf
        return value, grads

    model.loss = loss
    with pytest.raises(CaptionerError, match="diverged at epoch 1, step 1"):
        runs.train_in(
            data, model, str(tmp_path), progress=False, log=lambda *_: None, epochs=1, **SMALL
        )
    assert not os.path.exists(tmp_path / "last.npz")


def test_checkpoint_round_trip_and_metadata(dataset, tmp_path):
    data = load_coco_data(dataset)
    model = small_model(data, "rnn")
    runs.train_in(
        data, model, str(tmp_path), progress=False, log=lambda *_: None, epochs=1, **SMALL
    )
    loaded, meta, optim, history = checkpoint.load_model(tmp_path / "last.npz")
    for k, v in model.params.items():
        np.testing.assert_array_equal(loaded.params[k], v)
        assert set(optim[k]) == {"m", "v"}
    assert meta["features"] == {"kind": "pca", "dim": 48, "encoder": data["encoder"]}
    assert meta["vocab"] == data["idx_to_word"] and meta["model"]["cell_type"] == "rnn"
    h = json.loads((tmp_path / "history.json").read_text())
    assert len(h["loss"]) == meta["training"]["step"] == len(history["loss"])
    for k in ("loss", "grad_norm", "clipped"):  # what report and compare plot, per step
        np.testing.assert_allclose(h[k], history[k], atol=5e-6, err_msg=k)
    assert h["epochs"][0]["val_loss"] > 0


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.npz"
    checkpoint.save(path, {"W": np.ones(3)}, {"x": 1})
    before = path.read_bytes()

    def full(f, **arrays):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(CaptionerError, match="No space left"):
        checkpoint.save(path, {"W": np.zeros(3)}, {"x": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.npz"]  # no temporary file left behind


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_is_refused_without_running(tmp_path):
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.npz"
    np.savez(
        evil, meta=np.array("{}"), **{"param/W": np.array([_Payload(str(target))], dtype=object)}
    )
    with pytest.raises(CaptionerError, match="pickle"):
        checkpoint.load(evil)
    raw = tmp_path / "raw.npz"
    raw.write_bytes(pickle.dumps(_Payload(str(target))))
    with pytest.raises(CaptionerError, match="raw.npz: holds pickled objects, refused"):
        checkpoint.load(raw)
    assert not target.exists()


def test_bad_checkpoints(tmp_path, dataset):
    data = load_coco_data(dataset)
    model = small_model(data)
    good = tmp_path / "good.npz"
    checkpoint.save(good, model.params, checkpoint.model_meta(model, data))
    checkpoint.load_model(good)

    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(good.read_bytes()[:500])
    with pytest.raises(CaptionerError, match="trunc.npz"):
        checkpoint.load_model(trunc)

    newer = tmp_path / "newer.npz"
    np.savez(newer, meta=np.array(json.dumps({"format": checkpoint.FORMAT, "version": 99})))
    with pytest.raises(CaptionerError, match="newer"):
        checkpoint.load_model(newer)

    shapes = dict(model.params, W_proj=np.zeros((3, 3), np.float32))
    wrong = tmp_path / "wrong.npz"
    checkpoint.save(wrong, shapes, checkpoint.model_meta(model, data))
    with pytest.raises(CaptionerError, match="W_proj"):
        checkpoint.load_model(wrong)

    meta = checkpoint.model_meta(model, data)
    del meta["model"]
    nometa = tmp_path / "nometa.npz"
    checkpoint.save(nometa, model.params, meta)
    with pytest.raises(CaptionerError, match="metadata"):
        checkpoint.load_model(nometa)


# ---------------------------------------------------------------- the CLI


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_overfit_small_memorises(dataset, cell):
    result = run("overfit", "--small", "--cell", cell, "--data", dataset)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output
    # Memorised means the greedy sample gives back the ground truth, word for word.
    line = [ln for ln in result.output.splitlines() if ln.startswith(f"{cell}: final loss")][0]
    got, total = line.rsplit(";", 1)[1].split()[0].split("/")
    assert int(total) == 50 and int(got) >= 48, result.output


def test_train_resume_sample_info(tmp_path):
    data = str(
        build_dataset(
            tmp_path / "coco",
            n_train_images=4000,
            captions_per_image=5,
            n_val_images=50,
            feature_dim=32,
            seed=2,
        )
    )
    out = tmp_path / "run"
    args = [
        "--data",
        data,
        "--hidden-dim",
        32,
        "--wordvec-dim",
        16,
        "--batch-size",
        200,
        "--val-size",
        100,
        "--quiet",
    ]
    result = run("train", *args, "--epochs", 1, "--out", out)
    assert result.exit_code == 0, result.output
    assert "20,000 training captions" in result.output
    assert (out / "last.npz").exists() and (out / "best.npz").exists()

    again = run("train", *args, "--epochs", 1, "--out", out)
    assert again.exit_code == 2 and "--resume" in again.output

    result = run("train", "--resume", out, "--epochs", 2, "--quiet")
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and "epoch 2/2" in result.output
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history["epochs"]] == [1, 2]

    result = run(
        "sample",
        "--checkpoint",
        out / "best.npz",
        "--data",
        data,
        "--split",
        "val",
        "--count",
        3,
        "--seed",
        0,
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("https://example.invalid/") == 3  # one URL line per image

    saved = tmp_path / "results.json"
    result = run(
        "evaluate",
        "--checkpoint",
        out / "best.npz",
        "--data",
        data,
        "--max-images",
        20,
        "--beam-size",
        2,
        "--no-meteor",
        "--json",
        "--save-results",
        saved,
    )
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)["scores"]
    assert set(scores) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    results = json.loads(saved.read_text())
    # One caption per distinct image, ids parsed from the COCO file names in val2014_images.txt.
    names = (Path(data) / "val2014_images.txt").read_text().split()[:20]
    assert [r["image_id"] for r in results] == [int(n[-16:-4]) for n in names]
    assert all(isinstance(r["caption"], str) and r["caption"] for r in results)
    # Without --data, the checkpoint's own training folder (as `sample --split` does).
    result = run(
        "evaluate",
        "--checkpoint",
        out / "best.npz",
        "--max-images",
        20,
        "--beam-size",
        2,
        "--no-meteor",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["scores"] == scores
    # The saved file is a valid results file for `evaluate --results`.
    refs = tmp_path / "refs.json"
    refs.write_text(
        json.dumps(
            {
                "images": [{"id": r["image_id"]} for r in results],
                "annotations": [
                    {"id": i, "image_id": r["image_id"], "caption": r["caption"]}
                    for i, r in enumerate(results)
                ],
            }
        )
    )
    result = run("evaluate", "--results", saved, "--references", refs, "--no-meteor", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["scores"]["ROUGE_L"] > 0.999  # scored against itself

    result = run("info", "--checkpoint", out / "last.npz")
    assert result.exit_code == 0 and "lstm" in result.output and "2 epochs" in result.output
    result = run("info", "--data", data)
    assert result.exit_code == 0 and "20,000 captions" in result.output


def test_cli_user_errors(tmp_path, dataset):
    missing = run("train", "--data", tmp_path / "nope")
    assert missing.exit_code == 2 and "captioner download" in missing.output
    for bad in (
        ["--lr", "0"],
        ["--lr", "nan"],
        ["--batch-size", "0"],
        ["--cell", "transformer"],
        ["--epochs", "-1"],
    ):
        result = run("train", "--data", dataset, *bad)
        assert result.exit_code == 2, (bad, result.output)
    result = run("sample", "--checkpoint", tmp_path / "none.npz", "--split", "val")
    assert result.exit_code == 2 and "none.npz" in result.output
    os.makedirs(tmp_path / "empty_runs")
    cwd = os.getcwd()
    os.chdir(tmp_path / "empty_runs")
    try:
        result = run("sample", "--split", "val")
    finally:
        os.chdir(cwd)
    assert result.exit_code == 2 and "no trained model" in result.output


def test_second_writer_is_refused(tmp_path):
    with runs.run_lock(str(tmp_path)):
        with pytest.raises(CaptionerError, match="another `captioner train`"):
            with runs.run_lock(str(tmp_path)):
                pass
    with runs.run_lock(str(tmp_path)):  # released on exit
        pass


def test_eval_every_and_keep_best_cider(dataset, tmp_path):
    out = tmp_path / "run"
    result = run(
        "train",
        "--data",
        dataset,
        "--epochs",
        2,
        "--hidden-dim",
        16,
        "--wordvec-dim",
        8,
        "--batch-size",
        50,
        "--eval-every",
        1,
        "--keep-best",
        "cider",
        "--quiet",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    history = json.loads((out / "history.json").read_text())
    assert all("CIDEr" in r and "Bleu_4" in r for r in history["epochs"])
    assert history["best"]["metric"] == "CIDEr"
    best = max(history["epochs"], key=lambda r: r["CIDEr"])
    assert history["best"]["epoch"] == best["epoch"]
    # --keep-best cider needs --eval-every
    assert run("train", "--data", dataset, "--keep-best", "cider").exit_code == 2


def test_overfit_gives_the_verdict_to_library_callers(dataset):
    """training.overfit judges the run itself (thresholds, pass/fail, memorised captions)."""
    data = load_coco_data(dataset, splits=("train",))
    short = training.overfit(data, "rnn", n=8, epochs=2, hidden_dim=16, wordvec_dim=8)
    assert short["limit"] == training.OVERFIT_LIMITS["rnn"] == 0.1
    assert short["final_loss"] == short["state"]["epochs"][-1]["train_loss"] > 0.1
    assert short["passed"] is False and len(short["truth"]) == len(short["sampled"]) == 8
    assert short["exact"] == sum(a == b for a, b in zip(short["sampled"], short["truth"]))
    lstm = training.overfit(data, "lstm", n=8, epochs=2, hidden_dim=16, wordvec_dim=8)
    assert lstm["limit"] == 0.5 and lstm["passed"] == (lstm["final_loss"] < 0.5)


def test_the_loop_reaches_a_run_only_through_its_callbacks(dataset, tmp_path, monkeypatch):
    """training.train alone keeps no best epoch and writes nothing; on_step follows every
    step, on_epoch_end every epoch, before its line is logged (so a score it adds shows)."""
    monkeypatch.chdir(tmp_path)
    data = load_coco_data(dataset)
    seen, lines = [], []

    def score(state):
        state["epochs"][-1]["Bleu_4"] = 0.25
        seen.append(("epoch", state["epoch"], state["step_in_epoch"]))

    state = training.train(
        data,
        small_model(data),
        log=lines.append,
        on_step=[lambda state: seen.append(("step", state["step"]))],
        on_epoch_end=[score],
        epochs=2,
        **SMALL,
    )
    steps = -(-len(data["train_captions"]) // SMALL["batch_size"])
    want = [("step", k) for k in range(1, steps + 1)] + [("epoch", 1, 0)]
    want += [("step", k) for k in range(steps + 1, 2 * steps + 1)] + [("epoch", 2, 0)]
    assert seen == want
    assert len(lines) == 2 and all("Bleu_4 0.250" in line for line in lines)
    assert state["best"] is None and list(tmp_path.iterdir()) == []


def test_progress_is_a_callback(dataset):
    """The loop reports progress through a callback (the CLI draws the bar): one call
    at the start of every epoch, then one per step with the running loss."""
    data = load_coco_data(dataset)
    calls = []
    state = runs.train_in(
        data,
        small_model(data),
        None,
        progress=lambda *a, **figures: calls.append((*a, figures)),
        log=lambda *_: None,
        epochs=2,
        **SMALL,
    )
    steps = -(-len(data["train_captions"]) // SMALL["batch_size"])
    assert len(calls) == 2 * (steps + 1)
    assert calls[0] == ("epoch 1/2", 0, steps, "batch", {})
    assert calls[steps + 1] == ("epoch 2/2", 0, steps, "batch", {})
    assert [c[1] for c in calls[1 : steps + 1]] == list(range(1, steps + 1))
    running = [c[4]["loss"] for c in calls[1 : steps + 1]]
    assert running[0] == state["loss_history"][0]
    for prev, now, raw in zip(running, running[1:], state["loss_history"][1:steps]):
        assert now == pytest.approx(0.9 * prev + 0.1 * raw, rel=1e-12)  # a running mean


# ---------------------------------------------------------------- one step, by hand


def _one_step(data, **settings):
    """(params before, gradients at them, params after) of one SGD step over all of train."""
    model = small_model(data, "rnn")
    rng = np.random.default_rng(0)
    for k in ("b_proj", "b", "b_vocab"):  # nonzero biases, so a decayed bias would show
        model.params[k][:] = rng.standard_normal(model.params[k].shape)
    before = {k: v.copy() for k, v in model.params.items()}
    n = len(data["train_captions"])
    _, grads = model.loss(*training.batch(data, "train", np.arange(n)))
    s = dict(optimizer="sgd", lr=0.1, epochs=1, batch_size=n, val_size=0, save_every=0)
    runs.train_in(data, model, None, progress=False, log=lambda *_: None, **s | settings)
    return before, grads, model.params


def test_clipping_scales_the_gradients_by_c_over_their_norm(dataset):
    data = load_coco_data(dataset)
    before, grads, after = _one_step(data, clip_norm=0.05)
    norm = np.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    assert norm > 1.0  # far above the clip norm: clipped or not is no rounding question
    for k, g in grads.items():
        want = before[k] - 0.1 * g * (0.05 / norm)
        np.testing.assert_allclose(after[k], want, rtol=1e-4, atol=1e-7, err_msg=k)
    # below the clip norm the gradients are left alone
    before, grads, after = _one_step(data, clip_norm=1e6)
    for k, g in grads.items():
        np.testing.assert_allclose(after[k], before[k] - 0.1 * g, rtol=1e-4, atol=1e-7)


def test_weight_decay_adds_lambda_w_to_the_weight_matrices_only(dataset):
    """L2 weight decay as CS231n's solvers and PyTorch's `weight_decay` users expect:
    dW += lambda * W for the weight matrices (W_embed, W_proj, Wx, Wh, W_vocab), applied
    after clipping; the biases (b_proj, b, b_vocab) do not decay."""
    data = load_coco_data(dataset)
    lam = 0.5
    before, grads, after = _one_step(data, weight_decay=lam)
    decayed = sorted(k for k in grads if not np.allclose(after[k], before[k] - 0.1 * grads[k]))
    assert decayed == ["W_embed", "W_proj", "W_vocab", "Wh", "Wx"]
    for k, g in grads.items():
        dw = g + lam * before[k] if k in decayed else g
        np.testing.assert_allclose(after[k], before[k] - 0.1 * dw, rtol=1e-4, atol=1e-7)


def test_learning_rate_decays_once_per_epoch(dataset):
    data = load_coco_data(dataset)
    state = runs.train_in(
        data,
        small_model(data),
        None,
        progress=False,
        log=lambda *_: None,
        epochs=3,
        **dict(SMALL, lr=1e-2, lr_decay=0.5),
    )
    assert [r["lr"] for r in state["epochs"]] == [1e-2, 5e-3, 2.5e-3]
    assert {cfg["learning_rate"] for cfg in state["optim"].values()} == {1.25e-3}


def test_resume_from_a_checkpoint_without_gradient_history(dataset, tmp_path):
    """Checkpoints written before the gradient norms were kept hold only the loss."""
    data = load_coco_data(dataset)
    model = small_model(data)
    runs.train_in(
        data, model, str(tmp_path), progress=False, log=lambda *_: None, epochs=1, **SMALL
    )
    _, meta, optim, history = checkpoint.load_model(tmp_path / "last.npz")
    state = training.resume_state(meta, optim, {"loss": history["loss"]})
    assert state["loss_history"] == list(history["loss"]) and len(state["loss_history"]) > 0
    assert state["grad_norm_history"] == state["clipped_history"] == []
