"""A textbook float64 CS231n captioning RNN: the slow, obvious reference.

Written the way the CS231n assignment is usually first solved: one function
per time step, per-step caches kept in Python lists, a Python loop over time
in backward that accumulates dWx/dWh step by step, np.add.at for the
embedding gradient and Adam in its plain form. Everything is float64.

It serves two purposes:
  * scripts/benchmarks/train.py times it as the "textbook" baseline;
  * tests/test_model.py checks that captioner's model gives the same loss and
    gradients (it is independent code, so agreement means something), and
    gradient-checks it (_grad_check).

Shapes: N captions, T+1 tokens each (T time steps), D feature dim,
W word-vector dim, H hidden dim, V vocabulary size.
Parameters use the names of captioner.model.CaptioningRNN.params.

Run directly for a gradient check: python tests/textbook.py
"""

import numpy as np

# ----------------------------------------------------------------- layers


def affine_forward(x, w, b):
    """x (N, D) @ w (D, M) + b (M,) -> out (N, M)."""
    return x @ w + b, (x, w)


def affine_backward(dout, cache):
    """dout (N, M) -> dx (N, D), dw (D, M), db (M,)."""
    x, w = cache
    return dout @ w.T, x.T @ dout, dout.sum(axis=0)


def word_embedding_forward(x, W_embed):
    """x (N, T) int word ids, W_embed (V, W) -> out (N, T, W)."""
    return W_embed[x], (x, W_embed.shape)


def word_embedding_backward(dout, cache):
    """dout (N, T, W) -> dW_embed (V, W); repeated ids must add up, hence np.add.at."""
    x, shape = cache
    dW = np.zeros(shape)
    np.add.at(dW, x, dout)
    return dW


def sigmoid(x):
    # Split by sign so exp never overflows.
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def rnn_step_forward(x, prev_h, Wx, Wh, b):
    """One vanilla (tanh) step. x (N, W), prev_h (N, H) -> next_h (N, H), cache."""
    next_h = np.tanh(x @ Wx + prev_h @ Wh + b)
    return next_h, (x, prev_h, Wx, Wh, next_h)


def rnn_step_backward(dnext_h, cache):
    """dnext_h (N, H) -> dx (N, W), dprev_h (N, H), dWx (W, H), dWh (H, H), db (H,)."""
    x, prev_h, Wx, Wh, next_h = cache
    da = dnext_h * (1.0 - next_h**2)
    return da @ Wx.T, da @ Wh.T, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    """One LSTM step, gates stacked as [i, f, o, g] (the CS231n order).

    x (N, W), prev_h (N, H), prev_c (N, H), Wx (W, 4H), Wh (H, 4H), b (4H,)
    -> next_h (N, H), next_c (N, H), cache.
    """
    H = prev_h.shape[1]
    a = x @ Wx + prev_h @ Wh + b
    i = sigmoid(a[:, :H])
    f = sigmoid(a[:, H : 2 * H])
    o = sigmoid(a[:, 2 * H : 3 * H])
    g = np.tanh(a[:, 3 * H :])
    next_c = f * prev_c + i * g
    tanh_c = np.tanh(next_c)
    next_h = o * tanh_c
    return next_h, next_c, (x, prev_h, prev_c, Wx, Wh, i, f, o, g, tanh_c)


def lstm_step_backward(dnext_h, dnext_c, cache):
    """dnext_h, dnext_c (N, H) -> dx, dprev_h, dprev_c, dWx, dWh, db."""
    x, prev_h, prev_c, Wx, Wh, i, f, o, g, tanh_c = cache
    do = dnext_h * tanh_c
    dc = dnext_c + dnext_h * o * (1.0 - tanh_c**2)
    di = dc * g
    df = dc * prev_c
    dg = dc * i
    dprev_c = dc * f
    da = np.hstack([di * i * (1 - i), df * f * (1 - f), do * o * (1 - o), dg * (1 - g**2)])
    return da @ Wx.T, da @ Wh.T, dprev_c, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def temporal_affine_forward(x, w, b):
    """x (N, T, H) @ w (H, V) + b -> out (N, T, V)."""
    N, T, H = x.shape
    out = x.reshape(N * T, H) @ w + b
    return out.reshape(N, T, -1), (x, w)


