"""Bench section `prepare`: `captioner prepare` throughput on real COCO JPEGs, 1 worker vs all.

The 13 real COCO val pictures of ../shared/coco/images (one is a PNG: saved as JPEG, as COCO
ships them) are repeated to REPEAT x 13 files with their real captions; prepare_dataset
(decode + resize + the default encoder, EfficientNet-Lite0 + chunk files + dataset) runs in a
fresh process per worker
count, so each run pays its own start-up (processes, weights) as a user's run does; the
two worker counts alternate for 2 rounds and the faster run of each is kept. Rows:
images/s with 1 worker and with all cores, their ratio (target >= 1.7x on 2 cores), whether
both datasets hold the same feature bits, peak RSS (the parent's, plus each worker's peak
times the number of workers: an upper bound; target < 1.5 GiB; and each worker's, target
< 400 MiB), and the projected time of
the full COCO 2014 (123,287 pictures) at the all-cores rate, and from the CPU time per
picture (less sensitive to other processes: CPU time / cores, assuming the workers scale).

Standalone: python scripts/benchmarks/prepare.py [--repeat N] [--rounds N] [--json]
"""

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:  # run by scripts/bench.py (benchmarks is a package there) or standalone
    from benchmarks.common import log
except ImportError:

    def log(msg):
        print(msg, file=sys.stderr, flush=True)


ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
SEC = "prepare"
REPEAT = 32  # 13 x 32 = 416 pictures: ~10 s per run on 1 core, start-up (~1 s) a small share
COCO_2014 = 123_287
TARGET_SPEEDUP = 1.7
TARGET_RSS = 1.5 * 2**30
TARGET_WORKER_RSS = 400 * 2**20

RUN = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[4])
from captioner.prepare import prepare_dataset
t0 = time.perf_counter()
s = prepare_dataset(sys.argv[1], sys.argv[1] + "/captions.json", sys.argv[2],
                    workers=int(sys.argv[3]), min_count=1, progress=False)
wall = time.perf_counter() - t0
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
print(json.dumps(dict(seconds=wall, images=s["encoded_images"], skipped=len(s["skipped"]),
                      parent_kib=hwm, worker_kib=kids.ru_maxrss, workers=s["workers"], cpu=cpu)))
