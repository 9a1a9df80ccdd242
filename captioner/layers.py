"""Layers for a recurrent captioner: one forward/backward pair per layer, CS231n API.

Every forward returns (out, cache) and every backward takes (dout, cache).
Shapes: N batch, T time steps, D input size, H hidden size, V vocabulary.
Nothing is cast: outputs have the inputs' dtype (float64 for gradient
checks, float32 for training).

The recurrences also exist in a *packed* form (``rnn_packed_forward`` ...),
the layout PyTorch calls PackedSequence: sequences sorted by length,
longest first, stored time-major with the padding dropped, so step t is the
contiguous block ``x[offsets[t]:offsets[t] + batch_sizes[t]]`` of the first
batch_sizes[t] sequences. Padding costs nothing and the input projection and
every weight gradient become one big matmul over all steps.
``rnn_forward``/``lstm_forward`` are thin wrappers around it.

The packed functions take an optional ``work`` dict: their big temporaries
then live there and are reused by the next call (see ``buffer``).
"""
import numpy as np


def buffer(work, key, shape, dtype):
    """An uninitialised array of `shape`: np.empty when work is None, else a
    view of a block kept in the dict `work` under `key`, grown on demand.

    Why: glibc gives multi-MB blocks back to the OS when they are freed, so a
    fresh np.empty of that size page-faults again on first touch: ~10,000
    faults (~30 ms of CPU) per LSTM training step at the CS231n size.
    A buffer is only valid until the next call that uses the same work and key.
    Blocks start on a page boundary: a copy between two blocks whose addresses
    differed by a few bytes modulo 4 KiB ran 4x slower here (4K aliasing).
    """
    if work is None:
        return np.empty(shape, dtype)
    size = int(np.prod(shape))
    block = work.get(key)
    if block is None or block.dtype != dtype or block.size < size:
        block = work[key] = _page_aligned(size, dtype)
    return block[:size].reshape(shape)


def _page_aligned(size, dtype, page=4096):
    """np.empty(size, dtype) starting on a page boundary."""
    raw = np.empty(size * np.dtype(dtype).itemsize + page, np.uint8)
    skip = -raw.ctypes.data % page
    return raw[skip:skip + size * np.dtype(dtype).itemsize].view(dtype)


# ---------------------------------------------------------------- affine

def affine_forward(x, w, b):
    """x (N, D) @ w (D, M) + b (M,) -> out (N, M). x may be (N, d1, ..., dk)."""
    out = x.reshape(x.shape[0], w.shape[0]) @ w + b
    return out, (x, w)


def affine_backward(dout, cache):
    """dout (N, M) -> dx (same shape as x), dw (D, M), db (M,)."""
    x, w = cache
    x2 = x.reshape(x.shape[0], w.shape[0])
    return (dout @ w.T).reshape(x.shape), x2.T @ dout, dout.sum(axis=0)


def temporal_affine_forward(x, w, b):
    """x (N, T, D) @ w (D, M) + b (M,) -> out (N, T, M), as one matmul."""
    N, T, D = x.shape
    out = (x.reshape(N * T, D) @ w + b).reshape(N, T, -1)
    return out, (x, w)


def temporal_affine_backward(dout, cache):
    """dout (N, T, M) -> dx (N, T, D), dw (D, M), db (M,)."""
    x, w = cache
    N, T, D = x.shape
    d2 = dout.reshape(N * T, -1)
    return (d2 @ w.T).reshape(N, T, D), x.reshape(N * T, D).T @ d2, d2.sum(axis=0)


# ---------------------------------------------------------------- embedding

def word_embedding_forward(x, W):
    """x (N, T) int ids in [0, V), W (V, D) -> out (N, T, D) = W[x]."""
    return W[x], (x, W.shape[0])


def word_embedding_backward(dout, cache):
    """dout (N, T, D) -> dW (V, D). Repeated ids accumulate."""
    x, V = cache
    return embedding_grad(x.ravel(), dout.reshape(x.size, -1), V)


def embedding_grad(ids, dout, V):
    """Sum the rows of dout (S, D) into dW (V, D) by ids (S,)."""
    dW = np.zeros((V, dout.shape[1]), dtype=dout.dtype)
    order, starts, counts, words = group_ids(ids)
    if len(words):
        dW[words] = segment_sum(dout, order, starts, counts)
    return dW


