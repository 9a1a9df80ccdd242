"""The fast path: what `CaptioningRNN.loss` and the decoders run instead of `captioner.layers`.

Each function here computes the same numbers as a readable function of `captioner.layers`
(named in its docstring), only faster; tests/test_model.py checks that the model's fast
loss and gradients equal the composition of `layers` in float64.

Where the speed comes from:
- Packing, the layout PyTorch calls PackedSequence: captions sorted by length, longest
  first, stored time-major with the padding dropped, so step t is the contiguous block
  ``x[offsets[t]:offsets[t] + batch_sizes[t]]`` of the first batch_sizes[t] captions.
  Padding costs nothing, and the input projection and every weight gradient become one
  big matrix product over all steps.
- The word embedding followed by ``x @ Wx + b`` is a linear map of the word: it runs once
  per distinct word of the batch, then rows are gathered.
- One np.exp serves all four LSTM gates (tanh(x) = 2 sigmoid(2x) - 1).
- The backward recurrences form d @ Wh.T as (Wh @ d.T).T (see back_through_Wh).
- Big temporaries live in a ``work`` dict and are reused by the next call (see buffer).

Shapes: N captions, T steps, S = number of real (packed) steps, U distinct input words,
W word-vector size, H hidden size, kH = H (rnn), 4H (lstm) or 3H (gru), V vocabulary.
"""

import numpy as np

# ---------------------------------------------------------------- reused buffers


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
    return raw[skip : skip + size * np.dtype(dtype).itemsize].view(dtype)


def back_through_Wh(d, Wh, out=None):
    """d (n, kH) @ Wh.T -> (n, H), computed as (Wh @ d.T).T: a transposed view of out
    (H, n) when given. Why: OpenBLAS packs all of Wh on every call, and packs the view
    Wh.T with strided reads; with few rows that packing is much of the product. Here
    d @ Wh.T took 1.3-1.5x the time of Wh @ d.T on 25 rows (H 256 or 512, LSTM or RNN),
    1.1-1.2x on 100, the same on 500. A contiguous copy of Wh.T multiplies as fast, but
    numpy transposes the LSTM's 4 MB Wh in ~4 ms, more than the copy saves.
    """
    return np.matmul(Wh, d.T, out=out).T


# ---------------------------------------------------------------- packing


def pack_captions(captions, null):
    """Sort captions (N, T+1) by length, longest first, and pack them time-major
    (module doc). A row's length is 1 + its last non-<NULL> target: later steps
    cannot change the loss. Earlier <NULL> targets still run their step but are
    left out of the loss via `keep`.

    -> order (N,) the sort, batch_sizes (T',), ids_in, ids_out (S,) input and
    target word per packed row, keep (S,) bool: target is not <NULL>.
    """
    cin, cout = captions[:, :-1], captions[:, 1:]
    T = cin.shape[1]
    mask = cout != null
    lengths = np.where(mask.any(axis=1), T - np.argmax(mask[:, ::-1], axis=1), 0)
    order = np.argsort(-lengths, kind="stable")
    active = np.arange(T)[:, None] < lengths[order][None, :]  # (T, N) in sorted order
    bs = active.sum(axis=1)
    return order, bs[bs > 0], cin[order].T[active], cout[order].T[active], mask[order].T[active]


# ---------------------------------------------------------------- words in


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
    out = np.take(x, order[starts], axis=0, out=out, mode="clip")  # "clip": no hidden copy
    n_long = int(np.sum(counts > 8))
    for u in range(n_long):
        rows = order[starts[u] + 1 : starts[u] + counts[u]]
        out[u] += np.take(x, rows, axis=0, mode="clip").sum(axis=0)
    for j in range(1, int(counts[n_long:].max(initial=1))):
        n = n_long + int(np.sum(counts[n_long:] > j))
        out[n_long:n] += np.take(x, order[starts[n_long:n] + j], axis=0, mode="clip")
    return out


def embedding_grad(ids, dout, V):
    """Sum the rows of dout (S, D) into dW (V, D) by ids (S,).

    Replaces np.add.at in layers.word_embedding_backward."""
    dW = np.zeros((V, dout.shape[1]), dtype=dout.dtype)
    order, starts, counts, words = group_ids(ids)
    if len(words):
        dW[words] = segment_sum(dout, order, starts, counts)
    return dW


