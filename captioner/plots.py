"""Charts for `gradients --plot` and `compare --plot` (PNG, matplotlib's Agg renderer).

matplotlib is imported inside the drawing functions, so commands that draw nothing (and
`captioner --help`) never load it. Files are written atomically.
"""

import os

from . import atomic
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


def _band(ax, x, runs, colour, style, label, **kw):
    """The mean over runs of per-x values (lists aligned with x), a line; with several
    runs their min-max as a band behind it."""
    import numpy as np

    y = np.array(runs, dtype=float)
    ax.plot(x, y.mean(axis=0), style, color=colour, label=label, **kw)
    if len(y) > 1:
        ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=colour, alpha=0.2, lw=0)


def _common(rows_of_runs, key, fields):
    """rows_of_runs: per run its rows (dicts keyed by `key`) -> (the keys every run has,
    per field: per run the values at those keys)."""
    keys = sorted(set.intersection(*({r[key] for r in rows} for rows in rows_of_runs)))
    by = [{r[key]: r for r in rows} for rows in rows_of_runs]
    return keys, {f: [[b[k][f] for k in keys] for b in by] for f in fields}


def gradient_plot(groups, path):
    """Mean gradient norm against distance (log scale), every setting on one chart; the
    reach to the image by position beside it. groups: [(label, [runs])], runs being
    entries of `captioner gradients --json` (seeds of one setting: their mean, and their
    min-max as a band)."""
    fig, (left, right) = _figure(2, "How far one word's loss reaches back (mean over captions)")
    for k, (label, runs) in enumerate(groups):
        colour = COLOURS[k % len(COLOURS)]
        many = f" ({len(runs)} seeds)" if len(runs) > 1 else ""
        d, y = _common([r["by_distance"] for r in runs], "d", ("h", "c"))
        _band(left, d, y["h"], colour, "-o", f"{label}{many}: dl/dh", ms=3)
        if d and runs[0]["by_distance"][0]["c"] is not None:  # cells with a cell state
            _band(left, d, y["c"], colour, "--", f"{label}: dl/dc")
        if all(r.get("synthetic") for r in runs):
            d, y = _common([r["synthetic"]["by_distance"] for r in runs], "d", ("h",))
            length = runs[0]["synthetic"]["length"]
            _band(
                left, d, y["h"], colour, ":", f"{label}: dl/dh, {length} random words", alpha=0.7
            )
        t, y = _common([r["to_image"] for r in runs], "t", ("norm",))
        _band(right, t, y["norm"], colour, "-o", f"{label}{many}", ms=3)
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
    fig.set_size_inches(9.2, 4.4 + 0.16 * len(groups) * 3)
    for ax in (left, right):
        ax.grid(True, which="major", alpha=0.3)
        # below the axes: the curves fill the plot area, a legend inside would hide them
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    _save(fig, path)


def loss_plot(groups, path):
    """Per-epoch train (solid) and val (dashed) loss of every setting on one chart: the mean
    over seeds, their min-max as a band. groups: [(label, [{"epoch", "train_loss",
    "val_loss"}])], the losses being seeds.spread() dicts."""
    fig, (ax,) = _figure(1, "Loss per epoch (mean over seeds, band: min to max)")
    fig.set_size_inches(6.4, 4.2)
    for k, (label, epochs) in enumerate(groups):
        colour = COLOURS[k % len(COLOURS)]
        e = [r["epoch"] for r in epochs]
        for key, style, what in (("train_loss", "-o", "train"), ("val_loss", "--", "val")):
            if all(r[key]["n"] for r in epochs):
                _band(
                    ax,
                    e,
                    list(zip(*(r[key]["values"] for r in epochs))),
                    colour,
                    style,
                    f"{label} {what}",
                    ms=3 if what == "train" else None,
                )
    ax.set(xlabel="epoch", ylabel="loss per caption (nats, summed over words)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
