"""Section `encoder`: the picture encoders' images/s, in batches of 32, in the same run.

EfficientNet-Lite0 and SqueezeNet 1.1, each through encode_images (preprocessing + network)
and through forward alone on preprocessed pictures; Lite0's forward against PyTorch's own
conv2d on the same folded weights (channels-last, one thread, as our BLAS in prepare's
workers) when torch is installed. The timed calls alternate, so a busy spell hits all alike.
"""

import time

import numpy as np

from benchmarks.common import SHARED, log, missing

BATCH = 32
TARGET_VS_SQUEEZENET = 0.5  # Lite0 images/s over SqueezeNet's
TARGET_VS_TORCH = 1.5  # Lite0 time over PyTorch's on the same folded weights


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


def run(rep, args):
    sec = "encoder"
    reason = missing("encoders", "encode_images") or missing("efficientnet", "forward")
    if reason:
        return rep.skip(sec, reason)
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
    names = ("squeezenet", "efficientnet-lite0")
    nets = {n: encoders.module(n) for n in names}
    params = {n: m.default_params() for n, m in nets.items()}
    batches = {n: np.stack([m.preprocess(im) for im in images]) for n, m in nets.items()}
    calls = {}
    for n in names:
        calls[f"{n} encode_images"] = lambda n=n: encoders.encode_images(images, n, BATCH)
        calls[f"{n} forward"] = lambda n=n: nets[n].forward(params[n], batches[n])
    lite = "efficientnet-lite0"
    try:
        import torch

        torch.set_num_threads(1)
        reference = torch_forward(params[lite])
        got, want = nets[lite].forward(params[lite], batches[lite])[0], reference(batches[lite])
        torch_ok = np.abs(got - want).max() < 1e-2
        calls["PyTorch conv2d, same folded weights"] = lambda: reference(batches[lite])
    except ImportError:
        torch_ok = None
    rounds = 1 if args.quick else 3
    times = {k: [] for k in calls}
    log(f"[{sec}] {len(calls)} encoders x {rounds} rounds of {BATCH} pictures ...")
    for fn in calls.values():  # warm-up: weights loaded, buffers touched
        fn()
    for _ in range(rounds):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    rate = {k: BATCH / min(v) for k, v in times.items()}  # the least disturbed round
    rep.row(sec, "source", source)
    for k, r in rate.items():
        rep.row(sec, f"{k}, batches of {BATCH}", f"{r:.1f} images/s")
    ratio = rate[f"{lite} encode_images"] / rate["squeezenet encode_images"]
    rep.row(
        sec,
        "Lite0 / SqueezeNet images/s (encode_images)",
        f"{ratio:.2f}x",
        f">= {TARGET_VS_SQUEEZENET}x",
        ratio >= TARGET_VS_SQUEEZENET,
    )
    out = {"images": BATCH, "source": source, "images_per_s": rate, "lite0_vs_squeezenet": ratio}
    if torch_ok is not None:
        vs = rate["PyTorch conv2d, same folded weights"] / rate[f"{lite} forward"]
        rep.row(
            sec,
            "Lite0 forward time / PyTorch's (1 thread each)",
            f"{vs:.2f}x" + ("" if torch_ok else " (LOGITS DIFFER)"),
            f"<= {TARGET_VS_TORCH}x",
            vs <= TARGET_VS_TORCH and torch_ok,
        )
        out["lite0_time_vs_torch"] = vs
    else:
        rep.row(sec, "vs PyTorch", "torch not installed (pip install torch==2.13.0)")
    rep.data[sec] = out