def project_words_forward(ids, W_embed, Wx, b, work=None):
    """The recurrence's input a = W_embed[ids] @ Wx + b for packed ids (S,) -> a (S, kH).

    Replaces layers.word_embedding_forward followed by the x @ Wx + b of every
    step function: the product runs once per distinct word (U <= V rows, ~S/3
    on real captions), then rows are gathered. `a` lives in work["a"].
    """
    order, starts, counts, words = group_ids(ids)
    inverse = np.empty_like(ids)  # packed row -> its run
    for_run = np.argsort(starts)  # runs in sorted-id order
    inverse[order] = np.repeat(for_run, counts[for_run])
    e = W_embed[words]  # (U, W)
    proj = np.matmul(e, Wx, out=buffer(work, "proj", (len(words), Wx.shape[1]), Wx.dtype))
    proj += b
    a = np.take(
        proj,
        inverse,
        axis=0,
        out=buffer(work, "a", (len(ids), Wx.shape[1]), Wx.dtype),
        mode="clip",
    )
    return a, (order, starts, counts, words, e, W_embed.shape[0], Wx)


def project_words_backward(da, cache, work=None):
    """da (S, kH) gradient on a -> dW_embed (V, W), dWx (W, kH), db (kH,).

    Sums da over each word's occurrences first (segment_sum), then multiplies:
    U rows instead of S. Replaces layers.word_embedding_backward and the
    dWx, db of the step functions.
    """
    order, starts, counts, words, e, V, Wx = cache
    da_w = segment_sum(
        da, order, starts, counts, out=buffer(work, "proj", (len(words), da.shape[1]), da.dtype)
    )  # (U, kH)
    dW_embed = np.zeros((V, e.shape[1]), dtype=da.dtype)
    dW_embed[words] = da_w @ Wx.T
    return dW_embed, e.T @ da_w, da_w.sum(axis=0)


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


def rnn_packed_forward(a, h0, Wh, batch_sizes, work=None):
    """Tanh RNN over a packed batch: replaces layers.rnn_forward.

    a: (S, H) input projections x @ Wx + b, packed (see module doc); it is
       overwritten and kept in the cache. h0: (N0, H), N0 >= batch_sizes[0].
    batch_sizes: (T,) non-increasing, sum S.
    Returns h (S, H) packed hidden states and a cache.
    """
    S, H = a.shape
    offs = np.r_[0, np.cumsum(batch_sizes)]
    hprev = buffer(work, "hprev", (S, H), a.dtype)  # h_{t-1} per row: dWh is one matmul
    tmp = buffer(work, "tmp", (int(batch_sizes[0]) if len(batch_sizes) else 0, H), a.dtype)
    with np.errstate(over="ignore"):
        for t, n in enumerate(batch_sizes):
            lo, hi = offs[t], offs[t] + n
            hprev[lo:hi] = h0[:n] if t == 0 else a[offs[t - 1] : offs[t - 1] + n]
            np.matmul(hprev[lo:hi], Wh, out=tmp[:n])
            a[lo:hi] += tmp[:n]
            tanh(a[lo:hi], out=a[lo:hi])  # a now holds h_t
    return a, (a, hprev, Wh, batch_sizes, offs)


def rnn_packed_backward(dh, cache, work=None):
    """dh (S, H) upstream gradient on the packed h (overwritten): replaces layers.rnn_backward.

    Returns da (S, H) gradient on the input projections (so dWx = x.T @ da,
    db = da.sum(0), dx = da @ Wx.T), dh0 (batch_sizes[0], H) and dWh (H, H).
    """
    h, hprev, Wh, batch_sizes, offs = cache
    da = dh
    n0 = int(batch_sizes[0]) if len(batch_sizes) else 0
    tmp = buffer(work, "tmp", (n0, h.shape[1]), h.dtype)
    dprev = None
    for t in range(len(batch_sizes) - 1, -1, -1):
        n = batch_sizes[t]
        lo, hi = offs[t], offs[t] + n
        d = da[lo:hi]
        if dprev is not None:
            d[: len(dprev)] += dprev
        np.multiply(h[lo:hi], h[lo:hi], out=tmp[:n])
        np.subtract(1, tmp[:n], out=tmp[:n])
        d *= tmp[:n]
        dprev = back_through_Wh(d, Wh)
    dh0 = dprev if dprev is not None else np.zeros((0, h.shape[1]), dtype=h.dtype)
    return da, dh0, hprev.T @ da


