"""prepare and sweep on a real Dask cluster: a `dask scheduler` and two `dask worker`
processes on 127.0.0.1, as a user would start them on three machines. Everything stops
by itself (the workers die with the scheduler, the scheduler when idle)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
import pytest

from captioner import prepare as P
from captioner.errors import CaptionerError
from helpers import assert_same_checkpoint, assert_same_dataset, run

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from captioner.cli import main; main()"]
TRAIN = [
    "--hidden-dim",
    "16",
    "--wordvec-dim",
    "8",
    "--batch-size",
    "20",
    "--val-size",
    "20",
    "--save-every",
    "1",
]


def _env(cache):
    env = dict(
        os.environ,
        CAPTIONER_CACHE=str(cache),
        PYTHONWARNINGS="ignore",
        OPENBLAS_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The encoder weights cache the tests share (conftest's), for the workers too."""
    return os.environ.get(
        "CAPTIONER_TEST_CACHE", str(tmp_path_factory.getbasetemp() / "captioner-cache")
    )


@pytest.fixture(scope="module")
def dask_cluster(dask, tmp_path_factory, cache):
    """-> (scheduler address, a Client): `dask scheduler` + 2 `dask worker` processes."""
    import distributed

    work = tmp_path_factory.mktemp("dask")
    info = work / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    env = _env(cache)
    with open(work / "dask.log", "w") as log:
        procs = [
            subprocess.Popen(
                dask
                + [
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    "--dashboard-address",
                    "127.0.0.1:0",
                    "--scheduler-file",
                    str(info),
                    "--idle-timeout",
                    "600",
                ],
                cwd=work,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        ]
        procs += [
            subprocess.Popen(
                dask
                + [
                    "worker",
                    "--scheduler-file",
                    str(info),
                    "--host",
                    "127.0.0.1",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--death-timeout",
                    "30",
                    "--local-directory",
                    str(work / f"w{i}"),
                ],
                cwd=work,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            for i in range(2)
        ]
        client = None
        try:
            client = distributed.Client(scheduler_file=str(info), timeout=60)
            client.wait_for_workers(2, timeout=60)
            yield client.scheduler.address, client
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close(timeout=10)
            for p in procs[::-1]:  # the workers, then the scheduler
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def _ready(client):
    """Two live workers (a worker killed by a test is restarted by its nanny)."""
    client.wait_for_workers(2, timeout=60)
    return client


@pytest.fixture(scope="module")
def pictures(shared, tmp_path_factory):
    """The 13 real COCO pictures (one of them replaced by a broken file) and their captions."""
    shared = shared / "coco" / "images"
    folder = tmp_path_factory.mktemp("pictures")
    names = sorted(n for n in os.listdir(shared) if n.startswith("COCO_"))
    for n in names[1:]:
        (folder / n).write_bytes((shared / n).read_bytes())
    (folder / names[0]).write_bytes(b"not a picture\n" * 20)  # listed as skipped, never fatal
    (folder / "captions.json").write_bytes((shared / "captions.json").read_bytes())
    return folder


@pytest.fixture(scope="module")
def reference(pictures, tmp_path_factory):
    """The dataset prepare writes without a cluster (one process)."""
    out = tmp_path_factory.mktemp("ref") / "data"
    P.prepare_dataset(
        pictures,
        pictures / "captions.json",
        out,
        min_count=1,
        batch_size=2,
        progress=False,
        workers=1,
    )
    return out


class Counting(Executor):
    """Passes submissions on to `inner`, counting them by shard index."""

    def __init__(self, inner):
        self.inner, self.submitted = inner, Counter()

    def submit(self, fn, /, *args, **kwargs):
        self.submitted[args[0]["index"]] += 1
        return self.inner.submit(fn, *args, **kwargs)


# ---------------------------------------------------------------- prepare


def test_prepare_on_the_cluster_equals_a_local_run(dask_cluster, pictures, reference, tmp_path):
    address, _ = dask_cluster
    out = tmp_path / "data"
    result = run(
        "prepare",
        "--images",
        pictures,
        "--captions",
        pictures / "captions.json",
        "--out",
        out,
        "--min-count",
        1,
        "--batch-size",
        2,
        "--scheduler",
        address,
    )
    assert result.exit_code == 0, result.output
    assert "encoded 13 images" in result.output and "skipped COCO_" in result.output
    assert_same_dataset(out, reference)
    assert not (out / ".prepare").exists()


def test_a_worker_killed_mid_shard_loses_and_repeats_nothing(
    dask_cluster, pictures, reference, tmp_path
):
    """kill -9 of a worker process while it encodes a shard: the scheduler gives that
    shard to another worker; each shard is still submitted once and written once."""
    address, client = dask_cluster
    _ready(client)
    pids = client.run(os.getpid)  # worker address -> pid of its process
    killed, written = [], Counter()

    def on_shard(k):
        written[k] += 1
        if not killed:  # at the first written shard, others are in flight
            busy = [w for w, keys in client.processing().items() if keys]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])

    out = tmp_path / "data"
    from captioner import cluster

    with cluster.executor(address) as (pool, threads):
        counting = Counting(pool)
        P.prepare_dataset(
            pictures,
            pictures / "captions.json",
            out,
            min_count=1,
            batch_size=2,
            progress=False,
            executor=counting,
            workers=threads,
            on_shard=on_shard,
        )
    assert killed, "no worker was busy when the first shard came back"
    n_shards = 7  # 12 train pictures in shards of 2, 1 val picture
    assert sorted(counting.submitted.items()) == [(k, 1) for k in range(n_shards)]
    assert sorted(written.items()) == [(k, 1) for k in range(n_shards)]
    assert_same_dataset(out, reference)


