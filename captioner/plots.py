"""Charts for `gradients --plot` and `compare --plot` (PNG, matplotlib's Agg renderer).

matplotlib is imported inside the drawing functions, so commands that draw nothing (and
`captioner --help`) never load it. Files are written atomically.
"""

import os

from . import atomic, cells
from .errors import CaptionerError

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]


def check_writable(path, force=False):
    """Refuse a --plot path that cannot be written, or that holds a file the user did not ask
    to replace (--force), before any work is done."""
    path = os.fspath(path)
    if os.path.isfile(path) or os.path.islink(path):
        atomic.check_new_file(path, force, "--plot")
    folder = os.path.dirname(os.path.abspath(path))
    if not path.lower().endswith(".png"):
        raise CaptionerError(f"{path}: the plot is a PNG file; give --plot a name ending in .png")
    if os.path.isdir(path):
        raise CaptionerError(f"{path}: is a directory; give --plot a file name such as plot.png")
    if not os.path.isdir(folder):
        raise CaptionerError(
            f"{path}: folder {folder} does not exist; create it or choose another --plot path"
        )
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise CaptionerError(
            f"{path}: not writable (permission denied); choose another --plot path"
        )


def _figure(ncols, title):
    # Figure alone renders with Agg: no pyplot state
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6 * ncols, 3.8), dpi=90, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    fig.suptitle(title)
    return fig, axes


def _save(fig, path):
    atomic.write_bytes(path, lambda f: fig.savefig(f, format="png"), what="plot")


def gradient_plot(runs, path):
    """Mean gradient norm against distance (log scale), every run on one chart; the reach to
    the image by position beside it. runs: entries of `captioner gradients --json`."""
    fig, (left, right) = _figure(2, "How far one word's loss reaches back (mean over captions)")
    for k, run in enumerate(runs):
        colour = COLOURS[k % len(COLOURS)]
        d = [r["d"] for r in run["by_distance"]]
        left.plot(
            d,
            [r["h"] for r in run["by_distance"]],
            "-o",
            ms=3,
            color=colour,
            label=f"{run['label']}: dl/dh",
        )
        if "c" in cells.get(run["cell"]).states:
            left.plot(
                d,
                [r["c"] for r in run["by_distance"]],
                "--",
                color=colour,
                label=f"{run['label']}: dl/dc",
            )
        syn = run.get("synthetic")
        if syn:
            left.plot(
                [r["d"] for r in syn["by_distance"]],
                [r["h"] for r in syn["by_distance"]],
                ":",
                color=colour,
                alpha=0.7,
                label=f"{run['label']}: dl/dh, {syn['length']} random words",
            )
        right.plot(
            [r["t"] for r in run["to_image"]],
            [r["norm"] for r in run["to_image"]],
            "-o",
            ms=3,
            color=colour,
            label=run["label"],
        )
    left.set(
        yscale="log",
        xlabel="distance d back from the caption's last word (steps)",
        ylabel="||dl / dh_(T-d)|| (log scale)",
        title="by distance",
    )
    right.set(
        yscale="log",
        xlabel="target position t (words)",
        ylabel="||dl_t / dh0|| (log scale)",
        title="to the image (h0)",
    )
    fig.set_size_inches(9.2, 4.4 + 0.16 * len(runs) * 3)
    for ax in (left, right):
        ax.grid(True, which="major", alpha=0.3)
        # below the axes: the curves fill the plot area, a legend inside would hide them
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    _save(fig, path)


def loss_plot(runs, path):
    """Per-epoch train (solid) and val (dashed) loss of every run on one chart.
    runs: [(label, epoch records of history.json)]."""
    fig, (ax,) = _figure(1, "RNN vs LSTM: loss per epoch")
    fig.set_size_inches(6.4, 4.2)
    for k, (label, epochs) in enumerate(runs):
        colour = COLOURS[k % len(COLOURS)]
        e = [r["epoch"] for r in epochs]
        ax.plot(
            e, [r["train_loss"] for r in epochs], "-o", ms=3, color=colour, label=f"{label} train"
        )
        if all("val_loss" in r for r in epochs):
            ax.plot(e, [r["val_loss"] for r in epochs], "--", color=colour, label=f"{label} val")
    ax.set(xlabel="epoch", ylabel="loss per caption (nats, summed over words)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
