"""Old vs new captioner in ONE process, interleaved: the ratio of a training step
(forward + backward + Adam) and of greedy / beam-3 decoding, at the CS231n size.

    python scripts/bench_compare.py OLD_CHECKOUT [--rounds 15]
    python scripts/bench_compare.py OLD_CHECKOUT --grid [--rounds 9]

--grid times the training step instead over a grid of batch sizes, vocabularies and hidden
sizes (GRID), each point against PyTorch too when torch is installed (scripts/torch_baseline.py
in a subprocess, as many BLAS threads as numpy): old, new and PyTorch steps interleaved, the
same weights and real COCO val captions for all three; prints new/old (wall and, steadier
on a shared machine, this process's CPU time), old/PyTorch and new/PyTorch per point.

OLD_CHECKOUT is a tree holding another version's captioner/ (e.g. `git worktree add
/tmp/old main`). Each round times old then new (then new then old, alternating), so load
from other processes hits both alike; the ratio new/old of the medians is printed.
Both models start from the same parameters and must give the same loss.
"""

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# (cell, batch, vocabulary, hidden): batches 25-500 at the CS231n sizes, then ~9,500 words
# (the COCO road's vocabulary) and hidden 256 at a small and the reference batch
GRID = [("lstm", n, 1004, 512) for n in (25, 50, 100, 500)]
GRID += [("lstm", n, 9500, 512) for n in (25, 100)] + [("lstm", n, 1004, 256) for n in (25, 100)]
GRID += [("rnn", n, 1004, 512) for n in (25, 100)]


def import_captioner(tree, alias):
    """Import tree/captioner as a fresh package and rename its modules to `alias`.

    -> {"model", "optim", "decoding": module, "modules": {"captioner...": module}}. Code
    that imports captioner.X as it runs (cells.py picks a cell's functions so) would get
    whichever tree holds that name: call this tree's code through use()."""
    for name in [m for m in sys.modules if m == "captioner" or m.startswith("captioner.")]:
        del sys.modules[name]
    sys.path.insert(0, str(tree))
    try:
        mods = {
            n: importlib.import_module(f"captioner.{n}") for n in ("model", "optim", "decoding")
        }
    finally:
        sys.path.remove(str(tree))
    mods["modules"] = {}
    for name in _ours(sys.modules):
        mods["modules"][name] = sys.modules[alias + name[len("captioner") :]] = sys.modules.pop(
            name
        )
    return mods


def _ours(modules):
    return [m for m in modules if m == "captioner" or m.startswith("captioner.")]


def use(mods, fn):
    """fn, called with mods' tree (import_captioner) as `captioner` in sys.modules."""

    def run(*args, **kwargs):
        for name in _ours(sys.modules):
            del sys.modules[name]
        sys.modules.update(mods["modules"])
        try:
            return fn(*args, **kwargs)
        finally:  # modules this tree imported during the call are its own
            mods["modules"].update({n: sys.modules[n] for n in _ours(sys.modules)})

    return run


def captions(rng, N=100, T=16, V=1004):
    lengths = np.clip(np.round(rng.normal(10.5, 2.0, N)), 8, T - 1).astype(int)
    caps = np.zeros((N, T + 1), dtype=np.int64)
    caps[:, 0] = 1
    for n, k in enumerate(lengths):
        caps[n, 1 : 1 + k] = rng.zipf(1.3, k) % (V - 4) + 4
        caps[n, 1 + k] = 2
    return caps


