"""Section `cluster`: `prepare` through a local 2-worker Dask cluster vs 2 local worker
processes vs 1 process (images/s, the same pictures, checked to give the same dataset),
and a sweep of 4 small runs with --parallel 1 vs 2 (wall time).

The cluster is a LocalCluster on 127.0.0.1 (2 single-threaded worker processes), started
before the clock runs (a real cluster is started once and reused); its start-up time is a
row of its own. Local processes and cluster runs alternate (3 rounds, best of each): the
local pool starts, imports and loads the weights on every run, the cluster's workers on
their first run only (that run is a row of its own).

Standalone: python scripts/benchmarks/cluster.py [--quick]
"""

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
SEC = "cluster"


def _log(msg):
    print(f"[{SEC}] {msg}", file=sys.stderr, flush=True)


def _pictures(folder, n):
    """n pictures (the real COCO ones of ../shared, repeated under new names; else random
    640x480 JPEGs) and a COCO captions file -> a description of them."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    real = sorted((SHARED / "coco" / "images").glob("COCO_*")) if SHARED.is_dir() else []
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(n):
        if real:
            src = real[i % len(real)]
            name = f"pic{i:04d}{src.suffix}"
            shutil.copyfile(src, folder / name)
        else:
            name = f"pic{i:04d}.jpg"
            pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name)
        images.append({"id": i, "file_name": name})
        anns.append({"id": i, "image_id": i, "caption": f"picture number {i % 7} of a test"})
    (folder / "captions.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return (
        f"{n} copies of the {len(real)} COCO pictures in {SHARED / 'coco' / 'images'}"
        if real
        else f"{n} random 640x480 JPEGs (../shared absent)"
    )


def _features(out):
    import h5py

    got = {}
    for name in sorted(os.listdir(out)):
        if name.endswith(".h5"):
            with h5py.File(out / name, "r") as f:
                got.update({f"{name}/{k}": f[k][()] for k in f})
    return got


def _same(a, b):
    import numpy as np

    fa, fb = _features(a), _features(b)
    return sorted(fa) == sorted(fb) and all(np.array_equal(fa[k], fb[k]) for k in fa)


def _prepare_figures(rep, tmp, quick):
    import inspect

    from captioner import cluster
    from captioner.prepare import prepare_dataset

    if "executor" not in inspect.signature(prepare_dataset).parameters:
        return rep.skip(SEC, "prepare has no shard executor (issue 13) in this tree")
    try:
        import distributed  # noqa: F401
    except ImportError:
        return rep.skip(SEC, "Dask is not installed: pip install 'captioner[cluster]'")
    n, batch = (64, 8) if quick else (256, 16)
    pics = tmp / "pictures"
    source = _pictures(pics, n)
    rep.row(SEC, "prepare: pictures", f"{source}, shards of {batch}")

    def prepare(name, **kw):
        out = tmp / name
        t0 = time.perf_counter()
        prepare_dataset(
            pics, pics / "captions.json", out, min_count=1, batch_size=batch, progress=False, **kw
        )
        return out, n / (time.perf_counter() - t0)

    _log("prepare, 1 process ...")
    one, ips1 = prepare("one", workers=1)
    rounds = 1 if quick else 3
    _log("starting a local 2-worker Dask cluster ...")
    t0 = time.perf_counter()
    with cluster.executor("local", n_workers=2) as (pool, threads):
        start = time.perf_counter() - t0
        local, cold, local_ips, cluster_ips = [], [], [], []
        for r in range(rounds):  # interleaved, so that other load hits both alike
            _log(f"prepare, 2 local worker processes, then through the cluster ({r + 1}/{rounds})")
            out, ips = prepare(f"local{r}", workers=2)
            local.append(out)
            local_ips.append(ips)
            out, ips = prepare(f"cluster{r}", executor=pool, workers=threads)
            cold.append(out)
            cluster_ips.append(ips)
    ips2, best = max(local_ips), max(cluster_ips)
    same = all(_same(local[0], o) for o in local[1:] + cold)
    same_one = _same(one, local[0])
    rep.row(SEC, "prepare, 1 process", f"{ips1:.1f} images/s")
    rep.row(
        SEC,
        f"prepare, 2 local worker processes (best of {rounds})",
        f"{ips2:.1f} images/s ({ips2 / ips1:.2f}x 1 process)",
    )
    rep.row(
        SEC,
        "prepare, local Dask cluster of 2 workers: first run (workers start cold)",
        f"{cluster_ips[0]:.1f} images/s ({cluster_ips[0] / ips2:.2f}x the local processes)",
    )
    rep.row(
        SEC,
        f"prepare, local Dask cluster of 2 workers (best of {rounds})",
        f"{best:.1f} images/s ({best / ips2:.2f}x the local processes)",
        ">= 0.85x local processes",
        best >= 0.85 * ips2,
    )
    rep.row(SEC, "starting the local cluster (not in the figures above)", f"{start:.1f} s")
    rep.row(
        SEC,
        "cluster datasets identical to the local workers'",
        "yes" if same else "NO",
        "yes",
        same,
    )
    rep.row(
        SEC,
        "1-process dataset identical to the local workers'",
        "yes" if same_one else "no (this process's BLAS threads differ from the workers' 1)",
    )
    return {
        "pictures": n,
        "shard": batch,
        "images_per_s": {
            "one_process": ips1,
            "local_workers_2": local_ips,
            "cluster_2": cluster_ips,
        },
        "cluster_start_s": start,
        "identical": same,
        "one_process_identical": same_one,
    }


def _sweep_figures(rep, tmp, quick):
    sys.path.insert(0, str(ROOT / "tests"))
    from captioner import sweep
    from fixtures import build_dataset

    n_images = 400 if quick else 1000
    data = build_dataset(
        tmp / "synthetic",
        n_train_images=n_images,
        captions_per_image=5,
        n_val_images=100,
        feature_dim=512,
        seed=0,
    )
    base = dict(
        data=str(data),
        features="auto",
        cell="lstm",
        epochs=2,
        batch_size=100,
        lr=1e-3,
        lr_decay=0.95,
        optimizer="adam",
        weight_decay=0.0,
        clip_norm=0.0,
        hidden_dim=256,
        wordvec_dim=128,
        max_train=None,
        val_size=500,
        save_every=0,
        eval_every=0,
        keep_best="loss",
        seed=0,
    )
    grid = [("cell", [("rnn", "rnn"), ("lstm", "lstm")]), ("lr", [("1e-3", 1e-3), ("2e-3", 2e-3)])]
    what = (
        f"4 runs (cell rnn/lstm x lr 1e-3/2e-3), {n_images * 5:,} captions, hidden 256, "
        f"2 epochs each"
    )
    rep.row(SEC, "sweep", what)
    walls = {}
    for parallel in (1, 2):
        _log(f"sweep --parallel {parallel} ...")
        t0 = time.perf_counter()
        rows, failed = sweep.run_sweep(
            str(tmp / f"sweep{parallel}"), base, grid, parallel=parallel, log=lambda _: None
        )
        walls[parallel] = time.perf_counter() - t0
        if failed:
            return rep.skip(SEC, f"a sweep run failed: {next(iter(failed.values()))}")
    rep.row(SEC, "sweep of 4 runs, --parallel 1", f"{walls[1]:.1f} s")
    rep.row(SEC, "sweep of 4 runs, --parallel 2", f"{walls[2]:.1f} s ({walls[1] / walls[2]:.2f}x)")
    return {"runs": 4, "captions": n_images * 5, "wall_s": walls}


def run(rep, args):
    quick = getattr(args, "quick", False)
    tmp = Path(tempfile.mkdtemp(prefix="captioner-bench-cluster-"))
    try:
        rep.data[SEC] = {
            "prepare": _prepare_figures(rep, tmp, quick),
            "sweep": _sweep_figures(rep, tmp, quick),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    import argparse

    sys.path.insert(0, str(ROOT))

    class _Report:
        def __init__(self):
            self.data = {}

        def row(self, section, figure, value, target="", ok=None):
            verdict = "" if ok is None else ("PASS" if ok else "FAIL")
            print(f"{section:8} {figure:55} {value:40} {target:26} {verdict}")

        def skip(self, section, reason):
            print(f"{section:8} skipped: {reason}")

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    r = _Report()
    run(r, a)
    if a.json:
        print(json.dumps(r.data, indent=1))
