"""Float64 gradient checks of every layer against centered differences, and the fast
(packed) recurrences against the readable ones."""

import warnings

import numpy as np
import pytest

from captioner import layers as L
from captioner import packed as P
from captioner.cells import CELLS
from gradcheck import numeric_grad, numeric_grad_array, rel_error

TOL = 1e-6


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def check(f, inputs, dout, analytic):
    """analytic: list of gradients in the order of inputs."""
    for x, g in zip(inputs, analytic):
        num = numeric_grad_array(f, x, dout)
        assert g.shape == x.shape
        assert rel_error(num, g) < TOL


def test_affine(rng):
    x, w, b = rng.standard_normal((4, 3, 2)), rng.standard_normal((6, 5)), rng.standard_normal(5)
    out, cache = L.affine_forward(x, w, b)
    np.testing.assert_allclose(out, x.reshape(4, 6) @ w + b)
    dout = rng.standard_normal(out.shape)
    check(lambda: L.affine_forward(x, w, b)[0], [x, w, b], dout, L.affine_backward(dout, cache))


def test_temporal_affine(rng):
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal(5)
    out, cache = L.temporal_affine_forward(x, w, b)
    assert out.shape == (2, 3, 5)
    np.testing.assert_allclose(out[1, 2], x[1, 2] @ w + b)
    dout = rng.standard_normal(out.shape)
    check(
        lambda: L.temporal_affine_forward(x, w, b)[0],
        [x, w, b],
        dout,
        L.temporal_affine_backward(dout, cache),
    )


def test_rnn_step(rng):
    N, D, H = 3, 4, 5
    x, h = rng.standard_normal((N, D)), rng.standard_normal((N, H))
    Wx, Wh = rng.standard_normal((D, H)), rng.standard_normal((H, H)) * 0.3
    b = rng.standard_normal(H)
    out, cache = L.rnn_step_forward(x, h, Wx, Wh, b)
    np.testing.assert_allclose(out, np.tanh(x @ Wx + h @ Wh + b))
    dout = rng.standard_normal(out.shape)
    check(
        lambda: L.rnn_step_forward(x, h, Wx, Wh, b)[0],
        [x, h, Wx, Wh, b],
        dout,
        L.rnn_step_backward(dout, cache),
    )


def _ref_lstm_step(x, h, c, Wx, Wh, b):
    a = x @ Wx + h @ Wh + b
    H = h.shape[1]
    sig = lambda z: 1 / (1 + np.exp(-z))
    i, f, o, g = (
        sig(a[:, :H]),
        sig(a[:, H : 2 * H]),
        sig(a[:, 2 * H : 3 * H]),
        np.tanh(a[:, 3 * H :]),
    )
    c2 = f * c + i * g
    return o * np.tanh(c2), c2


def test_lstm_step(rng):
    N, D, H = 3, 4, 5
    x, h, c = rng.standard_normal((N, D)), rng.standard_normal((N, H)), rng.standard_normal((N, H))
    Wx, Wh = rng.standard_normal((D, 4 * H)), rng.standard_normal((H, 4 * H))
    b = rng.standard_normal(4 * H)
    nh, nc, cache = L.lstm_step_forward(x, h, c, Wx, Wh, b)
    rh, rc = _ref_lstm_step(x, h, c, Wx, Wh, b)  # pins the gate order i, f, o, g
    np.testing.assert_allclose(nh, rh, rtol=1e-12)
    np.testing.assert_allclose(nc, rc, rtol=1e-12)
    dh, dc = rng.standard_normal((N, H)), rng.standard_normal((N, H))
    grads = L.lstm_step_backward(dh, dc, cache)

    def f():
        a, b_, _ = L.lstm_step_forward(x, h, c, Wx, Wh, b)
        return float(np.sum(a * dh) + np.sum(b_ * dc))

    for inp, g in zip([x, h, c, Wx, Wh, b], grads):
        assert rel_error(numeric_grad(f, inp), g) < TOL


def _ref_gru_step(x, h, Wx, Wh, b):
    """PyTorch's GRUCell equations with b_hh = 0, written from its documentation."""
    H = h.shape[1]
    sig = lambda z: 1 / (1 + np.exp(-z))
    gi, gh = x @ Wx + b, h @ Wh
    r = sig(gi[:, :H] + gh[:, :H])
    z = sig(gi[:, H : 2 * H] + gh[:, H : 2 * H])
    n = np.tanh(gi[:, 2 * H :] + r * gh[:, 2 * H :])
    return (1 - z) * n + z * h


