"""`--scheduler ADDRESS`: run independent tasks on a Dask cluster through a
concurrent.futures Executor, so callers do not know whether a cluster, local
processes or this process runs them.

    with cluster.executor("tcp://host:8786") as (ex, threads):  # "local": a LocalCluster
        future = ex.submit(fn, arg)

Dask (`pip install "captioner[cluster]"`) is imported only here, only when a
scheduler is asked for. Tasks must be top-level functions of captioner (workers
import them by name) taking and returning picklable values; they read and write
paths that the client and the workers share.
"""

import contextlib
import gc
import logging
from concurrent.futures import CancelledError

from .errors import CaptionerError

CONNECT_TIMEOUT = 10  # seconds to reach a scheduler before giving up
# The environment of a local cluster's worker processes: one BLAS thread each (as Dask's
# default), and without Dask's default MALLOC_TRIM_THRESHOLD_, which also turns off glibc's
# adaptive mmap threshold: every large numpy temporary is then mmap'ed and page-faulted
# afresh, and SqueezeNet ran ~30% slower in a worker. Remote workers: see the README.
WORKER_ENV = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}


def _dask():
    try:
        import distributed
    except ImportError:
        raise CaptionerError(
            "--scheduler needs Dask distributed, an optional extra: "
            "pip install 'captioner[cluster]' (or drop --scheduler)"
        ) from None
    return distributed


@contextlib.contextmanager
def _io_loop():
    """A running Tornado IO loop in a thread of its own, for the cluster and the client.
    Without one, each of them starts a loop thread and gives it 10 s (hard-coded in Dask's
    LoopRunner) to run: on a loaded machine that fails with a bare `assert loop is not
    None`. Here the wait has no deadline; a loop that cannot start raises instead."""
    import asyncio
    import threading

    from tornado.ioloop import IOLoop

    running, loops, stop = threading.Event(), [], []

    async def main():
        stop.append(asyncio.Event())
        loops.append(IOLoop.current())
        running.set()
        await stop[0].wait()

    def run():
        try:
            asyncio.run(main())
        finally:
            running.set()  # also when the loop failed to start, so the wait below ends

    thread = threading.Thread(target=run, name="dask IO loop", daemon=True)
    thread.start()
    running.wait()
    if not loops:
        raise RuntimeError("the IO loop for Dask did not start (see the error above)")
    try:
        yield loops[0]
    finally:
        # A Client whose connection failed is left in reference cycles; collected now, it
        # closes itself on a running loop, not at some later collection on a closed one.
        gc.collect()
        loops[0].add_callback(stop[0].set)
        thread.join()


@contextlib.contextmanager
def client(address, n_workers=None, timeout=None):
    """A connected distributed.Client, closed on exit (with its LocalCluster for "local").

    address: tcp://host:port of a `dask scheduler`, or "local" for a cluster of
    n_workers single-threaded worker processes on 127.0.0.1 (None: one per core).
    """
    distributed = _dask()
    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    with _io_loop() as loop, _connected(distributed, address, n_workers, timeout, loop) as c:
        yield c


@contextlib.contextmanager
def _connected(distributed, address, n_workers, timeout, loop):
    """client() on `loop`: the Client (and LocalCluster), Dask's failures as one line each."""
    cluster, unreachable = None, None
    try:
        if address == "local":
            import dask

            with dask.config.set({"distributed.nanny.pre-spawn-environ": WORKER_ENV}):
                cluster = distributed.LocalCluster(
                    host="127.0.0.1",
                    n_workers=n_workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    loop=loop,
                )
            address = cluster.scheduler_address
        c = distributed.Client(address, timeout=timeout, set_as_default=False, loop=loop)
    except (OSError, TimeoutError, ValueError) as e:
        # raised below, outside this block: e's traceback holds the half-built Client, which
        # must be left to _io_loop's collection while its loop still runs
        unreachable = str(e)
    if unreachable is not None:
        if cluster is not None:
            cluster.close()
        raise CaptionerError(
            f"{address}: cannot reach a Dask scheduler ({unreachable}); start one with "
            f"`dask scheduler` and pass its tcp://HOST:PORT, or use "
            f"--scheduler local"
        )
    # The client logs its failed reconnections with tracebacks; what they mean for the
    # command is said below, in one line.
    log = logging.getLogger("distributed.client")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield c
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("captioner"):
            raise
        raise CaptionerError(
            f"{address}: a Dask worker cannot import {e.name}; install "
            f"captioner on every worker machine (pip install "
            f"'captioner[cluster]')"
        ) from None
    except CancelledError:  # what a client's futures become when its scheduler goes away
        raise CaptionerError(
            f"{address}: lost the Dask scheduler (its tasks were cancelled); restart it "
            f"and run the same command again to resume",
            exit_code=1,
        ) from None
    except distributed.KilledWorker:
        raise CaptionerError(
            f"{address}: every worker that ran one of the tasks died, so Dask "
            f"gave up on it; see the workers' logs (out of memory?), then run "
            f"the same command again to resume"
        ) from None
    finally:
        c.close()
        if cluster is not None:
            cluster.close()
        log.setLevel(level)


@contextlib.contextmanager
def executor(address, n_workers=None, timeout=None):
    """client() as (concurrent.futures.Executor, worker threads connected now). Dask
    reruns the task of a worker that dies on another worker, so each submitted call
    gives one result (or one error)."""
    with client(address, n_workers, timeout) as c:
        yield c.get_executor(), max(1, sum(c.nthreads().values()))
