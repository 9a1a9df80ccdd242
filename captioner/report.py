"""The HTML report of training runs: one self-contained file, opened from disk.

    from captioner import report
    report.write_report(["runs/demo"], "report.html", split="val", count=24, beam_size=3)

gather_run reads a run directory (history and checkpoints); caption_run captions a split with
the run's best checkpoint and scores it with captioner.metrics (the functions `evaluate` uses,
and metrics.diversity: how varied the captions are); the plots are matplotlib (Agg) PNGs and the
pictures JPEG thumbnails, both inlined as data: URIs, so the page needs no server or network.
The page itself is Jinja2 (captioner/templates/report.html.j2).

Output of `captioner gradients` / `compare` is picked up by file name: any gradients*.png or
compare*.png in a run directory or its parent (compare's directory of runs) is embedded, and
gradients.json there (compare writes {"runs": [...]}) is shown as a table of each run's
scalar measures.

The page is made to be shared, so it takes in only what belongs to the runs: regular files
inside the run folder or its parent once links are resolved, gradients.json only in the
layout `gradients --json` writes, and gallery pictures only from the picture folder the
dataset records (`prepare` writes it); a picture named elsewhere is a placeholder unless
outside_pictures, and then each one is named on stderr.
"""

import base64
import datetime
import glob
import io
import itertools
import json
import logging
import math
import os

import numpy as np

from . import atomic, config
from .errors import CaptionerError
from .picture_files import check_writable
from .vocab import SPECIALS

LOG = logging.getLogger("captioner")  # the CLI shows it on stderr

THUMB_SIZE = 160  # px, longest side of a gallery thumbnail
MAX_EMBEDDED_BYTES = 20 * 2**20  # a gradients*.png / compare*.png / gradients.json


# ---------------------------------------------------------------- runs on disk


def _run_checkpoints(run_dir):
    """-> (checkpoint to caption with, checkpoint holding the full history)."""
    if not os.path.isdir(run_dir):
        raise CaptionerError(
            f"{run_dir}: not a directory; pass run directories written by "
            f"`captioner train` (runs/<name>)"
        )
    best, last = (os.path.join(run_dir, f"{n}.npz") for n in ("best", "last"))
    have = [p for p in (best, last) if os.path.exists(p)]
    if not have:
        has_history = os.path.exists(os.path.join(run_dir, "history.json"))
        what = "its checkpoints are missing" if has_history else "not a run directory"
        raise CaptionerError(
            f"{run_dir}: {what} (no best.npz or last.npz); pass a directory "
            f"written by `captioner train`"
        )
    return have[0], have[-1]


def gather_run(run_dir):
    """Everything a run directory says about its training: -> dict with the run card
    ('card'), per-step 'loss', 'grad_norm', 'clipped' (float arrays), per-epoch 'epochs'
    records, 'settings', and the model and metadata of the checkpoint to caption with."""
    from .checkpoint import load_model

    run_dir = os.path.normpath(run_dir)
    best_path, last_path = _run_checkpoints(run_dir)
    model, meta, _, history = load_model(best_path)
    last_meta = meta
    if last_path != best_path:  # last.npz holds the whole history; best.npz stops at its epoch
        _, last_meta, _, history = load_model(last_path)
    t = last_meta.get("training", {})
    settings = t.get("settings", {})
    epochs = [r for r in t.get("epochs", []) if isinstance(r, dict)]
    n_params = int(sum(p.size for p in model.params.values()))
    best = t.get("best") or {}
    card = {
        "name": os.path.basename(os.path.abspath(run_dir)),
        "dir": run_dir,
        "command": config.train_command(settings, meta["model"], run_dir),
        "settings": settings,
        "cell": model.cell_type,
        "hidden": model.hidden_dim,
        "wordvec": model.wordvec_dim,
        "params": n_params,
        "vocab_size": len(meta["vocab"]),
        "features": f"{meta['features'].get('encoder')} ({meta['features']['dim']}-d)",
        "steps": t.get("step", 0),
        "epochs_done": t.get("epoch", 0),
        "wall_seconds": float(sum(r.get("seconds", 0) for r in epochs)),
        "best": best,
        "checkpoint": best_path,
        "created": last_meta.get("created", "?"),
    }
    hist = {
        k: np.asarray(history.get(k, np.zeros(0)), dtype=np.float64).ravel()
        for k in ("loss", "grad_norm", "clipped")
    }
    return dict(card=card, epochs=epochs, settings=settings, model=model, meta=meta, **hist)