def test_gru_step(rng):
    N, D, H = 3, 4, 5
    x, h = rng.standard_normal((N, D)), rng.standard_normal((N, H))
    Wx, Wh = rng.standard_normal((D, 3 * H)), rng.standard_normal((H, 3 * H))
    b = rng.standard_normal(3 * H)
    out, cache = L.gru_step_forward(x, h, Wx, Wh, b)
    np.testing.assert_allclose(out, _ref_gru_step(x, h, Wx, Wh, b), rtol=1e-12)  # gates r, z, n
    dout = rng.standard_normal(out.shape)
    check(
        lambda: L.gru_step_forward(x, h, Wx, Wh, b)[0],
        [x, h, Wx, Wh, b],
        dout,
        L.gru_step_backward(dout, cache),
    )


@pytest.mark.parametrize("cell", list(CELLS))
def test_decode_step_equals_step(rng, cell):
    """Each cell's decode step (the decoders' fast path) against its readable step."""
    c = CELLS[cell]
    N, D, H = 3, 4, 5
    x, h, prev_c = (rng.standard_normal(s) for s in ((N, D), (N, H), (N, H)))
    Wx, Wh = rng.standard_normal((D, c.gates * H)), rng.standard_normal((H, c.gates * H))
    b = rng.standard_normal(c.gates * H)
    memory = "c" in c.states
    out_h, out_c = c.decode_step(x @ Wx + b, h @ Wh, h, prev_c if memory else None)
    ref = c.step_forward(x, h, prev_c, Wx, Wh, b) if memory else c.step_forward(x, h, Wx, Wh, b)
    np.testing.assert_allclose(out_h, ref[0], rtol=1e-12, atol=1e-14)
    if memory:
        np.testing.assert_allclose(out_c, ref[1], rtol=1e-12, atol=1e-14)
    else:
        assert out_c is None


def test_lstm_sigmoid_saturates_without_nan(rng):
    x = np.full((1, 1), 1.0)
    Wx = np.array([[-1e4, 1e4, 1e4, 1.0]])  # exp overflows on the i gate
    h, c, _ = L.lstm_step_forward(
        x, np.zeros((1, 1)), np.ones((1, 1)), Wx, np.zeros((1, 4)), np.zeros(4)
    )
    np.testing.assert_allclose(c, [[1.0]])  # i = 0, f = 1
    assert np.isfinite(h).all()


@pytest.mark.parametrize(
    "fwd, bwd, k", [(c.forward, c.backward, c.gates) for c in CELLS.values()], ids=list(CELLS)
)
@pytest.mark.parametrize("T", [1, 3])  # one step too: CS231n's layers take it
def test_sequence_layers(rng, fwd, bwd, k, T):
    N, D, H = 2, 4, 5
    x, h0 = rng.standard_normal((N, T, D)), rng.standard_normal((N, H))
    Wx, Wh = rng.standard_normal((D, k * H)), rng.standard_normal((H, k * H)) * 0.4
    b = rng.standard_normal(k * H)
    h, cache = fwd(x, h0, Wx, Wh, b)
    # against a loop of step functions
    prev, c = h0, np.zeros((N, H))
    for t in range(T):
        if fwd is L.rnn_forward:
            prev, _ = L.rnn_step_forward(x[:, t], prev, Wx, Wh, b)
        elif fwd is L.gru_forward:
            prev, _ = L.gru_step_forward(x[:, t], prev, Wx, Wh, b)
        else:
            prev, c, _ = L.lstm_step_forward(x[:, t], prev, c, Wx, Wh, b)
        np.testing.assert_allclose(h[:, t], prev, rtol=1e-12, atol=1e-14)
    dout = rng.standard_normal(h.shape)
    check(lambda: fwd(x, h0, Wx, Wh, b)[0], [x, h0, Wx, Wh, b], dout, bwd(dout, cache))


