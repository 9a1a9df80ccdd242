"""The layers of a recurrent captioner, as a student writes them (CS231n's rnn_layers.py).

Every forward returns (out, cache) and the backward right after it takes
(dout, cache) and returns the gradient of each input, in the forward's order.
rnn_forward, lstm_forward and gru_forward are loops over their step functions.
Shapes: N batch, T time steps, D input size, H hidden size, V vocabulary.
Nothing is cast: outputs have the inputs' dtype (float64 for gradient checks).

This is the readable version. Training runs captioner.packed, which computes the
same numbers faster; tests/test_model.py checks the two agree.
"""

import numpy as np

# ---------------------------------------------------------------- affine


def affine_forward(x, w, b):
    """x (N, D) @ w (D, M) + b (M,) -> out (N, M). x may be (N, d1, ..., dk)."""
    out = x.reshape(x.shape[0], w.shape[0]) @ w + b
    return out, (x, w)


def affine_backward(dout, cache):
    """dout (N, M) -> dx (same shape as x), dw (D, M), db (M,)."""
    x, w = cache
    x2 = x.reshape(x.shape[0], w.shape[0])
    dx = (dout @ w.T).reshape(x.shape)  # through the product, to its input
    dw = x2.T @ dout  # ... and to its weights
    db = dout.sum(axis=0)  # b was added to every row
    return dx, dw, db


# ---------------------------------------------------------------- vanilla RNN


def rnn_step_forward(x, prev_h, Wx, Wh, b):
    """One tanh step. x (N, D), prev_h (N, H), Wx (D, H), Wh (H, H), b (H,)
    -> next_h (N, H), cache.

    next_h = tanh(x @ Wx + prev_h @ Wh + b)
    """
    next_h = np.tanh(x @ Wx + prev_h @ Wh + b)
    return next_h, (x, prev_h, Wx, Wh, next_h)


def rnn_step_backward(dnext_h, cache):
    """dnext_h (N, H) -> dx (N, D), dprev_h (N, H), dWx (D, H), dWh (H, H), db (H,)."""
    x, prev_h, Wx, Wh, next_h = cache
    da = dnext_h * (1 - next_h**2)  # through tanh: tanh'(a) = 1 - tanh(a)^2
    dx = da @ Wx.T  # through x @ Wx
    dprev_h = da @ Wh.T  # through prev_h @ Wh
    dWx = x.T @ da
    dWh = prev_h.T @ da
    db = da.sum(axis=0)
    return dx, dprev_h, dWx, dWh, db


def _active_steps(lengths, N, T):
    """(N, T) bool: step t of row n runs (t < lengths[n]); all True for lengths None."""
    if lengths is None:
        return np.ones((N, T), dtype=bool)
    return np.arange(T)[None, :] < np.asarray(lengths)[:, None]


def rnn_forward(x, h0, Wx, Wh, b, lengths=None):
    """Tanh RNN over T steps. x (N, T, D), h0 (N, H), Wx (D, H), Wh (H, H), b (H,)
    -> h (N, T, H), cache.

    lengths (N,) optional: row n only runs its first lengths[n] steps; h is 0
    after that and its gradient ignored. None = all T steps (plain CS231n).
    """
    N, T, _ = x.shape
    active = _active_steps(lengths, N, T)
    h = np.zeros((N, T, h0.shape[1]), dtype=np.result_type(x, h0, Wx, Wh, b))
    caches = []
    prev_h = h0
    for t in range(T):
        prev_h, cache = rnn_step_forward(x[:, t], prev_h, Wx, Wh, b)
        h[:, t] = prev_h * active[:, t, None]
        caches.append(cache)
    return h, (caches, active, x.shape)


