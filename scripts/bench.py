"""Speed figures of captioner, all measured in one run, printed as a table (or --json).

    python scripts/bench.py                 # everything (~5 min on 2 cores)
    python scripts/bench.py --quick         # fewer repetitions
    python scripts/bench.py --only train,decode --json

Sections (each is skipped, with the reason printed, when what it needs is missing):
  train    one training step (forward + backward + Adam) at the CS231n COCO config, LSTM
           and vanilla RNN: captioner vs PyTorch (scripts/torch_baseline.py, if torch is
           installed) vs a textbook float64 implementation (scripts/textbook.py), and the
           fraction of the "GEMM floor" (analytic FLOPs / this machine's numpy sgemm rate).
  decode   greedy (model.sample) and beam-3 search over 1,000 images; beam 3 over 5,000.
  metrics  captioner.metrics.score vs pycocoevalcap's Bleu + Rouge + Cider, 5,000 images.
  encoder  encode_images, images/s in batches of 32.
  startup  wall time of `captioner --help` in a fresh process.

Only the library's public functions are timed; nothing here changes how they run.
Never asserts: a missed target is a FAIL row, and the exit status is 0.
"""

import argparse
import json
import os
import platform
import re
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

SECTIONS = ("train", "decode", "metrics", "encoder", "startup")
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


def bench_train(rep, args):
    sec = "train"
    reason = missing("model", "CaptioningRNN") or missing("optim", "adam")
    if reason:
        rep.skip(sec + "/ours", reason)
    import textbook

    c = REF
    rng = np.random.default_rng(0)
    features = rng.standard_normal((c["N"], c["D"])).astype(np.float32)
    captions = coco_like_captions(rng, c["N"], c["T"], c["V"])
    n_tokens = int((captions[:, 1:] != NULL).sum())
    out = {"config": dict(c, dtype="float32", tokens=n_tokens,
                          mean_words=float(((captions != NULL).sum(1) - 2).mean()))}
    rep.row(sec, "config", f"N={c['N']} T={c['T']} V={c['V']} D={c['D']} W={c['W']} H={c['H']} float32, "
            f"{n_tokens} target tokens ({out['config']['mean_words']:.1f} words/caption)")
    reps = 3 if args.quick else 9

    # The recurrence multiplies (N,H)@(H,4H) once per step: far slower per FLOP than the
    # batched shape the floor assumes. Shown for context only.
    small, small_flops = gemm_fn(c["N"], c["H"], 4 * c["H"])
    med, _ = timed(small, reps, warmup=1)
    out["gemm_gflops_per_step_shape"] = small_flops / med / 1e9

    have_torch = _have_torch()
    if not have_torch:
        rep.skip(sec + "/torch", "PyTorch not installed (optional: pip install torch) - baseline skipped")

    tmp = tempfile.TemporaryDirectory()
    npz = Path(tmp.name) / "train.npz"
    for cell in ("lstm", "rnn"):
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
        out[cell] = res
        _train_rows(rep, cell, res)
    tmp.cleanup()
    rep.row(sec, "sgemm at the recurrence's shape", f"{out['gemm_gflops_per_step_shape']:.0f} GFLOP/s "
            f"({c['N']}x{c['H']} @ {c['H']}x{4 * c['H']}; the floor uses {c['N'] * c['T']} rows)")
    rep.data[sec] = out


def _train_rows(rep, cell, r):
    sec = f"train/{cell}"
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
            rep.row(sec, "captioner / PyTorch", f"{r['ours_over_torch']:.2f}x", "<= 0.85x",
                    r["ours_over_torch"] <= 0.85)
        r["textbook_over_ours"] = r["textbook_ms"] / r["ours_ms"]
        rep.row(sec, "speed-up over textbook", f"{r['textbook_over_ours']:.1f}x", ">= 5x",
                r["textbook_over_ours"] >= 5)
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


# ------------------------------------------------------------------ startup


def bench_startup(rep, args):
    sec = "startup"
    exe = Path(sys.executable).parent / "captioner"
    if not exe.is_file():
        return rep.skip(sec, f"{exe} not found (install the package into this interpreter's venv)")

    def run():
        p = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"exit {p.returncode}: {(p.stderr.strip().splitlines() or [''])[-1]}")

    try:
        med, times = timed(run, 3 if args.quick else 7, warmup=1)
    except Exception as e:  # noqa: BLE001
        return rep.skip(sec, f"`captioner --help` failed: {e}")
    rep.data[sec] = {"help_s": med, "times_s": times}
    rep.row(sec, "`captioner --help` wall time", f"{med * 1e3:.0f} ms", "< 300 ms", med < 0.3)


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
