"""Section `batch`: the LSTM and RNN training steps (forward + backward + Adam, CS231n sizes)
against PyTorch 2.x CPU (scripts/torch_baseline.py, same weights and captions) at batch
sizes 25, 50, 100 and 500, interleaved round by round; each point with its fraction of the
GEMM floor (real-token FLOPs / this machine's sgemm rate, as in section `train`).
Captions: real COCO val captions (CS231n vocabulary) when ../shared/coco has them.

Target (issue 22): the LSTM at batch 25 at most 0.85x PyTorch's time.
"""

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import NULL, REF, coco_like_captions, log, missing
from benchmarks.train import _have_torch, _train_cell, real_coco_captions

BATCHES = (25, 50, 100, 500)


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
                )
                ratio = r["ours_ms"] / r["torch_ms"]
                fraction = r["floor_real_tokens_ms"] / r["ours_ms"]
                torch_fraction = r["floor_ms"] / r["torch_ms"]
                out[f"{cell}_{N}"] = dict(
                    ours_ms=r["ours_ms"],
                    torch_ms=r["torch_ms"],
                    ours_over_torch=ratio,
                    floor_fraction=fraction,
                    torch_floor_fraction=torch_fraction,
                    loss0=(r["loss0_ours"], r["loss0_torch"]),
                )
                value = (
                    f"{ratio:.2f}x ({r['ours_ms']:.0f} vs {r['torch_ms']:.0f} ms; floor "
                    f"fraction {fraction:.0%} vs PyTorch {torch_fraction:.0%})"
                )
                figure = f"{cell} batch {N}: captioner / PyTorch"
                if cell == "lstm" and N == 25:
                    rep.row(sec, figure, value, "<= 0.85x", ratio <= 0.85)
                else:
                    rep.row(sec, figure, value)
    rep.data[sec] = out