def group_ids(ids):
    """Group equal ids (S,) into runs of ids[order], most frequent id first.

    -> order (S,) a stable argsort of ids, starts (U,) and counts (U,) of each
    run in ids[order], words (U,) the distinct ids (run u holds words[u]).
    """
    order = np.argsort(ids, kind="stable")
    sid = ids[order]
    starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]]) if len(sid) else np.zeros(0, np.intp)
    counts = np.diff(np.r_[starts, len(sid)])
    by_count = np.argsort(-counts, kind="stable")
    return order, starts[by_count], counts[by_count], sid[starts[by_count]]


def segment_sum(x, order, starts, counts, out=None):
    """Row sums of x (S, C) by runs of group_ids: out[u] = sum of the rows
    x[order[starts[u]:starts[u] + counts[u]]] -> (U, C), into out when given.

    Runs must come longest first (group_ids does that). Long runs (<START>,
    "a") get one np.sum each; for the short rest, add the j-th row of every
    run that has one, j = 1..7, as one gather each (the runs longer than j
    form a prefix). Rows are gathered in small blocks, never as a sorted copy
    of x.
    np.add.reduceat on a sorted copy gives the same sums but is ~8x slower on
    (1000, 2048) float32 here, and np.add.at slower still.
    """
    out = np.take(x, order[starts], axis=0, out=out, mode="clip")   # "clip": no hidden copy of out
    n_long = int(np.sum(counts > 8))
    for u in range(n_long):
        rows = order[starts[u] + 1:starts[u] + counts[u]]
        out[u] += np.take(x, rows, axis=0, mode="clip").sum(axis=0)
    for j in range(1, int(counts[n_long:].max(initial=1))):
        n = n_long + int(np.sum(counts[n_long:] > j))
        out[n_long:n] += np.take(x, order[starts[n_long:n] + j], axis=0, mode="clip")
    return out


# ---------------------------------------------------------------- nonlinearities

def tanh(x, out):
    """out = tanh(x) = 2 sigmoid(2x) - 1, in place allowed. np.exp is twice as
    fast as np.tanh on float32 here (no SIMD tanh without AVX-512); the price
    is an absolute instead of relative error near 0 (~1e-7 in float32), below
    what the float32 state carries. For x << 0 exp overflows to inf and
    2/inf - 1 = -1, the correct limit (callers silence the warning)."""
    np.multiply(x, -2, out=out)
    np.exp(out, out=out)
    out += 1
    np.divide(2, out, out=out)
    out -= 1
    return out


# ---------------------------------------------------------------- vanilla RNN

def rnn_step_forward(x, prev_h, Wx, Wh, b):
    """x (N, D), prev_h (N, H), Wx (D, H), Wh (H, H), b (H,) -> next_h (N, H).

    next_h = tanh(x @ Wx + prev_h @ Wh + b)
    """
    next_h = x @ Wx
    next_h += prev_h @ Wh
    next_h += b
    np.tanh(next_h, out=next_h)
    return next_h, (x, prev_h, Wx, Wh, next_h)


def rnn_step_backward(dnext_h, cache):
    """dnext_h (N, H) -> dx (N, D), dprev_h (N, H), dWx (D, H), dWh (H, H), db (H,)."""
    x, prev_h, Wx, Wh, next_h = cache
    da = dnext_h * (1 - next_h * next_h)
    return da @ Wx.T, da @ Wh.T, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def rnn_packed_forward(a, h0, Wh, batch_sizes, work=None):
    """Tanh RNN over a packed batch.

    a: (S, H) input projections x @ Wx + b, packed (see module doc); it is
       overwritten and kept in the cache. h0: (N0, H), N0 >= batch_sizes[0].
    batch_sizes: (T,) non-increasing, sum S.
    Returns h (S, H) packed hidden states and a cache. work: see module doc.
    """
    S, H = a.shape
    offs = np.r_[0, np.cumsum(batch_sizes)]
    hprev = buffer(work, "hprev", (S, H), a.dtype)  # h_{t-1} per row: dWh is one matmul
    tmp = buffer(work, "tmp", (int(batch_sizes[0]) if len(batch_sizes) else 0, H), a.dtype)
    with np.errstate(over="ignore"):
        for t, n in enumerate(batch_sizes):
            lo, hi = offs[t], offs[t] + n
            hprev[lo:hi] = h0[:n] if t == 0 else a[offs[t - 1]:offs[t - 1] + n]
            np.matmul(hprev[lo:hi], Wh, out=tmp[:n])
            a[lo:hi] += tmp[:n]
            tanh(a[lo:hi], out=a[lo:hi])  # a now holds h_t
    return a, (a, hprev, Wh, batch_sizes, offs)


