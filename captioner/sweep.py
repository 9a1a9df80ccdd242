"""Hyper-parameter sweeps: one training run per combination of a grid of settings.

    OUT/
      sweep.json                the grid and the settings every run shares
      cell=rnn,lr=1e-3/         an ordinary run directory (`train --resume`, `evaluate`,
        run.json                  `sample` work on it), plus: its full settings,
        train.log                 what `train` would have printed,
        result.json               written last: best val loss, CIDEr-D (greedy, val), time
      cell=rnn,lr=5e-4/ ...

A run is finished when its result.json covers its epochs. Rerun with the same
command, a sweep skips finished runs and resumes the others from their last.npz
(training's exact resume). Runs go to `parallel` local subprocesses, each with
cores // parallel BLAS threads, or, with a scheduler, one Dask task per run
(run_one, on a worker that sees the same paths).
"""

import contextlib
import fcntl
import itertools
import json
import logging
import math
import os
import re
import subprocess
import sys
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed

from . import atomic, checkpoint, config, runs
from .errors import CaptionerError

LOG = logging.getLogger("captioner")  # the CLI shows it on stderr

# The settings of one run: `captioner train`'s options plus the data (captioner.config).
RUN_KEYS = config.RUN_KEYS
NOT_GRIDDED = tuple(k for k in RUN_KEYS if k not in config.GRIDDABLE)  # one dataset per sweep
# what a run.json written before these settings existed meant
OLDER_RUNS = {k: config.BY_NAME[k].default for k in ("softmax", "softmax_cutoffs")}
BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
SORT_KEYS = ("val_loss", "cider", "time")


# ---------------------------------------------------------------- the grid


def parse_grid(items, convert):
    """['cell=rnn,lstm', 'lr=1e-3,5e-4'] -> [(name, [(text, value), ...]), ...], in order.

    convert(name, text) -> value checks a value as `train` would (and raises
    CaptionerError for a bad one). Names may be written as options: --hidden-dim.
    """
    grid, seen = [], set()
    for item in items:
        name, eq, values = item.partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        texts = [v.strip() for v in values.split(",")]
        if not eq or not name or not all(texts):
            raise CaptionerError(
                f"--grid {item!r}: expected NAME=V1,V2,... "
                f"(e.g. --grid cell=rnn,lstm --grid lr=1e-3,5e-4)"
            )
        if name not in RUN_KEYS or name in NOT_GRIDDED:
            allowed = ", ".join(k for k in RUN_KEYS if k not in NOT_GRIDDED)
            raise CaptionerError(
                f"--grid {item!r}: {name} is not a setting a sweep can vary; use one of {allowed}"
            )
        if name in seen:
            raise CaptionerError(
                f"--grid {item!r}: {name} is already in the grid; "
                f"give all its values in one --grid"
            )
        if len(set(texts)) != len(texts):
            raise CaptionerError(f"--grid {item!r}: a value repeats; give each value once")
        seen.add(name)
        grid.append((name, [(t, convert(name, t)) for t in texts]))
    return grid


def plan(base, grid):
    """-> [(run name, settings)] for every combination, first grid entry varying slowest.
    The name is NAME=VALUE pairs joined by commas, as written in --grid."""
    planned = []
    for combo in itertools.product(*[values for _, values in grid]):
        settings, parts = dict(base), []
        for (name, _), (text, value) in zip(grid, combo):
            settings[name] = value
            parts.append(f"{name.replace('_', '-')}={re.sub(r'[^A-Za-z0-9._+-]', '_', text)}")
        planned.append((",".join(parts) or "run", settings))
    names = [n for n, _ in planned]
    if len(set(names)) != len(names):
        raise CaptionerError(
            "--grid: two values give the same run directory name; write the values differently"
        )
    return planned


def _same_run(a, b):
    """Two run settings are the same run when only `epochs` differs (it may be extended)."""

    def rest(settings):
        return {k: v for k, v in settings.items() if k != "epochs"}

    return rest(a) == rest(b)


def check(out, base, grid):
    """plan(), refusing (one line naming it) a run directory of OUT that holds other settings.
    Writes nothing."""
    planned = plan(base, grid)
    for name, settings in planned:
        path = os.path.join(out, name, "run.json")
        old = dict(OLDER_RUNS, **_read(path)) if os.path.exists(path) else settings
        if not _same_run(old, settings):
            diff = sorted(
                k
                for k in set(old) | set(settings)
                if k != "epochs" and old.get(k) != settings.get(k)
            )
            raise CaptionerError(
                f"{os.path.dirname(path)}: holds a run with other settings "
                f"({', '.join(diff)}); rerun the sweep with its settings "
                f"or choose another --out"
            )
    return planned


