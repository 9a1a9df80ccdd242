"""The options several commands share: the parameter types, --data/--features, --encoder,
the train options made from config.TRAIN_CONFIG (train, compare, sweep), --parallel and
--scheduler; and what the user typed (`given`, `same_command`)."""

import math

import click

from .. import config, encoders, limits

SPLITS = ["train", "val", "test"]


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
        default=config.DATA_DEFAULT,
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


# the decoding and scoring options of evaluate, sample and report
beam_size_option = click.option(
    "--beam-size",
    type=click.IntRange(1, limits.MAX_BEAM),
    default=3,
    show_default=True,
    help=f"1 is greedy (at most {limits.MAX_BEAM}).",
)
max_length_option = click.option(
    "--max-length",
    type=MAX_LENGTH,
    default=16,
    show_default=True,
    help=f"Words per caption at most (up to {limits.MAX_LENGTH}).",
)
no_meteor_option = click.option(
    "--no-meteor", is_flag=True, help="Skip METEOR (it needs Java and pycocoevalcap)."
)


def load_data(data, features, splits=("train", "val"), max_train=None, fallback=None):
    """The dataset that --data and --features name (numpy and h5py imported here)."""
    from ..data import DEMO_DATA, open_dataset

    return open_dataset(
        data, features, splits=splits, max_train=max_train, fallback=fallback or DEMO_DATA
    )


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


def options_given(ctx):
    """The names of the options the user typed (not their defaults)."""
    return {
        p
        for p in ctx.params
        if ctx.get_parameter_source(p) is not click.core.ParameterSource.DEFAULT
    }


def same_command():
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


def check_settings(values):
    """A usage error when the train options break a rule between settings (config)."""
    problem = config.options_conflict(values)
    if problem:
        raise click.UsageError(problem)
