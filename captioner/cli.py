"""The `captioner` command: a thin shell over the library.

Heavy imports (numpy, h5py) happen inside the commands so `captioner --help`
starts instantly.
"""

import contextlib
import math
import os
import signal
import sys
import threading

import click

from . import __version__, config, encoders, limits
from .cells import CELLS
from .errors import CaptionerError, printable

DATA_DEFAULT = config.DATA_DEFAULT
SPLITS = ["train", "val", "test"]


def _echo(text="", err=False):
    """click.echo of one line (after any leading blank lines), with every character a
    terminal would act on escaped (errors.printable): file, run and picture names and
    captions come from users, and must not forge lines or send escape sequences."""
    text = str(text)
    body = text.lstrip("\n")
    click.echo(text[: len(text) - len(body)] + printable(body), err=err)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C is, so that what a command cleans up on the way out (temp
    files, an unpacking folder, child processes) is cleaned up for a kill too."""

    signum = signal.SIGTERM


def _terminate(signum, frame):
    raise _Terminated


def _interrupted(e):
    """The exit status of a command stopped by Ctrl-C (130) or SIGTERM (143)."""
    return 128 + getattr(e, "signum", signal.SIGINT)


class _Group(click.Group):
    """Turn CaptionerError into one line on stderr and its exit code, never a traceback;
    and Ctrl-C or SIGTERM that a command does not handle itself into one line and 130/143."""

    def invoke(self, ctx):
        main = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGTERM, _terminate) if main else None
        try:
            return super().invoke(ctx)
        except CaptionerError as e:
            _echo(f"captioner: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt as e:
            _echo("", err=True)
            _echo(
                "captioner: interrupted; files are written whole or not at all: run the same "
                "command again (download and prepare resume where they stopped)",
                err=True,
            )
            ctx.exit(_interrupted(e))
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)


class _Positive(click.ParamType):
    """A finite number > 0 (click's FloatRange lets NaN through)."""

    name = "number"

    def __init__(self, allow_zero=False):
        self.allow_zero = allow_zero

    def convert(self, value, param, ctx):
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(v) or v < 0 or (v == 0 and not self.allow_zero):
            self.fail(
                f"{value!r} must be a finite number {'>=' if self.allow_zero else '>'} 0",
                param,
                ctx,
            )
        return v


class _Cutoffs(click.ParamType):
    """Increasing word counts such as 2000,6000 -> [2000, 6000] (a list passes through)."""

    name = "c1,c2,..."

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            cutoffs = [int(t) for t in str(value).split(",")]
        except ValueError:
            cutoffs = None
        if not cutoffs or any(c < 1 for c in cutoffs) or cutoffs != sorted(set(cutoffs)):
            self.fail(f"{value!r}: expected increasing word counts such as 2000,6000", param, ctx)
        return cutoffs


POSITIVE = _Positive()
NON_NEGATIVE = _Positive(allow_zero=True)
COUNT = click.IntRange(min=1)
SEED = click.IntRange(min=0)  # numpy seeds are non-negative
MAX_LENGTH = click.IntRange(1, limits.MAX_LENGTH)


def data_option(f):
    f = click.option(
        "--features",
        default="auto",
        show_default=True,
        help="Feature kind: pca (512-d), fc7 (4096-d), or a kind written by "
        "`captioner prepare`; auto takes pca when present.",
    )(f)
    return click.option(
        "--data",
        type=click.Path(file_okay=False),
        envvar="CAPTIONER_DATA",
        default=DATA_DEFAULT,
        show_default=True,
        help="Dataset directory in the CS231n coco_captioning layout (env CAPTIONER_DATA).",
    )(f)


def encoder_option(default, what):
    """--encoder NAME (captioner.encoders), for the commands that encode pictures."""
    return click.option(
        "--encoder",
        type=click.Choice(list(encoders.ENCODERS)),
        default=default,
        show_default=True,
        help=f"The picture encoder {what}.",
    )


def _load_data(data, features, splits=("train", "val"), max_train=None, fallback=None):
    from .data import DEMO_DATA, open_dataset

    return open_dataset(
        data, features, splits=splits, max_train=max_train, fallback=fallback or DEMO_DATA
    )


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="captioner")
def cli():
    """A NumPy image captioner: CNN features + RNN/LSTM decoder, trained on COCO.

    \b
    Start with the sanity check, then train:
      captioner overfit --small
      captioner train --cell lstm --epochs 10
      captioner sample --checkpoint runs/<run>/best.npz --split val
    """
    _show_library_log()


def _show_library_log():
    """The library reports through the "captioner" logger; the CLI shows it on stderr, as
    bare lines (each invocation: click's test runner swaps sys.stderr)."""
    import logging

    log = logging.getLogger("captioner")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


# ---------------------------------------------------------------- train


def _option(setting, many):
    """The click option of one config.Setting (compare's repeatable form when many)."""
    s = setting
    if s.kind == "choice":
        kind = click.Choice(list(s.choices))
    elif s.kind == "float":
        kind = POSITIVE if s.positive else NON_NEGATIVE
    elif s.kind == "cutoffs":
        kind = _Cutoffs()
    elif s.high is not None:
        kind = click.IntRange(s.low, s.high)
    else:
        kind = click.IntRange(min=s.low)
    repeat = many and s.many is not None
    text = s.help
    if s.many is not None:
        text += f" (repeat: {s.repeat})." if repeat else "."
    return click.option(
        s.flag,
        type=kind,
        multiple=repeat,
        default=s.many if repeat else s.default,
        show_default=s.default is not None,
        help=text or None,
    )