@pytest.mark.parametrize(
    "fwd, bwd, k", [(c.forward, c.backward, c.gates) for c in CELLS.values()], ids=list(CELLS)
)
def test_lengths_equal_padded_run(rng, fwd, bwd, k):
    """Packed computation with lengths == the unpacked one on the valid steps."""
    N, T, D, H = 5, 6, 3, 4
    lengths = np.array([3, 6, 0, 1, 6])
    x, h0 = rng.standard_normal((N, T, D)), rng.standard_normal((N, H))
    Wx, Wh = rng.standard_normal((D, k * H)), rng.standard_normal((H, k * H)) * 0.4
    b = rng.standard_normal(k * H)
    valid = np.arange(T)[None, :] < lengths[:, None]
    dout = rng.standard_normal((N, T, H)) * valid[:, :, None]
    hp, cp = fwd(x, h0, Wx, Wh, b, lengths=lengths)
    hf, cf = fwd(x, h0, Wx, Wh, b)
    np.testing.assert_allclose(hp[valid], hf[valid], rtol=1e-12, atol=1e-14)
    assert not hp[~valid].any()
    for gp, gf in zip(bwd(dout, cp), bwd(dout, cf)):
        np.testing.assert_allclose(gp, gf, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "fwd, bwd, k", [(c.forward, c.backward, c.gates) for c in CELLS.values()], ids=list(CELLS)
)
def test_float32_follows_inputs(rng, fwd, bwd, k):
    N, T, D, H = 3, 4, 6, 8
    args64 = [
        rng.standard_normal((N, T, D)),
        rng.standard_normal((N, H)),
        rng.standard_normal((D, k * H)) * 0.3,
        rng.standard_normal((H, k * H)) * 0.3,
        rng.standard_normal(k * H) * 0.1,
    ]
    args32 = [a.astype(np.float32) for a in args64]
    h64, c64 = fwd(*args64)
    h32, c32 = fwd(*args32)
    assert h32.dtype == np.float32
    np.testing.assert_allclose(h32, h64, rtol=1e-4, atol=1e-5)
    dout = rng.standard_normal(h64.shape)
    for g32, g64 in zip(bwd(dout.astype(np.float32), c32), bwd(dout, c64)):
        assert g32.dtype == np.float32
        np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "fwd, bwd, k", [(c.forward, c.backward, c.gates) for c in CELLS.values()], ids=list(CELLS)
)
@pytest.mark.parametrize("wide", ["x", "h0", "Wx", "Wh", "b"])
def test_one_float64_input_gives_float64_results(rng, fwd, bwd, k, wide):
    """NumPy's promotion, as in CS231n's code: with any one input in float64, h is float64
    (not rounded to float32), and a float64 dout gives float64 gradients of every input."""
    N, T, D, H = 2, 3, 4, 5
    names = ["x", "h0", "Wx", "Wh", "b"]
    shapes = [(N, T, D), (N, H), (D, k * H), (H, k * H), (k * H,)]
    args64 = [rng.standard_normal(s) * 0.3 for s in shapes]
    args = [a if n == wide else a.astype(np.float32) for n, a in zip(names, args64)]
    args64 = [a.astype(np.float32).astype(np.float64) for a in args64]  # the same values
    h, cache = fwd(*args)
    h64, cache64 = fwd(*args64)
    assert h.dtype == np.float64
    np.testing.assert_allclose(h, h64, rtol=1e-5, atol=1e-6)
    dout = rng.standard_normal(h.shape)
    for g, g64 in zip(bwd(dout, cache), bwd(dout, cache64)):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, g64, rtol=1e-4, atol=1e-5)


def test_word_embedding_repeated_ids(rng):
    V, D = 5, 3
    x = np.array([[0, 3, 1, 3], [2, 3, 3, 0]])  # id 3 four times, 4 never
    W = rng.standard_normal((V, D))
    out, cache = L.word_embedding_forward(x, W)
    np.testing.assert_array_equal(out[1, 0], W[2])
    dout = rng.standard_normal(out.shape)
    dW = L.word_embedding_backward(dout, cache)
    ref = np.zeros_like(W)
    np.add.at(ref, x, dout)
    np.testing.assert_allclose(dW, ref, rtol=1e-12)
    assert not dW[4].any()
    num = numeric_grad_array(lambda: L.word_embedding_forward(x, W)[0], W, dout)
    assert rel_error(num, dW) < TOL
    assert L.word_embedding_backward(dout.astype(np.float32), cache).dtype == np.float32