def rnn_backward(dh, cache):
    """dh (N, T, H) -> dx (N, T, D), dh0 (N, H), dWx (D, H), dWh (H, H), db (H,)."""
    caches, active, x_shape = cache
    N, T, _ = x_shape
    dx = np.zeros(x_shape, dtype=dh.dtype)
    _, _, Wx, Wh, _ = caches[0]
    dWx, dWh = np.zeros_like(Wx, dtype=dh.dtype), np.zeros_like(Wh, dtype=dh.dtype)
    db = np.zeros(Wh.shape[1], dtype=dh.dtype)
    dprev_h = np.zeros((N, dh.shape[2]), dtype=dh.dtype)
    for t in reversed(range(T)):
        # h_t feeds the scores of step t (dh) and the next step (dprev_h); steps past a
        # row's length fed nothing
        dnext_h = dh[:, t] * active[:, t, None] + dprev_h
        dx[:, t], dprev_h, dWx_t, dWh_t, db_t = rnn_step_backward(dnext_h, caches[t])
        dWx += dWx_t  # the weights are shared by every step
        dWh += dWh_t
        db += db_t
    return dx, dprev_h, dWx, dWh, db


# ---------------------------------------------------------------- LSTM


def sigmoid(x):
    """1 / (1 + exp(-x)), computed so that exp never overflows: for x < 0 as
    exp(x) / (1 + exp(x))."""
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1 / (1 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1 + ex)
    return out


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    """One LSTM step. x (N, D), prev_h (N, H), prev_c (N, H), Wx (D, 4H), Wh (H, 4H),
    b (4H,) -> next_h (N, H), next_c (N, H), cache.

    The pre-activations a = x @ Wx + prev_h @ Wh + b hold the gates along 4H in
    CS231n's order: input i, forget f, output o (sigmoid), and the candidate g (tanh).
    """
    H = prev_h.shape[1]
    a = x @ Wx + prev_h @ Wh + b
    i = sigmoid(a[:, :H])
    f = sigmoid(a[:, H : 2 * H])
    o = sigmoid(a[:, 2 * H : 3 * H])
    g = np.tanh(a[:, 3 * H :])
    next_c = f * prev_c + i * g  # forget some of the old cell, write some of g
    tanh_c = np.tanh(next_c)
    next_h = o * tanh_c  # show some of the cell
    return next_h, next_c, (x, prev_h, prev_c, Wx, Wh, i, f, o, g, tanh_c)


def lstm_step_backward(dnext_h, dnext_c, cache):
    """dnext_h, dnext_c (N, H) -> dx (N, D), dprev_h (N, H), dprev_c (N, H),
    dWx (D, 4H), dWh (H, 4H), db (4H,)."""
    x, prev_h, prev_c, Wx, Wh, i, f, o, g, tanh_c = cache
    do = dnext_h * tanh_c  # through next_h = o * tanh(c), to o
    dc = dnext_c + dnext_h * o * (1 - tanh_c**2)  # ... to c, plus what c sent forward
    di = dc * g  # through next_c = f * prev_c + i * g
    df = dc * prev_c
    dg = dc * i
    dprev_c = dc * f
    da = np.hstack(
        [
            di * i * (1 - i),  # through the sigmoids: s' = s (1 - s)
            df * f * (1 - f),
            do * o * (1 - o),
            dg * (1 - g**2),
        ]
    )  # through tanh: 1 - g^2
    dx = da @ Wx.T  # through a = x @ Wx + prev_h @ Wh + b
    dprev_h = da @ Wh.T
    dWx = x.T @ da
    dWh = prev_h.T @ da
    db = da.sum(axis=0)
    return dx, dprev_h, dprev_c, dWx, dWh, db


def lstm_forward(x, h0, Wx, Wh, b, lengths=None):
    """LSTM over T steps, c0 = 0. x (N, T, D), h0 (N, H), Wx (D, 4H), Wh (H, 4H), b (4H,)
    -> h (N, T, H), cache. lengths as in rnn_forward."""
    N, T, _ = x.shape
    active = _active_steps(lengths, N, T)
    h = np.zeros((N, T, h0.shape[1]), dtype=np.result_type(x, h0, Wx, Wh, b))
    caches = []
    prev_h, prev_c = h0, np.zeros_like(h0, dtype=h.dtype)
    for t in range(T):
        prev_h, prev_c, cache = lstm_step_forward(x[:, t], prev_h, prev_c, Wx, Wh, b)
        h[:, t] = prev_h * active[:, t, None]
        caches.append(cache)
    return h, (caches, active, x.shape)