def train_options(many=False, run_dir_options=True):
    """The options of `train`, shared with `compare` and `sweep`, made from
    config.TRAIN_CONFIG. many: the settings with a repeatable form (--cell,
    --weight-decay, --forget-bias, --seed) take several values (compare trains one run
    per combination). run_dir_options False: without --out,
    --resume and --quiet (sweep has its own --out)."""
    options = [_option(s, many) for s in config.OPTIONS] + [
        click.option(
            "--out",
            type=click.Path(file_okay=False),
            default=None,
            help="Parent directory of the runs (default runs/<timestamp>-compare)."
            if many
            else "Run directory (default runs/<timestamp>-<cell>).",
        ),
        click.option(
            "--resume",
            type=click.Path(exists=True),
            default=None,
            help="Continue a comparison: its --out directory. --epochs may extend it."
            if many
            else "Continue a run: its directory or a checkpoint. --epochs may extend it.",
        ),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    if not run_dir_options:
        options = options[:-3]

    def apply(f):
        for option in reversed(options):
            f = option(f)
        return data_option(f)

    return apply


@cli.command()
@train_options()
@click.pass_context
def train(ctx, out, resume, quiet, **options):
    """Train a captioner on COCO features.

    \b
    Example:
      captioner train --cell lstm --epochs 10 --out runs/lstm
      captioner train --resume runs/lstm --epochs 20
    """
    from . import checkpoint, runs, training

    given = _given(ctx)
    data, cell = options["data"], options["cell"]
    if resume:
        path = runs.find_checkpoint(resume)
        model, meta, state = training.resume_run(path)
        settings = dict(state["settings"])
        problem = config.resume_contradiction(
            {k: v for k, v in options.items() if k in given}, meta, settings, path
        )
        if problem:
            raise click.UsageError(problem)
        if "epochs" in given:
            settings["epochs"] = options["epochs"]
        data_dir = data if "data" in given else settings.get("data_dir", data)
        d = _load_data(data_dir, meta["features"]["kind"], max_train=settings.get("max_train"))
        checkpoint.check_compatible(path, meta, d)
        run_dir = os.path.dirname(path) or os.curdir  # as the user wrote it, not absolute
        if out is not None and os.path.abspath(out) != os.path.abspath(run_dir):
            run_dir = runs.new_run_dir(out, cell)  # never over another run's checkpoints
        _echo(f"resuming {path} at epoch {state['epoch'] + 1}, step {state['step']}")
    else:
        _check_keep_best(options)
        d = _load_data(data, options["features"], max_train=options["max_train"])
        model = training.new_model(d, **{k: options[k] for k in training.MODEL_OPTIONS})
        settings = config.settings_of(options, os.path.abspath(d["base_dir"]), d["feature_kind"])
        state = None
        run_dir = runs.new_run_dir(out, cell)
    _echo(
        f"{len(d['train_captions']):,} training captions, {model.cell_type} "
        f"hidden {model.hidden_dim}, {d['encoder']} features ({d['feature_dim']}-d) -> {run_dir}"
    )
    with runs.run_lock(run_dir):
        try:
            state = training.train(
                d,
                model,
                run_dir,
                state=state,
                progress=_training_bar(quiet),
                log=_echo,
                **settings,
            )
        except runs.Interrupted as e:
            _echo(f"\n{e}; continue with: captioner train --resume {run_dir}", err=True)
            ctx.exit(128 + e.signum)
        except (
            KeyboardInterrupt
        ):  # a second Ctrl-C: stop now; the last checkpoint on disk is intact
            _echo(f"\nstopped; continue with: captioner train --resume {run_dir}", err=True)
            ctx.exit(130)
    best = state["best"]
    _echo(
        f"done: {run_dir}/last.npz; best ({best['metric']} {best['value']:.4f}, "
        f"epoch {best['epoch']}): {run_dir}/best.npz"
    )


def _training_bar(quiet):
    """training.train's progress callback drawing a tqdm bar per epoch; None when quiet."""
    if quiet:
        return None
    from tqdm import tqdm

    bar = None

    def show(epoch, epochs, step, steps, loss):
        nonlocal bar
        if loss is None:  # an epoch starts
            if bar is not None:
                bar.close()
            bar = tqdm(
                initial=step,
                total=steps,
                desc=f"epoch {epoch + 1}/{epochs}",
                disable=None,  # only on a terminal, never in logs
                leave=False,
                unit="batch",
                dynamic_ncols=True,
            )
            return
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar.update(1)
        if step == steps:
            bar.close()
            bar = None

    return show


def _given(ctx):
    """The names of the options the user typed (not their defaults)."""
    return {
        p
        for p in ctx.params
        if ctx.get_parameter_source(p) is not click.core.ParameterSource.DEFAULT
    }


def _check_keep_best(settings):
    if settings["keep_best"] == "cider" and not settings["eval_every"]:
        raise click.UsageError("--keep-best cider needs --eval-every N")


# ---------------------------------------------------------------- sweep


def executor_options(f):
    """--parallel and --scheduler: where independent training runs go (sweep, compare)."""
    f = click.option(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="Run on a Dask cluster: tcp://HOST:8786, or local (needs captioner[cluster]).",
    )(f)
    return click.option(
        "--parallel",
        type=COUNT,
        default=1,
        show_default=True,
        help="Runs at a time on this machine, BLAS threads split between them "
        "(with --scheduler local: its worker processes).",
    )(f)


@cli.command()
@train_options(run_dir_options=False)
@click.option(
    "--grid",
    multiple=True,
    metavar="NAME=V1,V2,...",
    help="A train setting to vary (cell, lr, hidden-dim, weight-decay, ...); "
    "repeat for more: one run per combination.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="runs/sweep",
    show_default=True,
    help="Sweep folder, one run directory per combination.",
)
@executor_options
@click.option(
    "--summary",
    "summary_dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Only print the table of the sweep in this folder, at any time.",
)
@click.option(
    "--sort-by",
    type=click.Choice(["val_loss", "cider", "time"]),
    default="val_loss",
    show_default=True,
    help="Order of the table: best first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@click.pass_context
def sweep(ctx, grid, out, parallel, scheduler, summary_dir, sort_by, as_json, **settings):
    """Train one run per combination of settings, in parallel, and rank them.

    \b
    Killed? Run the same command again: finished runs are skipped, the others resume.
    Each run is an ordinary run directory (evaluate, sample, train --resume work on it).
    Example:
      captioner sweep --data data/demo/dataset --grid cell=rnn,lstm --grid lr=1e-3,5e-4 \\
          --epochs 5 --parallel 2 --out runs/sweep1
      captioner sweep --summary runs/sweep1 --sort-by cider
    """
    import json

    from . import sweep as sweeps

    failed = {}
    if summary_dir:
        rows = sweeps.summarize(summary_dir)
    else:
        if not grid:
            raise click.UsageError(
                "give the settings to vary: --grid NAME=V1,V2,... "
                "(or --summary DIR for the table of a sweep)"
            )
        params = {p.name: p for p in ctx.command.params}

        def convert(name, text):
            try:
                return params[name].type.convert(text, params[name], ctx)
            except click.BadParameter as e:
                raise CaptionerError(f"--grid {name}={text}: {e.message}") from None

        the_grid = sweeps.parse_grid(grid, convert)
        for name, _ in the_grid:
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
                raise click.UsageError(
                    f"--{name.replace('_', '-')} is both an option and in --grid; keep one"
                )
        base = {k: settings[k] for k in sweeps.RUN_KEYS}
        base["data"] = os.path.abspath(base["data"])
        for _, s in sweeps.plan(base, the_grid):
            _check_keep_best(s)
        try:
            rows, failed = sweeps.run_sweep(
                out,
                base,
                the_grid,
                parallel=parallel,
                scheduler=scheduler,
                log=lambda line: _echo(line, err=as_json),
            )
        except KeyboardInterrupt as e:
            _echo("\ninterrupted; run the same command again to resume", err=True)
            sys.exit(_interrupted(e))
    rows = sweeps.sort_rows(rows, sort_by)
    if as_json:
        click.echo(json.dumps(sweeps.as_json(rows), indent=1))
    else:
        if not summary_dir:
            _echo()
        for line in sweeps.table(rows).splitlines():
            _echo(line)
    if failed:
        sys.exit(1)


# ---------------------------------------------------------------- overfit


@cli.command()
@data_option
@click.option(
    "--small", is_flag=True, help="The CS231n sanity check: 50 captions (the default size)."
)
@click.option(
    "--cell",
    type=click.Choice(list(CELLS)),
    default=None,
    help="One cell only (default: rnn and lstm, side by side).",
)
@click.option(
    "--n", type=COUNT, default=50, show_default=True, help="How many captions to memorise."
)
@click.option("--epochs", type=COUNT, default=50, show_default=True)
@click.option(
    "--captions",
    "show_captions",
    is_flag=True,
    help="Also print each memorised caption beside its ground truth.",
)
def overfit(data, features, small, cell, n, epochs, show_captions):
    """Memorise a tiny subset to near-zero loss: the first check to run.

    \b
    Passes (exit 0) when the final loss is below 0.1 (rnn) / 0.5 (lstm, gru).
    Example:
      captioner overfit --small
      captioner overfit --small --data data/synthetic --captions
      captioner overfit --cell rnn --n 100
    """
    # CS231n's settings memorise its PCA features (and the synthetic ones); the demo's
    # L2-normalised features barely tell 50 images apart at that learning rate
    from .data import SYNTHETIC_DATA
    from .training import overfit as run

    d = _load_data(data, features, splits=("train",), fallback=SYNTHETIC_DATA)
    cells = [cell] if cell else ["rnn", "lstm"]
    results = {}
    for c in cells:
        _echo(
            f"overfitting {min(n, len(d['train_captions']))} captions of {d['base_dir']} "
            f"with the {c} cell ..."
        )
        results[c] = run(d, c, n=n, epochs=epochs)
    _echo("\nloss per epoch (mean over the epoch's batches)")
    _echo("epoch " + "".join(f"{c:>10}" for c in cells))
    n_epochs = len(results[cells[0]]["state"]["epochs"])
    for e in sorted({0, n_epochs - 1} | set(range(4, n_epochs, 5))):
        _echo(
            f"{e + 1:5d} "
            + "".join(f"{results[c]['state']['epochs'][e]['train_loss']:10.4f}" for c in cells)
        )

    truth = results[cells[0]]["truth"]
    if show_captions:
        _echo(f"\n{_plural(len(truth), 'memorised image')}: sampled caption vs ground truth")
        for j, t in enumerate(truth):
            _echo(f"  truth: {t}")
            for c in cells:
                s = results[c]["sampled"][j]
                _echo(f"  {c:>5}: {s}{'' if s == t else '   [differs]'}")
    _echo("")
    for c in cells:
        r = results[c]
        _echo(
            f"{c}: final loss {r['final_loss']:.4f} ({'PASS' if r['passed'] else 'FAIL'}, "
            f"needs < {r['limit']}); {r['exact']}/{len(truth)} sampled captions equal "
            f"their ground truth"
        )
    if not all(r["passed"] for r in results.values()):
        sys.exit(1)


# ---------------------------------------------------------------- gradients


@cli.command()
@click.option(
    "--checkpoint",
    "ckpts",
    type=click.Path(exists=True, dir_okay=False),
    multiple=True,
    help="A trained model (repeat to compare several; those of one setting, differing only "
    "in --seed, are also summarised over seeds).",
)
@click.option(
    "--runs",
    "compare_dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Every run of a `captioner compare` folder (its last.npz), summarised per setting "
    "over seeds.",
)
@click.option(
    "--cell",
    "cells",
    type=click.Choice(list(CELLS)),
    multiple=True,
    help="A fresh model, initialised as `train` would (repeat: --cell rnn --cell lstm).",
)
@data_option
@click.option("--split", type=click.Choice(["train", "val"]), default="val", show_default=True)
@click.option(
    "--count",
    type=COUNT,
    default=500,
    show_default=True,
    help="Use the first N captions of the split, in file order.",
)
@click.option(
    "--length",
    type=click.IntRange(min=2),
    default=None,
    help="Also feed L random words per image: the decay past caption lengths.",
)
@click.option(
    "--seed",
    type=SEED,
    default=0,
    show_default=True,
    help="Seed of the fresh models and of the random words.",
)
@click.option(
    "--forget-bias",
    type=NON_NEGATIVE,
    default=0.0,
    show_default=True,
    help="Fresh LSTMs only: the initial forget-gate bias, as `train --forget-bias`.",
)
@click.option(
    "--hidden-dim",
    type=click.IntRange(1, limits.MAX_DIM),
    default=512,
    show_default=True,
    help=f"Fresh models only (at most {limits.MAX_DIM}).",
)
@click.option(
    "--wordvec-dim",
    type=click.IntRange(1, limits.MAX_DIM),
    default=256,
    show_default=True,
    help=f"Fresh models only (at most {limits.MAX_DIM}).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="Draw log gradient norm against distance, every model on one chart (PNG).",
)
@click.option("--force", is_flag=True, help="Let --plot replace an existing file.")
def gradients(
    ckpts,
    compare_dir,
    cells,
    data,
    features,
    split,
    count,
    length,
    seed,
    forget_bias,
    hidden_dim,
    wordvec_dim,
    as_json,
    plot,
    force,
):
    """How far back the training signal reaches: RNN vs LSTM, through time.

    \b
    For each caption, the gradient of its last word's loss with respect to every
    earlier hidden state (and the LSTM's cell state), and of every word's loss
    with respect to the image projection h0: mean norms by distance, the
    per-step gain, the LSTM's forget gate and the largest singular value of Wh.
    Example:
      captioner gradients --cell rnn --cell lstm --data data/demo/dataset --plot flow.png
      captioner gradients --checkpoint runs/rnn/last.npz --checkpoint runs/lstm/last.npz
      captioner gradients --runs runs/cmp
    """
    import json

    from . import compare as cmp
    from . import gradients as flow
    from . import plots
    from .checkpoint import load_model
    from .training import new_model

    if not ckpts and not cells and not compare_dir:
        raise click.UsageError(
            f"give --checkpoint FILE, --runs DIR or --cell {'|'.join(CELLS)} (each may repeat)"
        )
    if plot:
        plots.check_writable(plot, force)
    # Load and check everything first: a bad input stops before any work.
    models, loaded = [], {}
    groups = {}  # a setting's key -> (its name or None, [its models' indices])
    paths = [(ckpt, None) for ckpt in ckpts]
    if compare_dir:
        plan = cmp.load_plan(compare_dir, flag="--runs")
        paths += [
            (os.path.join(compare_dir, name, "last.npz"), setting["name"])
            for name, setting, _ in cmp.run_names(plan)
        ]
    for ckpt, setting in paths:
        model, meta, _, _ = load_model(ckpt)
        d = _checkpoint_data(ckpt, meta, data, split)
        key = setting or flow.setting_key(meta)
        groups.setdefault(key, (setting, []))[1].append(len(models))
        models.append((ckpt, model, d))
    for cell in cells:
        key = (data, features)
        if key not in loaded:
            loaded[key] = _load_data(data, features, splits=(split,))
        d = loaded[key]
        bias = forget_bias if CELLS[cell].forget_gate is not None else 0.0
        model = new_model(d, cell, hidden_dim, wordvec_dim, seed, forget_bias=bias)
        groups[len(models)] = (None, [len(models)])
        note = f", forget bias {bias:g}" if bias else ""
        models.append((f"{cell} (fresh, seed {seed}{note})", model, d))
    batches = [flow.first_captions(d, split, count) for _, _, d in models]
    runs = [
        flow.measure(model, feats, caps, label, length=length, seed=seed)
        for (label, model, _), (feats, caps) in zip(models, batches)
    ]
    spreads = [flow.spread([runs[i] for i in idx], name) for name, idx in groups.values()]
    if plot:
        plots.gradient_plot(
            [
                (g["label"], [runs[i] for i in idx])
                for g, (_, idx) in zip(spreads, groups.values())
            ],
            plot,
        )
    if as_json:
        click.echo(json.dumps({"runs": runs, "settings": [g for g in spreads if g["n"] > 1]}))
        return
    bases = sorted({d["base_dir"] for _, _, d in models})
    what = f"the first {len(batches[0][1])} captions of {split} in {', '.join(bases)}"
    for line in flow.format_table(runs, what):
        _echo(line)
    several = [g for g in spreads if g["n"] > 1]
    if several:
        _echo("")
        _echo("over the checkpoints of one setting: mean +- std [min .. max]")
        for g in several:
            _echo(flow.spread_line(g))
    if plot:
        _echo(f"plot: {plot}")


# ---------------------------------------------------------------- compare


@cli.command()
@train_options(many=True)
@click.option(
    "--seeds",
    "n_seeds",
    type=COUNT,
    default=None,
    help="Train every setting with seeds 0 .. N-1 (instead of repeating --seed).",
)
@click.option(
    "--count",
    type=COUNT,
    default=500,
    show_default=True,
    help="Val captions for the gradient-flow summary.",
)
@executor_options
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also draw the loss curves of all settings on this chart (PNG).",
)
@click.option("--force", is_flag=True, help="Let --plot replace an existing file.")
@click.pass_context
def compare(ctx, out, resume, quiet, count, n_seeds, plot, force, parallel, scheduler, **options):
    """Train the cells alike over several seeds and compare them in one table.

    \b
    Same data and settings for every run (every `train` option works); one run per
    cell, --weight-decay, LSTM --forget-bias (each repeatable) and seed, each in a run
    directory under --out. Prints each figure's mean, spread and per-seed values, and per
    claim in how many seeds it holds. Interrupted? `--resume DIR` continues where it stopped
    (with --seeds N or --seed: adds seeds; with --cell: adds cells).
    Example:
      captioner compare --data data/demo/dataset --epochs 10 --seeds 3 --parallel 2 \\
          --out runs/cmp --plot loss.png
      captioner compare --resume runs/cmp
    """
    from . import compare as cmp
    from . import plots, runs

    if plot:
        plots.check_writable(plot, force)
    given = _given(ctx)
    if n_seeds and "seed" in given:
        raise click.UsageError("give --seeds N or --seed (repeatable), not both")
    seeds = range(n_seeds) if n_seeds else options["seed"]
    if resume:
        parent = resume
        plan = cmp.load_plan(
            parent,
            options["epochs"] if "epochs" in given else None,
            options["data"] if "data" in given else None,
            seeds if n_seeds or "seed" in given else None,
            cells=options["cell"] if "cell" in given else None,
        )
        _echo(f"resuming the comparison in {parent}")
    else:
        _check_keep_best(options)
        d = _load_data(options["data"], options["features"], max_train=options["max_train"])
        settings = config.settings_of(options, os.path.abspath(d["base_dir"]), d["feature_kind"])
        for per_run in ("weight_decay", "forget_bias", "seed"):  # the plan's lists
            del settings[per_run]
        model = {k: options[k] for k in ("hidden_dim", "wordvec_dim")}
        parent = runs.new_run_dir(out, "compare")
        plan = cmp.new_plan(
            parent,
            options["cell"],
            options["weight_decay"],
            options["forget_bias"],
            seeds,
            settings,
            model,
            count,
        )
    try:
        cmp.train_runs(parent, plan, parallel, scheduler, progress=_training_bar(quiet), log=_echo)
    except runs.Interrupted as e:
        _echo(f"\n{e}; continue with: captioner compare --resume {parent}", err=True)
        ctx.exit(128 + e.signum)
    except KeyboardInterrupt:
        _echo(f"\nstopped; continue with: captioner compare --resume {parent}", err=True)
        ctx.exit(130)
    res = cmp.collect(parent, plan)
    cmp.save_results(parent, plan, res)
    _echo("")
    for line in cmp.format_results(res):
        _echo(line)
    cmp.draw(parent, res, plot)
    _echo(
        f"written: {parent}/compare.json, gradients.json, compare-loss.png, gradients.png"
        + (f"; plot: {plot}" if plot else "")
    )


# ---------------------------------------------------------------- sample


@cli.command()
@click.argument("images", nargs=-1)
@click.option(
    "--checkpoint",
    "ckpt",
    type=click.Path(),
    default=None,
    help="Checkpoint (default: the newest runs/*/best.npz).",
)
@data_option
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default=None,
    help="Caption dataset images instead of picture files.",
)
@click.option(
    "--count", type=COUNT, default=5, show_default=True, help="Dataset images to caption."
)
@click.option(
    "--beam-size",
    type=click.IntRange(1, limits.MAX_BEAM),
    default=3,
    show_default=True,
    help=f"1 is greedy (at most {limits.MAX_BEAM}).",
)
@click.option(
    "--n-best",
    type=click.IntRange(1, limits.MAX_N_BEST),
    default=1,
    show_default=True,
    help=f"Print the N best captions with their log-probabilities (at most {limits.MAX_N_BEST}).",
)
@click.option(
    "--temperature",
    type=POSITIVE,
    default=None,
    help="Sample words at this temperature instead of beam search (diverse captions).",
)
@click.option(
    "--max-length",
    type=MAX_LENGTH,
    default=16,
    show_default=True,
    help=f"Words per caption at most (up to {limits.MAX_LENGTH}).",
)
@click.option("--seed", type=SEED, default=None, help="Pick the same images / samples again.")
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write [{file_name, caption, log_prob, image_id}] to this file.",
)
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write a gallery page of the captioned pictures to this file.",
)
@click.option("--force", is_flag=True, help="Let --json and --html replace existing files.")
def sample(
    images,
    ckpt,
    data,
    features,
    split,
    count,
    beam_size,
    n_best,
    temperature,
    max_length,
    seed,
    json_out,
    html_out,
    force,
):
    """Caption picture files and folders of pictures, or images of the dataset (--split).

    \b
    Example:
      captioner sample photo.jpg --checkpoint runs/demo/best.npz
      captioner sample photos/ --json captions.json --html captions.html
      captioner sample --checkpoint runs/lstm/best.npz --split val --count 5
    """
    import numpy as np

    from .checkpoint import load_model
    from .pictures import caption_features, caption_images
    from .vocab import decode_captions

    if not images and split is None:
        raise click.UsageError("give picture files to caption, or --split train|val|test")
    if (json_out or html_out) and not images:
        raise click.UsageError("--json and --html are for picture files; give files or folders")
    from . import atomic

    for out, flag in ((json_out, "--json"), (html_out, "--html")):
        if out:  # before any work: never over a file of the user's without --force
            atomic.check_new_file(out, force, flag)
    ckpt = ckpt or _newest_best()
    model, meta, _, _ = load_model(ckpt)
    rng = np.random.default_rng(seed)
    decoding = dict(
        beam_size=beam_size, n_best=n_best, max_length=max_length, temperature=temperature, rng=rng
    )

    def show(title, caps, truth=()):
        _echo(title)
        for cap, lp in caps:
            _echo(f"  {cap}" + (f"   (log p {lp:.2f})" if n_best > 1 and lp is not None else ""))
        for t in truth:
            _echo(f"  truth: {t}")

    if images:
        from . import picture_files

        for out in (json_out, html_out):
            if out:
                picture_files.check_writable(out)
        enc = encoders.by_feature_id(meta["features"].get("encoder"))
        if enc is None:
            raise CaptionerError(
                f"{ckpt}: trained on {meta['features'].get('encoder')} features, which cannot be "
                f"computed from a picture (the CS231n VGG-16 PCA basis is not published); caption "
                f"dataset images with --split val, or build a dataset with `captioner prepare` "
                f"and train on it"
            )
        note = _demo_note(meta)
        files, bad = picture_files.find_pictures(images)
        # a progress bar for more than a few pictures, on a terminal (not in pipes and logs)
        results = caption_images(
            model,
            files,
            progress=len(files) > 8 and sys.stderr.isatty(),
            encoder=enc.name,
            **decoding,
        )
        for path, caps, _ in results:
            if caps is not None:
                show(path, caps)
        done = [(path, caps[0]) for path, caps, _ in results if caps is not None]
        records = picture_files.results_of(
            [p for p, _ in done], [c for _, c in done], checkpoint=ckpt, note=note
        )
        if json_out:
            picture_files.write_results(json_out, records, replace=force)
        if html_out:
            from .report import write_gallery

            write_gallery(
                records,
                html_out,
                title=f"captioner sample: {_plural(len(records), 'picture')}",
                replace=force,
                checkpoint=ckpt,
                note=note,
            )
        errors = [message for _, message in bad]
        errors += [message for _, caps, message in results if caps is None]
        for message in errors:
            _echo(f"captioner: error: {message}", err=True)
        if errors:
            sys.exit(1)
        return

    from .data import image_groups

    d = _checkpoint_data(ckpt, meta, data, split)
    idxs, rows = image_groups(d, split)
    pick = np.sort(rng.choice(len(idxs), size=min(count, len(idxs)), replace=False))
    urls = d.get(f"{split}_urls")
    for p, caps in zip(
        pick, caption_features(model, d[f"{split}_features"][idxs[pick]], **decoding)
    ):
        truth = decode_captions(d[f"{split}_captions"][rows[p]], d["idx_to_word"])
        show(urls[idxs[p]] if urls else f"{split} image {idxs[p]}", caps, truth)