def test_embedding_grad_long_and_short_runs(rng):
    ids = rng.permutation(np.r_[np.full(30, 7), np.full(9, 2), rng.integers(0, 50, 200)])
    dout = rng.standard_normal((len(ids), 6))
    ref = np.zeros((50, 6))
    np.add.at(ref, ids, dout)
    np.testing.assert_allclose(P.embedding_grad(ids, dout, 50), ref, rtol=1e-12, atol=1e-12)
    assert P.embedding_grad(ids[:0], dout[:0], 50).shape == (50, 6)


def test_temporal_softmax_loss(rng):
    N, T, V = 4, 5, 7
    x = rng.standard_normal((N, T, V))
    y = rng.integers(0, V, (N, T))
    mask = rng.random((N, T)) > 0.4
    mask[0, 0], mask[0, 1] = True, False
    x0 = x.copy()
    loss, dx = L.temporal_softmax_loss(x, y, mask)
    np.testing.assert_array_equal(x, x0)  # inputs untouched
    p = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
    ref = -np.sum(np.log(p[np.arange(N)[:, None], np.arange(T), y]) * mask) / N
    assert abs(loss - ref) < 1e-12
    assert not dx[~mask].any()  # masked targets contribute nothing
    num = numeric_grad(lambda: L.temporal_softmax_loss(x, y, mask)[0], x)
    assert rel_error(num, dx) < TOL
    # divided by N, not by the number of unmasked tokens
    full, _ = L.temporal_softmax_loss(x, y, np.ones((N, T), bool))
    assert abs(full * N + np.log(p[np.arange(N)[:, None], np.arange(T), y]).sum()) < 1e-9


def test_softmax_loss_large_logits_stable():
    x = np.array([[[1000.0, 0.0, -1000.0]]])
    loss, dx = L.temporal_softmax_loss(x, np.array([[1]]), np.ones((1, 1), bool))
    assert abs(loss - 1000.0) < 1e-9 and np.isfinite(dx).all()
    # each row shifted by its own max: a row far below another still has its exact loss
    x = np.array([[[2000.0, 1000.0, 0.0], [0.0, 1.0, 0.0]]])
    loss, dx = L.temporal_softmax_loss(x, np.array([[1, 1]]), np.ones((1, 2), bool))
    assert loss == pytest.approx(1000.0 + np.log(2 + np.e) - 1.0, rel=1e-12)
    assert np.isfinite(dx).all()


def test_buffer_reuses_and_grows():
    work = {}
    a = P.buffer(work, "x", (3, 4), np.float32)
    a[...] = 1
    b = P.buffer(work, "x", (2, 5), np.float32)  # smaller: same memory
    assert b.shape == (2, 5) and np.shares_memory(a, b)
    c = P.buffer(work, "x", (5, 5), np.float32)  # bigger: a new block
    assert c.shape == (5, 5) and not np.shares_memory(a, c)
    d = P.buffer(work, "x", (2, 2), np.float64)  # other dtype: a new block
    assert d.dtype == np.float64
    assert P.buffer(None, "x", (2, 2), np.float32).shape == (2, 2)


@pytest.mark.parametrize(
    "fwd, bwd, k",
    [(c.packed_forward, c.packed_backward, c.gates) for c in CELLS.values()],
    ids=list(CELLS),
)
def test_packed_work_buffers_change_nothing(rng, fwd, bwd, k):
    """Reused buffers give bit-identical results, also after a bigger and a
    smaller batch went through the same work dict."""
    H = 6

    def run(bs, work):
        S = int(np.sum(bs))
        r = np.random.default_rng(int(S))
        a, h0 = r.standard_normal((S, k * H)), r.standard_normal((bs[0], H))
        Wh, dh = r.standard_normal((H, k * H)) * 0.4, r.standard_normal((S, H))
        h, cache = fwd(a, h0, Wh, bs, work=work)
        h = h.copy()
        return [h] + [np.array(g) for g in bwd(dh, cache, work=work)]

    small, big = np.array([3, 3, 2, 1]), np.array([5, 4, 4, 2, 2, 1])
    work = {}
    for bs in (small, big, small):
        for x, y in zip(run(bs, work), run(bs, None)):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("cell", list(CELLS))
