"""Section `batch`: the LSTM and RNN training steps (forward + backward + Adam, CS231n sizes)
against PyTorch 2.x CPU (scripts/torch_baseline.py, same weights and captions, as many BLAS
threads as numpy) at batch sizes 25, 50, 100 and 500, interleaved round by round; each
point with its fractions of two GEMM floors: the time of the step's matrix products alone,
at this batch's shapes (step_gemms: the products of captioner.packed's step, replayed), and
the real-token FLOPs at this machine's big-matrix sgemm rate (as in section `train`).
Captions: real COCO val captions (CS231n vocabulary) when ../shared/coco has them.

Target (issue 22): the LSTM at batch 25 at most 0.85x PyTorch's time.
"""

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import NULL, REF, coco_like_captions, log, missing
from benchmarks.train import _have_torch, _train_cell, real_coco_captions

BATCHES = (25, 50, 100, 500)


def step_gemms(cell, captions, c):
    """fn() running the matrix products of one captioner.packed training step of `cell`
    on `captions` (N, T+1), sizes c, with the same shapes and operand layouts, and nothing
    else: its time is the step's GEMM floor at this shape (per-step products with few
    rows run far below the big-matrix rate)."""
    from captioner import packed

    kH = {"lstm": 4, "rnn": 1}[cell] * c["H"]
    D, W, H, V = c["D"], c["W"], c["H"], c["V"]
    _, bs, ids_in, _, keep = packed.pack_captions(captions, NULL)
    S, K, U, n0 = len(ids_in), int(keep.sum()), len(np.unique(ids_in)), int(bs[0])
    offs = np.r_[0, np.cumsum(bs)]
    rng = np.random.default_rng(0)

    def a(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    feats, W_proj, e, Wx, Wh, W_vocab = a(n0, D), a(D, H), a(U, W), a(W, kH), a(H, kH), a(H, V)
    h, da, ds, da_w, dh0 = a(S, H), a(S, kH), a(K, V), a(U, kH), a(n0, H)
    pairs = [(feats, W_proj), (e, Wx)]  # forward: h0, the input projection per distinct word
    pairs += [(h[lo:hi], Wh) for lo, hi in zip(offs[:-1], offs[1:])]  # the recurrence
    pairs += [(h[:K], W_vocab), (h[:K].T, ds), (ds, W_vocab.T)]  # scores, dW_vocab, dh
    pairs += [(Wh, da[lo:hi].T) for lo, hi in zip(offs[:-1], offs[1:])]  # back_through_Wh
    pairs += [(h.T, da), (da_w, Wx.T), (e.T, da_w), (feats.T, dh0)]  # dWh, dW_embed, dWx, dW_proj
    outs = [np.empty((x.shape[0], y.shape[1]), np.float32) for x, y in pairs]

    def run():
        for (x, y), out in zip(pairs, outs):
            np.matmul(x, y, out=out)

    return run


def run(rep, args):
    sec = "batch"
    reason = missing("model", "CaptioningRNN") or missing("optim", "adam")
    if reason or not _have_torch():
        rep.skip(sec, reason or "PyTorch not installed: no baseline to compare with")
        return
    out = {}
    reps = 3 if args.quick else 7
    with tempfile.TemporaryDirectory() as tmp:
        for N in BATCHES:
            c = dict(REF, N=N)
            rng = np.random.default_rng(N)
            features = rng.standard_normal((N, c["D"])).astype(np.float32)
            captions = real_coco_captions(N, c["T"], seed=N)
            if captions is None:
                captions = coco_like_captions(rng, N, c["T"], c["V"])
            n_tokens = int((captions[:, 1:] != NULL).sum())
            for cell in ("lstm", "rnn"):
                log(f"[batch] {cell}, batch {N}")
                r = _train_cell(
                    rep,
                    sec,
                    cell,
                    features,
                    captions,
                    n_tokens,
                    None,
                    True,
                    reps,
                    Path(tmp) / "batch.npz",
                    out,
                    c=c,
                    textbook_baseline=False,
                    torch_packed=False,
                    extra={"gemms": step_gemms(cell, captions, c)},
                )
                ratio = r["ours_ms"] / r["torch_ms"]
                fraction = r["floor_real_tokens_ms"] / r["ours_ms"]
                torch_fraction = r["floor_ms"] / r["torch_ms"]
                shape_floor = r["gemms_ms"]
                out[f"{cell}_{N}"] = dict(
                    ours_ms=r["ours_ms"],
                    torch_ms=r["torch_ms"],
                    ours_over_torch=ratio,
                    shape_floor_ms=shape_floor,
                    shape_floor_fraction=shape_floor / r["ours_ms"],
                    torch_shape_floor_fraction=shape_floor / r["torch_ms"],
                    floor_fraction=fraction,
                    torch_floor_fraction=torch_fraction,
                    loss0=(r["loss0_ours"], r["loss0_torch"]),
                )
                value = (
                    f"{ratio:.2f}x ({r['ours_ms']:.0f} vs {r['torch_ms']:.0f} ms); floor at "
                    f"this shape {shape_floor:.0f} ms: {shape_floor / r['ours_ms']:.0%} vs "
                    f"PyTorch {shape_floor / r['torch_ms']:.0%}; at the big-GEMM rate "
                    f"{fraction:.0%} vs {torch_fraction:.0%}"
                )
                figure = f"{cell} batch {N}: captioner / PyTorch"
                if cell == "lstm" and N == 25:
                    rep.row(sec, figure, value, "<= 0.85x", ratio <= 0.85)
                else:
                    rep.row(sec, figure, value)
    rep.data[sec] = out