def rnn_packed_backward(dh, cache, work=None):
    """dh (S, H) upstream gradient on the packed h (overwritten).

    Returns da (S, H) gradient on the input projections (so dWx = x.T @ da,
    db = da.sum(0), dx = da @ Wx.T), dh0 (batch_sizes[0], H) and dWh (H, H).
    """
    h, hprev, Wh, batch_sizes, offs = cache
    da = dh
    tmp = buffer(work, "tmp", (int(batch_sizes[0]) if len(batch_sizes) else 0, h.shape[1]), h.dtype)
    dprev = None
    for t in range(len(batch_sizes) - 1, -1, -1):
        n = batch_sizes[t]
        lo, hi = offs[t], offs[t] + n
        d = da[lo:hi]
        if dprev is not None:
            d[:len(dprev)] += dprev
        np.multiply(h[lo:hi], h[lo:hi], out=tmp[:n])
        np.subtract(1, tmp[:n], out=tmp[:n])
        d *= tmp[:n]
        dprev = d @ Wh.T
    dh0 = dprev if dprev is not None else np.zeros((0, h.shape[1]), dtype=h.dtype)
    return da, dh0, hprev.T @ da


# ---------------------------------------------------------------- LSTM

def _lstm_cell(a, prev_c, c, tc, h):
    """Activate the pre-activations a (n, 4H) in place (gates i, f, o, g) and
    write c = f * prev_c + i * g, tc = tanh(c), h = o * tc. prev_c None means 0."""
    H = a.shape[1] // 4
    # sigmoid(x) = 1 / (1 + exp(-x)) on i, f, o and tanh(x) = 2 sigmoid(2x) - 1
    # on g: one exp over whole rows, a quarter faster than exp on 3H columns
    # plus np.tanh on H (see tanh). exp overflow gives the right limits.
    np.negative(a[:, :3 * H], out=a[:, :3 * H])
    np.multiply(a[:, 3 * H:], -2, out=a[:, 3 * H:])
    np.exp(a, out=a)
    a += 1
    np.divide(1, a, out=a)
    i, f, o, g = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
    g *= 2
    g -= 1
    np.multiply(i, g, out=c)
    if prev_c is not None:
        np.multiply(f, prev_c, out=tc)
        c += tc
    tanh(c, out=tc)
    np.multiply(o, tc, out=h)


def _lstm_cell_backward(dh, dc_next, gates, prev_c, tc, da, dc, scratch):
    """Gradients of one LSTM step on n rows.

    dh (n, H) grad on h; dc_next (m, H), m <= n, grad on c arriving from the
    next step (rows >= m get none; None = no rows); gates (n, 4H) activated
    i, f, o, g; prev_c (n, H) or None for zeros; tc = tanh(c).
    Writes da (n, 4H) grad on the pre-activations and dc (n, H) the total
    grad on c (callers form dprev_c = dc * f); scratch (n, 4H) is workspace.
    """
    H = tc.shape[1]
    i, f, o, g = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    di, df, do, dg = da[:, :H], da[:, H:2 * H], da[:, 2 * H:3 * H], da[:, 3 * H:]
    # dc = dc_next + dh * o * (1 - tc^2): c feeds h through tanh and the next step directly
    np.multiply(tc, tc, out=dc)
    np.subtract(1, dc, out=dc)
    dc *= o
    dc *= dh
    if dc_next is not None:
        dc[:len(dc_next)] += dc_next
    np.multiply(dh, tc, out=do)
    np.multiply(dc, g, out=di)
    if prev_c is None:
        df[...] = 0
    else:
        np.multiply(dc, prev_c, out=df)
    np.multiply(dc, i, out=dg)
    # sigmoid' = s (1 - s) on i, f, o at once; tanh' = 1 - g^2 on g
    s, ds, gg = gates[:, :3 * H], scratch[:, :3 * H], scratch[:, 3 * H:]
    np.subtract(1, s, out=ds)
    ds *= s
    da[:, :3 * H] *= ds
    np.multiply(g, g, out=gg)
    np.subtract(1, gg, out=gg)
    dg *= gg


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    """x (N, D), prev_h (N, H), prev_c (N, H), Wx (D, 4H), Wh (H, 4H), b (4H,)
    -> next_h (N, H), next_c (N, H). Gates along 4H: i, f, o (sigmoid), g (tanh)."""
    a = x @ Wx
    a += prev_h @ Wh
    a += b
    H = prev_h.shape[1]
    next_c = np.empty((x.shape[0], H), dtype=a.dtype)
    tc = np.empty_like(next_c)
    next_h = np.empty_like(next_c)
    with np.errstate(over="ignore"):
        _lstm_cell(a, prev_c, next_c, tc, next_h)
    return next_h, next_c, (x, prev_h, prev_c, Wx, Wh, a, tc)