def rnn_decode_step(a, hWh, h, c):  # noqa: ARG001 (one signature for every cell)
    """One forward step for the decoders (cells.py): a (B, H) = x @ Wx + b (overwritten),
    hWh (B, H) = h @ Wh -> (next_h, None). Replaces layers.rnn_step_forward."""
    a += hWh  # the order of additions of training: (x @ Wx + b) + h @ Wh
    with np.errstate(over="ignore"):
        return tanh(a, out=a), None


# ---------------------------------------------------------------- LSTM


def lstm_cell(a, prev_c, c, tc, h):
    """Activate the pre-activations a (n, 4H) in place (gates i, f, o, g) and
    write c = f * prev_c + i * g, tc = tanh(c), h = o * tc. prev_c None means 0.
    Replaces the gate arithmetic of layers.lstm_step_forward."""
    H = a.shape[1] // 4
    # sigmoid(x) = 1 / (1 + exp(-x)) on i, f, o and tanh(x) = 2 sigmoid(2x) - 1
    # on g: one exp over whole rows, a quarter faster than exp on 3H columns
    # plus np.tanh on H (see tanh). exp overflow gives the right limits.
    np.negative(a[:, : 3 * H], out=a[:, : 3 * H])
    np.multiply(a[:, 3 * H :], -2, out=a[:, 3 * H :])
    np.exp(a, out=a)
    a += 1
    np.divide(1, a, out=a)
    i, f, o, g = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
    g *= 2
    g -= 1
    np.multiply(i, g, out=c)
    if prev_c is not None:
        np.multiply(f, prev_c, out=tc)
        c += tc
    tanh(c, out=tc)
    np.multiply(o, tc, out=h)


def lstm_cell_backward(dh, dc_next, gates, prev_c, tc, da, dc, scratch):
    """Gradients of one LSTM step on n rows: replaces layers.lstm_step_backward
    up to the products with Wx and Wh.

    dh (n, H) grad on h; dc_next (m, H), m <= n, grad on c arriving from the
    next step (rows >= m get none; None = no rows); gates (n, 4H) activated
    i, f, o, g; prev_c (n, H) or None for zeros; tc = tanh(c).
    Writes da (n, 4H) grad on the pre-activations and dc (n, H) the total
    grad on c (callers form dprev_c = dc * f); scratch (n, 4H) is workspace.
    """
    H = tc.shape[1]
    i, o, g = gates[:, :H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]  # f is the callers'
    di, df, do, dg = da[:, :H], da[:, H : 2 * H], da[:, 2 * H : 3 * H], da[:, 3 * H :]
    # dc = dc_next + dh * o * (1 - tc^2): c feeds h through tanh and the next step directly
    np.multiply(tc, tc, out=dc)
    np.subtract(1, dc, out=dc)
    dc *= o
    dc *= dh
    if dc_next is not None:
        dc[: len(dc_next)] += dc_next
    np.multiply(dh, tc, out=do)
    np.multiply(dc, g, out=di)
    if prev_c is None:
        df[...] = 0
    else:
        np.multiply(dc, prev_c, out=df)
    np.multiply(dc, i, out=dg)
    # sigmoid' = s (1 - s) on i, f, o at once; tanh' = 1 - g^2 on g
    s, ds, gg = gates[:, : 3 * H], scratch[:, : 3 * H], scratch[:, 3 * H :]
    np.subtract(1, s, out=ds)
    ds *= s
    da[:, : 3 * H] *= ds
    np.multiply(g, g, out=gg)
    np.subtract(1, gg, out=gg)
    dg *= gg


def lstm_cell_forward(a, prev_c):
    """Forward-only LSTM cell, for decoding: a (N, 4H) the pre-activations
    x @ Wx + b + prev_h @ Wh (overwritten with the gates), prev_c (N, H)
    -> next_h, next_c (N, H). Replaces layers.lstm_step_forward."""
    next_c = np.empty_like(prev_c, dtype=a.dtype)
    tc = np.empty_like(next_c)
    next_h = np.empty_like(next_c)
    with np.errstate(over="ignore"):
        lstm_cell(a, prev_c, next_c, tc, next_h)
    return next_h, next_c


