"""The `captioner` command: a thin shell over the library; only it prints.

The group and its entry point live here; the commands, grouped by what they do, in
training (train, overfit, compare, sweep), evaluation (evaluate, sample, gradients,
report), data (download, prepare, encode, info) and demo; the options they share in
options, what they print in output. Heavy imports (numpy, h5py, matplotlib, jinja2, dask)
happen inside the commands so `captioner --help` starts instantly.
"""

import click

from .. import __version__
from . import data, demo, evaluation, training
from .output import Group, show_library_log


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="captioner")
def cli():
    """A NumPy image captioner: CNN features + RNN/LSTM decoder, trained on COCO.

    \b
    Start with the sanity check, then train:
      captioner overfit --small
      captioner train --cell lstm --epochs 10
      captioner sample --checkpoint runs/<run>/best.npz --split val
    """
    show_library_log()


for command in (
    training.train,
    training.overfit,
    training.compare,
    training.sweep,
    evaluation.evaluate,
    evaluation.sample,
    evaluation.gradients,
    evaluation.report,
    data.download,
    data.prepare,
    data.encode,
    data.info,
    demo.demo,
):
    cli.add_command(command)


def main(argv=None):
    cli.main(args=argv, prog_name="captioner")
