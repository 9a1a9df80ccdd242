"""Shards: the unit of work of `captioner prepare`'s picture encoding, and who runs them.

The interface (what a local process pool, Dask's `Client.get_executor()` or any other
`concurrent.futures.Executor` runs):

    spec = {"index": k,                 # shard number: its chunk file is chunk_{k:05d}.npz
            "names": [str, ...],        # the pictures' names in the dataset (n of them)
            "refs": [ref, ...],         # where each picture is: a file path (str), or
                                        #   [zip path, member name] for a picture inside a zip
            "batch_size": B,            # encoder batch size (fixed: it affects the bits)
            "encoder": name}            # captioner.encoders name (absent: squeezenet)
    encode_shard(spec) -> {"index": k, "names": (n,) str, "ok": (n,) bool,
                           "errors": (n,) str ('' when ok), "features": (m, D) float32}

encode_shard opens the pictures itself, so it runs in any process, on any machine that
sees the same paths. It returns arrays and writes nothing: the client alone writes the
chunk files (captioner.atomic) and the dataset, so the result is the same bits whatever
executes the shards and in whatever order they finish. A shard's features depend only
on its own pictures, batch size and encoder (neither network has batch statistics).

default_executor(workers): a ProcessPoolExecutor of `workers` 'spawn'ed processes with
BLAS held to one thread each (so N workers do not run N x cores threads). One BLAS thread
is also what makes the bits reproducible: OpenBLAS sums a product in a different order
with 2 threads than with 1 (the features differ in the last bits), so every shard runs
single-threaded. workers=1 therefore runs in-process (no start-up, nothing to pickle)
only when this process's BLAS is already limited to one thread (OPENBLAS_NUM_THREADS=1,
as the tests set), and otherwise in one spawned worker. Any other executor must run
shards single-threaded too for the bits to match (Dask's nanny sets OMP/OPENBLAS/
MKL_NUM_THREADS=1 in its workers by default). As with any 'spawn' pool, a script that
calls prepare with workers > 1 needs the `if __name__ == "__main__":` guard (the workers
import the caller's main module); the CLI and notebooks need nothing.
"""

import os
import zipfile
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from functools import lru_cache

from captioner.errors import CaptionerError
from captioner.sources.paths import read_member

BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# The variables OpenBLAS (then MKL) reads for its thread count, first set wins.
_BLAS_PRECEDENCE = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")


def encode_shard(spec):
    """Encode one shard (see the module docstring) -> its result dict."""
    import numpy as np

    from captioner import encoders

    net = encoders.module(spec.get("encoder", "squeezenet"))
    names, refs = list(spec["names"]), list(spec["refs"])
    pictures, errors = [], {}
    for i, ref in enumerate(refs):
        try:
            pictures.append((i, net.preprocess(open_picture(ref))))
        except CaptionerError as e:
            errors[i] = str(e)
    batch = int(spec["batch_size"])
    params = net.default_params()
    feats = [np.zeros((0, net.FEATURE_DIM), np.float32)]
    for s in range(0, len(pictures), batch):
        feats.append(net.forward(params, np.stack([x for _, x in pictures[s : s + batch]]))[1])
    ok = np.zeros(len(names), dtype=bool)
    ok[[i for i, _ in pictures]] = True
    return {
        "index": spec["index"],
        "names": np.array(names, dtype=str),
        "ok": ok,
        "errors": np.array([errors.get(i, "") for i in range(len(names))], dtype=str),
        "features": np.concatenate(feats).astype(np.float32, copy=False),
    }


def check_result(result, spec):
    """Refuse (one line) a shard result that is not what encode_shard returns for `spec`:
    a worker running another captioner, or returning garbage, must not reach a chunk file."""
    import numpy as np

    n = len(spec["names"])
    try:
        ok = result["ok"]
        good = (
            int(result["index"]) == spec["index"]
            and list(result["names"]) == list(spec["names"])
            and ok.dtype == bool
            and ok.shape == (n,)
            and result["errors"].shape == (n,)
            and result["features"].dtype == np.float32
            and result["features"].shape[0] == int(ok.sum())
            and bool(np.isfinite(result["features"]).all())
        )
    except Exception:  # noqa: BLE001 -- any shape of garbage: not a shard result
        good = False
    if not good:
        raise CaptionerError(
            f"shard {spec['index']} ({spec['names'][0]}, ...): the worker returned something "
            f"that is not its encoded pictures; run the same captioner version on every "
            f"worker, then run the same command again to resume",
            exit_code=1,
        )