def check_same_vocabulary(runs):
    first = runs[0]
    for r in runs[1:]:
        if r["meta"]["vocab"] != first["meta"]["vocab"]:
            raise CaptionerError(
                f"{r['card']['dir']}: its vocabulary ({len(r['meta']['vocab'])} words) differs "
                f"from {first['card']['dir']}'s ({len(first['meta']['vocab'])} words); their "
                f"captions and scores are not comparable: report them separately"
            )


# ---------------------------------------------------------------- numbers


def unk_share(captions, idx_to_word):
    """Share of the word tokens (not <NULL>/<START>/<END>) of captions (N, T) that are <UNK>."""
    ids = {w: i for i, w in enumerate(idx_to_word)}
    caps = np.asarray(captions)
    words = ~np.isin(caps, [ids[w] for w in ("<NULL>", "<START>", "<END>") if w in ids])
    if "<UNK>" not in ids or not words.any():
        return 0.0
    return float((caps[words] == ids["<UNK>"]).mean())


def smooth(values, window=None):
    """Trailing moving average (N,) -> (N,); the first values average what there is."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return v
    w = window or int(np.clip(len(v) // 30, 1, 200))
    c = np.cumsum(np.r_[0.0, v])
    lo = np.maximum(np.arange(1, len(v) + 1) - w, 0)
    return (c[1:] - c[lo]) / (np.arange(1, len(v) + 1) - lo)


def clip_share_per_epoch(run):
    """-> [(step at the epoch's end, share of the epoch's steps whose gradient was clipped)]."""
    clipped, out, start = run["clipped"], [], 0
    offset = len(run["loss"]) - len(clipped)  # runs from before clips were recorded
    for r in run["epochs"]:
        end = r.get("step", 0) - offset
        if end > start and end <= len(clipped):
            out.append((r["step"], float(clipped[start:end].mean())))
        start = max(start, end)
    return out


# ---------------------------------------------------------------- captioning a split


def _load_split(run, split, log):
    """The run's dataset with `split` (and train's captions for the sizes), or (None, reason)."""
    from .checkpoint import check_compatible
    from .data import feature_file, load_coco_data

    data_dir = run["settings"].get("data_dir")
    kind = run["meta"]["features"]["kind"]
    if not data_dir or not os.path.isdir(data_dir):
        why = f"{data_dir}: the run's dataset is gone; scores, gallery and diversity are left out"
        log(f"captioner: warning: {why}")
        return None, None, why
    features = feature_file(data_dir, split, kind)
    if not os.path.exists(features):
        raise CaptionerError(
            f"{data_dir}: has no {split} split ({os.path.basename(features)} "
            f"is absent); choose another --split"
        )
    d = load_coco_data(data_dir, features=kind, splits=(split,))
    check_compatible(run["card"]["checkpoint"], run["meta"], d)
    train = None
    if split != "train":
        try:
            train = load_coco_data(
                data_dir, features=kind, splits=("train",), lazy=True, check_finite=False
            )
        except CaptionerError:
            train = None  # only the sizes come from it
    return d, train or d, None


def _picture(data, split, idx, folder, outside_pictures=False, log=LOG.info):
    """How the gallery shows image idx: ('img', data URI) | ('link', url) | ('missing', text).
    folder: the dataset's recorded picture folder (None: it records none)."""
    urls, names = data.get(f"{split}_urls"), data.get(f"{split}_images")
    where = (urls[idx] if urls else None) or (names[idx] if names else None)
    if not where:
        return "missing", f"{split} image {idx}: the dataset names no file or URL"
    if where.startswith(("http://", "https://")):
        return "link", where
    zip_path, _, member = where.partition(".zip:")  # a picture prepare read out of a zip
    path, why = locate(zip_path + ".zip" if member else where, folder)
    if path is None and outside_pictures:
        path = inside(os.path.join(data["base_dir"], where), "/")
        if path is not None:
            log(f"captioner: warning: {path}: shown from outside the dataset's picture folder")
    if path is not None and member:
        path = [path, member]
    if path is None:
        return "missing", f"{where}: {why}"
    uri = thumbnail(path)
    return ("img", uri) if uri else ("missing", f"{where}: picture cannot be read")


