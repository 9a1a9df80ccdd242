"""Section `encoder`: the picture encoders' images/s, in batches of 32, in the same run.

EfficientNet-Lite0 and SqueezeNet 1.1, each through encode_images (preprocessing + network)
and through forward alone on preprocessed pictures; Lite0's forward against PyTorch's own
conv2d on the same folded weights (channels-last) when torch is installed. Everything runs on
one thread, as in prepare's workers: in a fresh process with the BLAS thread variables at 1
(and torch.set_num_threads(1)). The timed calls alternate round by round, so a busy spell
hits all alike; the fastest round of each is kept.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).resolve().parents[1]
SHARED = SCRIPTS.parents[1] / "shared"

BATCH = 32
TARGET_VS_SQUEEZENET = 0.5  # Lite0 images/s over SqueezeNet's
TARGET_VS_TORCH = 1.5  # Lite0 time over PyTorch's on the same folded weights
LITE, TORCH = "efficientnet-lite0", "PyTorch conv2d, same folded weights"


def torch_forward(params):
    """Lite0 from our folded parameters as PyTorch ops -> fn(batch NHWC ndarray) -> logits."""
    import torch
    import torch.nn.functional as F

    from captioner.efficientnet import BLOCKS, same_padding

    def conv(w_hwio):  # HWIO (or HW-C depthwise) -> OIHW
        w = torch.from_numpy(np.ascontiguousarray(w_hwio))
        return w.permute(2, 0, 1).unsqueeze(1) if w.ndim == 3 else w.permute(3, 2, 0, 1)

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a))

    def lin(w):  # (C, F) 1x1 -> OIHW
        return t(w.T).reshape(w.shape[1], w.shape[0], 1, 1)

    stem = (
        conv(params["stem"][0]).contiguous(memory_format=torch.channels_last),
        t(params["stem"][1]),
    )
    blocks = []
    for blk, spec in zip(params["blocks"], BLOCKS):
        ex = None if blk["expand"] is None else (lin(blk["expand"][0]), t(blk["expand"][1]))
        blocks.append(
            (
                ex,
                (conv(blk["dw"][0]), t(blk["dw"][1])),
                (lin(blk["project"][0]), t(blk["project"][1])),
                spec,
            )
        )
    head, fc = (
        (lin(params["head"][0]), t(params["head"][1])),
        (t(params["fc"][0].T), t(params["fc"][1])),
    )

    def pad(x, k, s):
        (a, b), (c, d) = same_padding(x.shape[2], k, s), same_padding(x.shape[3], k, s)
        return F.pad(x, (c, d, a, b))

    def run(batch):
        with torch.no_grad():
            x = torch.from_numpy(batch).permute(0, 3, 1, 2)  # NHWC memory: channels-last
            x = F.relu6(F.conv2d(pad(x, 3, 2), *stem, stride=2))
            for ex, (dw, dwb), proj, spec in blocks:
                h = x if ex is None else F.relu6(F.conv2d(x, *ex))
                h = F.relu6(
                    F.conv2d(
                        pad(h, spec.kernel, spec.stride),
                        dw,
                        dwb,
                        stride=spec.stride,
                        groups=dw.shape[0],
                    )
                )
                h = F.conv2d(h, *proj)
                x = h + x if spec.stride == 1 and spec.cin == spec.cout else h
            x = F.relu6(F.conv2d(x, *head))
            return F.linear(x.mean(dim=(2, 3)), *fc).numpy()

    return run


def measure(rounds):
    """-> {'source', 'images_per_s': {call: rate}, 'torch_ok': None|bool} (run in the child)."""
    from PIL import Image

    from captioner import encoders

    photos = sorted((SHARED / "photos").glob("*")) if (SHARED / "photos").is_dir() else []
    if photos:
        base = [
            Image.open(p).convert("RGB")
            for p in photos
            if p.suffix.lower() in (".png", ".jpg", ".jpeg")
        ]
        source = f"{len(base)} photos from {SHARED / 'photos'}"
    else:
        rng = np.random.default_rng(0)
        base = [
            Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) for _ in range(8)
        ]
        source = "8 random 640x480 images (shared/photos absent)"
    images = [base[i % len(base)] for i in range(BATCH)]
    nets = {n: encoders.module(n) for n in ("squeezenet", LITE)}
    params = {n: m.default_params() for n, m in nets.items()}
    batches = {n: np.stack([m.preprocess(im) for im in images]) for n, m in nets.items()}
    calls = {}
    for n in nets:
        calls[f"{n} encode_images"] = lambda n=n: encoders.encode_images(images, n, BATCH)
        calls[f"{n} forward"] = lambda n=n: nets[n].forward(params[n], batches[n])
    torch_ok = None
    try:
        import torch
    except ImportError:
        pass
    else:
        torch.set_num_threads(1)
        reference = torch_forward(params[LITE])
        got, want = nets[LITE].forward(params[LITE], batches[LITE])[0], reference(batches[LITE])
        torch_ok = bool(np.abs(got - want).max() < 1e-2)
        calls[TORCH] = lambda: reference(batches[LITE])
    for fn in calls.values():  # warm-up: weights loaded, buffers touched
        fn()
    times = {k: [] for k in calls}
    for _ in range(rounds):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    rates = {k: BATCH / min(v) for k, v in times.items()}
    return {"source": source, "images_per_s": rates, "torch_ok": torch_ok}


def run(rep, args):
    from benchmarks.common import log, missing

    sec = "encoder"
    reason = missing("encoders", "encode_images") or missing("efficientnet", "forward")
    if reason:
        return rep.skip(sec, reason)
    rounds = 1 if args.quick else 3
    log(f"[{sec}] one thread, {rounds} round(s) of {BATCH} pictures per encoder ...")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, __file__, str(rounds)], capture_output=True, text=True, env=env
    )
    if r.returncode != 0:
        return rep.skip(sec, f"encoders failed: {r.stderr.strip()[-300:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    rate = out["images_per_s"]
    rep.row(sec, "source", out["source"])
    for k, v in rate.items():
        rep.row(sec, f"{k}, batches of {BATCH}, 1 thread", f"{v:.1f} images/s")
    ratio = rate[f"{LITE} encode_images"] / rate["squeezenet encode_images"]
    rep.row(
        sec,
        "Lite0 / SqueezeNet images/s (encode_images)",
        f"{ratio:.2f}x",
        f">= {TARGET_VS_SQUEEZENET}x",
        ratio >= TARGET_VS_SQUEEZENET,
    )
    out["lite0_vs_squeezenet"] = ratio
    if out["torch_ok"] is None:
        rep.row(sec, "vs PyTorch", "torch not installed (pip install torch==2.13.0)")
    else:
        vs = rate[TORCH] / rate[f"{LITE} forward"]
        rep.row(
            sec,
            "Lite0 forward time / PyTorch's",
            f"{vs:.2f}x" + ("" if out["torch_ok"] else " (LOGITS DIFFER)"),
            f"<= {TARGET_VS_TORCH}x",
            vs <= TARGET_VS_TORCH and out["torch_ok"],
        )
        out["lite0_time_vs_torch"] = vs
    rep.data[sec] = out


if __name__ == "__main__":  # the measuring child of run()
    sys.path.insert(0, str(SCRIPTS.parent))
    print(json.dumps(measure(int(sys.argv[1]))))