def lstm_packed_forward(a, h0, Wh, batch_sizes, work=None):
    """LSTM over a packed batch, c0 = 0: replaces layers.lstm_forward.

    a: (S, 4H) input projections x @ Wx + b, packed (see module doc); it is
       overwritten with the gate activations and kept in the cache.
    h0: (N0, H), N0 >= batch_sizes[0]. batch_sizes: (T,) non-increasing, sum S.
    Returns h (S, H) packed hidden states and a cache.
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
                hprev[lo:hi] = h[plo : plo + n]
                prev_c = c[plo : plo + n]
            np.matmul(hprev[lo:hi], Wh, out=tmp[:n])
            a[lo:hi] += tmp[:n]
            lstm_cell(a[lo:hi], prev_c, c[lo:hi], tc[lo:hi], h[lo:hi])
    return h, (a, c, tc, hprev, Wh, batch_sizes, offs)


def lstm_packed_backward(dh, cache, work=None):
    """dh (S, H) upstream gradient on the packed h (overwritten): replaces layers.lstm_backward.

    Returns da (S, 4H) gradient on the input projections (so dWx = x.T @ da,
    db = da.sum(0), dx = da @ Wx.T), dh0 (batch_sizes[0], H) and dWh (H, 4H).
    """
    gates, c, tc, hprev, Wh, batch_sizes, offs = cache
    S, H = c.shape
    da = buffer(work, "da", gates.shape, gates.dtype)
    n0 = int(batch_sizes[0]) if len(batch_sizes) else 0
    # per-step workspaces, reused: dc_t, dprev_c, scratch; dprev_h.T (H, n) in dphT
    dc, dpc = (buffer(work, k, (n0, H), c.dtype) for k in ("dc", "dpc"))
    dphT = buffer(work, "dph", (H * n0,), c.dtype)
    dph = dphT[:0].reshape(0, H)
    scratch = buffer(work, "tmp", (n0, 4 * H), c.dtype)
    m = 0  # rows carrying dprev_h / dprev_c from step t + 1
    for t in range(len(batch_sizes) - 1, -1, -1):
        n = batch_sizes[t]
        lo, hi = offs[t], offs[t] + n
        d = dh[lo:hi]
        d[:m] += dph[:m]
        prev_c = c[offs[t - 1] : offs[t - 1] + n] if t > 0 else None
        lstm_cell_backward(
            d, dpc[:m], gates[lo:hi], prev_c, tc[lo:hi], da[lo:hi], dc[:n], scratch[:n]
        )
        dph = back_through_Wh(da[lo:hi], Wh, out=dphT[: H * n].reshape(H, n))
        np.multiply(dc[:n], gates[lo:hi, H : 2 * H], out=dpc[:n])
        m = n
    return da, dph.copy(), hprev.T @ da


def lstm_decode_step(a, hWh, h, c):  # noqa: ARG001 (one signature for every cell)
    """One forward step for the decoders (cells.py): a (B, 4H) = x @ Wx + b (overwritten),
    hWh (B, 4H) = h @ Wh, c (B, H) -> (next_h, next_c)."""
    a += hWh
    return lstm_cell_forward(a, c)


# ---------------------------------------------------------------- GRU


def gru_cell(a, hh, prev_h, h):
    """Activate a (n, 3H) = x @ Wx + b in place into the gates r, z, n, given hh (n, 3H)
    = prev_h @ Wh, and write h = n + z * (prev_h - n) = (1 - z) n + z prev_h.
    Replaces the arithmetic of layers.gru_step_forward (equations there)."""
    H = h.shape[1]
    rz, n = a[:, : 2 * H], a[:, 2 * H :]
    rz += hh[:, : 2 * H]
    np.negative(rz, out=rz)  # sigmoid(x) = 1 / (1 + exp(-x)) on r and z
    np.exp(rz, out=rz)
    rz += 1
    np.divide(1, rz, out=rz)
    r, z = rz[:, :H], rz[:, H:]
    np.multiply(r, hh[:, 2 * H :], out=h)  # h as scratch: r * (prev_h @ Wh_n)
    n += h
    tanh(n, out=n)
    np.subtract(prev_h, n, out=h)
    h *= z
    h += n


def gru_packed_forward(a, h0, Wh, batch_sizes, work=None):
    """GRU over a packed batch: replaces layers.gru_forward.

    a: (S, 3H) input projections x @ Wx + b, packed (see module doc); it is
       overwritten with the gates r, z, n and kept in the cache.
    h0: (N0, H), N0 >= batch_sizes[0]. batch_sizes: (T,) non-increasing, sum S.
    Returns h (S, H) packed hidden states and a cache.
    """
    S, H = a.shape[0], a.shape[1] // 3
    offs = np.r_[0, np.cumsum(batch_sizes)]
    hprev = buffer(work, "hprev", (S, H), a.dtype)  # h_{t-1} per row: dWh is one matmul
    h = buffer(work, "h", (S, H), a.dtype)
    hh = buffer(work, "hh", (S, 3 * H), a.dtype)  # h_{t-1} @ Wh, kept: r multiplies a part
    with np.errstate(over="ignore"):
        for t, n in enumerate(batch_sizes):
            lo, hi = offs[t], offs[t] + n
            hprev[lo:hi] = h0[:n] if t == 0 else h[offs[t - 1] : offs[t - 1] + n]
            np.matmul(hprev[lo:hi], Wh, out=hh[lo:hi])
            gru_cell(a[lo:hi], hh[lo:hi], hprev[lo:hi], h[lo:hi])
    return h, (a, hh, hprev, Wh, batch_sizes, offs)


def gru_packed_backward(dh, cache, work=None):
    """dh (S, H) upstream gradient on the packed h (overwritten): replaces layers.gru_backward.

    Returns da (S, 3H) gradient on the input projections (so dWx = x.T @ da,
    db = da.sum(0), dx = da @ Wx.T), dh0 (batch_sizes[0], H) and dWh (H, 3H).
    """
    gates, hh, hprev, Wh, batch_sizes, offs = cache
    S, H = hprev.shape
    da = buffer(work, "da", gates.shape, gates.dtype)
    dhh = buffer(work, "dhh", gates.shape, gates.dtype)  # gradient on h_{t-1} @ Wh
    n0 = int(batch_sizes[0]) if len(batch_sizes) else 0
    tmp = buffer(work, "tmp", (n0, H), hprev.dtype)
    dphT = buffer(work, "dph", (H * n0,), hprev.dtype)  # dprev_h.T (H, n)
    dph = dphT[:0].reshape(0, H)
    m = 0  # rows carrying dprev_h from step t + 1
    for t in range(len(batch_sizes) - 1, -1, -1):
        n = batch_sizes[t]
        lo, hi = offs[t], offs[t] + n
        d = dh[lo:hi]
        d[:m] += dph[:m]
        g, dg = gates[lo:hi], da[lo:hi]
        r, z, nn = g[:, :H], g[:, H : 2 * H], g[:, 2 * H :]
        dar, daz, dan = dg[:, :H], dg[:, H : 2 * H], dg[:, 2 * H :]
        omz = np.subtract(1, z, out=tmp[:n])
        # dan = d (1 - z) (1 - n^2): through h = (1 - z) n + z h_{t-1}, then tanh
        np.multiply(nn, nn, out=dan)
        np.subtract(1, dan, out=dan)
        dan *= d
        dan *= omz
        # daz = d (h_{t-1} - n) z (1 - z)
        np.subtract(hprev[lo:hi], nn, out=daz)
        daz *= d
        daz *= z
        daz *= omz
        # dar = dan (h_{t-1} @ Wh_n) r (1 - r); the gradient on h_{t-1} @ Wh_n is dan r
        np.multiply(dan, r, out=dhh[lo:hi, 2 * H :])
        np.multiply(dan, hh[lo:hi, 2 * H :], out=dar)
        dar *= r
        np.subtract(1, r, out=omz)
        dar *= omz
        dhh[lo:hi, : 2 * H] = dg[:, : 2 * H]
        # dprev_h = d z + dhh @ Wh.T: kept through z, and fed the gates
        dph = back_through_Wh(dhh[lo:hi], Wh, out=dphT[: H * n].reshape(H, n))
        np.multiply(d, z, out=tmp[:n])
        dph += tmp[:n]
        m = n
    return da, dph.copy(), hprev.T @ dhh


def gru_decode_step(a, hWh, h, c):  # noqa: ARG001 (one signature for every cell)
    """One forward step for the decoders (cells.py): a (B, 3H) = x @ Wx + b (overwritten),
    hWh (B, 3H) = h @ Wh, h (B, H) -> (next_h, None)."""
    next_h = np.empty_like(h, dtype=a.dtype)
    with np.errstate(over="ignore"):
        gru_cell(a, hWh, h, next_h)
    return next_h, None


# ---------------------------------------------------------------- scores and loss


def vocab_scores_forward(h, keep, W_vocab, b_vocab, work=None):
    """Scores of the packed rows with a real target: h[keep] (K, H) @ W_vocab + b_vocab
    -> scores (K, V). Replaces layers.temporal_affine_forward, which scores every
    (n, t) including the <NULL> targets that the loss then masks."""
    all_kept = bool(keep.all())
    hk = h
    if not all_kept:
        hk = np.compress(
            keep, h, axis=0, out=buffer(work, "hk", (int(keep.sum()), h.shape[1]), h.dtype)
        )
    scores = np.matmul(
        hk, W_vocab, out=buffer(work, "logits", (len(hk), W_vocab.shape[1]), h.dtype)
    )
    scores += b_vocab
    return scores, (hk, keep, all_kept, h.shape, W_vocab)


def vocab_scores_backward(dscores, cache, work=None):
    """dscores (K, V) -> dh (S, H) (zero on rows without a target), dW_vocab (H, V), db_vocab (V,).
    Replaces layers.temporal_affine_backward. dh lives in work["dh"]."""
    hk, keep, all_kept, h_shape, W_vocab = cache
    dW_vocab = hk.T @ dscores
    db_vocab = dscores.sum(axis=0)
    if all_kept:
        dh = np.matmul(dscores, W_vocab.T, out=buffer(work, "dh", h_shape, dscores.dtype))
    else:
        dh = buffer(work, "dh", h_shape, dscores.dtype)
        dh[~keep] = 0
        dh[keep] = dscores @ W_vocab.T
    return dh, dW_vocab, db_vocab


def softmax_loss_rows(x, y, scale):
    """Cross-entropy of logits x (M, V) against ids y (M,), summed and times scale.
    Replaces layers.temporal_softmax_loss on the unmasked rows.

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
    x *= (scale / z)[:, None]  # softmax times scale in one pass
    x[rows, y] -= scale
    return loss, x


