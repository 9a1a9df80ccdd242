"""Speed figures of captioner, all measured in one run, printed as a table (or --json).

    python scripts/bench.py                 # everything (~3.5 min on 2 cores)
    python scripts/bench.py --quick         # fewer repetitions
    python scripts/bench.py --only train,decode --json
    python scripts/bench.py --only batch --threads 1   # numpy and PyTorch on one BLAS thread

Sections (each is skipped, with the reason printed, when what it needs is missing):
  train    one training step (forward + backward + Adam) at the CS231n COCO config, LSTM
           and vanilla RNN: captioner vs PyTorch (scripts/torch_baseline.py, if torch is
           installed) vs a textbook float64 implementation (tests/textbook.py), and the
           fraction of the "GEMM floor" (analytic FLOPs / this machine's numpy sgemm rate).
           Captions: 100 real COCO val captions (../shared/coco, tokenised and encoded with the
           CS231n vocabulary) when present, checked against the targets; then 100 captions of
           random words with COCO's length distribution, for information (the only set, and
           checked, when ../shared/coco is absent).
  softmax  the LSTM training step with the full and the adaptive softmax at V = 1,004 and at
           V ~ 9,500 (real COCO val captions), interleaved: adaptive <= 0.4x full at ~9,500,
           and <= 1.3x the full step at 1,004.
  batch    LSTM and RNN training steps vs PyTorch at batch 25, 50, 100 and 500 (real COCO
           captions, CS231n sizes), each with its fraction of the GEMM floor at its shapes
           (the step's matrix products alone) and of the big-GEMM-rate floor.
  decode   greedy (model.sample) and beam-3 search over 1,000 images; beam 3 over 5,000.
  metrics  captioner.metrics.score vs pycocoevalcap's Bleu + Rouge + Cider, 5,000 images.
  encoder  EfficientNet-Lite0 vs SqueezeNet images/s in batches of 32 (encode_images, and
           forward alone), and Lite0 vs PyTorch's conv2d on the same folded weights.
  memory   a COCO-size dataset (400,135 captions, 82,783 images, 512-d and 4096-d features,
           1.5 GB) written to a temp dir, then `captioner train --max-train 10000 --epochs 1`
           in a fresh process per run: peak RSS (VmHWM) and time per step for pca, fc7
           streamed from HDF5 (the default) and fc7 read into RAM (load_coco_data lazy=False).
  startup  wall time of `captioner --help`, and of `captioner sample PICTURE --checkpoint CKPT`
           (reference-size LSTM) with a warm and a cold encoder weights cache.
  prepare  `captioner prepare` (default encoder) on 416 real COCO JPEGs (the 13 of ../shared
           repeated), 1 worker vs all cores, each in a fresh process, interleaved: images/s,
           the ratio (>= 1.7x), identical features, peak RSS (< 1.5 GiB; < 400 MiB a worker),
           projected time for COCO 2014.
  cluster  prepare through a local 2-worker Dask cluster vs 2 local worker processes vs 1
           process (images/s, same pictures, same dataset); a sweep of 4 small runs with
           --parallel 1 vs 2 (wall time). Needs the cluster extra.

Each section is one module, scripts/benchmarks/<section>.py, with run(rep, args); what they
share (the report, timing, machine information) is scripts/benchmarks/common.py.

Only the library's public functions and the real CLI are timed; nothing here changes how they
run (the in-memory fc7 run only passes load_coco_data's own lazy=False).
Never asserts: a missed target is a FAIL row, and the exit status is 0.
"""

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks package
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # captioner

from benchmarks.common import (  # noqa: E402
    Report,
    blas_threads,
    cpu_snapshot,
    load_average,
    log,
    machine_info,
    others_share,
)

SECTIONS = (
    "train",
    "softmax",
    "batch",
    "decode",
    "metrics",
    "encoder",
    "memory",
    "startup",
    "prepare",
    "cluster",
)