def grid(old, new, rounds):
    """The --grid table (module doc)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import importlib.util

    from benchmarks.common import REF, SHARED, blas_threads
    from benchmarks.softmax import vocabularies
    from benchmarks.train import TorchWorker

    have_torch = importlib.util.find_spec("torch") is not None
    encoded = {len(w2i): (w2i, caps) for _, w2i, caps in vocabularies(REF["T"]) or []}
    if not encoded:
        sys.exit(f"--grid needs real captions: {SHARED / 'coco'} lacks captions_val2014.json")
    print(
        f"training step, {rounds} interleaved rounds, medians; numpy and PyTorch on "
        f"{blas_threads()} BLAS threads"
    )
    print(
        f"{'cell':5s} {'batch':>5s} {'V':>6s} {'H':>4s} {'old ms':>8s} {'new ms':>8s} "
        f"{'new/old':>8s} {'CPU n/o':>8s}"
        + (f" {'torch ms':>9s} {'old/torch':>9s} {'new/torch':>9s}" * have_torch)
    )
    tmp = tempfile.TemporaryDirectory()
    for cell, N, V, H in GRID:
        V_real = min(encoded, key=lambda v: abs(v - V))
        w2i, all_caps = encoded[V_real]
        rng = np.random.default_rng(N)
        caps = all_caps[rng.choice(len(all_caps), N, replace=False)]
        feats = rng.standard_normal((N, REF["D"])).astype(np.float32)
        steps, losses = {}, []
        for tag, mods in (("old", old), ("new", new)):
            m = use(mods, mods["model"].CaptioningRNN)(
                w2i, REF["D"], REF["W"], H, cell, np.float32, seed=0
            )
            params0 = {k: v.copy() for k, v in m.params.items()}
            losses.append(use(mods, m.loss)(feats, caps)[0])
            cfg = {k: {"learning_rate": 1e-3} for k in m.params}

            def step(m=m, cfg=cfg, adam=mods["optim"].adam, feats=feats, caps=caps):
                _, grads = m.loss(feats, caps)
                for k, w in m.params.items():
                    m.params[k], cfg[k] = adam(w, grads[k], cfg[k])

            steps[tag] = use(mods, step)
        assert losses[0] == losses[1], (cell, N, V, losses)
        worker = None
        if have_torch:
            npz = Path(tmp.name) / "grid.npz"
            np.savez(
                npz,
                features=feats,
                captions=caps,
                **{f"{cell}_{k}": v for k, v in params0.items()},
            )
            worker = TorchWorker(npz, cell)
            steps["torch"] = worker.step
        for tag in ("old", "new"):
            steps[tag]()  # warm-up: buffers allocated
        times, cpu = {t: [] for t in steps}, {"old": [], "new": []}
        for r in range(rounds):
            for tag in list(steps)[:: 1 if r % 2 == 0 else -1]:
                t0, c0 = time.perf_counter(), time.process_time()
                own = steps[tag]()
                times[tag].append(own if tag == "torch" else time.perf_counter() - t0)
                if tag != "torch":
                    cpu[tag].append(time.process_time() - c0)
        if worker:
            worker.close()
        ms = {t: statistics.median(v) * 1e3 for t, v in times.items()}
        line = (
            f"{cell:5s} {N:5d} {V_real:6d} {H:4d} {ms['old']:8.1f} {ms['new']:8.1f} "
            f"{ms['new'] / ms['old']:8.3f} "
            f"{statistics.median(cpu['new']) / statistics.median(cpu['old']):8.3f}"
        )
        if have_torch:
            line += (
                f" {ms['torch']:9.1f} {ms['old'] / ms['torch']:9.3f} "
                f"{ms['new'] / ms['torch']:9.3f}"
            )
        print(line, flush=True)
    tmp.cleanup()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--grid", action="store_true", help="the training step over GRID (doc)")
    args = ap.parse_args(argv)
    old = import_captioner(args.old, "old_captioner")
    new = import_captioner(ROOT, "new_captioner")
    if args.grid:
        return grid(old, new, args.rounds)
    V, D, W, H = 1004, 512, 256, 512
    w2i = {
        w: i
        for i, w in enumerate(
            ["<NULL>", "<START>", "<END>", "<UNK>"] + [f"w{i}" for i in range(V - 4)]
        )
    }
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((100, D)).astype(np.float32)
    caps = captions(rng)
    dec_feats = rng.standard_normal((1000, D)).astype(np.float32)

    def contenders(mods, cell):
        m = use(mods, mods["model"].CaptioningRNN)(w2i, D, W, H, cell, np.float32, seed=0)
        cfg = {k: {"learning_rate": 1e-3} for k in m.params}
        adam = mods["optim"].adam

        def step():
            _, grads = m.loss(feats, caps)
            for k, w in m.params.items():
                m.params[k], cfg[k] = adam(w, grads[k], cfg[k])

        return m, use(mods, step)

    results = {}
    for cell in ("lstm", "rnn"):
        (mo, so), (mn, sn) = contenders(old, cell), contenders(new, cell)
        lo, ln = use(old, mo.loss)(feats, caps)[0], use(new, mn.loss)(feats, caps)[0]
        assert lo == ln, (cell, lo, ln)
        results[f"{cell} training step"] = {"old": so, "new": sn}
    dec = {}
    for tag, mods in (("old", old), ("new", new)):
        m = use(mods, mods["model"].CaptioningRNN)(w2i, D, W, H, "lstm", np.float32, seed=0)
        dec[tag] = (m, use(mods, m.sample), use(mods, mods["decoding"].beam_search))
    results["greedy, 1000 images"] = {
        t: (lambda s=s: s(dec_feats, max_length=16)) for t, (_, s, _) in dec.items()
    }
    results["beam 3, 1000 images"] = {
        t: (lambda m=m, b=b: b(m, dec_feats, beam_size=3, max_length=16))
        for t, (m, _, b) in dec.items()
    }
    a, b = dec["old"][1](dec_feats[:50]), dec["new"][1](dec_feats[:50])
    assert np.array_equal(a, b)

    print(f"{'figure':28s} {'old ms':>9s} {'new ms':>9s} {'new/old':>8s}")
    for name, fns in results.items():
        for f in fns.values():
            f()  # warm-up: buffers allocated, caches filled
        times = {"old": [], "new": []}
        rounds = args.rounds if "step" in name else max(3, args.rounds // 3)
        for r in range(rounds):
            for tag in ("old", "new") if r % 2 == 0 else ("new", "old"):
                t0 = time.perf_counter()
                fns[tag]()
                times[tag].append(time.perf_counter() - t0)
        mo, mn = (statistics.median(times[t]) * 1e3 for t in ("old", "new"))
        print(f"{name:28s} {mo:9.1f} {mn:9.1f} {mn / mo:8.3f}", flush=True)


if __name__ == "__main__":
    main()