# ---------------------------------------------------------------- report


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True)
@click.option(
    "--out",
    type=click.Path(),
    default="report.html",
    show_default=True,
    help="The HTML file to write.",
)
@click.option(
    "--split",
    type=click.Choice(["train", "val", "test"]),
    default="val",
    show_default=True,
    help="The split to caption, score and show.",
)
@click.option(
    "--count",
    type=COUNT,
    default=24,
    show_default=True,
    help="Gallery pictures per run: a third best, a third worst, a third at random.",
)
@click.option(
    "--beam-size",
    type=click.IntRange(1, limits.MAX_BEAM),
    default=3,
    show_default=True,
    help=f"1 is greedy (at most {limits.MAX_BEAM}).",
)
@click.option(
    "--max-length",
    type=MAX_LENGTH,
    default=16,
    show_default=True,
    help=f"Words per caption at most (up to {limits.MAX_LENGTH}).",
)
@click.option(
    "--max-images",
    type=COUNT,
    default=None,
    help="Score only the first N images of the split (default: all).",
)
@click.option("--no-meteor", is_flag=True, help="Skip METEOR (it needs Java and pycocoevalcap).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="The random gallery sample.")
@click.option("--force", is_flag=True, help="Let --out replace an existing file.")
@click.option(
    "--outside-pictures",
    is_flag=True,
    help="Also show pictures the dataset names outside its picture folder (each is named "
    "on stderr; off: the page is made to be shared).",
)
def report(
    run_dirs,
    out,
    split,
    count,
    beam_size,
    max_length,
    max_images,
    no_meteor,
    seed,
    force,
    outside_pictures,
):
    """One self-contained HTML page about training runs: settings, curves, scores,
    caption diversity and a gallery of captioned pictures (open it from disk).

    \b
    Example:
      captioner report runs/lstm --out lstm.html
      captioner report runs/lstm runs/rnn --split val --count 36 --out compare.html
    """
    from . import atomic
    from .report import write_report

    atomic.check_new_file(out, force, "--out")  # e.g. never over a checkpoint named by mistake
    path = write_report(
        list(run_dirs),
        out,
        replace=force,
        split=split,
        count=count,
        beam_size=beam_size,
        max_length=max_length,
        max_images=max_images,
        meteor=not no_meteor,
        seed=seed,
        log=lambda m: _echo(m, err=True),
        outside_pictures=outside_pictures,
    )
    _echo(f"report: {path} ({os.path.getsize(path) / 1e6:.1f} MB)")


# ---------------------------------------------------------------- encode


@cli.command()
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--top",
    type=click.IntRange(1, 1000),
    default=5,
    show_default=True,
    help="Classes to list (of the 1000).",
)
@encoder_option(encoders.DEFAULT, "to run")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array, a picture an entry.")
def encode(images, top, encoder, as_json):
    """Run a NumPy image encoder (EfficientNet-Lite0 or SqueezeNet 1.1): top ImageNet
    classes of each picture (folders: every picture in them, as `sample` reads them).

    \b
    Example:
      captioner encode photo.jpg --top 5
      captioner encode photos/
      captioner encode photo.jpg --encoder squeezenet --json
    """
    from . import picture_files
    from .encoder import top_k

    files, bad = picture_files.find_pictures(images)
    _, logits, ok, errors = encoders.encode_files(files, encoder)
    tops = dict(zip(ok, top_k(logits, top)))
    if as_json:
        import json

        records = [
            {
                "file": path,
                "top": [{"index": i, "label": n, "probability": p} for i, n, p in tops[path]],
            }
            for path in files
            if path in tops
        ]
        click.echo(json.dumps(records))
    else:
        for path in files:
            if path in tops:
                _echo(path)
                for idx, name, prob in tops[path]:
                    _echo(f"  {prob:6.1%}  {idx:3d}  {name}")
    errors = bad + errors
    for _path, message in errors:
        _echo(f"captioner: error: {message}", err=True)
    if errors:
        sys.exit(1)