def open_picture(ref):
    """A file path, or (zip path, member) -> PIL RGB image; CaptionerError (one line) if bad."""
    from captioner import encoder

    if isinstance(ref, str):
        return encoder.open_image(ref)
    zip_path, member = ref
    label = f"{zip_path}:{member}"
    try:
        zf = _zip(zip_path, *_identity(zip_path))
        blob = read_member(zf, member, encoder.MAX_DECODE_BYTES, label, "a picture", "skipped")
    except CaptionerError:
        raise
    except KeyError:
        raise CaptionerError(f"{label}: no such member in the zip", exit_code=1) from None
    except Exception as e:  # bad CRC, truncated data, zlib errors, I/O errors
        raise CaptionerError(f"{label}: cannot read from the zip ({e})", exit_code=1) from None
    return encoder.open_image_bytes(blob, label)


def _identity(path):
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@lru_cache(maxsize=8)
def _zip(path, size, mtime_ns):
    """One open ZipFile per zip and process: train2014.zip's directory (82,783 entries)
    takes a while to read, so it is read once, not once per shard. Keyed on the zip's
    size and mtime so a replaced zip is reopened."""
    del size, mtime_ns  # part of the cache key only
    return zipfile.ZipFile(path)


# ----------------------------------------------------------------------------- executors


class InlineExecutor(Executor):
    """Runs each submitted call at once, in this process (workers=1)."""

    def submit(self, fn, /, *args, **kwargs):
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 -- handed to the caller through the future
            future.set_exception(e)
        return future


def _worker_init(parent):
    """Pool initializer. The BLAS environment is already set when the process is spawned
    (see default_executor); this keeps it set for anything the worker starts, and ends
    the worker when its parent is gone: after `kill -9` of prepare, a worker would
    otherwise wait for work forever (it holds its own queue's write end, so it never
    sees end-of-file)."""
    import threading
    import time

    for var in BLAS_VARS:
        os.environ[var] = "1"

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def blas_single_threaded():
    """True when this process's BLAS was told to use one thread (or there is one core)."""
    if (os.cpu_count() or 1) == 1:
        return True
    first = next((os.environ[v] for v in _BLAS_PRECEDENCE if os.environ.get(v)), None)
    mkl = os.environ.get("MKL_NUM_THREADS")
    return first == "1" and mkl in (None, "1")


@contextmanager
def default_executor(workers):
    """-> an Executor for `workers` processes (see the module docstring), shut down on exit.

    Workers are spawned, not forked, so each starts a fresh interpreter: BLAS reads its
    thread count when numpy is first imported, which in a spawned child is after the
    environment below is inherited (a forked child would share the parent's BLAS pool).
    The parent's environment is set only while the pool exists, then restored.
    """
    if workers <= 1 and blas_single_threaded():
        yield InlineExecutor()
        return
    import multiprocessing

    saved = {var: os.environ.get(var) for var in BLAS_VARS}
    os.environ.update(dict.fromkeys(BLAS_VARS, "1"))
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(os.getpid(),),
    )
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def run_shards(executor, specs, on_result, max_pending):
    """Submit every spec to `executor`, at most `max_pending` at a time (memory stays
    bounded however many shards), and call on_result(result) as each finishes, in
    whatever order. The first failure cancels what is still queued and is re-raised."""
    from concurrent.futures import FIRST_COMPLETED, wait

    specs = iter(specs)
    pending, order, spec_of = set(), {}, {}
    try:
        while True:
            for spec in specs:
                future = executor.submit(encode_shard, spec)
                order[future], spec_of[future] = len(order), spec
                pending.add(future)
                if len(pending) >= max_pending:
                    break
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            # keep every finished shard's work (in submission order) before raising the first
            # failure
            done = sorted(done, key=order.pop)
            failed = [f for f in done if f.exception() is not None]
            for future in done:
                if future.exception() is None:
                    check_result(future.result(), spec_of.pop(future))
                    on_result(future.result())
            if failed:
                raise failed[0].exception()
    finally:
        for future in pending:
            future.cancel()