def lstm_step_backward(dnext_h, dnext_c, cache):
    """dnext_h, dnext_c (N, H) -> dx (N, D), dprev_h (N, H), dprev_c (N, H),
    dWx (D, 4H), dWh (H, 4H), db (4H,)."""
    x, prev_h, prev_c, Wx, Wh, gates, tc = cache
    H = tc.shape[1]
    da = np.empty_like(gates)
    dc = np.empty_like(tc)
    _lstm_cell_backward(dnext_h, dnext_c, gates, prev_c, tc, da, dc, np.empty_like(gates))
    dprev_c = dc * gates[:, H:2 * H]
    return da @ Wx.T, da @ Wh.T, dprev_c, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def lstm_cell_forward(a, prev_c):
    """Forward-only LSTM cell, for decoding: a (N, 4H) the pre-activations
    x @ Wx + b + prev_h @ Wh (overwritten with the gates), prev_c (N, H)
    -> next_h, next_c (N, H)."""
    next_c = np.empty_like(prev_c, dtype=a.dtype)
    tc = np.empty_like(next_c)
    next_h = np.empty_like(next_c)
    with np.errstate(over="ignore"):
        _lstm_cell(a, prev_c, next_c, tc, next_h)
    return next_h, next_c


def lstm_packed_forward(a, h0, Wh, batch_sizes, work=None):
    """LSTM over a packed batch, c0 = 0.

    a: (S, 4H) input projections x @ Wx + b, packed (see module doc); it is
       overwritten with the gate activations and kept in the cache.
    h0: (N0, H), N0 >= batch_sizes[0]. batch_sizes: (T,) non-increasing, sum S.
    Returns h (S, H) packed hidden states and a cache. work: see module doc.
    """
    S, H = a.shape[0], a.shape[1] // 4
    offs = np.r_[0, np.cumsum(batch_sizes)]
    hprev = buffer(work, "hprev", (S, H), a.dtype)  # h_{t-1} per row: dWh is one matmul
    h = buffer(work, "h", (S, H), a.dtype)
    c = buffer(work, "c", (S, H), a.dtype)
    tc = buffer(work, "tc", (S, H), a.dtype)
    tmp = buffer(work, "tmp", (int(batch_sizes[0]) if len(batch_sizes) else 0, 4 * H), a.dtype)
    with np.errstate(over="ignore"):
        for t, n in enumerate(batch_sizes):
            lo, hi = offs[t], offs[t] + n
            if t == 0:
                hprev[lo:hi] = h0[:n]
                prev_c = None
            else:
                plo = offs[t - 1]
                hprev[lo:hi] = h[plo:plo + n]
                prev_c = c[plo:plo + n]
            np.matmul(hprev[lo:hi], Wh, out=tmp[:n])
            a[lo:hi] += tmp[:n]
            _lstm_cell(a[lo:hi], prev_c, c[lo:hi], tc[lo:hi], h[lo:hi])
    return h, (a, c, tc, hprev, Wh, batch_sizes, offs)


def lstm_packed_backward(dh, cache, work=None):
    """dh (S, H) upstream gradient on the packed h (overwritten). work: module doc.

    Returns da (S, 4H) gradient on the input projections (so dWx = x.T @ da,
    db = da.sum(0), dx = da @ Wx.T), dh0 (batch_sizes[0], H) and dWh (H, 4H).
    """
    gates, c, tc, hprev, Wh, batch_sizes, offs = cache
    S, H = c.shape
    da = buffer(work, "da", gates.shape, gates.dtype)
    n0 = int(batch_sizes[0]) if len(batch_sizes) else 0
    # per-step workspaces, reused: dc_t, dprev_h, dprev_c, scratch
    dc, dph, dpc = (buffer(work, k, (n0, H), c.dtype) for k in ("dc", "dph", "dpc"))
    scratch = buffer(work, "tmp", (n0, 4 * H), c.dtype)
    m = 0   # rows carrying dprev_h / dprev_c from step t + 1
    for t in range(len(batch_sizes) - 1, -1, -1):
        n = batch_sizes[t]
        lo, hi = offs[t], offs[t] + n
        d = dh[lo:hi]
        d[:m] += dph[:m]
        prev_c = c[offs[t - 1]:offs[t - 1] + n] if t > 0 else None
        _lstm_cell_backward(d, dpc[:m], gates[lo:hi], prev_c, tc[lo:hi], da[lo:hi], dc[:n], scratch[:n])
        np.matmul(da[lo:hi], Wh.T, out=dph[:n])
        np.multiply(dc[:n], gates[lo:hi, H:2 * H], out=dpc[:n])
        m = n
    return da, dph[:m].copy(), hprev.T @ da


