"""`captioner demo`: the whole pipeline offline (rendered scenes -> prepare -> train ->
evaluate -> sample); a module of its own as it spans the others' commands."""

import sys

import click

from .. import encoders
from .options import COUNT, SEED, encoder_option, same_command
from .output import echo, interrupted, progress_bar


@click.command()
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
    from ..demo import run_demo
    from ..training import Interrupted

    again = same_command()  # `captioner demo` = `make demo` when no option was given
    try:
        summary = run_demo(
            out,
            n_train=train_images,
            n_val=val_images,
            epochs=epochs,
            seed=seed,
            log=echo,
            progress=progress_bar(leave=False),
            encoder=encoder,
        )
    except Interrupted as e:
        echo(f"\n{e}; continue with: {again}", err=True)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt as e:  # outside training, a second Ctrl-C, SIGTERM: saved stays
        echo(f"\nstopped; continue with: {again}", err=True)
        sys.exit(interrupted(e))
    if not summary["grounded"]:
        sys.exit(1)