def adaptive_softmax_rows(h, keep, y, scale, W_head, b_head, tails, cutoffs, work=None):
    """The adaptive softmax loss (layers.adaptive_softmax_loss, its backward included)
    of the packed rows with a real target.

    h (S, H) packed hidden states, keep (S,) bool, y (K,) frequency ranks of the kept
    rows' targets, scale 1/N; W_head, b_head, tails, cutoffs as in layers.
    -> loss, dh (S, H) (zero on rows without a target), dW_head, db_head,
    dtails [(dP_k, dW_k, db_k), ...]. The head runs as the full softmax does
    (vocab_scores_*, softmax_loss_rows); cluster k only on its own rows.
    """
    head_size = cutoffs[0]
    bounds = list(cutoffs) + [cutoffs[-1] + tails[-1][1].shape[1]]
    cluster = np.searchsorted(bounds, y, side="right") - 1  # -1: a head word
    head_y = np.where(cluster < 0, y, head_size + cluster)
    scores, cache = vocab_scores_forward(h, keep, W_head, b_head, work)
    hk = cache[0]
    loss, dscores = softmax_loss_rows(scores, head_y, scale)
    dtails, dx_tails = [], []
    for k, (P, W, b) in enumerate(tails):
        sel = np.flatnonzero(cluster == k)
        xs = hk[sel]
        z = xs @ P
        s = z @ W
        s += b
        loss_k, ds = softmax_loss_rows(s, y[sel] - bounds[k], scale)
        loss += loss_k
        dz = ds @ W.T
        dtails.append((xs.T @ dz, z.T @ ds, ds.sum(axis=0)))
        dx_tails.append((sel, dz @ P.T))
    dh, dW_head, db_head = vocab_scores_backward(dscores, cache, work)
    kept = np.flatnonzero(keep)
    for sel, dx in dx_tails:
        dh[kept[sel]] += dx  # a row's target is in one cluster: sel never repeats
    return loss, dh, dW_head, db_head, dtails