def _demo_note(meta):
    """Say once, before captioning picture files, that a demo model knows only shapes;
    -> that note (it also goes into --json and --html), or None."""
    from .picture_files import demo_note

    note = demo_note(meta)
    if note:
        _echo(f"note: {note}", err=True)
    return note


def _checkpoint_data(ckpt, meta, data, split):
    from .runs import checkpoint_data

    return checkpoint_data(ckpt, meta, data, split)


def _newest_best():
    from .runs import newest_best

    found = newest_best()
    _echo(f"using {found}, the newest runs/*/best.npz (--checkpoint to choose)", err=True)
    return found


def _plural(n, word):
    """3, 'image' -> '3 images'; 1 -> '1 image'."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


# ---------------------------------------------------------------- evaluate


@cli.command()
@click.option(
    "--checkpoint",
    "ckpt",
    type=click.Path(),
    default=None,
    help="Model to caption the split with (default: the newest runs/*/best.npz).",
)
@data_option
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default="val",
    show_default=True,
    help="test: the test split of `prepare --flickr8k`, `--karpathy` or `--coco` "
    "(Karpathy's), the one papers report on.",
)
@click.option(
    "--max-images", type=COUNT, default=None, help="Only the first N images of the split."
)
@click.option(
    "--beam-size",
    type=click.IntRange(1, limits.MAX_BEAM),
    default=3,
    show_default=True,
    help=f"1 is greedy (at most {limits.MAX_BEAM}).",
)
@click.option(
    "--max-length",
    type=MAX_LENGTH,
    default=16,
    show_default=True,
    help=f"Words per caption at most (up to {limits.MAX_LENGTH}).",
)
@click.option(
    "--length-norm",
    type=NON_NEGATIVE,
    default=0.0,
    show_default=True,
    help="Rank beams by logprob / length**alpha (0: raw logprob).",
)
@click.option(
    "--results",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Score this COCO results file instead of a model.",
)
@click.option(
    "--references",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="COCO annotations to score --results against.",
)
@click.option("--no-meteor", is_flag=True, help="Skip METEOR (it needs Java and pycocoevalcap).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--save-results",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the generated captions in the COCO results format (a new file).",
)
@click.option("--force", is_flag=True, help="Let --save-results replace an existing file.")
def evaluate(
    ckpt,
    data,
    features,
    split,
    max_images,
    beam_size,
    max_length,
    length_norm,
    results,
    references,
    no_meteor,
    as_json,
    save_results,
    force,
):
    """Score captions with BLEU-1..4, METEOR, ROUGE-L and CIDEr-D (the COCO toolkit's numbers).

    \b
    Example:
      captioner evaluate --checkpoint runs/lstm/best.npz --split val --beam-size 3
      captioner evaluate --results captions.json --references captions_val2014.json
    """
    import json

    from . import atomic, metrics

    if save_results:  # checked first: an hour of decoding must not end in this refusal
        atomic.check_new_file(save_results, force, "--save-results")
    if results or references:
        if not (results and references):
            raise click.UsageError("--results and --references go together")
        refs = metrics.load_annotations(references)
        res = metrics.load_results(results, known_ids=set(refs))
        scores, notes = metrics.score({i: refs[i] for i in res}, res, meteor=not no_meteor)
        what = f"{_plural(len(res), 'caption')} of {results}"
        where = {}
    else:
        from .checkpoint import load_model
        from .evaluation import evaluate_model

        ckpt = ckpt or _newest_best()
        model, meta, _, _ = load_model(ckpt)
        d = _checkpoint_data(ckpt, meta, data, split)
        scores, notes, generated = evaluate_model(
            model,
            d,
            split,
            meteor=not no_meteor,
            max_images=max_images,
            beam_size=beam_size,
            max_length=max_length,
            length_norm=length_norm,
        )
        name = d["dataset"] or os.path.basename(os.path.normpath(d["base_dir"]))
        what = f"{ckpt} on {_plural(len(generated), split + ' image')} of {name}, beam {beam_size}"
        where = {"split": split, "dataset": name, "data": d["base_dir"]}
        if save_results:
            from .atomic import write_json

            write_json(save_results, generated, replace=force)
    if as_json:
        click.echo(json.dumps({"scores": scores, "notes": notes, **where}))
        return
    _echo(what)
    from .metrics import KEYS

    for k in KEYS:
        if k in scores:
            _echo(f"  {k:8s} {scores[k]:.3f}")
    for note in notes:
        _echo(f"  ({note})")


# ---------------------------------------------------------------- prepare


@cli.command()
@click.option(
    "--images",
    "images_dir",
    type=click.Path(exists=True),
    default=None,
    help="Folder of pictures (the annotations' file_name are relative to it); with "
    "--karpathy, a folder or a zip of the pictures.",
)
@click.option(
    "--captions",
    "annotations",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="COCO-format annotations: images[id, file_name], annotations[image_id, caption].",
)
@click.option(
    "--coco",
    "coco_dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Instead of --images/--captions: the folder of `captioner download --images` "
    "(the COCO 2014 zips, read without unpacking).",
)
@click.option(
    "--flickr8k",
    "flickr_dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Instead of --images/--captions: the folder of `captioner download --flickr8k` "
    "(its two zips): train / dev (as val) / test, 6,000 / 1,000 / 1,000 images.",
)
@click.option(
    "--karpathy",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Instead of --captions: a dataset in Karpathy's format (dataset_flickr30k.json, "
    "...; splits train + restval / val / test), its pictures in --images; or "
    "caption_datasets.zip with --karpathy-name.",
)
@click.option(
    "--karpathy-name",
    metavar="NAME",
    default=None,
    help="With --karpathy ZIP: the JSON inside it, e.g. dataset_flickr30k.json.",
)
@click.option(
    "--split",
    "coco_split",
    type=click.Choice(["karpathy", "official"]),
    default="karpathy",
    show_default=True,
    help="With --coco: Karpathy's train/val/test (113,287 / 5,000 / 5,000 images), "
    "or COCO's train2014/val2014.",
)
@click.option(
    "--out", type=click.Path(file_okay=False), required=True, help="Dataset folder to write."
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.1,
    show_default=True,
    help="Random share of the images held out for val.",
)
@click.option(
    "--split-by",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A file listing the val pictures' file names, one a line (instead of --val-fraction).",
)
@click.option(
    "--vocab",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Reuse this coco2014_vocab.json (other words become <UNK>).",
)
@click.option(
    "--min-count",
    type=COUNT,
    default=5,
    show_default=True,
    help="Without --vocab: keep train words seen at least this often.",
)
@click.option(
    "--max-words",
    type=click.IntRange(1, limits.MAX_WORDS),
    default=15,
    show_default=True,
    help=f"Longer captions are cut to this many words (at most {limits.MAX_WORDS}).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, limits.MAX_PREPARE_BATCH),
    default=32,
    show_default=True,
    help=f"Pictures per shard and per encoder batch (at most {limits.MAX_PREPARE_BATCH}).",
)
@encoder_option(encoders.DEFAULT, "that computes the features")
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    default=None,
    help="Encoding processes (default: all cores).",
)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option(
    "--force",
    is_flag=True,
    help="Replace --out even if it already holds files "
    "(the new dataset replaces it whole, when complete).",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    default=None,
    help="Encode on a Dask cluster: tcp://HOST:8786, or local (needs "
    "captioner[cluster]); its workers must see the pictures at the same path.",
)
@click.pass_context
def prepare(
    ctx,
    images_dir,
    annotations,
    coco_dir,
    flickr_dir,
    karpathy,
    karpathy_name,
    coco_split,
    out,
    val_fraction,
    split_by,
    vocab,
    min_count,
    max_words,
    batch_size,
    workers,
    seed,
    force,
    scheduler,
    encoder,
):
    """Build a dataset in the CS231n layout from pictures, with NumPy EfficientNet-Lite0 (or
    SqueezeNet) features.

    \b
    Interrupted? Run the same command again: it resumes where it stopped.
    Example:
      captioner prepare --images photos/ --captions captions.json --out data/mine
      captioner prepare --flickr8k data/flickr8k --out data/flickr8k-ds
      captioner prepare --karpathy dataset_flickr30k.json --images flickr30k-images.zip \\
          --out data/flickr30k-ds
      captioner prepare --karpathy data/coco2014/caption_datasets.zip \\
          --karpathy-name dataset_flickr30k.json --images flickr30k-images/ --out data/f30k
      captioner prepare --coco data/coco2014 --out data/coco2014-karpathy
    """
    from .prepare import prepare_coco, prepare_dataset, prepare_flickr8k, prepare_karpathy

    given = {
        p
        for p in ctx.params
        if ctx.get_parameter_source(p) is not click.core.ParameterSource.DEFAULT
    }
    flags = {
        "images_dir": "--images",
        "annotations": "--captions",
        "val_fraction": "--val-fraction",
        "split_by": "--split-by",
        "seed": "--seed",
        "coco_split": "--split",
        "karpathy_name": "--karpathy-name",
    }
    modes = {"coco_dir": "--coco", "flickr_dir": "--flickr8k", "karpathy": "--karpathy"}
    chosen = [m for m in modes if m in given]
    if len(chosen) > 1:
        raise click.UsageError(f"{modes[chosen[0]]} and {modes[chosen[1]]} do not go together")
    mode = chosen[0] if chosen else None
    takes = {"coco_dir": {"coco_split"}, "karpathy": {"images_dir", "karpathy_name"}}
    extra = sorted(given & set(flags) - takes.get(mode, set()), key=list(flags).index)
    if mode and extra:
        raise click.UsageError(
            f"{modes[mode]} takes its splits from its own files; drop {flags[extra[0]]}"
        )
    if mode == "karpathy" and not images_dir:
        raise click.UsageError("--karpathy needs --images: the folder or zip of its pictures")
    if mode is None:
        if "karpathy_name" in given:
            raise click.UsageError("--karpathy-name goes with --karpathy ZIP")
        if not (images_dir and annotations):
            raise click.UsageError(
                "give --images and --captions, or --flickr8k DIR, --karpathy FILE or --coco DIR"
            )
        if "coco_split" in given:
            raise click.UsageError(
                "--split karpathy|official goes with --coco (use --split-by here)"
            )
    options = dict(
        vocab=vocab,
        min_count=min_count,
        max_words=max_words,
        batch_size=batch_size,
        force=force,
        encoder=encoder,
    )
    try:
        with _shard_executor(scheduler, workers) as shards:
            if flickr_dir:
                s = prepare_flickr8k(flickr_dir, out, **options, **shards)
            elif karpathy:
                s = prepare_karpathy(
                    karpathy, images_dir, out, member=karpathy_name, **options, **shards
                )
            elif coco_dir:
                s = prepare_coco(coco_dir, out, split=coco_split, **options, **shards)
            else:
                s = prepare_dataset(
                    images_dir,
                    annotations,
                    out,
                    val_fraction=val_fraction,
                    split_by=split_by,
                    vocab=vocab,
                    min_count=min_count,
                    max_words=max_words,
                    batch_size=batch_size,
                    seed=seed,
                    force=force,
                    encoder=encoder,
                    **shards,
                )
    except KeyboardInterrupt as e:
        _echo("\ninterrupted; run the same command again to resume", err=True)
        sys.exit(_interrupted(e))
    if s["done_before"]:
        _echo(
            f"{s['out_dir']}: already built by this command (same pictures, captions and "
            f"settings); nothing to do"
        )
    name = f"{s['dataset']}, " if s.get("dataset") else ""
    _echo(
        f"{s['out_dir']}: {name}{s['encoder']} features, "
        f"vocabulary {_plural(s['vocab_size'], 'word')}"
    )
    for split in SPLITS:
        if split in s:
            t = s[split]
            _echo(
                f"  {split}: {_plural(t['images'], 'image')}, "
                f"{_plural(t['captions'], 'caption')}, {t['unk_words']:.1%} of words <UNK>"
            )
    if not s["done_before"]:
        _echo(
            f"  encoded {_plural(s['encoded_images'], 'image')} ({s['resumed_images']:,} "
            f"resumed) at {s['images_per_second']:.1f} images/s with {s['workers']} worker(s)"
        )
    if s["skipped"]:
        _echo(f"  skipped {len(s['skipped']):,} picture(s):")
    for name, reason in s["skipped"][:10]:
        shown = repr(name) if _odd(name) else name
        _echo(f"  skipped {shown}: {reason}")
    if len(s["skipped"]) > 10:
        _echo(f"  ... and {len(s['skipped']) - 10} more skipped")
    for note in s.get("notes", []):
        _echo(f"  note: {note}")
    for warning in s["warnings"]:
        _echo(f"captioner: warning: {warning}", err=True)


def _odd(name):
    """A name that would break the one-line output (line breaks, NUL): print it quoted."""
    from .sources.paths import unsafe_text

    return unsafe_text(name) is not None


@contextlib.contextmanager
def _shard_executor(scheduler, workers):
    """-> prepare's keyword arguments: without --scheduler, its own `workers` processes
    (Dask is not imported); with it, the cluster's executor and its worker threads (2
    shards in flight each). --workers N with --scheduler local: N worker processes."""
    if scheduler is None:
        yield {"workers": workers}
        return
    if workers is not None and scheduler != "local":
        raise click.UsageError(
            "--workers goes with --scheduler local (a remote cluster has "
            "the workers it was started with)"
        )
    from .cluster import executor

    with executor(scheduler, workers) as (pool, threads):
        yield {"executor": pool, "workers": threads}


# ---------------------------------------------------------------- demo


@cli.command()
@click.option("--out", type=click.Path(file_okay=False), default="data/demo", show_default=True)
@click.option(
    "--train-images",
    type=click.IntRange(1, 100_000),
    default=1500,
    show_default=True,
    help="Scenes to render for training (at most 100,000).",
)
@click.option(
    "--val-images",
    type=click.IntRange(1, 100_000),
    default=200,
    show_default=True,
    help="Scenes to render for validation (at most 100,000).",
)
@click.option("--epochs", type=COUNT, default=20, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@encoder_option(encoders.DEMO, "for the rendered scenes")
def demo(out, train_images, val_images, epochs, seed, encoder):
    """The whole pipeline offline, in a few minutes: rendered scenes -> prepare -> train ->
    evaluate -> caption a new picture.

    \b
    Exits 1 if the captions are not grounded in the pixels (CIDEr-D below twice
    the score of the same model fed the mean feature).
    Example:
      captioner demo --out data/demo
    """
    from .demo import run_demo
    from .runs import Interrupted

    again = _same_command()  # `captioner demo` = `make demo` when no option was given
    try:
        summary = run_demo(
            out,
            n_train=train_images,
            n_val=val_images,
            epochs=epochs,
            seed=seed,
            log=_echo,
            progress=_training_bar(quiet=False),
            encoder=encoder,
        )
    except Interrupted as e:
        _echo(f"\n{e}; continue with: {again}", err=True)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt as e:  # outside training, a second Ctrl-C, SIGTERM: saved stays
        _echo(f"\nstopped; continue with: {again}", err=True)
        sys.exit(_interrupted(e))
    if not summary["grounded"]:
        sys.exit(1)


# ---------------------------------------------------------------- info


@cli.command()
@data_option
@click.option(
    "--checkpoint",
    "ckpt",
    type=click.Path(exists=True),
    default=None,
    help="Show this checkpoint (model, features, training epochs) instead of a dataset.",
)
def info(data, features, ckpt):
    """Show what a dataset or a checkpoint holds.

    \b
    Example:
      captioner info --data data/coco_captioning
      captioner info --checkpoint runs/lstm/best.npz
    """
    if ckpt:
        from .checkpoint import load_model

        model, meta, _, history = load_model(ckpt)
        t = meta.get("training", {})
        n = sum(p.size for p in model.params.values())
        _echo(f"checkpoint {ckpt} (format version {meta['version']}, {meta.get('created', '?')})")
        _echo(
            f"  model: {model.cell_type}, hidden {model.hidden_dim}, word vectors "
            f"{model.wordvec_dim}, {n:,} parameters, vocabulary {len(meta['vocab'])}"
            + (
                f", adaptive softmax (cutoffs {','.join(map(str, model.cutoffs))})"
                if model.softmax == "adaptive"
                else ""
            )
        )
        _echo(f"  features: {meta['features']['encoder']} ({meta['features']['dim']}-d)")
        best = t.get("best") or {}
        _echo(
            f"  trained: {t.get('epoch', 0)} epochs, {t.get('step', 0)} steps"
            + (
                f"; best {best['metric']} {best['value']:.4f} at epoch {best['epoch']}"
                if best
                else ""
            )
        )
        from .training import format_record

        for r in t.get("epochs", []):
            _echo("    " + format_record(r, t.get("settings", {}).get("epochs", "?")))
        return
    from .data import available_splits, captions_file

    test = os.path.isfile(captions_file(data)) and "test" in available_splits(
        data
    )  # train and val are always there
    d = _load_data(data, features, splits=["train", "val", "test"] if test else ["train", "val"])
    sizes = "/".join(f"{len(d[f'{s}_features']):,}" for s in SPLITS if f"{s}_features" in d)
    _echo(
        f"dataset {d['base_dir']}: {d['dataset'] + ', ' if d['dataset'] else ''}{sizes} "
        f"images, vocabulary {_plural(len(d['idx_to_word']), 'word')}, {d['encoder']} features "
        f"({d['feature_dim']}-d)"
    )
    from .data import feature_attrs

    attrs = feature_attrs(d["base_dir"], d["feature_kind"])
    if "feature_layout" in attrs:
        _echo(f"  layout: {attrs['feature_layout']}")
    if "encoder_weights_sha256" in attrs:
        _echo(f"  encoder weights: sha256 {attrs['encoder_weights_sha256']}")
    for split in SPLITS:
        if f"{split}_captions" in d:
            caps = d[f"{split}_captions"]
            lengths = (caps[:, 1:] != 0).sum(1) - 1
            _echo(
                f"  {split}: {_plural(len(caps), 'caption')} of "
                f"{_plural(len(d[f'{split}_features']), 'image')}, "
                f"{caps.shape[1]} columns, mean {lengths.mean():.1f} words"
            )


# ---------------------------------------------------------------- download


@cli.command()
@click.option(
    "--dest",
    type=click.Path(file_okay=False),
    default=None,
    help="Where to put the files [default: data, data/coco2014 with --images, "
    "data/flickr8k with --flickr8k].",
)
@click.option("--url", default=None, help="Mirror of coco_captioning.zip.")
@click.option(
    "--images",
    "images",
    is_flag=True,
    help="The COCO 2014 pictures and captions instead (20.4 GB of zips, kept as they are).",
)
@click.option(
    "--flickr8k",
    is_flag=True,
    help="The Flickr8k pictures and captions instead (2 zips, ~1.1 GB, kept as they are).",
)
@click.option(
    "--mirror",
    default=None,
    help="With --images or --flickr8k: a base URL serving the same file names.",
)
def download(dest, url, images, flickr8k, mirror):
    """Download the CS231n COCO features (~1 GB), or with --images the COCO 2014 pictures,
    or with --flickr8k the Flickr8k pictures.

    Resumable: rerun the same command after an interruption.

    \b
    Example:
      captioner download --dest data
      captioner download --flickr8k --dest data/flickr8k
      captioner download --images --dest data/coco2014
    """
    if flickr8k:
        if images or url:
            raise click.UsageError("--flickr8k goes alone (a mirror of it: --mirror URL)")
        from .download import download_flickr8k

        path = download_flickr8k(dest or "data/flickr8k", mirror=mirror, again=_same_command())
        _echo(
            f"Flickr8k pictures and captions ready in {path}; next: captioner prepare "
            f"--flickr8k {path} --out {path}-ds"
        )
        return
    if images:
        if url:
            raise click.UsageError("--url is for the CS231n zip; with --images use --mirror")
        from .download import download_coco_images

        path = download_coco_images(dest or "data/coco2014", mirror=mirror, again=_same_command())
        _echo(
            f"COCO 2014 pictures and captions ready in {path}; next: captioner prepare "
            f"--coco {path} --out {path}-karpathy"
        )
        return
    if mirror:
        raise click.UsageError(
            "--mirror goes with --images or --flickr8k (for the CS231n zip use --url)"
        )
    from .download import COCO_URL, download_coco

    path = download_coco(dest or "data", url=url or COCO_URL, again=_same_command())
    _echo(f"COCO captioning data ready in {path}")


def _same_command():
    """The running command as the user gave it (the options not left at their default):
    what to rerun to continue after an interruption."""
    ctx = click.get_current_context()
    words = ["captioner", ctx.info_name]
    for p in ctx.command.params:
        if ctx.get_parameter_source(p.name) is click.core.ParameterSource.DEFAULT:
            continue
        value = ctx.params[p.name]
        flag = max(p.opts, key=len)
        words += [flag] if getattr(p, "is_flag", False) else [flag, str(value)]
    return " ".join(words)


def main(argv=None):
    cli.main(args=argv, prog_name="captioner")