"""


def build_pictures(folder, repeat):
    """REPEAT copies of the real COCO pictures (as JPEG) + captions.json -> number written."""
    from PIL import Image

    src = SHARED / "coco" / "images"
    ann = json.loads((src / "captions.json").read_text())
    caps = {}
    for a in ann["annotations"]:
        caps.setdefault(a["image_id"], []).append(a["caption"])
    images, anns = [], []
    folder.mkdir(parents=True, exist_ok=True)
    for r in range(repeat):
        for im in ann["images"]:
            path = src / im["file_name"]
            if path.suffix == ".jpg":
                blob = path.read_bytes()
            else:
                buf = io.BytesIO()
                Image.open(path).convert("RGB").save(buf, "JPEG", quality=90)
                blob = buf.getvalue()
            name = f"{r:03d}_{Path(im['file_name']).stem}.jpg"
            (folder / name).write_bytes(blob)
            i = len(images)
            images.append({"id": i, "file_name": name})
            anns += [{"id": len(anns), "image_id": i, "caption": c} for c in caps[im["id"]]]
    (folder / "captions.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return len(images)


def measure(pictures, out, workers):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    }
    r = subprocess.run(
        [sys.executable, "-c", RUN, str(pictures), str(out), str(workers), str(ROOT)],
        capture_output=True,
        text=True,
        env=env,
    )
    if r.returncode != 0:
        raise RuntimeError(f"prepare with {workers} worker(s) failed: {r.stderr.strip()[-300:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def same_features(a, b):
    import h5py
    import numpy as np

    from captioner import encoders

    kind = encoders.get(encoders.DEFAULT).kind
    for split in ("train", "val"):
        with (
            h5py.File(a / f"{split}2014_{kind}.h5") as fa,
            h5py.File(b / f"{split}2014_{kind}.h5") as fb,
        ):
            if not np.array_equal(fa["features"][()], fb["features"][()]):
                return False
    return True


def run(rep, args):
    if not (SHARED / "coco" / "images" / "captions.json").is_file():
        return rep.skip(SEC, f"{SHARED}/coco/images absent: no real COCO pictures to encode")
    if not Path("/proc/self/status").is_file():
        return rep.skip(SEC, "/proc/self/status absent (Linux only): cannot read peak RSS")
    from captioner.prepare import default_workers

    cores = default_workers()
    quick = getattr(args, "quick", False)
    repeat = getattr(args, "repeat", None) or (REPEAT // 2 if quick else REPEAT)
    rounds = getattr(args, "rounds", None) or (1 if quick else 2)
    with tempfile.TemporaryDirectory(prefix="captioner-bench-prepare-") as tmp:
        tmp = Path(tmp)
        n = build_pictures(tmp / "pictures", repeat)
        runs = {1: [], cores: []}
        for r in range(rounds):  # interleaved, so a busy spell hits both worker counts alike
            for workers in runs:
                log(
                    f"[{SEC}] round {r + 1}/{rounds}: {n} real COCO JPEGs, {workers} worker(s) ..."
                )
                shutil.rmtree(tmp / f"out{workers}", ignore_errors=True)
                runs[workers].append(measure(tmp / "pictures", tmp / f"out{workers}", workers))
        same = cores == 1 or same_features(tmp / "out1", tmp / f"out{cores}")
    res = {
        w: dict(min(rs, key=lambda x: x["seconds"]), all_seconds=[x["seconds"] for x in rs])
        for w, rs in runs.items()
    }  # the least disturbed run of each
    for r in res.values():
        r["images_per_second"] = r["images"] / r["seconds"]
    one, all_ = res[1]["images_per_second"], res[cores]["images_per_second"]
    speedup = all_ / one
    cpu_per_image = statistics.median(x["cpu"] / x["images"] for rs in runs.values() for x in rs)
    rss = (
        max(
            r["parent_kib"] + (r["worker_kib"] * r["workers"] if r["workers"] > 1 else 0)
            for r in res.values()
        )
        * 1024
    )
    rep.row(SEC, f"prepare, {n} real COCO JPEGs, 1 worker", f"{one:.1f} images/s")
    rep.row(
        SEC,
        f"prepare, {n} real COCO JPEGs, {cores} workers (all cores)",
        f"{all_:.1f} images/s ({speedup:.2f}x 1 worker)",
        f">= {TARGET_SPEEDUP}x on 2 cores",
        speedup >= TARGET_SPEEDUP if cores >= 2 else None,
    )
    rep.row(
        SEC,
        "features, 1 worker vs all cores",
        "bit-identical" if same else "DIFFER",
        "identical",
        same,
    )
    worker = res[cores]["worker_kib"] * 1024
    rep.row(
        SEC,
        f"peak RSS of one worker ({cores} workers)",
        f"{worker / 2**20:.0f} MiB",
        "< 400 MiB",
        worker < TARGET_WORKER_RSS if cores > 1 else None,
    )
    rep.row(
        SEC,
        "peak RSS of prepare (parent + workers)",
        f"{rss / 2**20:.0f} MiB",
        "< 1.5 GiB",
        rss < TARGET_RSS,
    )
    hours = COCO_2014 / all_ / 3600
    rep.row(
        SEC,
        f"projected: all of COCO 2014 ({COCO_2014:,} pictures), {cores} workers",
        f"{hours:.1f} h (projection from the rate above)",
    )
    rep.row(
        SEC,
        "CPU time per picture (all processes; robust to a busy machine)",
        f"{cpu_per_image * 1e3:.0f} ms",
    )
    cpu_hours = COCO_2014 * cpu_per_image / cores / 3600
    rep.row(
        SEC,
        f"projected from CPU time: COCO 2014 on {cores} idle cores",
        f"{cpu_hours:.1f} h (projection: CPU time / cores)",
    )
    rep.data[SEC] = dict(
        pictures=n,
        cores=cores,
        runs={str(k): v for k, v in res.items()},
        speedup=speedup,
        identical=same,
        peak_rss_bytes=rss,
        peak_worker_rss_bytes=worker,
        projected_hours_coco2014=hours,
        cpu_seconds_per_image=cpu_per_image,
        projected_hours_from_cpu=cpu_hours,
    )


class _Report:
    """The bench driver's Report interface, enough to run this section alone."""

    def __init__(self):
        self.rows, self.data = [], {}

    def row(self, section, figure, value, target="", ok=None):
        self.rows.append((section, figure, value, target, ok))
        verdict = "" if ok is None else ("  PASS" if ok else "  FAIL")
        print(f"{figure:60s} {value:40s} {target}{verdict}")

    def skip(self, section, reason):
        print(f"[{section}] skipped: {reason}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=REPEAT, help="copies of the 13 pictures")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved runs per worker count")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    load = os.getloadavg()
    t0 = time.perf_counter()
    r = _Report()
    run(r, a)
    print(
        f"load average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f}; "
        f"{time.perf_counter() - t0:.0f} s"
    )
    if a.json:
        print(json.dumps(r.data, indent=1))
