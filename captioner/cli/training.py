"""The commands that train: train (and --resume), overfit, compare and sweep. They share
the train options made from config.TRAIN_CONFIG, the progress bar and the way an
interrupted run says how to continue."""

import os
import sys

import click

from .. import config
from ..cells import CELLS
from ..errors import CaptionerError
from .options import (
    COUNT,
    check_settings,
    data_option,
    executor_options,
    load_data,
    options_given,
    train_options,
)
from .output import echo, interrupted, plural, progress_bar


@click.command()
@train_options()
@click.pass_context
def train(ctx, out, resume, quiet, **options):
    """Train a captioner on COCO features.

    \b
    Example:
      captioner train --cell lstm --epochs 10 --out runs/lstm
      captioner train --resume runs/lstm --epochs 20
    """
    from .. import runs, training

    given = options_given(ctx)

    def check(path, meta, settings):  # --resume continues a run with its own settings
        typed = {k: v for k, v in options.items() if k in given}
        problem = config.resume_contradiction(typed, meta, settings, path)
        if problem:
            raise click.UsageError(problem)

    if not resume:
        check_settings(options)
    run = runs.start_or_resume(
        out,
        options,
        load_data,
        resume=resume,
        epochs=options["epochs"] if "epochs" in given else None,
        data_dir=options["data"] if "data" in given else None,
        check=check,
        log=echo,
    )
    run_dir = run.run_dir
    with runs.run_lock(run_dir):
        try:
            state = runs.train_in(
                run.data,
                run.model,
                run_dir,
                run.state,
                progress=progress_bar(quiet, leave=False),
                log=echo,
                **run.settings,
            )
        except training.Interrupted as e:
            echo(f"\n{e}; continue with: captioner train --resume {run_dir}", err=True)
            ctx.exit(128 + e.signum)
        except (
            KeyboardInterrupt
        ):  # a second Ctrl-C: stop now; the last checkpoint on disk is intact
            echo(f"\nstopped; continue with: captioner train --resume {run_dir}", err=True)
            ctx.exit(130)
    best = state["best"]
    echo(
        f"done: {run_dir}/last.npz; best ({best['metric']} {best['value']:.4f}, "
        f"epoch {best['epoch']}): {run_dir}/best.npz"
    )


@click.command()
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
    from ..data import SYNTHETIC_DATA
    from ..training import overfit as run

    d = load_data(data, features, splits=("train",), fallback=SYNTHETIC_DATA)
    cells = [cell] if cell else ["rnn", "lstm"]
    results = {}
    for c in cells:
        echo(
            f"overfitting {min(n, len(d['train_captions']))} captions of {d['base_dir']} "
            f"with the {c} cell ..."
        )
        results[c] = run(d, c, n=n, epochs=epochs)
    echo("\nloss per epoch (mean over the epoch's batches)")
    echo("epoch " + "".join(f"{c:>10}" for c in cells))
    n_epochs = len(results[cells[0]]["state"]["epochs"])
    for e in sorted({0, n_epochs - 1} | set(range(4, n_epochs, 5))):
        echo(
            f"{e + 1:5d} "
            + "".join(f"{results[c]['state']['epochs'][e]['train_loss']:10.4f}" for c in cells)
        )

    truth = results[cells[0]]["truth"]
    if show_captions:
        echo(f"\n{plural(len(truth), 'memorised image')}: sampled caption vs ground truth")
        for j, t in enumerate(truth):
            echo(f"  truth: {t}")
            for c in cells:
                s = results[c]["sampled"][j]
                echo(f"  {c:>5}: {s}{'' if s == t else '   [differs]'}")
    echo("")
    for c in cells:
        r = results[c]
        echo(
            f"{c}: final loss {r['final_loss']:.4f} ({'PASS' if r['passed'] else 'FAIL'}, "
            f"needs < {r['limit']}); {r['exact']}/{len(truth)} sampled captions equal "
            f"their ground truth"
        )
    if not all(r["passed"] for r in results.values()):
        sys.exit(1)


@click.command()
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
    from .. import compare as cmp
    from .. import plots, runs, training

    if plot:
        plots.check_writable(plot, force)
    given = options_given(ctx)
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
        echo(f"resuming the comparison in {parent}")
    else:
        check_settings(options)
        d = load_data(options["data"], options["features"], max_train=options["max_train"])
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
        cmp.train_runs(
            parent, plan, parallel, scheduler, progress=progress_bar(quiet, leave=False), log=echo
        )
    except training.Interrupted as e:
        echo(f"\n{e}; continue with: captioner compare --resume {parent}", err=True)
        ctx.exit(128 + e.signum)
    except KeyboardInterrupt:
        echo(f"\nstopped; continue with: captioner compare --resume {parent}", err=True)
        ctx.exit(130)
    res = cmp.collect(parent, plan)
    cmp.save_results(parent, plan, res)
    echo("")
    for line in cmp.format_results(res):
        echo(line)
    cmp.draw(parent, res, plot)
    echo(
        f"written: {parent}/compare.json, gradients.json, compare-loss.png, gradients.png"
        + (f"; plot: {plot}" if plot else "")
    )


@click.command()
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

    from .. import sweep as sweeps

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
            check_settings(s)
        try:
            rows, failed = sweeps.run_sweep(
                out,
                base,
                the_grid,
                parallel=parallel,
                scheduler=scheduler,
                log=lambda line: echo(line, err=as_json),
            )
        except KeyboardInterrupt as e:
            echo("\ninterrupted; run the same command again to resume", err=True)
            sys.exit(interrupted(e))
    rows = sweeps.sort_rows(rows, sort_by)
    if as_json:
        click.echo(json.dumps(sweeps.as_json(rows), indent=1))
    else:
        if not summary_dir:
            echo()
        for line in sweeps.table(rows).splitlines():
            echo(line)
    if failed:
        sys.exit(1)