def temporal_affine_backward(dout, cache):
    """dout (N, T, V) -> dx (N, T, H), dw (H, V), db (V,)."""
    x, w = cache
    N, T, H = x.shape
    V = w.shape[1]
    d2 = dout.reshape(N * T, V)
    return (d2 @ w.T).reshape(N, T, H), x.reshape(N * T, H).T @ d2, d2.sum(axis=0)


def temporal_softmax_loss(x, y, mask):
    """Cross-entropy summed over unmasked tokens, divided by N (CS231n convention).

    x (N, T, V) scores, y (N, T) targets, mask (N, T) bool -> loss, dx (N, T, V).
    """
    N, T, V = x.shape
    xf = x.reshape(N * T, V)
    yf = y.reshape(N * T)
    mf = mask.reshape(N * T)
    shifted = xf - xf.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probs = np.exp(log_probs)
    loss = -np.sum(mf * log_probs[np.arange(N * T), yf]) / N
    dx = probs.copy()
    dx[np.arange(N * T), yf] -= 1
    dx /= N
    dx *= mf[:, None]
    return loss, dx.reshape(N, T, V)


# ------------------------------------------------------------------ model


def init_params(vocab_size, input_dim=512, wordvec_dim=256, hidden_dim=512, cell="lstm", seed=0):
    """CS231n initialisation: small random weights scaled by fan-in, zero biases. float64."""
    rng = np.random.default_rng(seed)
    G = 4 if cell == "lstm" else 1
    return {
        "W_embed": rng.standard_normal((vocab_size, wordvec_dim)) / 100,
        "W_proj": rng.standard_normal((input_dim, hidden_dim)) / np.sqrt(input_dim),
        "b_proj": np.zeros(hidden_dim),
        "Wx": rng.standard_normal((wordvec_dim, G * hidden_dim)) / np.sqrt(wordvec_dim),
        "Wh": rng.standard_normal((hidden_dim, G * hidden_dim)) / np.sqrt(hidden_dim),
        "b": np.zeros(G * hidden_dim),
        "W_vocab": rng.standard_normal((hidden_dim, vocab_size)) / np.sqrt(hidden_dim),
        "b_vocab": np.zeros(vocab_size),
    }


def textbook_loss(params, features, captions, cell, null=0, start=1):
    """Loss and gradients of the captioning RNN, computed in float64.

    params: dict of arrays (any float dtype; converted to float64)
    features (N, D), captions (N, T+1) int with captions[:, 0] == start and
    `null` padding; cell 'rnn' or 'lstm'.
    Returns (loss: float, grads: dict of float64 arrays shaped like params).
    The input is captions[:, :-1], the target captions[:, 1:]; targets equal
    to `null` are ignored. `start` is accepted for signature symmetry only:
    the first column is whatever the caller put there.
    """
    if cell not in ("rnn", "lstm"):
        raise ValueError(f"cell must be 'rnn' or 'lstm', not {cell!r}")
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    features = np.asarray(features, dtype=np.float64)
    captions = np.asarray(captions)
    captions_in, captions_out = captions[:, :-1], captions[:, 1:]
    mask = captions_out != null
    N, T = captions_in.shape
    H = p["W_proj"].shape[1]

    # forward, one step at a time, caches in lists
    h0, proj_cache = affine_forward(features, p["W_proj"], p["b_proj"])
    x, emb_cache = word_embedding_forward(captions_in, p["W_embed"])
    hs, caches = [], []
    prev_h, prev_c = h0, np.zeros((N, H))
    for t in range(T):
        if cell == "lstm":
            prev_h, prev_c, cache = lstm_step_forward(
                x[:, t], prev_h, prev_c, p["Wx"], p["Wh"], p["b"]
            )
        else:
            prev_h, cache = rnn_step_forward(x[:, t], prev_h, p["Wx"], p["Wh"], p["b"])
        hs.append(prev_h)
        caches.append(cache)
    h = np.stack(hs, axis=1)
    scores, vocab_cache = temporal_affine_forward(h, p["W_vocab"], p["b_vocab"])
    loss, dscores = temporal_softmax_loss(scores, captions_out, mask)

    # backward, one step at a time, dWx/dWh accumulated per step
    grads = {}
    dh, grads["W_vocab"], grads["b_vocab"] = temporal_affine_backward(dscores, vocab_cache)
    dx = np.zeros(x.shape)
    dWx, dWh, db = np.zeros(p["Wx"].shape), np.zeros(p["Wh"].shape), np.zeros(p["b"].shape)
    dprev_h, dprev_c = np.zeros((N, H)), np.zeros((N, H))
    for t in reversed(range(T)):
        if cell == "lstm":
            dx[:, t], dprev_h, dprev_c, dWx_t, dWh_t, db_t = lstm_step_backward(
                dh[:, t] + dprev_h, dprev_c, caches[t]
            )
        else:
            dx[:, t], dprev_h, dWx_t, dWh_t, db_t = rnn_step_backward(
                dh[:, t] + dprev_h, caches[t]
            )
        dWx += dWx_t
        dWh += dWh_t
        db += db_t
    grads["Wx"], grads["Wh"], grads["b"] = dWx, dWh, db
    grads["W_embed"] = word_embedding_backward(dx, emb_cache)
    _, grads["W_proj"], grads["b_proj"] = affine_backward(dprev_h, proj_cache)
    return float(loss), grads


