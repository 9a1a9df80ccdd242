"""The LSTM's initial forget-gate bias (`train --forget-bias`): set at initialisation on
exactly the forget gate's block of b, recorded in checkpoints, kept on resume."""

import numpy as np
import pytest

from captioner import checkpoint, layers
from captioner.errors import CaptionerError
from captioner.model import CaptioningRNN
from fixtures import build_dataset
from helpers import run

W2I = {w: i for i, w in enumerate(["<NULL>", "<START>", "<END>", "a", "cat"])}
TINY = ["--hidden-dim", 4, "--wordvec-dim", 3, "--batch-size", 10, "--val-size", 5, "--quiet"]


def test_the_bias_is_the_forget_gates_and_nothing_else():
    H = 5
    plain = CaptioningRNN(W2I, input_dim=3, wordvec_dim=2, hidden_dim=H, cell_type="lstm", seed=7)
    biased = CaptioningRNN(
        W2I, input_dim=3, wordvec_dim=2, hidden_dim=H, cell_type="lstm", seed=7, forget_bias=1.5
    )
    for k, v in plain.params.items():  # the same draw: only b differs
        if k != "b":
            np.testing.assert_array_equal(v, biased.params[k], err_msg=k)
    b = biased.params["b"]
    assert not plain.params["b"].any()
    np.testing.assert_array_equal(b[H : 2 * H], 1.5)  # gates i, f, o, g: f is the second
    assert not b[:H].any() and not b[2 * H :].any()
    # and it is the gate that scales the previous cell state in CS231n's lstm_step_forward:
    # with x = h = 0, next_c = sigmoid(b_f) * prev_c + sigmoid(b_i) * tanh(b_g)
    x, h, c = np.zeros((1, 2)), np.zeros((1, H)), np.ones((1, H))
    p = biased.params
    _, next_c, _ = layers.lstm_step_forward(x, h, c, p["Wx"], p["Wh"], b.astype(np.float64))
    np.testing.assert_allclose(next_c, 1 / (1 + np.exp(-1.5)), rtol=1e-6)


def test_a_cell_without_a_forget_gate_refuses_a_bias():
    with pytest.raises(CaptionerError, match="no forget gate"):
        CaptioningRNN(W2I, input_dim=3, cell_type="rnn", forget_bias=1.0)
    CaptioningRNN(W2I, input_dim=3, cell_type="rnn", forget_bias=0.0)  # the default: fine


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_dataset(
        tmp_path_factory.mktemp("fb") / "data",
        n_train_images=6,
        captions_per_image=2,
        n_val_images=3,
        feature_dim=6,
        vocab_size=20,
        seed=2,
    )


def settings_of(path):
    return checkpoint.load(str(path))[1]["training"]["settings"]


def test_recorded_in_checkpoints_and_kept_on_resume(data, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", data, *TINY, "--cell", "lstm", "--forget-bias", 1]
    result = run(*args, "--epochs", 1, "--out", out)
    assert result.exit_code == 0, result.output
    assert settings_of(out / "last.npz")["forget_bias"] == 1.0
    result = run("train", "--resume", out, "--epochs", 2, "--quiet")
    assert result.exit_code == 0, result.output
    assert settings_of(out / "last.npz")["forget_bias"] == 1.0
    whole = tmp_path / "whole"
    assert run(*args, "--epochs", 2, "--out", whole).exit_code == 0
    a, b = checkpoint.load(str(out / "last.npz")), checkpoint.load(str(whole / "last.npz"))
    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], b[0][k], err_msg=k)
    result = run("train", "--resume", out, "--forget-bias", 0, "--epochs", 3)
    assert result.exit_code == 2 and "--forget-bias 0.0 contradicts" in result.output
    result = run("train", "--data", data, *TINY, "--cell", "rnn", "--forget-bias", 1)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "rnn has no forget gate" in result.output


def test_old_checkpoints_mean_a_bias_of_zero(data, tmp_path):
    out = tmp_path / "old"
    assert run("train", "--data", data, *TINY, "--epochs", 1, "--out", out).exit_code == 0
    params, meta, optim, history = checkpoint.load(str(out / "last.npz"))
    del meta["training"]["settings"]["forget_bias"]  # as written before the option existed
    checkpoint.save(str(out / "last.npz"), params, meta, optim, history)
    result = run("train", "--resume", out, "--forget-bias", 1, "--epochs", 2)
    assert result.exit_code == 2 and "trained with --forget-bias 0.0" in result.output
    result = run("train", "--resume", out, "--forget-bias", 0, "--epochs", 2, "--quiet")
    assert result.exit_code == 0, result.output