def lstm_backward(dh, cache):
    """dh (N, T, H) -> dx (N, T, D), dh0 (N, H), dWx (D, 4H), dWh (H, 4H), db (4H,)."""
    caches, active, x_shape = cache
    N, T, _ = x_shape
    H = dh.shape[2]
    dx = np.zeros(x_shape, dtype=dh.dtype)
    Wx, Wh = caches[0][3], caches[0][4]
    dWx, dWh = np.zeros_like(Wx, dtype=dh.dtype), np.zeros_like(Wh, dtype=dh.dtype)
    db = np.zeros(Wh.shape[1], dtype=dh.dtype)
    dprev_h = np.zeros((N, H), dtype=dh.dtype)
    dprev_c = np.zeros((N, H), dtype=dh.dtype)
    for t in reversed(range(T)):
        dnext_h = dh[:, t] * active[:, t, None] + dprev_h  # as in rnn_backward
        dx[:, t], dprev_h, dprev_c, dWx_t, dWh_t, db_t = lstm_step_backward(
            dnext_h, dprev_c, caches[t]
        )
        dWx += dWx_t
        dWh += dWh_t
        db += db_t
    return dx, dprev_h, dWx, dWh, db


# ---------------------------------------------------------------- GRU


def gru_step_forward(x, prev_h, Wx, Wh, b):
    """One GRU step. x (N, D), prev_h (N, H), Wx (D, 3H), Wh (H, 3H), b (3H,)
    -> next_h (N, H), cache.

    The gates along 3H: reset r, update z (sigmoid), candidate n (tanh). PyTorch's
    variant, where r multiplies the hidden state's contribution to n (Wh's own bias,
    PyTorch's b_hn, is left out: the cells share the parameters Wx, Wh, b):

        r = sigmoid(x @ Wx_r + b_r + prev_h @ Wh_r)
        z = sigmoid(x @ Wx_z + b_z + prev_h @ Wh_z)
        n = tanh(x @ Wx_n + b_n + r * (prev_h @ Wh_n))
        next_h = (1 - z) * n + z * prev_h
    """
    H = prev_h.shape[1]
    ax = x @ Wx + b
    ah = prev_h @ Wh
    r = sigmoid(ax[:, :H] + ah[:, :H])
    z = sigmoid(ax[:, H : 2 * H] + ah[:, H : 2 * H])
    hn = ah[:, 2 * H :]
    n = np.tanh(ax[:, 2 * H :] + r * hn)
    next_h = (1 - z) * n + z * prev_h  # keep z of the old state, take 1 - z of n
    return next_h, (x, prev_h, Wx, Wh, r, z, n, hn)


def gru_step_backward(dnext_h, cache):
    """dnext_h (N, H) -> dx (N, D), dprev_h (N, H), dWx (D, 3H), dWh (H, 3H), db (3H,)."""
    x, prev_h, Wx, Wh, r, z, n, hn = cache
    dn = dnext_h * (1 - z)  # through next_h = (1 - z) * n + z * prev_h, to n
    dz = dnext_h * (prev_h - n)  # ... to z
    dan = dn * (1 - n**2)  # through tanh
    dr = dan * hn  # through r * (prev_h @ Wh_n), to r
    dhn = dan * r  # ... and to prev_h @ Wh_n
    dar = dr * r * (1 - r)  # through the sigmoids: s' = s (1 - s)
    daz = dz * z * (1 - z)
    dax = np.hstack([dar, daz, dan])  # gradient on x @ Wx + b
    dah = np.hstack([dar, daz, dhn])  # gradient on prev_h @ Wh
    dx = dax @ Wx.T
    dprev_h = dnext_h * z + dah @ Wh.T  # prev_h is kept by z and feeds the gates
    dWx = x.T @ dax
    dWh = prev_h.T @ dah
    db = dax.sum(axis=0)
    return dx, dprev_h, dWx, dWh, db


def gru_forward(x, h0, Wx, Wh, b, lengths=None):
    """GRU over T steps. x (N, T, D), h0 (N, H), Wx (D, 3H), Wh (H, 3H), b (3H,)
    -> h (N, T, H), cache. lengths as in rnn_forward."""
    N, T, _ = x.shape
    active = _active_steps(lengths, N, T)
    h = np.zeros((N, T, h0.shape[1]), dtype=np.result_type(x, h0, Wx, Wh, b))
    caches = []
    prev_h = h0
    for t in range(T):
        prev_h, cache = gru_step_forward(x[:, t], prev_h, Wx, Wh, b)
        h[:, t] = prev_h * active[:, t, None]
        caches.append(cache)
    return h, (caches, active, x.shape)


