"""Update rules against hand-written textbook formulas, and state round trips."""

import numpy as np
import pytest

from captioner import optim


def textbook(name, w, dw, s, cfg):
    """One step of each rule, written out of place as in the CS231n notes."""
    lr = cfg["learning_rate"]
    if name == "sgd":
        return w - lr * dw
    if name == "sgd_momentum":
        s["velocity"] = cfg["momentum"] * s["velocity"] - lr * dw
        return w + s["velocity"]
    if name == "rmsprop":
        d = cfg["decay_rate"]
        s["cache"] = d * s["cache"] + (1 - d) * (dw * dw)
        return w - lr * dw / (np.sqrt(s["cache"]) + cfg["epsilon"])
    b1, b2 = cfg["beta1"], cfg["beta2"]
    s["t"] += 1
    s["m"] = b1 * s["m"] + (1 - b1) * dw
    s["v"] = b2 * s["v"] + (1 - b2) * (dw * dw)
    mt = s["m"] / (1 - b1 ** s["t"])
    vt = s["v"] / (1 - b2 ** s["t"])
    return w - lr * mt / (np.sqrt(vt) + cfg["epsilon"])


DEFAULTS = {
    "sgd": {"learning_rate": 1e-2},
    "sgd_momentum": {"learning_rate": 1e-2, "momentum": 0.9},
    "rmsprop": {"learning_rate": 1e-2, "decay_rate": 0.99, "epsilon": 1e-8},
    "adam": {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8},
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_rule_matches_textbook(name, dtype):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 5)).astype(dtype)
    ref_w = w.copy()
    zeros = np.zeros_like(w)
    state = {"velocity": zeros, "cache": zeros, "m": zeros, "v": zeros, "t": 0}
    config = None
    for _ in range(3):
        dw = rng.standard_normal(w.shape).astype(dtype)
        w, config = optim.OPTIMIZERS[name](w, dw, config)
        ref_w = textbook(name, ref_w, dw, state, DEFAULTS[name])
        assert w.dtype == dtype
        if name == "adam":  # same formula, reordered (optim.adam): equal within rounding
            np.testing.assert_allclose(w, ref_w, rtol=4 * np.finfo(dtype).eps, atol=0)
        else:  # bit-identical, in-place or not
            np.testing.assert_array_equal(w, ref_w)
    for k, v in DEFAULTS[name].items():
        assert config[k] == v


def test_update_is_in_place_and_keeps_custom_config():
    w = np.ones(3, np.float32)
    w2, cfg = optim.adam(w, np.ones(3, np.float32), {"learning_rate": 0.5})
    assert w2 is w and cfg["learning_rate"] == 0.5 and cfg["t"] == 1
    assert np.allclose(w, 0.5)  # first Adam step moves by ~lr


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_state_round_trip_npz_is_bit_identical(name, tmp_path):
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(6).astype(np.float32) for _ in range(6)]
    w, cfg = rng.standard_normal(6).astype(np.float32), None
    for g in grads[:3]:
        w, cfg = optim.OPTIMIZERS[name](w, g, cfg)
    path = tmp_path / "state.npz"
    np.savez(path, w=w, **cfg)
    with np.load(path, allow_pickle=False) as z:
        restored = {k: z[k] for k in z.files}
    w_b = restored.pop("w")
    w_a = w.copy()
    for g in grads[3:]:
        w_a, cfg = optim.OPTIMIZERS[name](w_a, g, cfg)
        w_b, restored = optim.OPTIMIZERS[name](w_b, g, restored)
    np.testing.assert_array_equal(w_a, w_b)
    for k in cfg:
        np.testing.assert_array_equal(np.asarray(cfg[k]), np.asarray(restored[k]))
