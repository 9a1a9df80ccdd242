"""Section `train`: one training step (forward + backward + Adam) at the CS231n COCO config.

LSTM and vanilla RNN: captioner vs PyTorch (scripts/torch_baseline.py, if torch is installed)
vs a textbook float64 implementation (tests/textbook.py, checked equal to captioner by
tests/test_model.py), and the fraction of the "GEMM floor" (analytic FLOPs / this machine's
numpy sgemm rate). Captions: 100 real COCO val captions (../shared/coco, tokenised and
encoded with the CS231n vocabulary) when present, checked against the targets; then 100
captions of random words with COCO's length distribution, for information (the only set,
and checked, when ../shared/coco is absent).
"""

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import (
    END,
    NULL,
    REF,
    ROOT,
    SCRIPTS,
    SHARED,
    START,
    adam_step,
    blas_threads,
    coco_like_captions,
    interleaved,
    log,
    missing,
    synthetic_vocab,
    timed,
)

sys.path.insert(0, str(ROOT / "tests"))  # textbook.py, the float64 baseline


def step_flops(cell, N=100, T=16, V=1004, D=512, W=256, H=512, tokens=None):
    """Multiply-add FLOPs (x2) of the matrix products of one training step, forward + backward.

    Forward: h0 = features @ W_proj (N,D)x(D,H); per token x @ Wx (W,GH) and h @ Wh (H,GH),
    G = 4 gates for LSTM, 1 for RNN, and scores h @ W_vocab (H,V). Backward: two products
    (input grad, weight grad) per forward product, except that no gradient flows into the
    features. Elementwise work, softmax and Adam are not counted. tokens: positions computed,
    N*T for a dense implementation (the default), fewer for one that skips <NULL> padding.
    """
    G = 4 if cell == "lstm" else 1
    tokens = N * T if tokens is None else tokens
    proj = 2 * N * D * H
    per_token = 2 * W * G * H + 2 * H * G * H + 2 * H * V
    fwd = proj + tokens * per_token
    return fwd + 2 * fwd - proj