def setup(out, base, grid, planned):
    """Create OUT, sweep.json and each run's directory and run.json -> the run directories."""
    runs.make_dir(out)
    atomic.write_json(
        os.path.join(out, "sweep.json"),
        {"grid": [[n, [t for t, _ in vs]] for n, vs in grid], "base": base},
    )
    dirs = []
    for name, settings in planned:
        run_dir = os.path.join(out, name)
        runs.make_dir(run_dir)
        path = os.path.join(run_dir, "run.json")
        if not os.path.exists(path) or _read(path) != settings:
            atomic.write_json(path, settings)
        dirs.append(run_dir)
    return dirs


def _read(path):
    """A state file of the sweep, checked against the shape its writer gives it: a file
    edited or damaged since is one line naming it, never a traceback deep in a run."""
    from .data import read_json

    fix = "delete it to redo that part of the sweep"
    obj = read_json(path, os.path.basename(path), fix)
    why = STATE_CHECKS.get(os.path.basename(path), lambda _: None)(obj)
    if why:
        raise CaptionerError(f"{path}: {why}; it was edited or damaged: {fix}")
    return obj


def _number(v, none_ok=False):
    return (v is None and none_ok) or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _object(obj):
    return None if isinstance(obj, dict) else f"holds a JSON {type(obj).__name__}, not an object"


def _run_problem(spec):
    """run.json: the run's settings (RUN_KEYS), JSON scalars, epochs a positive integer."""
    unknown = sorted(set(spec) - set(RUN_KEYS)) if isinstance(spec, dict) else []
    if _object(spec) or unknown:
        return _object(spec) or f"{unknown[0]!r} is not a setting of a run"
    if not _count(spec.get("epochs")) or spec["epochs"] < 1:
        return f"'epochs' is {spec.get('epochs')!r}, not a positive integer"
    odd = [
        k
        for k, v in spec.items()
        if not isinstance(v, (str, int, float, type(None)))
        and not (k == "softmax_cutoffs" and isinstance(v, list) and all(_count(c) for c in v))
    ]
    return f"{odd[0]!r} is not a number or text" if odd else None


def _result_problem(result):
    """result.json: what _score writes."""
    if _object(result):
        return _object(result)
    if not _count(result.get("epochs")):
        return f"'epochs' is {result.get('epochs')!r}, not a whole number"
    for key in ("best_val_loss", "CIDEr", "Bleu_4", "seconds"):
        if not _number(result.get(key), none_ok=key == "best_val_loss"):
            return f"{key!r} is {result.get(key)!r}, not a number"
    return None


def _history_problem(history):
    """history.json, as far as the summary reads it: per-epoch records with their seconds
    and val_loss."""
    records = history.get("epochs", []) if isinstance(history, dict) else None
    if not isinstance(records, list):
        return _object(history) or "'epochs' is not a list"
    for k, r in enumerate(records):
        if not isinstance(r, dict) or not _number(r.get("seconds")):
            return f"epochs[{k}] has no 'seconds' number"
        if not _number(r.get("val_loss", 0.0)):
            return f"epochs[{k}] has a 'val_loss' that is not a number"
    return None


STATE_CHECKS = {
    "run.json": _run_problem,
    "result.json": _result_problem,
    "history.json": _history_problem,
}


def finished(run_dir, epochs=None):
    """The run's result if it is finished (trained for at least `epochs`, by default those
    of its run.json), else None."""
    path = os.path.join(run_dir, "result.json")
    if not os.path.exists(path):
        return None
    result = _read(path)
    if epochs is None:
        epochs = _read(os.path.join(run_dir, "run.json"))["epochs"]
    return result if result.get("epochs", 0) >= epochs else None


# ---------------------------------------------------------------- one run


def run_one(run_dir, score=None, echo=None, progress=None):
    """Train (or resume) the run in run_dir to its epochs, then score it (score(run_dir,
    state, data) -> dict; by default _score, its best.npz): -> result dict (also written to
    run_dir/result.json). The Dask task of a sweep. echo: also gets train.log's lines."""
    result = finished(run_dir)
    if result is not None:
        return result
    spec = _read(os.path.join(run_dir, "run.json"))
    _wait_for_writer(run_dir)
    # surrogateescape: a run directory whose name is not UTF-8 is logged as its own bytes
    log_file = open(  # noqa: SIM115 -- closed by the with
        os.path.join(run_dir, "train.log"), "a", encoding="utf-8", errors="surrogateescape"
    )
    with runs.run_lock(run_dir), log_file as f:

        def log(line):
            f.write(f"{line}\n")
            f.flush()
            if echo:
                echo(line)

        result = finished(run_dir)  # a writer we waited for may have finished it
        if result is not None:
            return result
        state, data = _train(run_dir, spec, log, progress)
        result = (score or _score)(run_dir, state, data)
        atomic.write_json(os.path.join(run_dir, "result.json"), result)
        log(f"result: {json.dumps(result)}")
    return result


