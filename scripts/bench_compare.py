"""Old vs new captioner in ONE process, interleaved: the ratio of a training step
(forward + backward + Adam) and of greedy / beam-3 decoding, at the CS231n size.

    python scripts/bench_compare.py OLD_CHECKOUT [--rounds 15]

OLD_CHECKOUT is a tree holding another version's captioner/ (e.g. `git worktree add
/tmp/old main`). Each round times old then new (then new then old, alternating), so load
from other processes hits both alike; the ratio new/old of the medians is printed.
Both models start from the same parameters and must give the same loss.
"""

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def import_captioner(tree, alias):
    """Import tree/captioner as a fresh package and rename its modules to `alias`."""
    for name in [m for m in sys.modules if m == "captioner" or m.startswith("captioner.")]:
        del sys.modules[name]
    sys.path.insert(0, str(tree))
    try:
        mods = {
            n: importlib.import_module(f"captioner.{n}") for n in ("model", "optim", "decoding")
        }
    finally:
        sys.path.remove(str(tree))
    for name in [m for m in sys.modules if m == "captioner" or m.startswith("captioner.")]:
        sys.modules[alias + name[len("captioner") :]] = sys.modules.pop(name)
    return mods


def captions(rng, N=100, T=16, V=1004):
    lengths = np.clip(np.round(rng.normal(10.5, 2.0, N)), 8, T - 1).astype(int)
    caps = np.zeros((N, T + 1), dtype=np.int64)
    caps[:, 0] = 1
    for n, k in enumerate(lengths):
        caps[n, 1 : 1 + k] = rng.zipf(1.3, k) % (V - 4) + 4
        caps[n, 1 + k] = 2
    return caps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    old = import_captioner(args.old, "old_captioner")
    new = import_captioner(ROOT, "new_captioner")
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
        m = mods["model"].CaptioningRNN(w2i, D, W, H, cell_type=cell, dtype=np.float32, seed=0)
        cfg = {k: {"learning_rate": 1e-3} for k in m.params}
        adam = mods["optim"].adam

        def step():
            _, grads = m.loss(feats, caps)
            for k, w in m.params.items():
                m.params[k], cfg[k] = adam(w, grads[k], cfg[k])

        return m, step

    results = {}
    for cell in ("lstm", "rnn"):
        (mo, so), (mn, sn) = contenders(old, cell), contenders(new, cell)
        lo, ln = mo.loss(feats, caps)[0], mn.loss(feats, caps)[0]
        assert lo == ln, (cell, lo, ln)
        results[f"{cell} training step"] = {"old": so, "new": sn}
    dec = {}
    for tag, mods in (("old", old), ("new", new)):
        m = mods["model"].CaptioningRNN(w2i, D, W, H, cell_type="lstm", dtype=np.float32, seed=0)
        dec[tag] = (m, mods["decoding"].beam_search)
    results["greedy, 1000 images"] = {
        t: (lambda m=m: m.sample(dec_feats, max_length=16)) for t, (m, _) in dec.items()
    }
    results["beam 3, 1000 images"] = {
        t: (lambda m=m, b=b: b(m, dec_feats, beam_size=3, max_length=16))
        for t, (m, b) in dec.items()
    }
    a, b = dec["old"][0].sample(dec_feats[:50]), dec["new"][0].sample(dec_feats[:50])
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
