"""What every bench section shares: the reference config, the report, timing helpers,
machine information.

A section is a module of this package with run(rep, args); it records figures with
rep.row(section, figure, value, target="", ok=None), rep.skip(section, reason) and
rep.data[section] = {...} (the JSON output), and times code with timed() or interleaved().
"""

import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).resolve().parents[1]


ROOT = SCRIPTS.parent


SHARED = ROOT.parent / "shared"


# The CS231n COCO captioning config: N captions of T+1 tokens, vocabulary V,
# features D, word vectors W, hidden H.
REF = dict(N=100, T=16, V=1004, D=512, W=256, H=512)


NULL, START, END = 0, 1, 2


# Words per caption in COCO val2014 (202,654 captions, split on [a-z0-9']+), clipped at
# 15 so <START> + words + <END> fits in 17 tokens: {words: captions}. Mean 10.34.
COCO_WORDS_HIST = {
    6: 5,
    7: 1623,
    8: 33159,
    9: 44321,
    10: 43581,
    11: 31204,
    12: 19945,
    13: 11622,
    14: 6643,
    15: 10551,
}


def coco_like_captions(rng, n, T=16, V=1004):
    """(n, T+1) int64 captions: <START>, a COCO-distributed number of random words, <END>,
    <NULL> padding."""
    words = np.array(list(COCO_WORDS_HIST))
    p = np.array(list(COCO_WORDS_HIST.values()), dtype=np.float64)
    lengths = np.minimum(rng.choice(words, size=n, p=p / p.sum()), T - 1)
    caps = np.full((n, T + 1), NULL, dtype=np.int64)
    caps[:, 0] = START
    for i, L in enumerate(lengths):
        caps[i, 1 : L + 1] = rng.integers(4, V, size=L)  # 0-3 are <NULL> <START> <END> <UNK>
        caps[i, L + 1] = END
    return caps


def synthetic_vocab(V=1004):
    words = ["<NULL>", "<START>", "<END>", "<UNK>"] + [f"w{i}" for i in range(4, V)]
    return {w: i for i, w in enumerate(words)}


def adam_step(model, features, captions):
    """-> step(): one training step of model (loss, then Adam on every parameter, as
    captioner.training does), its optimizer state kept between calls."""
    from captioner.optim import adam

    configs = {k: {"learning_rate": 1e-3} for k in model.params}

    def step():
        _, grads = model.loss(features, captions)
        for k, w in model.params.items():
            model.params[k], configs[k] = adam(w, grads[k], configs[k])

    return step


def blas_threads():
    """The BLAS thread count numpy runs with (OPENBLAS_NUM_THREADS, else one per core):
    PyTorch baselines get as many, so both sides use the same."""
    env = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    return int(env) if env and env.isdigit() else os.cpu_count()


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
        body = [
            (s, f, v, t, "" if ok is None else ("PASS" if ok else "FAIL"))
            for s, f, v, t, ok in self.rows
        ]
        widths = [max(len(r[i]) for r in [head] + body) for i in range(4)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths + [0])).rstrip()]
        lines.append("  ".join("-" * w for w in widths + [6]))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths + [0])).rstrip() for r in body]
        checked = [ok for *_, ok in self.rows if ok is not None]
        lines.append(
            f"targets met: {sum(checked)} of {len(checked)}"
            + (f"; sections skipped: {', '.join(self.skipped)}" if self.skipped else "")
            + (f"; run on a busy machine: {', '.join(self.busy)}" if self.busy else "")
        )
        return "\n".join(lines)


def missing(modname, *names):
    """Reason string if captioner.<modname> or one of its attributes can't be had, else None."""
    try:
        mod = __import__(f"captioner.{modname}", fromlist=["_"])
    except Exception as e:  # noqa: BLE001 - any failure to import is a reason to skip
        first = str(e).splitlines()[0] if str(e) else ""
        return f"captioner.{modname} not importable ({type(e).__name__}: {first})"
    for n in names:
        if not hasattr(mod, n):
            return f"captioner.{modname}.{n} missing"
    return None


def cpu_snapshot():
    """(machine busy seconds, machine total seconds, this process + waited children's CPU
    seconds)."""
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


def load_average():
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def machine_info():
    cpu = "unknown"
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else platform.processor() or "unknown"
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "loadavg_start": load_average(),
    }
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f"{blas.get('name')} {blas.get('version')}"
        info["blas_config"] = blas.get("openblas configuration", "")
    except Exception:  # noqa: BLE001 - older numpy: no dict mode
        info["blas"] = "unknown"
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [
            {
                k: p.get(k)
                for k in (
                    "internal_api",
                    "version",
                    "num_threads",
                    "threading_layer",
                    "architecture",
                )
            }
            for p in threadpool_info()
        ]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    return info


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