# ---------------------------------------------------------------- padded wrappers

def _packing(lengths, N, T):
    """-> order (N,) longest first, step mask (T, N) in sorted order, batch_sizes (T,)."""
    lengths = np.full(N, T) if lengths is None else np.minimum(np.asarray(lengths), T)
    order = np.argsort(-lengths, kind="stable")
    active = np.arange(T)[:, None] < lengths[order][None, :]
    return order, active, active.sum(axis=1)


def _seq_forward(core, x, h0, Wx, Wh, b, lengths):
    N, T, D = x.shape
    order, active, bs = _packing(lengths, N, T)
    xp = x[order].swapaxes(0, 1)[active]           # (S, D) packed, time-major
    h, core_cache = core(xp @ Wx + b, h0[order], Wh, bs)
    out = np.zeros((T, N, h.shape[1]), dtype=h.dtype)
    out[active] = h
    hs = np.empty_like(out.swapaxes(0, 1))
    hs[order] = out.swapaxes(0, 1)
    return hs, (order, active, xp, Wx, h0.shape, core_cache)


def _seq_backward(core_backward, dh, cache):
    order, active, xp, Wx, h0_shape, core_cache = cache
    N, T = dh.shape[:2]
    da, dh0s, dWh = core_backward(dh[order].swapaxes(0, 1)[active], core_cache)
    dx_t = np.zeros((T, N, xp.shape[1]), dtype=da.dtype)
    dx_t[active] = da @ Wx.T
    dx = np.empty_like(dx_t.swapaxes(0, 1))
    dx[order] = dx_t.swapaxes(0, 1)
    dh0 = np.zeros(h0_shape, dtype=da.dtype)
    dh0[order[:len(dh0s)]] = dh0s
    return dx, dh0, xp.T @ da, dWh, da.sum(axis=0)


def rnn_forward(x, h0, Wx, Wh, b, lengths=None):
    """Tanh RNN. x (N, T, D), h0 (N, H), Wx (D, H), Wh (H, H), b (H,) -> h (N, T, H).

    lengths (N,) optional: row n only runs its first lengths[n] steps; h is 0
    after that and its gradient ignored. None = all T steps (plain CS231n).
    """
    return _seq_forward(rnn_packed_forward, x, h0, Wx, Wh, b, lengths)


def rnn_backward(dh, cache):
    """dh (N, T, H) -> dx (N, T, D), dh0 (N, H), dWx (D, H), dWh (H, H), db (H,)."""
    return _seq_backward(rnn_packed_backward, dh, cache)


def lstm_forward(x, h0, Wx, Wh, b, lengths=None):
    """LSTM, c0 = 0. x (N, T, D), h0 (N, H), Wx (D, 4H), Wh (H, 4H), b (4H,) -> h (N, T, H).

    lengths as in rnn_forward.
    """
    return _seq_forward(lstm_packed_forward, x, h0, Wx, Wh, b, lengths)


def lstm_backward(dh, cache):
    """dh (N, T, H) -> dx (N, T, D), dh0 (N, H), dWx (D, 4H), dWh (H, 4H), db (4H,)."""
    return _seq_backward(lstm_packed_backward, dh, cache)


# ---------------------------------------------------------------- loss

def softmax_loss_rows(x, y, scale):
    """Cross-entropy of logits x (M, V) against ids y (M,), summed and times scale.

    Returns (loss, dx). x is overwritten (dx reuses its memory): the logits
    are the biggest activation of a captioning step.
    """
    M = x.shape[0]
    rows = np.arange(M)
    x -= x.max(axis=1, keepdims=True)
    picked = x[rows, y]
    np.exp(x, out=x)
    z = x.sum(axis=1)
    loss = float(np.log(z).sum() - picked.sum()) * scale
    x *= (scale / z)[:, None]     # softmax times scale in one pass
    x[rows, y] -= scale
    return loss, x


def temporal_softmax_loss(x, y, mask, verbose=False):
    """Softmax loss summed over time, divided by N, on masked positions only.

    x (N, T, V) logits, y (N, T) ids in [0, V), mask (N, T) bool
    -> loss (float), dx (N, T, V). Positions with mask False add nothing.
    """
    N, T, V = x.shape
    keep = mask.reshape(-1).astype(bool)
    loss, dsel = softmax_loss_rows(x.reshape(N * T, V)[keep], y.reshape(-1)[keep], 1.0 / N)
    dx = np.zeros((N * T, V), dtype=x.dtype)
    dx[keep] = dsel
    if verbose:
        print("dx:", dx.shape)
    return loss, dx.reshape(N, T, V)
