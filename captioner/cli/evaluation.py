"""The commands that read trained models: evaluate (the COCO metrics), sample (captions of
pictures or dataset images), gradients (the gradient flow through time) and report (HTML).
They find a checkpoint, its data, and decode."""

import os
import sys

import click

from .. import encoders, limits
from ..cells import CELLS
from .options import (
    COUNT,
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    SPLITS,
    beam_size_option,
    data_option,
    load_data,
    max_length_option,
    no_meteor_option,
)
from .output import echo, plural, progress_bar


@click.command()
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
@beam_size_option
@max_length_option
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
@no_meteor_option
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

    from .. import atomic, metrics

    if save_results:  # checked first: an hour of decoding must not end in this refusal
        atomic.check_new_file(save_results, force, "--save-results")
    if results or references:
        if not (results and references):
            raise click.UsageError("--results and --references go together")
        refs = metrics.load_annotations(references)
        res = metrics.load_results(results, known_ids=set(refs))
        scores, notes = metrics.score({i: refs[i] for i in res}, res, meteor=not no_meteor)
        what = f"{plural(len(res), 'caption')} of {results}"
        where = {}
    else:
        from ..checkpoint import load_model
        from ..evaluation import evaluate_model
        from ..runs import checkpoint_data

        ckpt = ckpt or _newest_best()
        model, meta, _, _ = load_model(ckpt)
        d = checkpoint_data(ckpt, meta, data, split)
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
        what = f"{ckpt} on {plural(len(generated), split + ' image')} of {name}, beam {beam_size}"
        where = {"split": split, "dataset": name, "data": d["base_dir"]}
        if save_results:
            from ..atomic import write_json

            write_json(save_results, generated, replace=force)
    if as_json:
        click.echo(json.dumps({"scores": scores, "notes": notes, **where}))
        return
    echo(what)
    from ..metrics import KEYS

    for k in KEYS:
        if k in scores:
            echo(f"  {k:8s} {scores[k]:.3f}")
    for note in notes:
        echo(f"  ({note})")


@click.command()
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
@beam_size_option
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
@max_length_option
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

    from ..checkpoint import load_model
    from ..pictures import caption_features, caption_images
    from ..runs import checkpoint_data
    from ..vocab import decode_captions

    if not images and split is None:
        raise click.UsageError("give picture files to caption, or --split train|val|test")
    if (json_out or html_out) and not images:
        raise click.UsageError("--json and --html are for picture files; give files or folders")
    from .. import atomic

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
        echo(title)
        for cap, lp in caps:
            echo(f"  {cap}" + (f"   (log p {lp:.2f})" if n_best > 1 and lp is not None else ""))
        for t in truth:
            echo(f"  truth: {t}")

    if images:
        from .. import picture_files

        for out in (json_out, html_out):
            if out:
                picture_files.check_writable(out)
        enc = encoders.of_checkpoint(ckpt, meta)
        note = _demo_note(meta)
        files, bad = picture_files.find_pictures(images)
        # a progress bar for more than a few pictures (on a terminal: not in pipes and logs)
        results = caption_images(
            model,
            files,
            progress=progress_bar() if len(files) > 8 else None,
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
            from ..report import write_gallery

            write_gallery(
                records,
                html_out,
                title=f"captioner sample: {plural(len(records), 'picture')}",
                replace=force,
                checkpoint=ckpt,
                note=note,
            )
        errors = [message for _, message in bad]
        errors += [message for _, caps, message in results if caps is None]
        for message in errors:
            echo(f"captioner: error: {message}", err=True)
        if errors:
            sys.exit(1)
        return

    from ..data import image_groups

    d = checkpoint_data(ckpt, meta, data, split)
    idxs, rows = image_groups(d, split)
    pick = np.sort(rng.choice(len(idxs), size=min(count, len(idxs)), replace=False))
    urls = d.get(f"{split}_urls")
    for p, caps in zip(
        pick, caption_features(model, d[f"{split}_features"][idxs[pick]], **decoding)
    ):
        truth = decode_captions(d[f"{split}_captions"][rows[p]], d["idx_to_word"])
        show(urls[idxs[p]] if urls else f"{split} image {idxs[p]}", caps, truth)


@click.command()
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

    from .. import compare as cmp
    from .. import gradients as flow
    from .. import plots
    from ..checkpoint import load_model
    from ..runs import checkpoint_data
    from ..training import new_model

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
        d = checkpoint_data(ckpt, meta, data, split)
        key = setting or flow.setting_key(meta)
        groups.setdefault(key, (setting, []))[1].append(len(models))
        models.append((ckpt, model, d))
    for cell in cells:
        key = (data, features)
        if key not in loaded:
            loaded[key] = load_data(data, features, splits=(split,))
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
        echo(line)
    several = [g for g in spreads if g["n"] > 1]
    if several:
        echo("")
        echo("over the checkpoints of one setting: mean +- std [min .. max]")
        for g in several:
            echo(flow.spread_line(g))
    if plot:
        echo(f"plot: {plot}")


@click.command()
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
@beam_size_option
@max_length_option
@click.option(
    "--max-images",
    type=COUNT,
    default=None,
    help="Score only the first N images of the split (default: all).",
)
@no_meteor_option
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
    from .. import atomic
    from ..report import write_report

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
        log=lambda m: echo(m, err=True),
        outside_pictures=outside_pictures,
    )
    echo(f"report: {path} ({os.path.getsize(path) / 1e6:.1f} MB)")


def _newest_best():
    from ..runs import newest_best

    found = newest_best()
    echo(f"using {found}, the newest runs/*/best.npz (--checkpoint to choose)", err=True)
    return found


def _demo_note(meta):
    """Say once, before captioning picture files, that a demo model knows only shapes;
    -> that note (it also goes into --json and --html), or None."""
    from ..picture_files import demo_note

    note = demo_note(meta)
    if note:
        echo(f"note: {note}", err=True)
    return note