# -------------------------------------------------------------- optimiser


def adam(w, dw, config=None):
    """Plain Adam with bias correction (CS231n rules); returns (next_w, config)."""
    config = {} if config is None else config
    config.setdefault("learning_rate", 1e-3)
    config.setdefault("beta1", 0.9)
    config.setdefault("beta2", 0.999)
    config.setdefault("epsilon", 1e-8)
    config.setdefault("m", np.zeros_like(w))
    config.setdefault("v", np.zeros_like(w))
    config.setdefault("t", 0)
    config["t"] += 1
    config["m"] = config["beta1"] * config["m"] + (1 - config["beta1"]) * dw
    config["v"] = config["beta2"] * config["v"] + (1 - config["beta2"]) * dw**2
    m_hat = config["m"] / (1 - config["beta1"] ** config["t"])
    v_hat = config["v"] / (1 - config["beta2"] ** config["t"])
    next_w = w - config["learning_rate"] * m_hat / (np.sqrt(v_hat) + config["epsilon"])
    return next_w, config


def train_step(params, configs, features, captions, cell, null=0, start=1):
    """One forward + backward + Adam update of every parameter, in place in `params`."""
    loss, grads = textbook_loss(params, features, captions, cell, null=null, start=start)
    for k in params:
        params[k], configs[k] = adam(params[k], grads[k], configs.get(k))
    return loss


# ------------------------------------------------------------ self-check


def _grad_check(cell, seed=0):
    """Centred finite differences on a tiny problem; returns the worst error relative to
    each gradient's max."""
    rng = np.random.default_rng(seed)
    N, T, D, W, H, V = 3, 5, 4, 3, 5, 7
    params = init_params(V, D, W, H, cell, seed)
    for k in params:  # make biases non-zero so their gradients are exercised
        params[k] = params[k] + 0.1 * rng.standard_normal(params[k].shape)
    features = rng.standard_normal((N, D))
    captions = rng.integers(3, V, size=(N, T + 1))
    captions[:, 0] = 1
    captions[0, 3:] = 0  # some padding
    _, grads = textbook_loss(params, features, captions, cell)
    worst, h = 0.0, 1e-6
    for k, w in params.items():
        num = np.zeros_like(w)
        for idx in np.ndindex(w.shape):
            old = w[idx]
            w[idx] = old + h
            lp, _ = textbook_loss(params, features, captions, cell)
            w[idx] = old - h
            lm, _ = textbook_loss(params, features, captions, cell)
            w[idx] = old
            num[idx] = (lp - lm) / (2 * h)
        # relative to the gradient's scale: element-wise ratios blow up on near-zero entries
        err = np.max(np.abs(num - grads[k])) / max(np.max(np.abs(grads[k])), 1e-8)
        worst = max(worst, err)
    return worst


if __name__ == "__main__":
    for cell in ("rnn", "lstm"):
        print(f"{cell}: worst gradient error (relative to max |grad|) {_grad_check(cell):.2e}")