def gru_backward(dh, cache):
    """dh (N, T, H) -> dx (N, T, D), dh0 (N, H), dWx (D, 3H), dWh (H, 3H), db (3H,)."""
    caches, active, x_shape = cache
    N, T, _ = x_shape
    dx = np.zeros(x_shape, dtype=dh.dtype)
    Wx, Wh = caches[0][2], caches[0][3]
    dWx, dWh = np.zeros_like(Wx, dtype=dh.dtype), np.zeros_like(Wh, dtype=dh.dtype)
    db = np.zeros(Wh.shape[1], dtype=dh.dtype)
    dprev_h = np.zeros((N, dh.shape[2]), dtype=dh.dtype)
    for t in reversed(range(T)):
        dnext_h = dh[:, t] * active[:, t, None] + dprev_h  # as in rnn_backward
        dx[:, t], dprev_h, dWx_t, dWh_t, db_t = gru_step_backward(dnext_h, caches[t])
        dWx += dWx_t
        dWh += dWh_t
        db += db_t
    return dx, dprev_h, dWx, dWh, db


# ---------------------------------------------------------------- words in, scores out


def word_embedding_forward(x, W):
    """x (N, T) int ids in [0, V), W (V, D) -> out (N, T, D) = W[x], cache."""
    return W[x], (x, W.shape)


def word_embedding_backward(dout, cache):
    """dout (N, T, D) -> dW (V, D). A word used several times adds up its gradients:
    np.add.at accumulates where dW[x] += dout would keep only one of them."""
    x, shape = cache
    dW = np.zeros(shape, dtype=dout.dtype)
    np.add.at(dW, x, dout)
    return dW


def temporal_affine_forward(x, w, b):
    """x (N, T, D) @ w (D, M) + b (M,) -> out (N, T, M), cache: affine_forward at every step."""
    N, T, D = x.shape
    out = (x.reshape(N * T, D) @ w + b).reshape(N, T, -1)
    return out, (x, w)


def temporal_affine_backward(dout, cache):
    """dout (N, T, M) -> dx (N, T, D), dw (D, M), db (M,)."""
    x, w = cache
    N, T, D = x.shape
    dx, dw, db = affine_backward(dout.reshape(N * T, -1), (x.reshape(N * T, D), w))
    return dx.reshape(N, T, D), dw, db


def temporal_softmax_loss(x, y, mask, verbose=False):  # noqa: ARG001 (CS231n signature)
    """Softmax loss summed over time, divided by N, on masked positions only.

    x (N, T, V) scores, y (N, T) ids in [0, V), mask (N, T) bool
    -> loss (float), dx (N, T, V). Positions with mask False add nothing.
    verbose is accepted for CS231n's signature and ignored: the library does not print.
    """
    N, T, V = x.shape
    x_flat, y_flat, mask_flat = x.reshape(N * T, V), y.reshape(N * T), mask.reshape(N * T)
    shifted = x_flat - x_flat.max(axis=1, keepdims=True)  # exp cannot overflow
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probs = np.exp(log_probs)
    rows = np.arange(N * T)
    loss = -np.sum(mask_flat * log_probs[rows, y_flat]) / N
    dx_flat = probs.copy()  # d(-log softmax_y)/dx = softmax - onehot(y)
    dx_flat[rows, y_flat] -= 1
    dx_flat /= N
    dx_flat *= mask_flat[:, None]
    return float(loss), dx_flat.reshape(N, T, V)


# ---------------------------------------------------------------- adaptive softmax
# Grave et al. 2017, "Efficient softmax approximation for GPUs" (PyTorch's
# AdaptiveLogSoftmaxWithLoss). Words are numbered by frequency rank r in [0, V):
# the caller maps word ids to ranks (the model keeps that permutation). With
# cutoffs c_1 < ... < c_n, the head scores the c_1 most frequent words plus one
# logit per tail cluster k = [c_k, c_{k+1}) (c_{n+1} = V); a tail word's
# probability is p_head(cluster) * p_cluster(word). Cluster k first projects h to
# a smaller size d_k (H / 4**k), so rare words cost little. It is a proper
# distribution over all V words. tails = [(P_k (H, d_k), W_k (d_k, size_k),
# b_k (size_k,)), ...] in cluster order.