def test_a_killed_client_resumes_on_the_cluster(
    dask_cluster, pictures, reference, tmp_path, cache
):
    """kill -9 of `captioner prepare --scheduler` once some shards are written: the same
    command finishes, redoing none of them, and writes the same dataset."""
    address, client = dask_cluster
    _ready(client)
    out = tmp_path / "data"
    args = CLI + [
        "prepare",
        "--images",
        str(pictures),
        "--captions",
        str(pictures / "captions.json"),
        "--out",
        str(out),
        "--min-count",
        "1",
        "--batch-size",
        "2",
        "--scheduler",
        address,
    ]
    proc = subprocess.Popen(args, env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    work, deadline = out / ".prepare", time.monotonic() + 120
    try:
        while not (work.is_dir() and [n for n in os.listdir(work) if n.startswith("chunk_")]):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    chunks = len([n for n in os.listdir(work) if n.startswith("chunk_")])
    assert 1 <= chunks < 7
    r = subprocess.run(args, env=_env(cache), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    resumed = int(r.stdout.split("(")[1].split()[0])
    assert resumed >= 2 * chunks - 1  # every written chunk was reused (the val one holds 1)
    assert_same_dataset(out, reference)


# ---------------------------------------------------------------- sweep


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from fixtures import build_dataset

    return str(
        build_dataset(
            tmp_path_factory.mktemp("coco"),
            n_train_images=60,
            captions_per_image=5,
            n_val_images=10,
            feature_dim=16,
            vocab_size=40,
            seed=4,
        )
    )


def test_sweep_on_the_cluster_survives_a_killed_worker(dask_cluster, dataset, tmp_path):
    """Two runs as two Dask tasks; the worker process training one of them is killed (-9)
    part-way: the scheduler reruns the task elsewhere, which resumes the run from its
    last.npz and ends bit-identical to `captioner train` with the same settings."""
    import threading

    from captioner import sweep

    address, client = dask_cluster
    _ready(client)
    out = tmp_path / "sw"
    base = dict(
        data=dataset,
        features="auto",
        cell="lstm",
        epochs=4,
        batch_size=20,
        lr=5e-3,
        lr_decay=0.95,
        optimizer="adam",
        weight_decay=0.0,
        forget_bias=0.0,
        clip_norm=0.0,
        hidden_dim=16,
        wordvec_dim=8,
        softmax="full",
        softmax_cutoffs=None,
        max_train=None,
        val_size=20,
        save_every=1,
        eval_every=0,
        keep_best="loss",
        seed=0,
    )
    assert set(base) == set(sweep.RUN_KEYS)
    grid = [("hidden_dim", [("16", 16), ("64", 64)])]
    done = {}
    thread = threading.Thread(
        target=lambda: done.update(
            result=sweep.run_sweep(str(out), base, grid, scheduler=address, log=lambda _: None)
        )
    )
    thread.start()
    victim, deadline = out / "hidden-dim=64", time.monotonic() + 120
    try:
        step = 0
        while not 0 < step < 4 * 15:  # part-way through the big run
            assert thread.is_alive() and time.monotonic() < deadline
            with contextlib.suppress(OSError, ValueError, KeyError):
                step = json.loads((victim / "history.json").read_text())["step"]
            time.sleep(0.001)
        os.kill(int((victim / "train.lock").read_text()), signal.SIGKILL)  # the worker's pid
    finally:
        thread.join(timeout=300)
    rows, failed = done["result"]
    assert not failed and [r["status"] for r in rows] == ["finished"] * 2
    assert "resuming" in (victim / "train.log").read_text()
    ref = tmp_path / "ref"
    r = run(
        "train",
        "--data",
        dataset,
        *TRAIN,
        "--epochs",
        4,
        "--hidden-dim",
        64,
        "--lr",
        5e-3,
        "--quiet",
        "--out",
        ref,
    )
    assert r.exit_code == 0, r.output
    assert_same_checkpoint(victim / "last.npz", ref / "last.npz")


def test_compare_on_the_cluster_equals_a_serial_compare(dask_cluster, dataset, tmp_path):
    """compare --scheduler: one Dask task per run, the same checkpoints as in one process."""
    address, client = dask_cluster
    _ready(client)
    args = [*TRAIN, "--epochs", 1, "--seeds", 2, "--cell", "lstm", "--quiet", "--count", 20]
    for out, extra in [("serial", []), ("dask", ["--scheduler", address])]:
        r = run("compare", "--data", dataset, *args, *extra, "--out", tmp_path / out)
        assert r.exit_code == 0, r.output
    for name in ("lstm-seed0", "lstm-seed1"):
        with (
            np.load(tmp_path / "serial" / name / "last.npz") as a,
            np.load(tmp_path / "dask" / name / "last.npz") as b,
        ):
            assert a.files == b.files
            for k in a.files:
                if k != "meta":
                    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.usefixtures("dask")
def test_unreachable_scheduler_is_one_line_within_the_timeout(tmp_path, monkeypatch):
    from captioner import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 1)
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CaptionerError, match="cannot reach a Dask scheduler"):
        with cluster.executor(f"tcp://127.0.0.1:{port}"):
            pass
    for address in (f"tcp://127.0.0.1:{port}", "no-port-here"):
        r = run(
            "sweep",
            "--data",
            tmp_path,
            "--grid",
            "cell=rnn",
            "--out",
            tmp_path / "sw",
            "--scheduler",
            address,
        )
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
        assert r.output.startswith(f"captioner: error: {address}: cannot reach a Dask scheduler")
        assert not (tmp_path / "sw").exists()  # nothing written before the scheduler answers


