"""Section `encoder`: encode_images, images/s in batches of 32."""

import time

import numpy as np

from benchmarks.common import SHARED, log, missing, timed


def run(rep, args):
    sec = "encoder"
    reason = missing("encoder", "encode_images")
    if reason:
        return rep.skip(sec, reason)
    from PIL import Image

    from captioner.encoder import encode_images

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
    n = 64
    images = [base[i % len(base)] for i in range(n)]
    out = {"images": n, "batch_size": 32, "source": source}
    try:
        log("[encoder] first call (loads weights) ...")
        t0 = time.perf_counter()
        encode_images(images[:32], batch_size=32)
        out["first_batch_s"] = time.perf_counter() - t0
        log("[encoder] timing ...")
        med, _ = timed(
            lambda: encode_images(images, batch_size=32), 1 if args.quick else 3, warmup=0
        )
    except Exception as e:  # noqa: BLE001
        return rep.skip(sec, f"encode_images failed: {type(e).__name__}: {e}")
    out["images_per_s"] = n / med
    rep.row(sec, "source", source)
    rep.row(sec, "first batch of 32 (with weight load)", f"{out['first_batch_s']:.2f} s")
    rep.row(
        sec,
        "encode, batches of 32",
        f"{out['images_per_s']:.1f} images/s",
        ">= 20/s",
        out["images_per_s"] >= 20,
    )
    rep.data[sec] = out