def inside(path, folder):
    """The real path of `path` if it is a regular file inside `folder` once symbolic links
    are resolved, else None."""
    real, root = os.path.realpath(path), os.path.realpath(folder)
    if os.path.commonpath([real, root]) != root or not os.path.isfile(real):
        return None
    return real


def locate(path, folder):
    """A picture as the dataset names it (absolute, or relative to its picture folder) ->
    (its real path, None) when it is a file in the picture folder, else (None, why)."""
    if folder is None:
        return None, (
            "the dataset records no picture folder (made by an older captioner: rerun "
            "`captioner prepare`, or pass --outside-pictures)"
        )
    candidate = os.path.join(folder, path)
    real = inside(candidate, folder)
    if real is not None:
        return real, None
    root = os.path.realpath(folder)
    if os.path.commonpath([os.path.realpath(candidate), root]) != root:
        return None, f"outside the dataset's picture folder {folder}; not shown"
    return None, "picture not found (moved or deleted since `prepare`)"


def thumbnail(path, size=THUMB_SIZE):
    """A picture file (or [zip, member]) -> a JPEG data: URI at most size px on its longest
    side, or None."""
    from .shards import open_picture

    try:
        img = open_picture(path)
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=82)
    except (CaptionerError, OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def caption_run(
    run,
    split="val",
    count=24,
    beam_size=3,
    max_length=16,
    max_images=None,
    meteor=True,
    seed=0,
    log=LOG.info,
    outside_pictures=False,
):
    """Caption `split` with the run's checkpoint; scores, per-image CIDEr-D, gallery, diversity.
    -> dict (see the keys below); 'missing' holds a reason when the dataset is gone."""
    from .data import dataset_source
    from .evaluation import decode_split
    from .metrics import diversity, score

    d, train, why = _load_split(run, split, log)
    if d is None:
        return {
            "missing": why,
            "scores": None,
            "notes": [],
            "gallery": None,
            "diversity": None,
            "sizes": None,
            "data_dir": None,
            "n_images": 0,
            "decoding": None,
            "cider": None,
        }
    try:
        rows, ids, best, refs = decode_split(
            run["model"],
            d,
            split,
            max_images=max_images,
            beam_size=beam_size,
            max_length=max_length,
        )
        generated = [c for c, _ in best]
        scores, notes, per_image = score(
            dict(zip(ids, refs)), dict(zip(ids, generated)), meteor=meteor, per_image=True
        )
        cider = np.array([per_image[i] for i in ids])
        names = d.get(f"{split}_images")
        picked = gallery_picks(cider, count, seed)
        gallery, folder = {}, dataset_source(d["base_dir"], "pictures")
        if folder:  # a dataset from elsewhere could name any folder: say which is read
            log(f"gallery pictures from {folder}, the dataset's picture folder")
        for section, items in picked.items():
            gallery[section] = []
            for j in items:
                kind, value = _picture(d, split, rows[j], folder, outside_pictures, log)
                gallery[section].append(
                    {
                        "title": names[rows[j]] if names else f"{split} image {rows[j]}",
                        "image_id": ids[j],
                        "kind": kind,
                        "src": value,
                        "caption": generated[j],
                        "log_prob": best[j][1],
                        "cider": float(cider[j]),
                        "references": refs[j],
                    }
                )
        has_train = "train_captions" in train
        sizes = {
            "train_captions": len(train["train_captions"]) if has_train else None,
            "train_images": len(np.unique(train["train_image_idxs"])) if has_train else None,
            "split_captions": len(d[f"{split}_captions"]),
            "split_images": len(np.unique(d[f"{split}_image_idxs"])),
            "unk_share": unk_share(
                train.get("train_captions", d[f"{split}_captions"]), d["idx_to_word"]
            ),
        }
        return {
            "missing": None,
            "scores": scores,
            "notes": notes,
            "gallery": gallery,
            "diversity": diversity(generated, refs, len(d["idx_to_word"]) - len(SPECIALS)),
            "sizes": sizes,
            "data_dir": d["base_dir"],
            "n_images": len(ids),
            "decoding": f"{split} split, {len(ids):,} image{'' if len(ids) == 1 else 's'}, "
            f"{'greedy' if beam_size == 1 else f'beam {beam_size}'}, "
            f"max length {max_length}, "
            f"{os.path.basename(run['card']['checkpoint'])}",
            "cider": cider,
        }
    finally:
        from .data import close_coco_data

        close_coco_data(d)
        if train is not d and train is not None:
            close_coco_data(train)


def gallery_picks(cider, count, seed=0):
    """Rows for the gallery's three sections, no picture in two of them: {"best", "worst",
    "random"}, each ceil(count / 3) rows, or a third of the images each when there are
    fewer (3 images: one each; 1 image: best only)."""
    n = len(cider)
    order = list(np.argsort(-np.asarray(cider), kind="stable"))
    k = max(1, math.ceil(count / 3))
    n_best = min(k, math.ceil(n / 3))
    n_worst = min(k, math.ceil((n - n_best) / 2))
    best, worst = order[:n_best], order[n - n_worst :][::-1]
    rest = order[n_best : n - n_worst]
    random = np.random.default_rng(seed).choice(rest, min(k, len(rest)), replace=False)
    return {"best": best, "worst": worst, "random": sorted(random)}


# ---------------------------------------------------------------- plots


def _figure(width=5.4, height=3.1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=90)
    ax.grid(alpha=0.3)
    return fig, ax


def _legend(ax):
    """A few entries go inside the plot; more go in columns under it, never over the curves
    (the figure grows by their rows)."""
    labels = ax.get_legend_handles_labels()[1]
    n = len(labels)
    if n <= 3:
        ax.legend(fontsize=7)
        return
    fig = ax.get_figure()
    # as many columns as fit the figure's width (~0.06 in a character at 7 pt, plus the
    # line sample): a wider legend would widen the PNG and shrink the plot in the page
    column = 0.06 * max(map(len, labels)) + 0.45
    ncol = max(1, min(3, int(fig.get_figwidth() // column)))
    rows = math.ceil(n / ncol)
    fig.set_figheight(fig.get_figheight() + 0.16 * rows + 0.1)
    from matplotlib.transforms import ScaledTranslation

    below = ax.transAxes + ScaledTranslation(0, -0.45, fig.dpi_scale_trans)  # under the x label
    ax.legend(
        fontsize=7,
        ncol=ncol,
        loc="upper center",
        bbox_to_anchor=(0.5, 0),
        bbox_transform=below,
        frameon=False,
    )


def _steps(ax):
    """Steps are counted: integer ticks only (never 1.0, 1.5)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _png(fig):
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", bbox_inches="tight")  # a legend under the plot included
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]


def _coloured(runs):
    """(colour, run) for every run: the colours repeat after 7 runs rather than drop runs."""
    return zip(itertools.cycle(COLOURS), runs)


def plot_curves(runs):
    """-> list of (title, PNG data URI): loss, learning rate, gradient norm, clipping, metrics."""
    plots = []
    many = len(runs) > 1

    def label(r, what):
        return f"{r['card']['name']}: {what}" if many else what

    fig, ax = _figure()
    _steps(ax)
    for c, r in _coloured(runs):
        steps = np.arange(1, len(r["loss"]) + 1)
        ax.plot(steps, r["loss"], color=c, alpha=0.25, lw=0.8, label=label(r, "train (per step)"))
        ax.plot(steps, smooth(r["loss"]), color=c, lw=1.6, label=label(r, "train (smoothed)"))
        val = [(e["step"], e["val_loss"]) for e in r["epochs"] if "val_loss" in e]
        if val:
            ax.plot(*zip(*val), "o--", color=c, ms=3, lw=1.2, label=label(r, "val"))
    ax.set(xlabel="step", ylabel="loss per caption", title="Loss")
    _legend(ax)
    plots.append(("Loss", _png(fig)))

    fig, ax = _figure()
    _steps(ax)
    for c, r in _coloured(runs):
        starts = [0] + [e["step"] for e in r["epochs"]]  # an epoch's rate holds from its start
        lr = [(s, e["lr"]) for s, e in zip(starts, r["epochs"]) if "lr" in e]
        if lr:
            lr.append((starts[-1], lr[-1][1]))
            ax.step(*zip(*lr), where="post", color=c, label=r["card"]["name"])
    ax.set(xlabel="step", ylabel="learning rate", title="Learning rate (per epoch)")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if many:
        _legend(ax)
    plots.append(("Learning rate", _png(fig)))

    if any(len(r["grad_norm"]) for r in runs):
        fig, ax = _figure()
        _steps(ax)
        for c, r in _coloured(runs):
            g = r["grad_norm"]
            steps = np.arange(len(r["loss"]) - len(g) + 1, len(r["loss"]) + 1)
            ax.plot(steps, g, color=c, alpha=0.25, lw=0.8)
            ax.plot(steps, smooth(g), color=c, lw=1.6, label=label(r, "global norm (smoothed)"))
            clip = r["settings"].get("clip_norm")
            if clip:
                ax.axhline(clip, color=c, ls=":", lw=1, label=label(r, f"--clip-norm {clip}"))
        ax.set(xlabel="step", ylabel="gradient norm (before clipping)", title="Gradient norm")
        ax.set_yscale("log")
        _legend(ax)
        plots.append(("Gradient norm", _png(fig)))

    if any(r["settings"].get("clip_norm") and len(r["clipped"]) for r in runs):
        fig, ax = _figure()
        _steps(ax)
        for c, r in _coloured(runs):
            share = clip_share_per_epoch(r)
            if share:
                ax.plot(*zip(*share), "o-", color=c, ms=3, label=r["card"]["name"])
        ax.set(
            xlabel="step",
            ylabel="share of steps clipped",
            ylim=(-0.03, 1.03),
            title="Gradient clipping (per epoch)",
        )
        if many:
            _legend(ax)
        plots.append(("Clipping", _png(fig)))

    if any("CIDEr" in e or "Bleu_4" in e for r in runs for e in r["epochs"]):
        fig, ax = _figure()
        _steps(ax)
        for c, r in _coloured(runs):
            for key, style in (("CIDEr", "o-"), ("Bleu_4", "s--")):
                pts = [(e["step"], e[key]) for e in r["epochs"] if key in e]
                if pts:
                    name = key.replace("_", "-")
                    ax.plot(*zip(*pts), style, color=c, ms=3, label=label(r, name))
        ax.set(
            xlabel="step", ylabel="score (greedy, 200 val images)", title="Val BLEU-4 / CIDEr-D"
        )
        _legend(ax)
        plots.append(("Val metrics", _png(fig)))
    return plots


def plot_lengths(div, name=None):
    """Caption-length histogram of the generated captions against the references'."""
    fig, ax = _figure(5.0, 2.8)
    lengths = sorted(set(div["gen_lengths"]) | set(div["ref_lengths"]))
    x = np.array(lengths)
    n_gen = max(sum(div["gen_lengths"].values()), 1)
    n_ref = max(sum(div["ref_lengths"].values()), 1)
    gen = [div["gen_lengths"].get(k, 0) / n_gen for k in lengths]
    ref = [div["ref_lengths"].get(k, 0) / n_ref for k in lengths]
    ax.bar(x - 0.2, gen, 0.4, label="generated")
    ax.bar(x + 0.2, ref, 0.4, label="references")
    ax.set(
        xlabel="words",
        ylabel="share of captions",
        title=f"Caption lengths{f' ({name})' if name else ''}",
    )
    ax.legend(fontsize=7)
    return _png(fig)


# ---------------------------------------------------------------- gradients / compare output


def _read_own(path, folder, log):
    """The bytes of `path` if it is a regular file inside `folder` (links resolved) of at
    most MAX_EMBEDDED_BYTES, else None (and a warning naming it)."""
    real = inside(path, folder)
    try:
        if real is not None and os.path.getsize(real) <= MAX_EMBEDDED_BYTES:
            with open(real, "rb") as f:
                return f.read(MAX_EMBEDDED_BYTES + 1)
    except OSError:
        pass
    log(
        f"captioner: warning: {path}: not shown in the report (not a readable file of at most "
        f"{MAX_EMBEDDED_BYTES >> 20} MB inside {folder} once links are resolved)"
    )
    return None


def gradient_outputs(run_dir, seen=None, log=LOG.info):
    """Plots and summary written by `captioner gradients` / `compare` in run_dir or its parent:
    -> [{'title', 'src' (data URI) | 'table' | 'summary' (a note)}], in name order.
    seen: real paths already shown (runs of one comparison share their parent's files)."""
    found, seen = [], set() if seen is None else seen
    for d in (run_dir, os.path.dirname(os.path.abspath(run_dir))):
        for pattern in ("gradients*.png", "compare*.png"):
            for path in sorted(glob.glob(os.path.join(d, pattern))):
                real = os.path.realpath(path)
                if real in seen:
                    continue
                seen.add(real)
                raw = _read_own(path, d, log)
                if raw is not None and raw.startswith(b"\x89PNG"):
                    found.append(
                        {
                            "title": path,
                            "src": "data:image/png;base64,"
                            + base64.b64encode(raw).decode("ascii"),
                        }
                    )
        summary = os.path.join(d, "gradients.json")
        if os.path.lexists(summary) and os.path.realpath(summary) not in seen:
            seen.add(os.path.realpath(summary))
            raw = _read_own(summary, d, log)
            if raw is None:
                continue
            try:
                obj = json.loads(raw)
            except (ValueError, RecursionError):
                obj = None
            found.append(dict({"title": summary}, **_gradient_summary(obj)))
    return found


TEXT_COLUMNS = ("label", "cell")  # the only text gradients.json holds; the rest are numbers


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _gradient_summary(obj):
    """gradients.json ({"runs": [{"label", "cell", "gain_per_step", ...}]}, as `captioner
    gradients --json` writes it) -> {'table': (columns, rows)} of each run's label, cell and
    numbers; any other layout -> {'summary': a note}, its content left out."""
    runs = obj.get("runs") if isinstance(obj, dict) else None
    if not (isinstance(runs, list) and runs and all(isinstance(r, dict) for r in runs)):
        return {"summary": "(not the layout `captioner gradients --json` writes; not shown)"}
    columns = [k for k in TEXT_COLUMNS if k in runs[0]]
    columns += [k for k, v in runs[0].items() if k not in TEXT_COLUMNS and _number(v)]
    for r in runs:
        for k in columns:
            v = r.get(k)
            if not (v is None or _number(v) or (k in TEXT_COLUMNS and isinstance(v, str))):
                return {
                    "summary": f"(not the layout `captioner gradients --json` writes: "
                    f"{k!r} is not {'text' if k in TEXT_COLUMNS else 'a number'}; not shown)"
                }
    rows = [
        [
            "-" if r.get(k) is None else f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k])
            for k in columns
        ]
        for r in runs
    ]
    return {"table": (columns, rows)}


# ---------------------------------------------------------------- the page


def duration(seconds):
    """1406.2 -> '23 min 26 s'; 75 -> '1 min 15 s'; 9.5 -> '10 s'."""
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h} h {m} min" if h else f"{m} min {s % 60} s" if m else f"{s} s"


def render(context, template="report.html.j2"):
    """Render a template of captioner/templates with Jinja2 (HTML autoescaping on)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(os.path.join(os.path.dirname(__file__), "templates")),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["num"] = lambda v, fmt=",": format(v, fmt) if v is not None else "?"
    env.filters["duration"] = duration
    # 1 -> "1 image", 3 -> "3 images"
    env.filters["plural"] = lambda n, word: f"{format(n, ',')} {word}{'' if n == 1 else 's'}"
    return env.get_template(template).render(**context)


def build_report(
    run_dirs,
    split="val",
    count=24,
    beam_size=3,
    max_length=16,
    max_images=None,
    meteor=True,
    seed=0,
    log=LOG.info,
    outside_pictures=False,
):
    """-> the HTML text of the report on run_dirs (see the module docstring)."""
    if not run_dirs:
        raise CaptionerError("no run directories given; pass one or more runs/<name>")
    runs = [gather_run(d) for d in run_dirs]
    check_same_vocabulary(runs)
    seen = set()
    for r in runs:
        log(f"captioning {split} with {r['card']['checkpoint']} ...")
        r["result"] = caption_run(
            r,
            split=split,
            count=count,
            beam_size=beam_size,
            max_length=max_length,
            max_images=max_images,
            meteor=meteor,
            seed=seed,
            log=log,
            outside_pictures=outside_pictures,
        )
        if r["result"].get("diversity"):
            name = r["card"]["name"] if len(runs) > 1 else None
            r["result"]["lengths_plot"] = plot_lengths(r["result"]["diversity"], name)
        r["gradients"] = gradient_outputs(r["card"]["dir"], seen, log)
    context = {
        "title": "captioner report: " + ", ".join(r["card"]["name"] for r in runs),
        "generated": datetime.datetime.now().isoformat(timespec="seconds"),
        "runs": runs,
        "curves": plot_curves(runs),
        "split": split,
        "pictures": None,
        "checkpoint": None,
        "note": None,
        "metric_keys": ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"],
    }
    return render(context)


def write_report(run_dirs, out="report.html", replace=True, **options):
    """Build the report and write it atomically to out (replace=False: only as a new file,
    see atomic.atomic_path); -> out."""
    check_writable(out)
    html = build_report(run_dirs, **options)
    atomic.write_text(out, html, what="report", replace=replace)
    return out


# ---------------------------------------------------------------- a gallery of picture files


def write_gallery(
    results, out, title="captioner sample", replace=True, checkpoint=None, note=None
):
    """An HTML page of captioned picture files.

    results: [{"file_name", "caption", "log_prob", ...}] (what `sample --json` writes);
    a picture that cannot be read any more shows a placeholder. checkpoint: the model named
    under the title; note: its caveat (picture_files.demo_note), shown as a banner.
    """
    check_writable(out)
    items = []
    for r in results:
        uri = thumbnail(r["file_name"])
        items.append(
            {
                "title": r["file_name"],
                "image_id": r.get("image_id"),
                "kind": "img" if uri else "missing",
                "src": uri or f"{r['file_name']}: picture cannot be read",
                "caption": r["caption"],
                "log_prob": r.get("log_prob"),
                "cider": None,
                "references": [],
            }
        )
    html = render(
        {
            "title": title,
            "generated": datetime.datetime.now().isoformat(timespec="seconds"),
            "runs": [],
            "curves": [],
            "split": None,
            "pictures": items,
            "checkpoint": checkpoint and os.fspath(checkpoint),
            "note": note,
            "metric_keys": [],
        }
    )
    atomic.write_text(out, html, what="gallery", replace=replace)
    return out
