"""Record reference EfficientNet-Lite0 logits with PyTorch, for tests/test_efficientnet.py.

    .venv/bin/pip install torch==2.13.0          # the oracle; never a dependency of captioner
    .venv/bin/python scripts/record_efficientnet_reference.py

PyTorch builds the same network from the same .pth (torch.load, its own conv2d with groups for
the depthwise convs, BatchNorm2d in eval mode with eps 1e-3, ReLU6, TF SAME padding by F.pad),
independently of captioner.efficientnet except for the input: the preprocessed pictures (so
the test compares networks, and preprocessing is tested on its own). Writes
tests/data/efficientnet_reference.npz: files and logits (float32), 12 KB.
"""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
OUT = ROOT / "tests" / "data" / "efficientnet_reference.npz"
# a photo, a COCO picture, and a non-square one (crop and padding paths)
FILES = ["photos/coffee.png", "photos/astronaut.png", "coco/images/COCO_val2014_000000078707.jpg"]


def torch_lite0(state_dict):
    """EfficientNet-Lite0 as PyTorch modules, from a lukemelas-style state dict -> fn(x NCHW)."""
    import torch.nn.functional as F

    from captioner.efficientnet import BLOCKS  # the stage table only (it is the spec)

    sd = {k: v.float() for k, v in state_dict.items()}

    def bn(x, p):
        return F.batch_norm(
            x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
            sd[p + ".bias"], training=False, eps=1e-3,
        )  # fmt: skip

    def conv_same(x, w, stride, groups=1):
        k, (h, wd) = w.shape[-1], x.shape[-2:]
        pads = []
        for size in (wd, h):  # F.pad takes the last axis first
            out = -(-size // stride)
            total = max((out - 1) * stride + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), w, stride=stride, groups=groups)

    def net(x):
        x = F.relu6(bn(conv_same(x, sd["_conv_stem.weight"], 2), "_bn0"))
        for i, b in enumerate(BLOCKS):
            p, h = f"_blocks.{i}.", x
            if b.expand != 1:
                h = F.relu6(bn(F.conv2d(h, sd[p + "_expand_conv.weight"]), p + "_bn0"))
            w = sd[p + "_depthwise_conv.weight"]
            h = F.relu6(bn(conv_same(h, w, b.stride, groups=w.shape[0]), p + "_bn1"))
            h = bn(F.conv2d(h, sd[p + "_project_conv.weight"]), p + "_bn2")
            x = h + x if b.stride == 1 and b.cin == b.cout else h
        x = F.relu6(bn(F.conv2d(x, sd["_conv_head.weight"]), "_bn1"))
        return F.linear(x.mean(dim=(2, 3)), sd["_fc.weight"], sd["_fc.bias"])

    return net


def reference_logits(batch):
    """batch (N,224,224,3) preprocessed -> logits (N,1000) float32 computed by PyTorch."""
    import torch

    from captioner.efficientnet import weights_path

    net = torch_lite0(torch.load(weights_path(), map_location="cpu", weights_only=True))
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
        return net(x).numpy().astype(np.float32)


def main():
    from captioner.efficientnet import preprocess
    from captioner.encoder import open_image

    batch = np.stack([preprocess(open_image(SHARED / f)) for f in FILES])
    logits = reference_logits(batch)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT,
        files=np.array(FILES),
        logits=logits,
    )
    print(f"{OUT}: {len(FILES)} pictures, {OUT.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
