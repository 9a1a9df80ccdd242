"""The demo data: deterministic, and every caption word is backed by pixels."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner import demo
from captioner.errors import CaptionerError

SIZE = 224


def _scenes(n, seed=0):
    rng = np.random.default_rng(seed)
    return [demo.random_scene(rng) for _ in range(n)]


def _nearest_colour(rgb):
    names = list(demo.COLOURS)
    d = [np.abs(np.array(demo.COLOURS[k], float) - rgb).sum() for k in names]
    return names[int(np.argmin(d))], min(d)


def _centre_px(o, size=SIZE):
    return int(o["cy"] * size), int(o["cx"] * size)


def _object_pixels(px, o, size=SIZE, tol=40):
    """Boolean mask of pixels within `tol` (L1) of the object's colour inside its reach box."""
    r = demo.REACH * o["radius"] * size + 2
    y0, x0 = int(max(o["cy"] * size - r, 0)), int(max(o["cx"] * size - r, 0))
    box = px[y0 : int(o["cy"] * size + r) + 1, x0 : int(o["cx"] * size + r) + 1].astype(float)
    near = np.abs(box - np.array(demo.COLOURS[o["colour"]], float)).sum(-1) < tol
    return near, y0, x0


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return Path(demo.write_demo_images(out, 12, seed=7, start_id=5))


def test_same_seed_same_pixels_and_captions(written, tmp_path):
    again = Path(demo.write_demo_images(tmp_path / "again", 12, seed=7, start_id=5))
    a = json.loads(written.read_text())
    assert written.read_bytes() == again.read_bytes()
    for im in a["images"]:
        pa = np.asarray(Image.open(written.parent / im["file_name"]))
        pb = np.asarray(Image.open(again.parent / im["file_name"]))
        assert np.array_equal(pa, pb)
    # a prefix of the set is the same pictures; another seed is different pictures
    short = json.loads(
        Path(demo.write_demo_images(tmp_path / "short", 3, seed=7, start_id=5)).read_text()
    )
    assert short["images"] == a["images"][:3]
    other = json.loads(
        Path(demo.write_demo_images(tmp_path / "other", 12, seed=8, start_id=5)).read_text()
    )
    assert [im["scene"] for im in other["images"]] != [im["scene"] for im in a["images"]]


def test_render_and_captions_are_pure_functions_of_their_inputs():
    scene = _scenes(1, seed=3)[0]
    assert np.array_equal(
        np.asarray(demo.render_scene(scene)), np.asarray(demo.render_scene(scene))
    )
    caps1 = demo.scene_captions(scene, np.random.default_rng(1))
    caps2 = demo.scene_captions(scene, np.random.default_rng(1))
    assert caps1 == caps2 and len(caps1) == 5 and len(set(caps1)) == 5