def gemm_fn(m, k, n, seed=0):
    """A closure doing ~2 GFLOP of numpy float32 (m,k)@(k,n) products; returns (fn, flops)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    inner = max(1, int(2e9 // (2 * m * k * n)))
    return (lambda: [a @ b for _ in range(inner)]), 2 * m * k * n * inner


class TorchWorker:
    """scripts/torch_baseline.py --serve in a subprocess: one timed step per request.

    A separate process keeps torch's OpenMP threads away from numpy's BLAS threads, and
    lets the bench interleave PyTorch steps with its own so both see the same machine load.
    """

    def __init__(self, npz, cell, packed=False, warmup=3, threads=None):
        cmd = [
            sys.executable,
            str(SCRIPTS / "torch_baseline.py"),
            "--data",
            str(npz),
            "--cell",
            cell,
            "--warmup",
            str(warmup),
            "--threads",
            str(threads or blas_threads()),
            "--serve",
        ] + (["--packed"] if packed else [])
        self.p = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.info = json.loads(self._read())

    def _read(self):
        line = self.p.stdout.readline()
        if not line:
            err = self.p.stderr.read().strip().splitlines()
            raise RuntimeError(err[-1] if err else f"torch_baseline.py exited {self.p.wait()}")
        return line

    def step(self):
        self.p.stdin.write("step\n")
        self.p.stdin.flush()
        return float(self._read())

    def close(self):
        try:
            self.p.stdin.close()
            self.p.wait(timeout=30)
        except Exception:  # noqa: BLE001
            self.p.kill()


def real_coco_captions(n=100, T=16, seed=0):
    """(n, T+1) int64: n real COCO val captions drawn with a fixed seed, tokenised like the
    COCO toolkit (captioner.metrics.tokenize) and encoded with the CS231n vocabulary
    (<UNK> for unknown words, at most T-1 words, <START> .. <END>, <NULL> padding).
    None when shared/coco lacks the captions or the vocabulary."""
    coco = SHARED / "coco"
    if not (
        (coco / "captions_val2014.json").is_file() and (coco / "coco2014_vocab.json").is_file()
    ):
        return None
    from captioner.metrics import tokenize

    anns = json.loads((coco / "captions_val2014.json").read_text())["annotations"]
    word_to_idx = json.loads((coco / "coco2014_vocab.json").read_text())["word_to_idx"]
    unk = word_to_idx["<UNK>"]
    caps = np.full((n, T + 1), NULL, dtype=np.int64)
    for i, k in enumerate(np.random.default_rng(seed).choice(len(anns), size=n, replace=False)):
        ids = [word_to_idx.get(w, unk) for w in tokenize(anns[k]["caption"])[: T - 1]]
        caps[i, : len(ids) + 2] = [START, *ids, END]
    return caps


def train_caption_sets(rng, c):
    """[(key, label, captions)], the one the targets are checked on first: real COCO captions
    when shared/coco has them, else COCO-length random words."""
    sets = []
    real = real_coco_captions(c["N"], c["T"])
    if real is not None:
        sets.append(("real", f"{c['N']} real COCO val captions (seed 0, CS231n vocabulary)", real))
    sets.append(
        (
            "random_words",
            f"{c['N']} captions of random words, COCO length distribution",
            coco_like_captions(rng, c["N"], c["T"], c["V"]),
        )
    )
    return sets


def run(rep, args):
    sec = "train"
    reason = missing("model", "CaptioningRNN") or missing("optim", "adam")
    if reason:
        rep.skip(sec + "/ours", reason)

    c = REF
    rng = np.random.default_rng(0)
    features = rng.standard_normal((c["N"], c["D"])).astype(np.float32)
    sets = train_caption_sets(rng, c)
    if sets[0][0] != "real":
        log(
            f"[train] {SHARED / 'coco'} lacks captions_val2014.json or coco2014_vocab.json: "
            f"random-word captions only"
        )
    reps = 3 if args.quick else 9
    out = {"captions": sets[0][0]}

    # The recurrence multiplies (N,H)@(H,4H) once per step: far slower per FLOP than the
    # batched shape the floor assumes. Shown for context only.
    small, small_flops = gemm_fn(c["N"], c["H"], 4 * c["H"])
    med, _ = timed(small, reps, warmup=1)
    out["gemm_gflops_per_step_shape"] = small_flops / med / 1e9

    have_torch = _have_torch()
    if not have_torch:
        rep.skip(
            sec + "/torch",
            "PyTorch not installed (optional: pip install torch) - baseline skipped",
        )

    tmp = tempfile.TemporaryDirectory()
    try:
        for k, (key, label, captions) in enumerate(sets):
            checked = k == 0  # pass/fail on the first set only; the other is for information
            n_tokens = int((captions[:, 1:] != NULL).sum())
            cfg = dict(
                c,
                dtype="float32",
                tokens=n_tokens,
                captions=label,
                mean_words=float(((captions != NULL).sum(1) - 2).mean()),
            )
            out["config" if checked else f"config_{key}"] = cfg
            head = sec if checked else f"{sec}, random words"
            rep.row(head, "captions" + ("" if checked else " (figures for information)"), label)
            rep.row(
                head,
                "config",
                f"N={c['N']} T={c['T']} V={c['V']} D={c['D']} W={c['W']} H={c['H']} float32, "
                f"{n_tokens} target tokens ({cfg['mean_words']:.1f} words/caption)",
            )
            log(f"[train] captions: {label}")
            for cell in ("lstm", "rnn"):
                res = _train_cell(
                    rep,
                    sec,
                    cell,
                    features,
                    captions,
                    n_tokens,
                    reason,
                    have_torch,
                    reps,
                    Path(tmp.name) / "train.npz",
                    out,
                )
                out[cell if checked else f"{cell}_{key}"] = res
                _train_rows(rep, cell, res, checked)
    finally:
        tmp.cleanup()
    rep.row(
        sec,
        "sgemm at the recurrence's shape",
        f"{out['gemm_gflops_per_step_shape']:.0f} GFLOP/s "
        f"({c['N']}x{c['H']} @ {c['H']}x{4 * c['H']}; the floor uses {c['N'] * c['T']} rows)",
    )
    rep.data[sec] = out


def _train_sec(cell, checked):
    return f"train/{cell}" if checked else f"train/{cell}, random words"


def _train_cell(
    rep,
    sec,
    cell,
    features,
    captions,
    n_tokens,
    reason,
    have_torch,
    reps,
    npz,
    out,
    c=REF,
    textbook_baseline=True,
    torch_packed=True,
    extra=None,
):
    """Interleaved timing of one training step of one cell: ours, PyTorch, textbook, GEMM.
    c: the sizes (REF, or another batch size N); extra: more contenders, name -> fn(),
    timed in the same rounds (their medians come back as res[name + "_ms"])."""
    import textbook

    sizes = {k: c[k] for k in ("N", "T", "V", "D", "W", "H")}
    res = {
        "gflop": step_flops(cell, **sizes) / 1e9,
        "gflop_real_tokens": step_flops(cell, **sizes, tokens=n_tokens) / 1e9,
    }
    contenders = {}
    gemm, gemm_flops = gemm_fn(c["N"] * c["T"], c["H"], 4 * c["H"])
    contenders["gemm"] = gemm
    contenders.update(extra or {})

    model = None
    if not reason:
        try:
            from captioner.model import CaptioningRNN

            model = CaptioningRNN(
                synthetic_vocab(c["V"]),
                c["D"],
                c["W"],
                c["H"],
                cell_type=cell,
                dtype=np.float32,
                seed=0,
            )
            params0 = {k: np.array(v) for k, v in model.params.items()}
            res["loss0_ours"] = float(model.loss(features, captions)[0])
            ours_step = adam_step(model, features, captions)
            ours_step()
            ours_step()
            contenders["ours"] = ours_step
        except Exception as e:  # noqa: BLE001
            rep.skip(f"{sec}/ours/{cell}", f"CaptioningRNN failed: {type(e).__name__}: {e}")
            model = None
    if model is None:
        params0 = {
            k: v.astype(np.float32)
            for k, v in textbook.init_params(c["V"], c["D"], c["W"], c["H"], cell, seed=0).items()
        }

    # Loss at the shared starting point: all three must compute the same model.
    res["loss0_textbook"] = textbook.textbook_loss(params0, features, captions, cell)[0]
    tparams = {k: v.astype(np.float64) for k, v in params0.items()}
    tconfigs = {}
    if textbook_baseline:
        contenders["textbook"] = lambda: textbook.train_step(
            tparams, tconfigs, features, captions, cell
        )
        contenders["textbook"]()

    workers = []
    if have_torch:
        np.savez(
            npz,
            features=features,
            captions=captions,
            **{f"{cell}_{k}": v for k, v in params0.items()},
        )
        for name, packed in (("torch", False), ("torch_packed", True))[: 1 + torch_packed]:
            try:
                workers.append(TorchWorker(npz, cell, packed=packed))
                res[f"loss0_{name}"] = workers[-1].info["loss0"]
                out["torch_version"] = workers[-1].info["torch"]
                contenders[name] = workers[-1].step
            except Exception as e:  # noqa: BLE001
                rep.skip(f"{sec}/{name}/{cell}", f"PyTorch baseline failed: {e}")

    log(f"[train] {cell}: {reps} interleaved rounds of {', '.join(contenders)} ...")
    try:
        times = interleaved(contenders, reps, self_timed={"torch", "torch_packed"})
    finally:
        for w in workers:
            w.close()
    res["gemm_gflops"] = gemm_flops / statistics.median(times.pop("gemm")) / 1e9
    res["floor_ms"] = res["gflop"] / res["gemm_gflops"] * 1e3
    res["floor_real_tokens_ms"] = res["gflop_real_tokens"] / res["gemm_gflops"] * 1e3
    for name, ts in times.items():
        res[f"{name}_ms"] = statistics.median(ts) * 1e3
        res[f"{name}_times_ms"] = [round(t * 1e3, 2) for t in ts]
    return res


def _train_rows(rep, cell, r, checked=True):
    """Rows of one cell; `checked` False shows the target ratios for information, unchecked."""
    sec = _train_sec(cell, checked)

    def target_row(figure, value, target, ok):
        if checked:
            rep.row(sec, figure, value, target, ok)
        else:
            rep.row(sec, figure, f"{value} (target {target}, not checked)")

    losses = [
        f"{n} {r[k]:.4f}"
        for n, k in (
            ("ours", "loss0_ours"),
            ("torch", "loss0_torch"),
            ("torch packed", "loss0_torch_packed"),
            ("textbook", "loss0_textbook"),
        )
        if k in r
    ]
    rep.row(sec, "loss at init (must agree)", ", ".join(losses))
    rep.row(
        sec,
        "GEMM floor, all N*T positions",
        f"{r['gflop']:.1f} GFLOP / {r['gemm_gflops']:.0f} GFLOP/s = {r['floor_ms']:.0f} ms",
    )
    rep.row(
        sec,
        "GEMM floor, real tokens only",
        f"{r['gflop_real_tokens']:.1f} GFLOP -> "
        f"{r['floor_real_tokens_ms']:.0f} ms (for code that skips <NULL> padding)",
    )
    for name, key in (
        ("captioner step", "ours_ms"),
        ("PyTorch step", "torch_ms"),
        ("PyTorch packed step (info)", "torch_packed_ms"),
        ("textbook f64 step", "textbook_ms"),
    ):
        if key in r:
            rep.row(sec, name, f"{r[key]:.0f} ms")
    if "ours_ms" in r:
        if "torch_ms" in r:
            r["ours_over_torch"] = r["ours_ms"] / r["torch_ms"]
            target_row(
                "captioner / PyTorch",
                f"{r['ours_over_torch']:.2f}x",
                "<= 0.85x",
                r["ours_over_torch"] <= 0.85,
            )
        # information only: the old ">= 5x" target is retired (float64 GEMM runs at half the
        # float32 rate here); staying ahead of PyTorch is what counts
        r["textbook_over_ours"] = r["textbook_ms"] / r["ours_ms"]
        rep.row(sec, "speed-up over textbook (info)", f"{r['textbook_over_ours']:.1f}x")
        # the speed-up a step doing nothing but its matrix products would get: about the
        # ceiling for the ratio above on this machine (code that shrinks the products, as
        # captioner's once-per-distinct-word input projection does, can pass it a little)
        r["textbook_over_floor"] = r["textbook_ms"] / r["floor_real_tokens_ms"]
        rep.row(
            sec,
            "textbook / real-token GEMM floor",
            f"{r['textbook_over_floor']:.1f}x (a step doing only its products, at the floor rate)",
        )
        # captioner packs the batch and skips padding, so its floor counts real tokens only
        r["floor_fraction"] = r["floor_real_tokens_ms"] / r["ours_ms"]
        rep.row(
            sec,
            "captioner fraction of floor",
            f"{r['floor_fraction']:.0%} (real-token floor; "
            f"{r['floor_ms'] / r['ours_ms']:.0%} of the all-positions one)",
        )
    if "torch_ms" in r:
        r["torch_floor_fraction"] = r["floor_ms"] / r["torch_ms"]
        rep.row(sec, "PyTorch fraction of floor", f"{r['torch_floor_fraction']:.0%}")


def _have_torch():
    import importlib.util

    return importlib.util.find_spec("torch") is not None
