"""The commands about data: download (the CS231n features, COCO or Flickr8k pictures),
prepare (a dataset from pictures), encode (the picture encoders alone) and info (what a
dataset or a checkpoint holds)."""

import contextlib
import os
import sys

import click

from .. import encoders, limits
from .options import (
    COUNT,
    SEED,
    SPLITS,
    data_option,
    encoder_option,
    load_data,
    options_given,
    same_command,
)
from .output import echo, interrupted, plural, progress_bar


@click.command()
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
        from ..download import download_flickr8k

        path = download_flickr8k(
            dest or "data/flickr8k", mirror=mirror, progress=progress_bar(), again=same_command()
        )
        echo(
            f"Flickr8k pictures and captions ready in {path}; next: captioner prepare "
            f"--flickr8k {path} --out {path}-ds"
        )
        return
    if images:
        if url:
            raise click.UsageError("--url is for the CS231n zip; with --images use --mirror")
        from ..download import download_coco_images

        path = download_coco_images(
            dest or "data/coco2014", mirror=mirror, progress=progress_bar(), again=same_command()
        )
        echo(
            f"COCO 2014 pictures and captions ready in {path}; next: captioner prepare "
            f"--coco {path} --out {path}-karpathy"
        )
        return
    if mirror:
        raise click.UsageError(
            "--mirror goes with --images or --flickr8k (for the CS231n zip use --url)"
        )
    from ..download import COCO_URL, download_coco

    path = download_coco(
        dest or "data", url=url or COCO_URL, progress=progress_bar(), again=same_command()
    )
    echo(f"COCO captioning data ready in {path}")


@click.command()
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
    from ..prepare import prepare_coco, prepare_dataset, prepare_flickr8k, prepare_karpathy

    given = options_given(ctx)
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
        progress=progress_bar(),
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
                    progress=options["progress"],
                    **shards,
                )
    except KeyboardInterrupt as e:
        echo("\ninterrupted; run the same command again to resume", err=True)
        sys.exit(interrupted(e))
    if s["done_before"]:
        echo(
            f"{s['out_dir']}: already built by this command (same pictures, captions and "
            f"settings); nothing to do"
        )
    name = f"{s['dataset']}, " if s.get("dataset") else ""
    echo(
        f"{s['out_dir']}: {name}{s['encoder']} features, "
        f"vocabulary {plural(s['vocab_size'], 'word')}"
    )
    for split in SPLITS:
        if split in s:
            t = s[split]
            echo(
                f"  {split}: {plural(t['images'], 'image')}, "
                f"{plural(t['captions'], 'caption')}, {t['unk_words']:.1%} of words <UNK>"
            )
    if not s["done_before"]:
        echo(
            f"  encoded {plural(s['encoded_images'], 'image')} ({s['resumed_images']:,} "
            f"resumed) at {s['images_per_second']:.1f} images/s with {s['workers']} worker(s)"
        )
    if s["skipped"]:
        echo(f"  skipped {len(s['skipped']):,} picture(s):")
    for name, reason in s["skipped"][:10]:
        shown = repr(name) if _odd(name) else name
        echo(f"  skipped {shown}: {reason}")
    if len(s["skipped"]) > 10:
        echo(f"  ... and {len(s['skipped']) - 10} more skipped")
    for note in s.get("notes", []):
        echo(f"  note: {note}")
    for warning in s["warnings"]:
        echo(f"captioner: warning: {warning}", err=True)


def _odd(name):
    """A name that would break the one-line output (line breaks, NUL): print it quoted."""
    from ..sources.paths import unsafe_text

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
    from ..cluster import executor

    with executor(scheduler, workers) as (pool, threads):
        yield {"executor": pool, "workers": threads}


@click.command()
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
    from .. import picture_files
    from ..encoder import top_k

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
                echo(path)
                for idx, name, prob in tops[path]:
                    echo(f"  {prob:6.1%}  {idx:3d}  {name}")
    errors = bad + errors
    for _path, message in errors:
        echo(f"captioner: error: {message}", err=True)
    if errors:
        sys.exit(1)


@click.command()
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
        from ..checkpoint import load_model

        model, meta, _, history = load_model(ckpt)
        t = meta.get("training", {})
        n = sum(p.size for p in model.params.values())
        echo(f"checkpoint {ckpt} (format version {meta['version']}, {meta.get('created', '?')})")
        echo(
            f"  model: {model.cell_type}, hidden {model.hidden_dim}, word vectors "
            f"{model.wordvec_dim}, {n:,} parameters, vocabulary {len(meta['vocab'])}"
            + (
                f", adaptive softmax (cutoffs {','.join(map(str, model.cutoffs))})"
                if model.softmax == "adaptive"
                else ""
            )
        )
        echo(f"  features: {meta['features']['encoder']} ({meta['features']['dim']}-d)")
        best = t.get("best") or {}
        echo(
            f"  trained: {t.get('epoch', 0)} epochs, {t.get('step', 0)} steps"
            + (
                f"; best {best['metric']} {best['value']:.4f} at epoch {best['epoch']}"
                if best
                else ""
            )
        )
        from ..training import format_record

        for r in t.get("epochs", []):
            echo("    " + format_record(r, t.get("settings", {}).get("epochs", "?")))
        return
    from ..data import available_splits, captions_file

    test = os.path.isfile(captions_file(data)) and "test" in available_splits(
        data
    )  # train and val are always there
    d = load_data(data, features, splits=["train", "val", "test"] if test else ["train", "val"])
    sizes = "/".join(f"{len(d[f'{s}_features']):,}" for s in SPLITS if f"{s}_features" in d)
    echo(
        f"dataset {d['base_dir']}: {d['dataset'] + ', ' if d['dataset'] else ''}{sizes} "
        f"images, vocabulary {plural(len(d['idx_to_word']), 'word')}, {d['encoder']} features "
        f"({d['feature_dim']}-d)"
    )
    from ..data import feature_attrs

    attrs = feature_attrs(d["base_dir"], d["feature_kind"])
    if "feature_layout" in attrs:
        echo(f"  layout: {attrs['feature_layout']}")
    if "encoder_weights_sha256" in attrs:
        echo(f"  encoder weights: sha256 {attrs['encoder_weights_sha256']}")
    for split in SPLITS:
        if f"{split}_captions" in d:
            caps = d[f"{split}_captions"]
            lengths = (caps[:, 1:] != 0).sum(1) - 1
            echo(
                f"  {split}: {plural(len(caps), 'caption')} of "
                f"{plural(len(d[f'{split}_features']), 'image')}, "
                f"{caps.shape[1]} columns, mean {lengths.mean():.1f} words"
            )
