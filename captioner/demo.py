"""Synthetic picture-caption pairs for the offline demo: coloured shapes on varied backgrounds.

A scene is a plain dict, so it can be saved beside the pictures and read back by tests:

    {"background": {"kind": "plain"|"gradient"|"noise", "colours": [[r, g, b], [r, g, b]],
                    "direction": "vertical"|"horizontal"|"diagonal", "noise": float, "seed": int},
     "objects": [{"shape": "circle", "colour": "red", "size": "large", "cell": [row, col],
                  "cx": 0.5, "cy": 0.25, "radius": 0.09, "angle": 7.0}, ...]}

Every caption word is determined by the pixels: colour, shape, size, count and a 3x3 grid
position. Objects sit in distinct cells of a 3x3 grid whose centres are at 25%, 50% and 75% of the
side; no object comes closer than 11% of the side (25 px at 224) to the border, so a 256->224 style
centre crop (which cuts 6.25% per side) never cuts an object, and neighbours never touch.
"""

import json
import logging
import os

import numpy as np
from PIL import Image, ImageDraw

from captioner import atomic
from captioner.data import DEMO_SOURCE
from captioner.errors import CaptionerError

LOG = logging.getLogger("captioner")  # the CLI shows it on stderr

# Far apart in the encoder's feature space, not just in hue: a linear probe on our SqueezeNet
# features (600 one-object scenes) confused orange with yellow and purple with blue/red, 76%
# held-out colour accuracy; with white and black in their place it got 98%.
COLOURS = {
    "red": (220, 25, 30),
    "yellow": (250, 220, 10),
    "green": (25, 165, 45),
    "blue": (25, 65, 235),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
BG_SATURATION, BG_VALUE = (
    0.2,
    (0.35, 0.75),
)  # HSV ranges of background tones: mid greys, never white or black
SHAPES = ("circle", "square", "triangle", "star", "cross")
SIZES = {"large": (0.088, 0.100), "small": (0.052, 0.060)}  # radius as a fraction of the side
SIZE_WORDS = {"large": ("large", "large", "big"), "small": ("small", "small", "little")}
CELL_CENTRES = (0.25, 0.5, 0.75)
JITTER = 0.012  # centre jitter, fraction of the side
REACH = 1.2  # no shape reaches further than REACH * radius from its centre (see _polygon)
GAP = 0.01  # minimum gap between the reach circles of two objects
N_OBJECTS_P = (0.45, 0.35, 0.20)  # probability of 1, 2, 3 objects
MAX_WORDS = 15  # the CS231n layout: 15 words + <START> + <END>
# Position phrases for grid cells (row, col); "at the top left" etc. keeps the position words
# stable.
_PLACE = {
    (0, 0): "at the top left",
    (0, 1): "at the top",
    (0, 2): "at the top right",
    (1, 0): "on the left",
    (1, 1): "in the middle",
    (1, 2): "on the right",
    (2, 0): "at the bottom left",
    (2, 1): "at the bottom",
    (2, 2): "at the bottom right",
}


def random_scene(rng):
    """Draw a scene spec (see module docstring) from a numpy Generator."""
    n = int(rng.choice(3, p=N_OBJECTS_P)) + 1
    cells = rng.choice(9, size=n, replace=False)
    seen, objects = set(), []
    for cell in sorted(int(c) for c in cells):  # reading order: top to bottom, left to right
        while True:  # distinct (colour, shape) pairs, so "a red circle" names one object
            colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
            if (colour, shape) not in seen:
                seen.add((colour, shape))
                break
        size = "large" if rng.random() < 0.5 else "small"
        row, col = divmod(cell, 3)
        radius = round(rng.uniform(*SIZES[size]), 4)
        while (
            True
        ):  # jitter, but keep a gap to earlier objects (two large stars could touch otherwise)
            cx = round(CELL_CENTRES[col] + rng.uniform(-JITTER, JITTER), 4)
            cy = round(CELL_CENTRES[row] + rng.uniform(-JITTER, JITTER), 4)
            if all(
                np.hypot(cx - o["cx"], cy - o["cy"]) >= REACH * (radius + o["radius"]) + GAP
                for o in objects
            ):
                break
        objects.append(
            {
                "shape": shape,
                "colour": colour,
                "size": size,
                "cell": [row, col],
                "cx": cx,
                "cy": cy,
                "radius": radius,
                "angle": round(rng.uniform(-12, 12), 1) if shape != "circle" else 0.0,
            }
        )
    return {"background": _random_background(rng), "objects": objects}


def _random_background(rng):
    # Greyish mid tones: they never read as one of COLOURS.
    def tone():
        h, s, v = rng.uniform(0, 1), rng.uniform(0, BG_SATURATION), rng.uniform(*BG_VALUE)
        return [int(round(255 * c)) for c in _hsv_to_rgb(h, s, v)]

    kind = str(rng.choice(["plain", "gradient", "noise"]))
    return {
        "kind": kind,
        "colours": [tone(), tone()],
        "direction": str(rng.choice(["vertical", "horizontal", "diagonal"])),
        "noise": round(float(rng.uniform(4, 14)), 1) if kind == "noise" else 0.0,
        "seed": int(rng.integers(2**31)),
    }


def _hsv_to_rgb(h, s, v):
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _background(bg, size):
    """(size, size, 3) float array: plain colour, linear gradient, or gradient + gaussian noise."""
    a, b = np.array(bg["colours"], dtype=np.float32)
    if bg["kind"] == "plain":
        return np.broadcast_to(a, (size, size, 3)).astype(np.float32)  # a writable copy
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    t = {
        "vertical": ramp[:, None],
        "horizontal": ramp[None, :],
        "diagonal": (ramp[:, None] + ramp[None, :]) / 2,
    }[bg["direction"]]
    img = a + (b - a) * np.broadcast_to(t, (size, size))[..., None]
    if bg["noise"]:
        noise = np.random.default_rng(bg["seed"]).standard_normal(
            (size, size, 1), dtype=np.float32
        )
        img = img + bg["noise"] * noise
    return img.astype(np.float32)


def _polygon(shape, cx, cy, r, angle):
    """Vertices of a non-circle shape; r is scaled per shape so all shapes cover a similar area."""
    if shape == "square":
        pts = [(r * 0.85 * np.sqrt(2), np.pi / 4 + k * np.pi / 2) for k in range(4)]
    elif shape == "triangle":  # pointing up, centroid at the centre
        pts = [(r * 1.2, -np.pi / 2 + k * 2 * np.pi / 3) for k in range(3)]
    elif shape == "star":
        pts = [(r * (1.2 if k % 2 == 0 else 0.5), -np.pi / 2 + k * np.pi / 5) for k in range(10)]
    elif shape == "cross":  # a plus sign: 12 corners, arms 0.36 r wide on each side
        w, L = 0.36 * r, 1.0 * r
        xy = [
            (w, -L),
            (w, -w),
            (L, -w),
            (L, w),
            (w, w),
            (w, L),
            (-w, L),
            (-w, w),
            (-L, w),
            (-L, -w),
            (-w, -w),
            (-w, -L),
        ]
        pts = [(np.hypot(x, y), np.arctan2(y, x)) for x, y in xy]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    th = np.deg2rad(angle)
    return [(cx + d * np.cos(a + th), cy + d * np.sin(a + th)) for d, a in pts]


def render_scene(scene, size=224):
    """Draw a scene spec as a size x size RGB PIL image; shapes are anti-aliased by 4x
    supersampling."""
    ss = 4
    img = _background(scene["background"], size)
    for o in scene["objects"]:
        # Draw each object's coverage mask in its own small patch: far cheaper than a full-size
        # canvas.
        cx, cy, r = o["cx"] * size, o["cy"] * size, o["radius"] * size
        reach = REACH * r + 2
        x0, y0 = max(int(cx - reach), 0), max(int(cy - reach), 0)
        x1, y1 = min(int(np.ceil(cx + reach)), size), min(int(np.ceil(cy + reach)), size)
        mask = Image.new("L", ((x1 - x0) * ss, (y1 - y0) * ss), 0)
        px, py, pr = (cx - x0) * ss, (cy - y0) * ss, r * ss
        if o["shape"] == "circle":
            ImageDraw.Draw(mask).ellipse([px - pr, py - pr, px + pr, py + pr], fill=255)
        else:
            ImageDraw.Draw(mask).polygon(_polygon(o["shape"], px, py, pr, o["angle"]), fill=255)
        cover = np.asarray(mask.reduce(ss), dtype=np.float32)[..., None] / 255
        patch = img[y0:y1, x0:x1]
        img[y0:y1, x0:x1] = (
            patch * (1 - cover) + np.array(COLOURS[o["colour"]], np.float32) * cover
        )
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


def _a(word):
    return ("an " if word[0] in "aeiou" else "a ") + word


def _np(o, rng, size=False):
    """Noun phrase 'a [large] red circle'."""
    words = ([str(rng.choice(SIZE_WORDS[o["size"]]))] if size else []) + [o["colour"], o["shape"]]
    return _a(" ".join(words))


def _place(o):
    return _PLACE[tuple(o["cell"])]


def _templates(objs):
    """Caption makers for a scene, each rng -> str; colour+shape always adjacent so the key
    bigram is stable."""
    if len(objs) == 1:
        (o,) = objs
        p = _place(o)
        return [
            lambda g: f"{_np(o, g)} {p}",
            lambda g: f"{_np(o, g, size=True)} {p}",
            lambda g: f"there is {_np(o, g)} {p}",
            lambda g: f"{_np(o, g)} {p} of the picture",
            lambda g: f"a picture of {_np(o, g, size=True)}",
            lambda g: f"there is {_np(o, g, size=True)} {p}",
            lambda _g: f"the {o['colour']} {o['shape']} is {p}",
            lambda g: f"one {g.choice(SIZE_WORDS[o['size']])} {o['colour']} {o['shape']} {p}",
        ]
    if len(objs) == 2:
        a, b = objs
        rel = "to the left of" if a["cell"][0] == b["cell"][0] else "above"
        return [
            lambda g: f"{_np(a, g)} and {_np(b, g)}",
            lambda g: f"two shapes : {_np(a, g, size=True)} and {_np(b, g, size=True)}",
            lambda g: f"{_np(a, g)} {_place(a)} and {_np(b, g)} {_place(b)}",
            lambda g: f"{_np(a, g, size=True)} and {_np(b, g, size=True)}",
            lambda g: f"{_np(a, g)} {rel} {_np(b, g)}",
            lambda g: f"two shapes : {_np(a, g)} and {_np(b, g)}",
        ]
    a, b, c = objs
    return [
        lambda g: f"{_np(a, g)} , {_np(b, g)} and {_np(c, g)}",
        lambda g: f"three shapes : {_np(a, g)} , {_np(b, g)} and {_np(c, g)}",
        lambda g: f"{_np(a, g, size=True)} , {_np(b, g, size=True)} and {_np(c, g, size=True)}",
        lambda g: f"three shapes with {_np(a, g, size=True)} {_place(a)}",
        lambda g: f"{_np(a, g)} {_place(a)} with {_np(b, g)} and {_np(c, g)}",
    ]


def scene_captions(scene, rng, n=5):
    """n lowercase captions (at most MAX_WORDS space-separated tokens each) for a scene, from
    distinct templates."""
    makers = _templates(scene["objects"])
    order = rng.permutation(len(makers))
    return [makers[order[i % len(makers)]](rng) for i in range(n)]


def write_demo_images(out_dir, n_images, seed=0, start_id=1, captions_per_image=5):
    """Render n_images scenes as JPEGs into out_dir plus a COCO-format captions.json; return its
    path.

    Image k has id start_id + k and depends only on (seed, id), so a prefix of a larger set is the
    same pictures and the same seed rewrites identical files. Each `images` entry also carries its
    scene spec, which COCO readers ignore. Annotation ids are unique across calls with disjoint
    image ids.
    """
    if n_images < 1 or start_id < 1:
        raise CaptionerError(
            f"{out_dir}: asked for {n_images} demo images from id {start_id}; "
            "use at least 1 image and ids from 1"
        )
    images, annotations = [], []
    try:
        os.makedirs(out_dir, exist_ok=True)
        for k in range(n_images):
            image_id = start_id + k
            rng = np.random.default_rng([seed, image_id])
            scene = random_scene(rng)
            name = f"demo_{image_id:012d}.jpg"
            render_scene(scene).save(os.path.join(out_dir, name), quality=92)
            images.append(
                {"id": image_id, "file_name": name, "width": 224, "height": 224, "scene": scene}
            )
            for j, caption in enumerate(scene_captions(scene, rng, captions_per_image)):
                annotations.append(
                    {
                        "id": (image_id - 1) * captions_per_image + j + 1,
                        "image_id": image_id,
                        "caption": caption,
                    }
                )
        path = os.path.join(out_dir, "captions.json")
        info = {"description": "captioner synthetic demo scenes: coloured shapes", "seed": seed}
        # atomic: a symbolic link planted under the name is replaced, never followed
        atomic.write_text(
            path, json.dumps({"info": info, "images": images, "annotations": annotations})
        )
    except OSError as e:
        raise CaptionerError(
            f"{e.filename or out_dir}: cannot write demo images ({e.strerror or e}); "
            "pick a writable directory with free space"
        ) from e
    return path


# ---------------------------------------------------------------- the whole pipeline, offline


RUN_DIR = os.path.join("runs", "demo")  # one stable place: rerun = continue, README paths hold


def run_demo(
    out_dir="data/demo",
    n_train=1500,
    n_val=200,
    epochs=20,
    seed=0,
    log=LOG.info,
    run_dir=None,
    encoder=None,
    progress=None,
):
    """Render scenes -> prepare -> train -> evaluate on held-out scenes -> caption a new picture.

    encoder: a captioner.encoders name (None: encoders.DEMO); a dataset of another encoder's
    features in out_dir is rebuilt.
    Each stage is the library call behind the CLI command it prints. The model is trained in
    run_dir (None: runs/demo, or runs/demo-{kind} for an encoder other than the demo's, so
    each encoder's run is kept): a run found there, interrupted or finished, is continued
    rather than started again (progress: the library's progress callback, as
    training.train's, for encoding and training). Steps 4-5 and the report use
    best.npz, the model the run kept. Ctrl-C while training raises training.Interrupted after
    saving last.npz. Returns a summary dict; 'grounded' is True when the model's CIDEr-D is
    at least twice what it gets from the mean feature (i.e. the captions come from the
    pixels, not from the caption statistics).
    """
    import time

    from . import checkpoint, encoders
    from .data import feature_file, load_coco_data
    from .evaluation import evaluate_model
    from .pictures import caption_images
    from .prepare import prepare_dataset
    from .runs import has_checkpoint, run_lock, start_or_resume, train_in

    # a folder of the user's own (e.g. ~/Pictures) is refused: the demo writes only its own
    atomic.check_fresh_dir(
        out_dir,
        False,
        "folder",
        keep=("images", "dataset", "val_images.txt", "new_picture.jpg"),
        can_force=False,
    )
    t0 = time.perf_counter()
    images_dir = os.path.join(out_dir, "images")
    dataset = os.path.join(out_dir, "dataset")
    enc = encoders.get(encoders.DEMO if encoder is None else encoder)
    if run_dir is None:
        run_dir = RUN_DIR if enc.name == encoders.DEMO else f"{RUN_DIR}-{enc.kind}"
    if os.path.exists(feature_file(dataset, "train", enc.kind)):
        log(
            f"[1-2/5] using the scenes already prepared in {dataset} (delete {out_dir} to rebuild)"
        )
    else:
        log(f"[1/5] rendering {n_train + n_val} scenes with 5 captions each into {images_dir}")
        annotations = write_demo_images(images_dir, n_train + n_val, seed=seed)
        val_list = os.path.join(out_dir, "val_images.txt")
        atomic.write_text(
            val_list,
            "".join(f"demo_{i:012d}.jpg\n" for i in range(n_train + 1, n_train + n_val + 1)),
        )
        log(
            f"[2/5] captioner prepare --images {images_dir} --captions {annotations} "
            f"--split-by {val_list} --min-count 1 --encoder {enc.name} --out {dataset}"
        )
        prepare_dataset(
            images_dir,
            annotations,
            dataset,
            split_by=val_list,
            min_count=1,
            source=DEMO_SOURCE,
            encoder=enc.name,
            force=True,  # only ever the demo's own dataset (of another encoder): checked above
            progress=progress,
        )
    data = load_coco_data(dataset)

    options = dict(
        cell="lstm",
        hidden_dim=256,
        wordvec_dim=128,
        seed=seed,
        epochs=epochs,
        batch_size=100,
        lr=2e-3,
        lr_decay=0.97,
        val_size=500,
        data=dataset,
        features=data["feature_kind"],
    )
    resume = run_dir if has_checkpoint(run_dir) else None
    run = start_or_resume(
        run_dir,
        options,
        lambda *_, **__: data,
        resume=resume,
        check=_check_demo_run(run_dir, dataset, data),
    )
    settings = run.settings
    if resume is None:
        log(
            f"[3/5] captioner train --data {dataset} --cell lstm --hidden-dim 256 "
            f"--wordvec-dim 128 --epochs {epochs} --lr 2e-3 --lr-decay 0.97 --out {run_dir}"
        )
    else:
        settings["epochs"] = max(settings["epochs"], epochs)  # --epochs may extend, never cut
        if run.state["epoch"] < settings["epochs"]:
            log(
                f"[3/5] captioner train --resume {run_dir}: continuing the demo's run at "
                f"epoch {run.state['epoch'] + 1}/{settings['epochs']} (delete {run_dir} to "
                f"start over)"
            )
        else:
            log(
                f"[3/5] {run_dir}: already trained, {run.state['epoch']} epochs (delete it to "
                f"retrain)"
            )
    with run_lock(run.run_dir):
        state = train_in(data, run.model, run.run_dir, run.state, progress, log, **settings)

    # the model the run kept (lowest val loss), as `captioner report` and `sample` use
    best_path = os.path.join(run_dir, "best.npz")
    model, _, _, _ = checkpoint.load_model(best_path)
    best = state["best"]
    log(
        f"[4/5] captioner evaluate --checkpoint {best_path} --data {dataset} --no-meteor"
        f"   (best.npz: epoch {best['epoch']} of {state['epoch']}, the lowest val loss)"
    )
    scores, _, _ = evaluate_model(model, data, "val", meteor=False)
    mean = data["train_features"][:].mean(0)
    blind = dict(data, val_features=np.broadcast_to(mean, data["val_features"].shape))
    blind_scores, _, _ = evaluate_model(model, blind, "val", meteor=False)
    log(
        f"      held-out scenes ({len(data['val_features'])} image"
        f"{'' if len(data['val_features']) == 1 else 's'}):  "
        f"BLEU-4 {scores['Bleu_4']:.3f}  CIDEr-D {scores['CIDEr']:.3f}"
    )
    log(
        f"      same model, every image replaced by the mean feature:  BLEU-4 "
        f"{blind_scores['Bleu_4']:.3f}  CIDEr-D {blind_scores['CIDEr']:.3f}"
    )

    rng = np.random.default_rng([seed, 10**9])
    scene = random_scene(rng)
    picture = os.path.join(out_dir, "new_picture.jpg")
    render_scene(scene).save(picture, quality=92)
    log(f"[5/5] captioner sample {picture} --checkpoint {best_path}")
    ((_, beams, _),) = caption_images(model, [picture], encoder=enc.name)
    log(f"      generated: {beams[0][0]}")
    for truth in scene_captions(scene, rng, 3):
        log(f"      a human-style caption: {truth}")
    ratio = scores["CIDEr"] / max(blind_scores["CIDEr"], 1e-9)
    summary = {
        "scores": scores,
        "blind_scores": blind_scores,
        "ratio": ratio,
        "grounded": ratio >= 2,
        "run_dir": run_dir,
        "checkpoint": best_path,
        "picture": picture,
        "caption": beams[0][0],
        "seconds": time.perf_counter() - t0,
    }
    log(
        f"grounding: CIDEr-D {ratio:.1f}x the mean-feature baseline "
        f"({'PASS' if summary['grounded'] else 'FAIL'}, needs >= 2x); "
        f"{summary['seconds']:.0f} s in all"
    )
    from .report import write_report

    summary["report"] = write_report(
        [run_dir], os.path.join(run_dir, "report.html"), meteor=False, log=lambda *_: None
    )
    log(
        f"report written to {summary['report']} (the scores above, with curves and a gallery): "
        f"open it in a browser"
    )
    return summary


def _check_demo_run(run_dir, dataset, data):
    """start_or_resume's check of the demo run already in run_dir: trained on the demo's
    dataset, of the same encoder."""

    def check(_path, meta, settings):
        saved = settings.get("data_dir")
        if saved != os.path.abspath(dataset):
            raise CaptionerError(
                f"{run_dir}: holds a run trained on {saved}, not on the demo's {dataset}; "
                f"delete {run_dir} (or move it away) and run the demo again"
            )
        trained_on = meta["features"].get("encoder")
        if trained_on != data["encoder"]:  # the demo was run before with another --encoder
            raise CaptionerError(
                f"{run_dir}: holds a demo run trained on {trained_on} features, not on "
                f"{data['encoder']}; delete {run_dir} (or move it away) and run the demo again"
            )

    return check