def test_missing_dask_names_the_extra(monkeypatch):
    from captioner import cluster

    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(CaptionerError, match=r"captioner\[cluster\]"):
        with cluster.executor("local"):
            pass


def test_without_scheduler_dask_is_not_imported(tmp_path):
    code = (
        "import sys; from captioner.cli import main\n"
        "try: main(['sweep', '--summary', sys.argv[1]])\n"
        "except SystemExit: pass\n"
        "assert 'distributed' not in sys.modules and 'dask' not in sys.modules\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.usefixtures("dask")
def test_local_cluster_workers_and_their_environment(dataset, tmp_path, monkeypatch):
    """--scheduler local: worker processes on 127.0.0.1 with one BLAS thread and without
    Dask's MALLOC_TRIM_THRESHOLD_ (see captioner.cluster); a sweep runs through it. Dask
    never starts an IO-loop thread of its own here (it gives one 10 s, which a loaded machine
    missed): captioner.cluster runs the loop."""
    import distributed.utils

    from captioner import cluster

    def no_thread(*args, **kwargs):
        raise AssertionError("Dask started an IO-loop thread of its own")

    monkeypatch.setattr(distributed.utils, "_CollectErrorThread", no_thread)

    def no_captioner():
        raise ModuleNotFoundError("No module named 'captioner'", name="captioner")

    with pytest.raises(CaptionerError, match="install captioner on every worker"):
        with cluster.client("local", n_workers=2) as c:
            env = c.run(
                lambda: (
                    os.environ.get("OPENBLAS_NUM_THREADS"),
                    os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                )
            )
            assert len(env) == 2 and all(a.startswith("tcp://127.0.0.1:") for a in env)
            assert set(env.values()) == {("1", None)}
            c.submit(no_captioner).result()  # what a worker without captioner raises
    r = run(
        "sweep",
        "--data",
        dataset,
        *TRAIN,
        "--epochs",
        1,
        "--grid",
        "cell=rnn,lstm",
        "--scheduler",
        "local",
        "--parallel",
        2,
        "--out",
        tmp_path / "sw",
    )
    assert r.exit_code == 0, r.output
    assert r.output.count("finished") == 2 and "[2/2]" in r.output


def test_prepare_workers_go_with_a_local_scheduler(pictures, tmp_path):
    r = run(
        "prepare",
        "--images",
        pictures,
        "--captions",
        pictures / "captions.json",
        "--out",
        tmp_path / "data",
        "--workers",
        2,
        "--scheduler",
        "tcp://127.0.0.1:1",
    )
    assert r.exit_code == 2 and "--workers goes with --scheduler local" in r.output
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_a_scheduler_that_vanishes_mid_prepare_is_one_line_and_resumes(tmp_path, cache):
    """Issue 23: the scheduler killed while shards run: prepare stops with one line (not a
    CancelledError traceback), keeps the finished chunks, and the same command resumes."""
    from captioner import demo

    ann = demo.write_demo_images(tmp_path / "img", 120, seed=3)
    env = _env(cache)
    dask = [sys.executable, "-m", "dask"]
    info = tmp_path / "scheduler.json"
    common = ["--host", "127.0.0.1", "--no-dashboard"]
    with open(tmp_path / "dask.log", "w") as log:
        sched = subprocess.Popen(
            dask + ["scheduler", "--port", "0", "--scheduler-file", str(info), *common],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        worker = subprocess.Popen(
            dask + ["worker", "--scheduler-file", str(info), "--nthreads", "1", *common],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    out = tmp_path / "ds"
    args = ["prepare", "--images", tmp_path / "img", "--captions", ann, "--out", out]
    args += ["--min-count", 1, "--batch-size", 4]
    try:
        deadline = time.monotonic() + 120
        while not (info.exists() and info.stat().st_size):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        address = json.loads(info.read_text())["address"]
        proc = subprocess.Popen(
            CLI + [str(a) for a in args + ["--scheduler", address]],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        while len(list((out / P.WORK_DIR).glob("chunk_*.npz"))) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        sched.kill()
        _, err = proc.communicate(timeout=120)
    finally:
        for p in (sched, worker):
            p.kill()
            p.wait()
    assert proc.returncode == 1 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("captioner: error:")]
    assert lines == [
        f"captioner: error: {address}: lost the Dask scheduler (its tasks were cancelled); "
        f"restart it and run the same command again to resume"
    ], err
    done = len(list((out / P.WORK_DIR).glob("chunk_*.npz")))
    assert done >= 2
    result = run(*args, "--workers", 1)  # resumed here, without the cluster
    assert result.exit_code == 0 and f"({done * 4:,} resumed)" in result.output, result.output