def test_annotation_json_is_coco_format(written):
    data = json.loads(written.read_text())
    ids = [im["id"] for im in data["images"]]
    assert ids == list(range(5, 17))
    for im in data["images"]:
        assert (
            re.fullmatch(r"demo_\d{12}\.jpg", im["file_name"]) and str(im["id"]) in im["file_name"]
        )
        with Image.open(written.parent / im["file_name"]) as pic:
            assert pic.mode == "RGB" and pic.size == (SIZE, SIZE) == (im["width"], im["height"])
    ann_ids = [a["id"] for a in data["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids) == 5 * len(ids)
    per_image = dict.fromkeys(ids, 0)
    for a in data["annotations"]:
        assert isinstance(a["caption"], str) and a["caption"]
        per_image[a["image_id"]] += 1
    assert set(per_image.values()) == {5}


def test_written_pictures_show_the_scene_colours(written):
    # JPEG changes pixels a little; the nearest palette colour at each object centre must not
    # change
    data = json.loads(written.read_text())
    checked = 0
    for im in data["images"]:
        px = np.asarray(Image.open(written.parent / im["file_name"]).convert("RGB"), float)
        for o in im["scene"]["objects"]:
            name, dist = _nearest_colour(px[_centre_px(o)])
            assert name == o["colour"] and dist < 60
            checked += 1
    assert checked >= 12


def test_captions_name_the_colour_and_shape_found_in_the_pixels():
    for scene in _scenes(150, seed=11):
        px = np.asarray(demo.render_scene(scene), float)
        caps = demo.scene_captions(scene, np.random.default_rng(0))
        seen = []
        for o in scene["objects"]:
            name, dist = _nearest_colour(px[_centre_px(o)])
            assert dist < 10, "object centres are painted in their exact palette colour"
            seen.append(f"{name} {o['shape']}")
        # every caption names the first object in reading order; some caption names every object
        assert all(seen[0] in c for c in caps)
        assert all(any(s in c for c in caps) for s in seen)
        # nothing named that is not drawn
        for c in caps:
            for colour in demo.COLOURS:
                if re.search(rf"\b{colour}\b", c):
                    assert colour in [s.split()[0] for s in seen]


def test_shapes_have_their_area_and_size_words_follow_pixels():
    # coverage of the drawn shape vs its geometric area, on a plain background so colour masks are
    # exact
    area = {
        "circle": np.pi,
        "square": 4 * 0.85**2,
        "triangle": 3 * np.sqrt(3) / 4 * 1.2**2,
        "star": 5 * 1.2 * 0.5 * np.sin(np.pi / 5),
        "cross": 8 * 0.36 * 1.0 - 4 * 0.36**2,
    }
    pixels = {"large": [], "small": []}
    for scene in _scenes(120, seed=5):
        scene["background"] = {
            "kind": "plain",
            "colours": [[128, 128, 128]] * 2,
            "direction": "vertical",
            "noise": 0.0,
            "seed": 0,
        }
        px = np.asarray(demo.render_scene(scene))
        for o in scene["objects"]:
            near, _, _ = _object_pixels(px, o)
            expected = area[o["shape"]] * (o["radius"] * SIZE) ** 2
            assert abs(near.sum() - expected) < 0.15 * expected + 4, (o, near.sum(), expected)
            if o["shape"] == "circle":
                pixels[o["size"]].append(near.sum())
    assert min(pixels["large"]) > 2 * max(pixels["small"])


def test_position_words_match_where_the_object_is():
    for scene in _scenes(200, seed=2):
        if len(scene["objects"]) != 1:
            continue
        (o,) = scene["objects"]
        px = np.asarray(demo.render_scene(scene))
        near, y0, x0 = _object_pixels(px, o)
        ys, xs = np.nonzero(near)
        cx, cy = (xs.mean() + x0) / SIZE, (ys.mean() + y0) / SIZE
        words = set(" ".join(demo.scene_captions(scene, np.random.default_rng(0))).split())
        assert ("left" in words) == (cx < 1 / 3) and ("right" in words) == (cx > 2 / 3)
        assert ("top" in words) == (cy < 1 / 3) and ("bottom" in words) == (cy > 2 / 3)
        assert ("middle" in words) == (1 / 3 < cx < 2 / 3 and 1 / 3 < cy < 2 / 3)


def test_objects_keep_off_the_border_and_apart():
    margin = 20  # px at 224: a 256->224 centre crop would cut 14
    for scene in _scenes(150, seed=4):
        bg = scene["background"]
        scene["background"] = dict(bg, kind="plain", noise=0.0)
        px = np.asarray(demo.render_scene(scene)).astype(int)
        band = np.ones(px.shape[:2], bool)
        band[margin:-margin, margin:-margin] = False
        assert (px[band] == np.array(bg["colours"][0])).all()
        objs = scene["objects"]
        for i, a in enumerate(objs):
            for b in objs[i + 1 :]:
                gap = np.hypot(a["cx"] - b["cx"], a["cy"] - b["cy"]) - demo.REACH * (
                    a["radius"] + b["radius"]
                )
                assert gap > 0 and a["cell"] != b["cell"]


def test_caption_length_and_vocabulary_bounds():
    vocab, lengths = set(), []
    rng = np.random.default_rng(9)
    for scene in _scenes(400, seed=9):
        for c in demo.scene_captions(scene, rng, n=5):
            words = c.split(" ")
            assert c == c.lower() and all(re.fullmatch(r"[a-z]+|[,:]", w) for w in words), c
            lengths.append(len(words))
            vocab.update(words)
    assert max(lengths) <= demo.MAX_WORDS == 15 and min(lengths) >= 3
    assert (
        len(vocab) < 100
    )  # far under the 1,000-word budget; every word is a closed-class or visual word
    assert set(demo.COLOURS) | set(demo.SHAPES) <= vocab


def test_scenes_cover_every_attribute_value():
    scenes = _scenes(300, seed=1)
    objs = [o for s in scenes for o in s["objects"]]
    assert {o["colour"] for o in objs} == set(demo.COLOURS)
    assert {o["shape"] for o in objs} == set(demo.SHAPES)
    assert {o["size"] for o in objs} == {"large", "small"}
    assert {tuple(o["cell"]) for o in objs} == {(r, c) for r in range(3) for c in range(3)}
    assert {len(s["objects"]) for s in scenes} == {1, 2, 3}
    assert {s["background"]["kind"] for s in scenes} == {"plain", "gradient", "noise"}


def test_relation_words_match_the_layout():
    seen = set()
    for scene in _scenes(200, seed=6):
        objs = scene["objects"]
        if len(objs) != 2:
            continue
        a, b = objs
        text = " ".join(demo.scene_captions(scene, np.random.default_rng(0), n=6))
        if "to the left of" in text:
            assert a["cx"] < b["cx"] and a["cell"][0] == b["cell"][0]
            seen.add("left")
        if " above " in text:
            assert a["cy"] < b["cy"]
            seen.add("above")
    assert seen == {"left", "above"}


def test_unwritable_directory_is_a_one_line_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CaptionerError) as e:
        demo.write_demo_images(blocker / "demo", 2)
    assert "\n" not in str(e.value) and str(blocker) in str(e.value)
    with pytest.raises(CaptionerError, match="asked for 0 demo images .*use at least 1 image"):
        demo.write_demo_images(tmp_path / "none", 0)


# ---------------------------------------------------------------- the grounding verdict


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    """One folder for the verdict tests: the first renders and prepares, the rest reuse it."""
    return tmp_path_factory.mktemp("demo-home")


@pytest.mark.parametrize(
    ("cider", "blind", "code"), [(2.0, 1.0, 0), (1.99, 1.0, 1), (0.5, 0.0, 0)]
)
def test_demo_exits_non_zero_exactly_when_below_the_grounding_bar(
    demo_home, monkeypatch, cider, blind, code
):
    """The demo's baseline is the same model with every val image given the mean training
    feature; `captioner demo` exits 1 exactly when CIDEr-D < 2 x the baseline's. The scores
    come from a stand-in for evaluate_model that answers by the features it is given."""
    from captioner import evaluation
    from helpers import run

    seen = []

    def scored(model, data, split, meteor=True, **decode):
        feats = np.asarray(data[f"{split}_features"][:])
        mean = np.asarray(data["train_features"][:]).mean(0)
        same = bool((feats == feats[0]).all())
        if same:
            np.testing.assert_allclose(feats[0], mean, rtol=1e-6)
        seen.append(same)
        return {"Bleu_4": 0.1, "CIDEr": blind if same else cider}, [], []

    monkeypatch.setattr(evaluation, "evaluate_model", scored)
    monkeypatch.chdir(demo_home)
    r = run("demo", "--out", "demo", "--train-images", 12, "--val-images", 4, "--epochs", 1)
    assert r.exit_code == code, r.output
    assert seen == [False, True]  # the model on the real features, then on the baseline
    verdict = [ln for ln in r.output.splitlines() if ln.startswith("grounding: ")]
    assert len(verdict) == 1 and ("PASS" if code == 0 else "FAIL") in verdict[0], r.output