def log_softmax(x):
    """Row-wise log softmax of x (M, C), shifted so exp cannot overflow."""
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def adaptive_softmax_loss(h, y, mask, W_head, b_head, tails, cutoffs):
    """Adaptive softmax loss summed over time, divided by N, on masked positions only.

    h (N, T, H) hidden states, y (N, T) frequency ranks in [0, V), mask (N, T) bool,
    W_head (H, c_1 + n), b_head (c_1 + n,), tails and cutoffs (c_1, ..., c_n) as above
    -> loss (float), cache for adaptive_softmax_loss_backward.
    What temporal_affine_forward + temporal_softmax_loss compute for a full softmax.
    """
    N, T, H = h.shape
    x, y, m = h.reshape(N * T, H), y.reshape(N * T), mask.reshape(N * T)
    head_size = cutoffs[0]
    bounds = list(cutoffs) + [cutoffs[-1] + tails[-1][1].shape[1]]
    rows = np.arange(N * T)
    # the head's target: the word itself if frequent, else the logit of its cluster
    cluster = np.searchsorted(bounds, y, side="right") - 1  # -1 in the head, k - 1 in cluster k
    head_y = np.where(y < head_size, y, head_size + cluster)
    head_logp = log_softmax(x @ W_head + b_head)
    loss = -np.sum(m * head_logp[rows, head_y])
    tail_caches = []
    for k, (P, W, b) in enumerate(tails):
        # only the positions whose target lies in cluster k pay for it
        sel = np.flatnonzero(m & (cluster == k))
        z = x[sel] @ P  # (m_k, d_k) the smaller projection
        logp = log_softmax(z @ W + b)  # (m_k, size_k)
        within = y[sel] - bounds[k]
        loss -= np.sum(logp[np.arange(len(sel)), within])
        tail_caches.append((sel, z, logp, within))
    cache = (x, m, head_y, head_logp, tail_caches, W_head, tails, h.shape)
    return float(loss / N), cache


def adaptive_softmax_loss_backward(cache):
    """-> dh (N, T, H), dW_head, db_head, dtails [(dP_k, dW_k, db_k), ...]."""
    x, m, head_y, head_logp, tail_caches, W_head, tails, shape = cache
    N = shape[0]
    rows = np.arange(len(x))
    # d(-log softmax_y)/dscores = softmax - onehot(y), on masked rows, / N
    dhead = np.exp(head_logp)
    dhead[rows, head_y] -= 1
    dhead *= m[:, None] / N
    dx = dhead @ W_head.T  # through the head's scores = x @ W_head + b_head
    dW_head = x.T @ dhead
    db_head = dhead.sum(axis=0)
    dtails = []
    for (P, W, _), (sel, z, logp, within) in zip(tails, tail_caches):
        ds = np.exp(logp)  # the cluster's own softmax loss, as for the head
        ds[np.arange(len(sel)), within] -= 1
        ds /= N
        dW = z.T @ ds  # through scores = z @ W + b
        db = ds.sum(axis=0)
        dz = ds @ W.T
        dP = x[sel].T @ dz  # through z = x[sel] @ P
        dx[sel] += dz @ P.T  # a position is in one cluster at most: sel never repeats
        dtails.append((dP, dW, db))
    return dx.reshape(shape), dW_head, db_head, dtails


def adaptive_log_probs(h, W_head, b_head, tails, cutoffs):
    """log p(word) of every word: h (B, H) -> (B, V) in frequency-rank order, exact
    (what adaptive_softmax_loss scores): head words directly, a tail word as
    log p_head(its cluster) + log p_cluster(word)."""
    head_size = cutoffs[0]
    head_logp = log_softmax(h @ W_head + b_head)
    parts = [head_logp[:, :head_size]]
    for k, (P, W, b) in enumerate(tails):
        parts.append(head_logp[:, head_size + k, None] + log_softmax((h @ P) @ W + b))
    return np.concatenate(parts, axis=1)