def _wait_for_writer(run_dir):
    """Block while another process trains in run_dir (e.g. the task of a killed
    client that the cluster is still running), so its run is continued, not refused."""
    try:
        fd = os.open(os.path.join(run_dir, "train.lock"), os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)


def _load(data_dir, features, max_train):
    from .data import load_coco_data

    if not os.path.isdir(data_dir):
        raise CaptionerError(f"{data_dir}: no such dataset directory; point --data at one")
    return load_coco_data(data_dir, features=features, max_train=max_train)


def _train(run_dir, spec, log, progress=None):
    """What `captioner train --out run_dir` (or `--resume run_dir --epochs E`) does."""
    run = runs.start_or_resume(
        run_dir,
        spec,
        _load,
        resume=run_dir if runs.has_checkpoint(run_dir) else None,
        epochs=spec["epochs"],
        data_dir=spec.get("data"),  # the spec's: the data may have moved
        new_dir=False,
        log=log,
    )
    state = runs.train_in(run.data, run.model, run_dir, run.state, progress, log, **run.settings)
    return state, run.data


def _score(run_dir, state, data):
    """Best val loss of the run, and CIDEr-D / BLEU-4 of greedy captions of its best.npz
    on every val image."""
    from .evaluation import greedy_scores

    model, _, _, _ = checkpoint.load_model(os.path.join(run_dir, "best.npz"))
    scores, _ = greedy_scores(model, data)
    losses = [r["val_loss"] for r in state["epochs"] if "val_loss" in r]
    return {
        "epochs": state["epoch"],
        "best_val_loss": min(losses) if losses else None,
        "CIDEr": scores["CIDEr"],
        "Bleu_4": scores["Bleu_4"],
        "seconds": round(sum(r["seconds"] for r in state["epochs"]), 2),
    }


# ---------------------------------------------------------------- many runs


def run_sweep(out, base, grid, parallel=1, scheduler=None, log=LOG.info):
    """Every run of the grid to its end -> (summary rows, {run_dir: error line}).

    scheduler None: `parallel` local subprocesses at a time, BLAS threads split
    between them. Else a Dask scheduler address (or "local"), one task per run.
    """
    planned = check(out, base, grid)
    todo = []
    for name, settings in planned:
        run_dir = os.path.join(out, name)
        if finished(run_dir, settings["epochs"]) is not None:
            log(f"{run_dir}: finished, skipped")
        else:
            todo.append(run_dir)
    failed = run_all(todo, lambda: setup(out, base, grid, planned), parallel, scheduler, log=log)
    return summarize(out), failed


def run_all(todo, setup, parallel=1, scheduler=None, task=run_one, log=LOG.info):
    """Run task (a top-level function of captioner taking a run directory, run_one or
    alike) on every run directory of todo, after setup() (called once the scheduler is
    reached, so a bad address writes nothing). -> {run_dir: error line} of the failed."""
    failed = {}
    if not todo:
        setup()
        return failed
    with _executor(scheduler, parallel, task) as (pool, call):
        setup()
        futures = {pool.submit(call, run_dir): run_dir for run_dir in todo}
        for n, future in enumerate(as_completed(futures), 1):
            run_dir = futures[future]
            try:
                r = future.result()
                log(
                    f"[{n}/{len(todo)}] {run_dir}: best val loss {_fmt(r['best_val_loss'])}, "
                    f"CIDEr-D {r['CIDEr']:.3f}, {r['seconds']:.1f}s"
                )
            except CancelledError:  # the cluster is gone (cluster.client says so)
                raise
            except Exception as e:  # noqa: BLE001 -- one failed run must not stop the others
                failed[run_dir] = (
                    str(e) if isinstance(e, CaptionerError) else f"{type(e).__name__}: {e}"
                )
                log(f"[{n}/{len(todo)}] {run_dir}: failed: {failed[run_dir]}")
    return failed