def test_packed_cores_saturate_silently_and_exactly(rng, cell):
    """Pre-activations of +-1000 (exp overflows inside the fast tanh and sigmoid): the packed
    forward gives the readable layers' h, with no overflow warning on the user's terminal."""
    c = CELLS[cell]
    N, T, H = 3, 2, 4
    x, h0 = rng.standard_normal((N, T, 1)) * 1000, rng.standard_normal((N, H))
    Wx, Wh = rng.choice([-1.0, 1.0], (1, c.gates * H)), np.zeros((H, c.gates * H))
    b = np.zeros(c.gates * H)
    want, _ = c.forward(x, h0, Wx, Wh, b)
    a = (x.transpose(1, 0, 2).reshape(N * T, 1) @ Wx + b).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h, _ = c.packed_forward(a, h0, Wh, np.array([N] * T))
    np.testing.assert_allclose(h.reshape(T, N, H).transpose(1, 0, 2), want, atol=1e-12)


def test_lstm_cell_forward_equals_step(rng):
    N, D, H = 3, 4, 5
    x, h, c = rng.standard_normal((N, D)), rng.standard_normal((N, H)), rng.standard_normal((N, H))
    Wx, Wh = rng.standard_normal((D, 4 * H)), rng.standard_normal((H, 4 * H))
    b = rng.standard_normal(4 * H)
    ref_h, ref_c, _ = L.lstm_step_forward(x, h, c, Wx, Wh, b)
    out_h, out_c = P.lstm_cell_forward(x @ Wx + b + h @ Wh, c)
    np.testing.assert_allclose(out_h, ref_h, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out_c, ref_c, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-11), (np.float32, 2e-5)])
def test_packed_equals_readable_loop(rng, cell, dtype, tol):
    """The packed cores against layers.X_forward (loops over the step functions,
    written separately): outputs, dx, dh0, dWx, dWh, db on ragged lengths."""
    c = CELLS[cell]
    k, fwd, bwd, pfwd, pbwd = c.gates, c.forward, c.backward, c.packed_forward, c.packed_backward
    N, T, D, H = 6, 5, 3, 4
    lengths = np.array([2, 5, 1, 5, 3, 4])
    x, h0 = rng.standard_normal((N, T, D)), rng.standard_normal((N, H))
    Wx, Wh = rng.standard_normal((D, k * H)), rng.standard_normal((H, k * H)) * 0.5
    b = rng.standard_normal(k * H)
    x, h0, Wx, Wh, b = (v.astype(dtype) for v in (x, h0, Wx, Wh, b))
    valid = np.arange(T)[None, :] < lengths[:, None]
    dout = (rng.standard_normal((N, T, H)) * valid[:, :, None]).astype(dtype)
    h_ref, cache = fwd(x, h0, Wx, Wh, b, lengths=lengths)
    dx_ref, dh0_ref, dWx_ref, dWh_ref, db_ref = bwd(dout, cache)

    order = np.argsort(-lengths, kind="stable")  # pack: longest first, time-major
    active = np.arange(T)[:, None] < lengths[order][None, :]
    bs = active.sum(axis=1)
    xp = x[order].swapaxes(0, 1)[active]
    h, pcache = pfwd(xp @ Wx + b, h0[order], Wh, bs)
    np.testing.assert_allclose(h, h_ref[order].swapaxes(0, 1)[active], rtol=tol, atol=tol)
    da, dh0, dWh = pbwd(dout[order].swapaxes(0, 1)[active].copy(), pcache)
    for got, ref in [
        (da @ Wx.T, dx_ref[order].swapaxes(0, 1)[active]),
        (dh0, dh0_ref[order]),
        (xp.T @ da, dWx_ref),
        (dWh, dWh_ref),
        (da.sum(0), db_ref),
    ]:
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_sigmoid_is_safe_and_exact():
    x = np.array([-1e4, -30.0, -1.0, 0.0, 1.0, 30.0, 1e4])
    with np.errstate(over="raise"):
        s = L.sigmoid(x)
    np.testing.assert_allclose(s[1:-1], 1 / (1 + np.exp(-x[1:-1])), rtol=1e-15)
    assert s[0] == 0.0 and s[-1] == 1.0  # the limits, no overflow warning
