"""Helpers shared by the CLI and dataset tests."""

import hashlib
import io
import os
import zipfile

import h5py
import numpy as np
from click.testing import CliRunner

from captioner.cli import cli


def run(*args):
    """captioner ARGS in-process -> click's Result. A user never sees a traceback: any
    exception other than a clean exit, or a traceback in the output, fails the test."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def assert_same_dataset(a, b):
    """Two dataset folders hold the same files: HDF5 arrays equal (dtype included) with the
    same attributes, every other file byte for byte."""
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b))
    for name in names:
        pa, pb = os.path.join(a, name), os.path.join(b, name)
        if name.endswith(".h5"):
            with h5py.File(pa, "r") as fa, h5py.File(pb, "r") as fb:
                assert sorted(fa) == sorted(fb), name
                for k in fa:
                    assert fa[k].dtype == fb[k].dtype, f"{name}/{k}"
                    np.testing.assert_array_equal(fa[k][()], fb[k][()], err_msg=f"{name}/{k}")
                    assert dict(fa[k].attrs) == dict(fb[k].attrs), f"{name}/{k}"
        else:
            with open(pa, "rb") as fa, open(pb, "rb") as fb:
                assert fa.read() == fb.read(), name


def zipped(entries, method=zipfile.ZIP_DEFLATED):
    """{member name: bytes or str} -> the bytes of a zip holding them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, blob in entries.items():
            zf.writestr(name, blob)
    return buf.getvalue()


def snapshot(folder):
    """{relative path: sha256} of every file under folder: to prove nothing was written."""
    out = {}
    for root, _, files in os.walk(folder):
        for n in files:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def assert_same_checkpoint(a, b):
    """Two checkpoints hold the same training, bit for bit: parameters, optimizer state
    (arrays, and scalars such as Adam's t and the decayed learning rate), the per-step loss,
    gradient-norm and clipping histories, and the training metadata (epoch records
    included); only the write time and the per-epoch seconds may differ."""
    import json

    def untimed(meta):
        meta = json.loads(str(meta))
        meta.pop("created", None)
        for record in meta.get("training", {}).get("epochs", []):
            record.pop("seconds", None)
        return meta

    with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
        assert sorted(za.files) == sorted(zb.files)
        assert any(k.startswith("optim/") for k in za.files), "no optimizer state"
        assert any(k.startswith("history/") for k in za.files), "no history"
        for k in za.files:
            if k == "meta":
                assert untimed(za[k]) == untimed(zb[k])
            else:
                assert za[k].dtype == zb[k].dtype, k
                np.testing.assert_array_equal(za[k], zb[k], err_msg=k)