@contextlib.contextmanager
def _executor(scheduler, parallel, task=run_one):
    """-> (Executor, function taking a run directory that runs task on it)."""
    if scheduler is not None:
        from . import cluster

        with cluster.executor(scheduler, parallel if scheduler == "local" else None) as (ex, _):
            yield ex, task
        return
    threads = max(1, len(os.sched_getaffinity(0)) // parallel)
    children = set()
    with ThreadPoolExecutor(parallel) as pool:
        try:
            yield pool, lambda run_dir: _run_subprocess(run_dir, threads, children, task)
        except BaseException:  # Ctrl-C or an error: children save their last.npz and stop
            pool.shutdown(wait=False, cancel_futures=True)
            for p in list(children):
                p.terminate()
            for p in list(children):
                p.wait()
            raise


def _run_subprocess(run_dir, blas_threads, children, task=run_one):
    """task (run_one or alike) in a fresh interpreter whose BLAS uses blas_threads (read
    when numpy loads, so it must be in the environment before the process starts)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, **{v: str(blas_threads) for v in BLAS_VARS})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "captioner.cli.worker",
            run_dir,
            str(os.getpid()),
            f"{task.__module__}:{task.__name__}",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    children.add(p)
    try:
        _, err = p.communicate()
    finally:
        children.discard(p)
    if p.returncode != 0:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        raise CaptionerError(
            lines[-1] if lines else f"exit status {p.returncode}; see {run_dir}/train.log"
        )
    return _read(os.path.join(run_dir, "result.json"))


# ---------------------------------------------------------------- the table


def summarize(out):
    """-> one row per run directory of the sweep in OUT, finished or not:
    {run, settings (all), status, epochs, best_val_loss, CIDEr, Bleu_4, seconds}."""
    rows = []
    for name in sorted(os.listdir(out)):
        run_dir = os.path.join(out, name)
        if not os.path.isfile(os.path.join(run_dir, "run.json")):
            continue
        spec = _read(os.path.join(run_dir, "run.json"))
        row = {
            "run": run_dir,
            "settings": spec,
            "epochs": 0,
            "best_val_loss": None,
            "CIDEr": None,
            "Bleu_4": None,
            "seconds": None,
        }
        result = finished(run_dir)
        if result is not None:
            row.update(result, status="finished")
        else:
            hist = os.path.join(run_dir, "history.json")
            records = _read(hist).get("epochs", []) if os.path.exists(hist) else []
            losses = [r["val_loss"] for r in records if "val_loss" in r]
            row.update(
                epochs=len(records),
                best_val_loss=min(losses) if losses else None,
                seconds=round(sum(r["seconds"] for r in records), 2) if records else None,
                status=(f"{len(records)}/{spec['epochs']} epochs" if records else "not started"),
            )
        rows.append(row)
    if not rows:
        raise CaptionerError(
            f"{out}: no sweep runs here (no */run.json); "
            f"pass the --out folder of a `captioner sweep`"
        )
    return rows


def differing(rows):
    """The settings whose values differ between the runs (grid order), never empty."""
    keys = [k for k in RUN_KEYS if len({json.dumps(r["settings"].get(k)) for r in rows}) > 1]
    return keys or ["cell"]


def sort_rows(rows, by="val_loss"):
    """Best first: lowest val loss, highest CIDEr-D, or shortest time; runs without the
    figure last."""
    key = {"val_loss": "best_val_loss", "cider": "CIDEr", "time": "seconds"}[by]
    sign = -1 if by == "cider" else 1
    return sorted(rows, key=lambda r: (r[key] is None, sign * (r[key] or 0), r["run"]))


def _fmt(x, spec=".4f"):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def table(rows):
    """Rows (already sorted) -> the text table: settings that differ, then the figures."""
    keys = differing(rows)
    head = [k.replace("_", "-") for k in keys]
    head += ["best val loss", "CIDEr-D", "time", "status", "run"]
    body = [
        [_setting(r["settings"].get(k)) for k in keys]
        + [
            _fmt(r["best_val_loss"]),
            _fmt(r["CIDEr"], ".3f"),
            "-" if r["seconds"] is None else f"{r['seconds']:.1f}s",
            r["status"],
            r["run"],
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    return "\n".join(
        "  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [head] + body
    )


def _setting(v):
    return "-" if v is None else format(v, "g") if isinstance(v, float) else str(v)


def as_json(rows):
    keys = differing(rows)
    return [
        {
            "run": r["run"],
            "settings": {k: r["settings"].get(k) for k in keys},
            "status": r["status"],
            "epochs": r["epochs"],
            "best_val_loss": r["best_val_loss"],
            "CIDEr": r["CIDEr"],
            "Bleu_4": r["Bleu_4"],
            "seconds": r["seconds"],
        }
        for r in rows
    ]