# Above this share of the CPU taken by other processes a section's figures are flagged: with
# 2 threads on 2 cores, one stolen core stalls OpenMP/BLAS barriers (PyTorch slowed 17x here).
BUSY = 0.10


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Speed figures of captioner (see the module docstring)."
    )
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (noisier figures)")
    ap.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections among {', '.join(SECTIONS)}",
    )
    ap.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the table"
    )
    ap.add_argument(
        "--threads",
        type=int,
        help="BLAS threads for numpy and the PyTorch baselines alike (default: one per core); "
        "restarts the bench with OPENBLAS_NUM_THREADS and OMP_NUM_THREADS set",
    )
    args = ap.parse_args(argv)
    if args.threads and os.environ.get("OPENBLAS_NUM_THREADS") != str(args.threads):
        # numpy reads the variables when it loads OpenBLAS: only a fresh process obeys them
        n = str(args.threads)
        os.environ.update(OPENBLAS_NUM_THREADS=n, OMP_NUM_THREADS=n)
        rest = sys.argv[1:] if argv is None else argv
        os.execv(sys.executable, [sys.executable, str(Path(__file__).resolve()), *rest])
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose among {', '.join(SECTIONS)}")

    rep = Report()
    info = machine_info()
    log(
        f"machine: {info['cpu']}, {info['cores']} cores, numpy {info['numpy']} ({info['blas']}), "
        f"load average {info['loadavg_start']}"
    )
    t_all = time.perf_counter()
    others = {}
    for name in SECTIONS:
        if name not in chosen:
            continue
        before = cpu_snapshot()
        try:
            importlib.import_module(f"benchmarks.{name}").run(rep, args)
        except Exception as e:  # noqa: BLE001 - a broken section must not hide the others
            log(traceback.format_exc())
            rep.skip(name, f"crashed: {type(e).__name__}: {e}")
        share = others_share(before, cpu_snapshot())
        if share is not None:
            others[name] = round(share, 3)
            busy = share > BUSY
            rep.row(
                name,
                "CPU taken by other processes",
                f"{share:.0%}"
                + (
                    " - BUSY: figures unreliable, rerun on a quiet machine"
                    if busy
                    else " (quiet enough)"
                ),
            )
            if busy:
                rep.busy.append(name)
    info["cpu_taken_by_others"] = others
    info["loadavg_end"] = load_average()
    info["bench_seconds"] = time.perf_counter() - t_all

    if args.json:
        checked = [
            {"section": s, "figure": f, "value": v, "target": t, "pass": ok}
            for s, f, v, t, ok in rep.rows
            if ok is not None
        ]
        print(
            json.dumps(
                {
                    "machine": info,
                    "quick": args.quick,
                    "sections": chosen,
                    **rep.data,
                    "targets": checked,
                    "skipped": rep.skipped,
                    "busy_sections": rep.busy,
                },
                indent=1,
                default=float,
            )
        )
    else:
        threads = (
            info["threadpools"]
            if isinstance(info["threadpools"], str)
            else "; ".join(
                f"{p['internal_api']} {p['version']} {p['num_threads']} threads"
                for p in info["threadpools"]
            )
        )
        print(
            f"machine: {info['cpu']}; {info['cores']} cores ({info['cores_usable']} usable); "
            f"Python {info['python']}; numpy {info['numpy']}, BLAS {info['blas']}"
        )
        print(
            f"BLAS config: {info.get('blas_config', '')}; threads: {threads}; "
            f"numpy and PyTorch baselines on {blas_threads()} BLAS threads"
        )
        print(
            f"load average {info['loadavg_start']} at start, {info['loadavg_end']} at end; "
            f"run took {info['bench_seconds']:.0f} s"
            + (" (--quick)" if args.quick else "")
            + "; compared code is interleaved round by round, medians shown"
        )
        print()
        print(rep.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
