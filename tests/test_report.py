"""The HTML report and batch captioning: the numbers it shows, its bad inputs, sample outputs."""

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner import checkpoint, demo, metrics, report, runs, training
from captioner.data import load_coco_data, split_file
from captioner.evaluation import caption_split, evaluate_model
from captioner.model import CaptioningRNN
from fixtures import build_dataset
from helpers import run


def one_error_line(result, *words):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("captioner: error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """40 rendered scenes prepared by `captioner prepare`, a tiny LSTM trained 2 epochs on them
    with a clip norm low enough to clip, and val metrics every epoch."""
    root = tmp_path_factory.mktemp("report")
    annotations = demo.write_demo_images(root / "images", 40, seed=3)
    result = run(
        "prepare",
        "--images",
        root / "images",
        "--captions",
        annotations,
        "--out",
        root / "data",
        "--min-count",
        1,
        "--val-fraction",
        0.25,
    )
    assert result.exit_code == 0, result.output
    result = run(
        "train",
        "--data",
        root / "data",
        "--epochs",
        2,
        "--hidden-dim",
        32,
        "--wordvec-dim",
        16,
        "--batch-size",
        40,
        "--clip-norm",
        1.0,
        "--eval-every",
        1,
        "--quiet",
        "--out",
        root / "run",
    )
    assert result.exit_code == 0, result.output
    return root


def test_history_records_gradient_norm_and_clipping(trained):
    h = json.loads((trained / "run" / "history.json").read_text())
    assert len(h["grad_norm"]) == len(h["clipped"]) == len(h["loss"]) == h["step"] == 8
    # the first step's norm is that of a fresh model on the first batch (epoch 0's order)
    d = load_coco_data(trained / "data")
    model = CaptioningRNN(
        d["word_to_idx"],
        input_dim=d["feature_dim"],
        wordvec_dim=16,
        hidden_dim=32,
        cell_type="lstm",
        seed=0,
    )
    order = np.random.default_rng([0, 0]).permutation(len(d["train_captions"]))
    _, grads = model.loss(*training.batch(d, "train", order[:40]))
    norm = np.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    assert h["grad_norm"][0] == pytest.approx(norm, rel=1e-4)
    assert h["clipped"] == [int(g > 1.0) for g in h["grad_norm"]] and sum(h["clipped"]) > 0
    # and they survive a resume
    model, meta, optim, history = checkpoint.load_model(trained / "run" / "last.npz")
    state = training.resume_state(meta, optim, history)
    assert state["grad_norm_history"] == pytest.approx(h["grad_norm"], abs=1e-5)
    assert state["clipped_history"] == h["clipped"]


PER_IMAGE = (
    {
        1: ["a dog on a couch", "a brown dog sleeping"],
        2: ["two cats on a bed", "cats sleep"],
        3: ["a red bus on a street", "a bus in the city"],
    },
    {1: "a dog sleeping on a couch", 2: "a cat on a bed", 3: "a bus"},
)


def test_per_image_cider_is_the_evaluate_number():
    refs, res = PER_IMAGE
    scores, _, per_image = metrics.score(refs, res, meteor=False, per_image=True)
    assert scores == metrics.score(refs, res, meteor=False)[0]
    assert np.mean(list(per_image.values())) == pytest.approx(scores["CIDEr"], abs=1e-12)
    assert max(per_image, key=per_image.get) == 1  # the one that matches a reference best


@pytest.mark.usefixtures("toolkit")
def test_per_image_cider_is_the_toolkits():
    from pycocoevalcap.cider.cider import Cider

    refs, res = PER_IMAGE
    _, _, per_image = metrics.score(refs, res, meteor=False, per_image=True)
    tok = {i: [" ".join(metrics.tokenize(c)) for c in cs] for i, cs in refs.items()}
    hyps = {i: [" ".join(metrics.tokenize(c))] for i, c in res.items()}
    _, each = Cider().compute_score(tok, hyps)
    assert [per_image[i] for i in refs] == pytest.approx(list(each), abs=1e-9)


def test_unk_share_counts_words_only():
    vocab = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "dog"]
    caps = np.array([[1, 4, 3, 2, 0], [1, 4, 5, 5, 2]])  # 5 words, one <UNK>
    assert report.unk_share(caps, vocab) == pytest.approx(0.2)
    assert report.unk_share(caps, vocab[:3] + ["x", "a", "dog"]) == 0.0


def test_duration():
    assert [report.duration(x) for x in (9.5, 75, 1406.2, 7300)] == [
        "10 s",
        "1 min 15 s",
        "23 min 26 s",
        "2 h 1 min",
    ]


def test_smooth_and_clip_share():
    assert report.smooth([1, 3, 5, 7], window=2).tolist() == [1, 2, 4, 6]
    r = {
        "loss": np.zeros(6),
        "clipped": np.array([1, 0, 0, 0, 1, 1.0]),
        "epochs": [{"step": 3}, {"step": 6}],
    }
    assert report.clip_share_per_epoch(r) == [(3, pytest.approx(1 / 3)), (6, pytest.approx(2 / 3))]


def _data_uris(html):
    return re.findall(r'src="data:image/(png|jpeg);base64,([^"]+)"', html)


def test_report_page_shows_the_run(trained, tmp_path):
    out = tmp_path / "report.html"
    result = run("report", trained / "run", "--out", out, "--count", 6, "--no-meteor")
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert out.stat().st_size < 5e6
    for section in ("runs", "curves", "scores", "diversity", "gallery"):
        assert f'id="{section}"' in html
    assert "http://" not in html.replace('href="http', "") and "<script" not in html
    # every inlined picture decodes; the curves include gradient norm, clipping, val metrics
    uris = _data_uris(html)
    for _, b64 in uris:
        Image.open(io.BytesIO(base64.b64decode(b64))).load()
    for title in ("Loss", "Learning rate", "Gradient norm", "Clipping", "Val metrics"):
        assert f'alt="{title}"' in html
    # the scores are evaluate's, for the same checkpoint and decoding
    model, meta, _, _ = checkpoint.load_model(trained / "run" / "best.npz")
    d = load_coco_data(trained / "data", splits=("val",))
    scores, _, _ = evaluate_model(model, d, "val", meteor=False, beam_size=3)
    row = html[html.index('id="scores"') : html.index('id="diversity"')]
    for k in ("Bleu_4", "ROUGE_L", "CIDEr"):
        assert f"{scores[k]:.3f}" in row
    assert "beam 3" in row and "10 images" in row
    # gallery: 2 best + 2 worst + 2 random, each with its thumbnail, references and CIDEr-D
    gallery = html[html.index('id="gallery"') :]
    assert gallery.count('class="item"') == 6 and gallery.count("CIDEr-D") >= 6
    assert len(_data_uris(gallery)) == 6
    assert "--clip-norm 1.0" in html and "lstm, hidden 32" in html


def test_report_of_two_runs_overlays_them(trained, tmp_path):
    second = tmp_path / "run2"
    shutil.copytree(trained / "run", second)
    out = tmp_path / "two.html"
    result = run(
        "report",
        trained / "run",
        second,
        "--out",
        out,
        "--count",
        3,
        "--no-meteor",
        "--max-images",
        4,
    )
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert html.count("<h3>run2</h3>") == 2 and "run: Best CIDEr-D" in html


def test_report_embeds_gradient_flow_output(trained, tmp_path):
    run_dir = tmp_path / "runs" / "a"
    shutil.copytree(trained / "run", run_dir)
    Image.new("RGB", (40, 20), "red").save(run_dir / "gradients.png")
    Image.new("RGB", (40, 20), "blue").save(tmp_path / "runs" / "compare.png")
    (tmp_path / "runs" / "gradients.json").write_text(
        json.dumps(
            {
                "runs": [
                    {
                        "label": "a",
                        "cell": "lstm",
                        "gain_per_step": 0.8125,
                        "halving_steps": 3.3,
                        "by_distance": [{"d": 0, "h": 1.0}],
                    }
                ]
            }
        )
    )
    out = tmp_path / "g.html"
    assert (
        run(
            "report", run_dir, "--out", out, "--count", 3, "--no-meteor", "--max-images", 4
        ).exit_code
        == 0
    )
    html = out.read_text()
    section = html[html.index('id="gradients"') :]
    assert len(_data_uris(section)) == 2 and "by_distance" not in section
    assert "<th>gain_per_step</th>" in section and "<td>0.8125</td>" in section
    # two runs of one comparison: their parent's files are shown once
    shutil.copytree(run_dir, tmp_path / "runs" / "b", ignore=shutil.ignore_patterns("gradients*"))
    assert (
        run(
            "report",
            run_dir,
            tmp_path / "runs" / "b",
            "--out",
            out,
            "--force",
            "--count",
            3,
            "--no-meteor",
            "--max-images",
            4,
        ).exit_code
        == 0
    )
    section = out.read_text().split('id="gradients"')[1]
    assert len(_data_uris(section)) == 2 and section.count("<th>gain_per_step</th>") == 1


def _point_at(run_dir, data_dir):
    """Make a copied run name another dataset folder."""
    for name in ("best.npz", "last.npz"):
        params, meta, optim, hist = checkpoint.load(run_dir / name)
        meta["training"]["settings"]["data_dir"] = str(data_dir)
        checkpoint.save(run_dir / name, params, meta, optim, hist)


def test_missing_pictures_become_placeholders(trained, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(trained / "data", data)
    urls = Path(split_file(data, "val", "urls.txt"))  # as prepare named it
    lines = urls.read_text().splitlines()
    urls.write_text(  # in the dataset's picture folder, but gone
        "".join(f"{trained}/images/gone/{os.path.basename(u)}\n" for u in lines)
    )
    run_dir = tmp_path / "run"
    shutil.copytree(trained / "run", run_dir)
    _point_at(run_dir, data)
    out = tmp_path / "p.html"
    result = run("report", run_dir, "--out", out, "--count", 3, "--no-meteor")
    assert result.exit_code == 0, result.output
    html = out.read_text()
    gallery = html[html.index('id="gallery"') :]
    assert _data_uris(gallery) == [] and gallery.count("picture not found") == 3


def test_report_bad_inputs(trained, tmp_path):
    not_run = tmp_path / "empty"
    not_run.mkdir()
    one_error_line(
        run("report", not_run, "--out", tmp_path / "r.html"), str(not_run), "not a run directory"
    )
    one_error_line(
        run("report", tmp_path / "nowhere", "--out", tmp_path / "r.html"), "not a directory"
    )
    damaged = tmp_path / "damaged"
    shutil.copytree(trained / "run", damaged)
    raw = (damaged / "best.npz").read_bytes()
    (damaged / "best.npz").write_bytes(raw[: len(raw) // 2])
    one_error_line(run("report", damaged, "--out", tmp_path / "r.html"), "best.npz", "truncated")
    gone = tmp_path / "gone"
    shutil.copytree(trained / "run", gone)
    for name in ("best.npz", "last.npz"):
        os.remove(gone / name)
    one_error_line(run("report", gone, "--out", tmp_path / "r.html"), "checkpoints are missing")
    # an unwritable --out: exit 2 before any work, nothing written
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_error_line(run("report", trained / "run", "--out", blocker / "r.html"), "r.html")
    one_error_line(run("report", trained / "run", "--out", tmp_path), "is a directory")
    assert not (tmp_path / "r.html").exists() and sorted(os.listdir(tmp_path)) == [
        "damaged",
        "empty",
        "file",
        "gone",
    ]


def test_report_refuses_runs_on_different_vocabularies(trained, tmp_path):
    data = build_dataset(
        tmp_path / "coco", n_train_images=20, n_val_images=5, feature_dim=16, vocab_size=60
    )
    assert (
        run(
            "train",
            "--data",
            data,
            "--epochs",
            1,
            "--hidden-dim",
            8,
            "--wordvec-dim",
            8,
            "--quiet",
            "--out",
            tmp_path / "other",
        ).exit_code
        == 0
    )
    result = run("report", trained / "run", tmp_path / "other", "--out", tmp_path / "r.html")
    one_error_line(result, "vocabulary", "report them separately")
    assert not (tmp_path / "r.html").exists()
    # features without pictures (the CS231n layout has only URLs): the gallery links them
    result = run(
        "report", tmp_path / "other", "--out", tmp_path / "r.html", "--count", 3, "--no-meteor"
    )
    assert result.exit_code == 0, result.output
    gallery = (tmp_path / "r.html").read_text().split('id="gallery"')[1]
    assert gallery.count('href="https://example.invalid/coco_synthetic/val2014/') == 3
    assert "data:image/jpeg" not in gallery
    one_error_line(
        run("report", tmp_path / "other", "--split", "test", "--out", tmp_path / "t.html"),
        "no test split",
    )


def test_report_without_the_dataset_still_shows_the_training(trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained / "run", run_dir)
    _point_at(run_dir, tmp_path / "deleted")
    out = tmp_path / "r.html"
    result = run("report", run_dir, "--out", out)
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert "the run&#39;s dataset is gone" in html and 'alt="Loss"' in html


def test_sample_folders_json_and_html(trained, tmp_path):
    pics = tmp_path / "pics"
    (pics / "sub").mkdir(parents=True)
    (pics / ".hidden").mkdir()
    for k, dest in ((1, pics), (2, pics / "sub"), (3, pics / "sub"), (4, pics / ".hidden")):
        shutil.copy(trained / "images" / f"demo_{k:012d}.jpg", dest)
    (pics / "notes.txt").write_text("not a picture")
    shutil.copy(trained / "images" / "demo_000000000005.jpg", tmp_path / "holiday.JPG")
    (tmp_path / "empty").mkdir()
    out_json, out_html = tmp_path / "c.json", tmp_path / "c.html"
    result = run(
        "sample",
        pics,
        tmp_path / "holiday.JPG",
        tmp_path / "empty",
        "--checkpoint",
        trained / "run" / "best.npz",
        "--json",
        out_json,
        "--html",
        out_html,
    )
    assert result.exit_code == 1  # the empty folder
    records = json.loads(out_json.read_text())
    names = [os.path.relpath(r["file_name"], tmp_path) for r in records]
    assert names == [
        "pics/demo_000000000001.jpg",
        "pics/sub/demo_000000000002.jpg",
        "pics/sub/demo_000000000003.jpg",
        "holiday.JPG",
    ]
    assert [r.get("image_id") for r in records] == [1, 2, 3, None]
    for r in records:
        assert r["caption"] in result.output and r["log_prob"] < 0
    assert f"captioner: error: {tmp_path / 'empty'}: a directory without pictures" in result.output
    html = out_html.read_text()
    assert len(_data_uris(html)) == 4 and all(r["caption"] in html for r in records)
    # the same captions as captioning the files one by one
    alone = run(
        "sample",
        pics / "sub" / "demo_000000000003.jpg",
        "--checkpoint",
        trained / "run" / "best.npz",
    )
    assert alone.output.splitlines()[1].strip() == records[2]["caption"]


def test_image_ids_from_file_names():
    from captioner.picture_files import image_id

    assert image_id("a/COCO_val2014_000000391895.jpg") == 391895
    assert image_id("000000000042.png") == 42 and image_id("demo_000000000007.jpg") == 7
    assert image_id("photo2.jpg") is None and image_id("holiday.JPG") is None


def test_sample_json_needs_picture_files_and_a_writable_file(trained, tmp_path):
    r = run(
        "sample",
        "--split",
        "val",
        "--json",
        tmp_path / "x.json",
        "--checkpoint",
        trained / "run" / "best.npz",
    )
    assert r.exit_code == 2 and "--json" in r.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    picture = trained / "images" / "demo_000000000001.jpg"
    one_error_line(
        run(
            "sample",
            picture,
            "--json",
            blocker / "x.json",
            "--checkpoint",
            trained / "run" / "best.npz",
        ),
        "x.json",
    )


# ---------------------------------------------------------------- in a real browser

CHECKS = """<script>
/* test-only: injected into a copy of the report to read what the browser made of it */
window.__errors = [];
window.addEventListener("error", function (e) {
  var src = String(e.target && e.target.src).slice(0, 80);
  window.__errors.push(e.message || ("failed to load " + src));
}, true);
var __consoleError = console.error;
console.error = function () {
  window.__errors.push(Array.from(arguments).join(" "));
  __consoleError.apply(console, arguments);
};
window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var out = document.createElement("pre");
  out.id = "__checks";
  out.textContent = JSON.stringify({
    images: imgs.length,
    undecoded: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return i.alt; }),
    errors: window.__errors,
    sections: Array.from(document.querySelectorAll("section[id]"))
                  .map(function (s) { return s.id; }),
    overflow: document.documentElement.scrollWidth - window.innerWidth});
  document.body.appendChild(out);
});
</script>"""


def _browse(chromium, profile, *args):
    import subprocess

    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1366,768",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_report_in_headless_chromium(trained, tmp_path, chromium):
    page = tmp_path / "report.html"
    assert run("report", trained / "run", "--out", page, "--no-meteor").exit_code == 0
    html = page.read_text()
    copy = tmp_path / "checked.html"
    copy.write_text(html.replace("<head>", "<head>\n" + CHECKS, 1))
    done = _browse(
        chromium, tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", copy.as_uri()
    )
    found = re.search(r'<pre id="__checks">(.*?)</pre>', done.stdout, re.S)
    assert found, (done.stdout[-2000:], done.stderr[-2000:])
    checks = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert checks["errors"] == [] and checks["undecoded"] == [], checks
    # 5 curves, the length histogram, and a thumbnail of each of the 10 val images at least
    assert checks["images"] == len(_data_uris(html)) >= 5 + 1 + 10
    assert checks["sections"] == ["runs", "curves", "scores", "diversity", "gallery"]
    assert checks["overflow"] <= 0, "the page is wider than a 1366 px laptop screen"
    console = [ln for ln in done.stderr.splitlines() if "CONSOLE" in ln]
    assert console == [], console
    # a screenshot, kept with the test's files
    shot = tmp_path / "report.png"
    _browse(
        chromium,
        tmp_path / "profile2",
        f"--screenshot={shot}",
        "--window-size=1366,2400",
        page.as_uri(),
    )
    with Image.open(shot) as im:
        assert im.size == (1366, 2400)
        assert len(np.unique(np.asarray(im.convert("L")))) > 20  # not a blank page
    print(f"report screenshot: {shot}")


def test_help_does_not_import_the_report_libraries():
    import subprocess
    import sys

    code = (
        "import sys; from captioner.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('jinja2', 'matplotlib', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(
            os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        ),
        check=True,
    ).stdout
    assert out.splitlines()[-1] == "[]"


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """Datasets of 3 and 200 val images (rendered scenes) with 8 tiny runs on each."""
    root = tmp_path_factory.mktemp("layouts")
    annotations = demo.write_demo_images(root / "images", 220, seed=9)
    names = sorted(p.name for p in (root / "images").glob("*.jpg"))
    out = {}
    for n_val in (3, 200):
        (root / f"val{n_val}.txt").write_text("".join(f"{n}\n" for n in names[-n_val:]))
        data = root / f"data{n_val}"
        result = run(
            "prepare",
            "--images",
            root / "images",
            "--captions",
            annotations,
            "--split-by",
            root / f"val{n_val}.txt",
            "--min-count",
            1,
            "--out",
            data,
        )
        assert result.exit_code == 0, result.output
        runs = []
        for k in range(8):
            run_dir = root / f"runs{n_val}" / f"lstm-with-a-long-name-{k}"
            result = run(
                "train",
                "--data",
                data,
                "--epochs",
                2,
                "--hidden-dim",
                16,
                "--wordvec-dim",
                8,
                "--batch-size",
                100,
                "--seed",
                k,
                "--quiet",
                "--out",
                run_dir,
            )
            assert result.exit_code == 0, result.output
            runs.append(run_dir)
        out[n_val] = runs
    return out


@pytest.mark.slow
@pytest.mark.parametrize("n_val", [3, 200])
@pytest.mark.parametrize("n_runs", [1, 4, 8])
def test_report_layout_in_headless_chromium(layouts, tmp_path, chromium, n_val, n_runs):
    """The page at the widths people use: no horizontal scrolling at 1366 or 1920 px, a gallery
    section for each of best / worst / random with no picture twice, a screenshot of each."""
    page = tmp_path / "report.html"
    runs = layouts[n_val][:n_runs]
    result = run("report", *runs, "--out", page, "--no-meteor", "--count", 6)
    assert result.exit_code == 0, result.output
    html = page.read_text()
    gallery = html[html.index('id="gallery"') :]
    assert gallery.count("<h3>") == 3 * n_runs  # best, worst, random: none empty
    for part in gallery.split("<h3>")[1:]:
        assert 'class="item"' in part
    first_run = gallery.split("<h3>")[1:4]
    shown = [t for part in first_run for t in re.findall(r'class="name">([^<&]+)', part)]
    assert len(shown) == len(set(shown)) == min(n_val, 6), shown
    copy = tmp_path / "checked.html"
    copy.write_text(html.replace("<head>", "<head>\n" + CHECKS, 1))
    for width in (1366, 1920):
        done = _browse(
            chromium,
            tmp_path / f"profile{width}",
            "--virtual-time-budget=10000",
            f"--window-size={width},900",
            "--dump-dom",
            copy.as_uri(),
        )
        found = re.search(r'<pre id="__checks">(.*?)</pre>', done.stdout, re.S)
        assert found, (done.stdout[-2000:], done.stderr[-2000:])
        checks = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
        assert checks["errors"] == [] and checks["undecoded"] == [], checks
        assert checks["overflow"] <= 0, f"wider than a {width} px screen"
        shot = tmp_path / f"report-{width}.png"
        _browse(
            chromium,
            tmp_path / f"shot{width}",
            f"--screenshot={shot}",
            f"--window-size={width},3000",
            page.as_uri(),
        )
        with Image.open(shot) as im:
            assert im.size == (width, 3000)
        print(f"report screenshot ({n_runs} runs, {n_val} images, {width} px): {shot}")


# ---------------------------------------------------------------- what the report says


@pytest.fixture(scope="module")
def unk_run(tmp_path_factory):
    """A run on a dataset whose train captions hold known <UNK>s, trained 2 epochs; its
    best.npz then replaced by another model's weights (so best and last differ)."""
    import h5py

    root = tmp_path_factory.mktemp("unk")
    data_dir = build_dataset(
        root / "data",
        n_train_images=12,
        captions_per_image=3,
        n_val_images=9,
        feature_dim=8,
        vocab_size=40,
        seed=4,
    )
    with h5py.File(data_dir / "coco2014_captions.h5", "r+") as f:
        caps = f["train_captions"][()]
        caps[:7, 2] = 3  # the second word of 7 captions becomes <UNK> (id 3)
        f["train_captions"][...] = caps
    data = load_coco_data(data_dir)
    model = CaptioningRNN(data["word_to_idx"], input_dim=8, wordvec_dim=8, hidden_dim=16)
    (root / "run").mkdir()
    runs.train_in(
        data,
        model,
        str(root / "run"),
        progress=False,
        log=lambda *_: None,
        epochs=2,
        batch_size=12,
        lr=1e-2,
        val_size=10,
        data_dir=str(data_dir),
        features="pca",
    )
    params, meta, optim, history = checkpoint.load(root / "run" / "best.npz")
    other = CaptioningRNN(data["word_to_idx"], input_dim=8, wordvec_dim=8, hidden_dim=16, seed=7)
    checkpoint.save(root / "run" / "best.npz", other.params, meta, optim, history)
    return root, data_dir


def _words(caps, vocab):
    """(word tokens, <UNK> tokens) of captions, counted by hand."""
    n = unk = 0
    for row in caps:
        for t in row[1:]:
            if vocab[t] == "<END>":
                break
            n, unk = n + 1, unk + (vocab[t] == "<UNK>")
    return n, unk


def test_report_card_counts_unk_share_and_checkpoint(unk_run):
    root, data_dir = unk_run
    r = report.gather_run(root / "run")
    assert r["card"]["checkpoint"] == str(root / "run" / "best.npz")
    assert r["card"]["steps"] == 6 and r["card"]["epochs_done"] == 2  # from last.npz
    out = report.caption_run(r, "val", count=9, beam_size=1, meteor=False, log=lambda *_: None)
    d = load_coco_data(data_dir)
    n, unk = _words(d["train_captions"], d["idx_to_word"])
    assert unk == 7
    assert out["sizes"] == {
        "train_captions": 36,
        "train_images": 12,
        "split_captions": 27,
        "split_images": 9,
        "unk_share": pytest.approx(unk / n, abs=1e-12),
    }
    assert out["decoding"].endswith("best.npz")
    # the captions are best.npz's, which differ from last.npz's
    best = checkpoint.load_model(root / "run" / "best.npz")[0]
    last = checkpoint.load_model(root / "run" / "last.npz")[0]
    want = evaluate_model(best, d, "val", meteor=False, beam_size=1)[2]
    other = evaluate_model(last, d, "val", meteor=False, beam_size=1)[2]
    assert want != other
    shown = {g["image_id"]: g["caption"] for s in out["gallery"].values() for g in s}
    assert shown == {e["image_id"]: e["caption"] for e in want if e["image_id"] in shown}
    # without best.npz the report captions with last.npz, and says so
    (root / "run" / "best.npz").rename(root / "best.npz")
    try:
        r = report.gather_run(root / "run")
        assert r["card"]["checkpoint"] == str(root / "run" / "last.npz")
        out = report.caption_run(r, "val", count=9, beam_size=1, meteor=False, log=print)
        assert out["decoding"].endswith("last.npz")
        shown = {g["image_id"]: g["caption"] for s in out["gallery"].values() for g in s}
        assert shown == {e["image_id"]: e["caption"] for e in other if e["image_id"] in shown}
    finally:
        (root / "best.npz").rename(root / "run" / "best.npz")


def test_report_best_and_worst_galleries_hold_the_highest_and_lowest_cider(unk_run):
    root, data_dir = unk_run
    r = report.gather_run(root / "run")
    out = report.caption_run(r, "val", count=9, beam_size=1, meteor=False, log=lambda *_: None)
    d = load_coco_data(data_dir)
    ids, generated, refs = caption_split(r["model"], d, "val", beam_size=1)
    _, _, cider = metrics.score(
        dict(zip(ids, refs)), dict(zip(ids, generated)), meteor=False, per_image=True
    )
    ranked = sorted(ids, key=lambda i: -cider[i])
    assert len({round(cider[i], 9) for i in ranked[:4] + ranked[-4:]}) >= 5  # no tie decides
    gallery = out["gallery"]
    assert [g["image_id"] for g in gallery["best"]] == ranked[:3]
    assert [g["image_id"] for g in gallery["worst"]] == ranked[::-1][:3]
    for g in gallery["best"] + gallery["worst"] + gallery["random"]:
        assert g["cider"] == pytest.approx(cider[g["image_id"]], abs=1e-12)


# ---------------------------------------------------------------- issue 23: hostile folders


def test_report_reads_only_its_run_and_its_dataset_pictures(trained, tmp_path):
    """Class 1: links in the run folder (or its parent) to files elsewhere, a gradients.json
    of another shape, a dataset naming pictures outside its picture folder: nothing of it
    reaches the page, which is made to be shared; each refusal is named on stderr."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "credentials.json").write_text(json.dumps({"runs": [{"label": "s3cr3t-1"}]}))
    Image.new("RGB", (30, 30), (1, 2, 3)).save(secret / "private.png")
    private = base64.b64encode((secret / "private.png").read_bytes()).decode()
    run_dir = tmp_path / "runs" / "a"
    shutil.copytree(trained / "run", run_dir)
    (run_dir / "gradients.json").symlink_to(secret / "credentials.json")
    (run_dir / "gradients-x.png").symlink_to(secret / "private.png")
    shutil.copy(secret / "private.png", secret / "private2.png")
    (run_dir / "compare-y.png").symlink_to("../../secret/private2.png")
    (tmp_path / "runs" / "gradients.json").write_text(json.dumps({"summary": "s3cr3t-2"}))
    data = tmp_path / "data"
    shutil.copytree(trained / "data", data)
    urls, images = (Path(split_file(data, "val", f"{k}.txt")) for k in ("urls", "images"))
    n = len(urls.read_text().splitlines())
    names = [secret / "private.png", "../secret/private.png", "../secret/../secret/private.png"]
    urls.write_text("".join(f"{names[k % 3]}\n" for k in range(n)))
    images.write_text("".join(f"{names[k % 3]}\n" for k in range(n)))
    _point_at(run_dir, data)
    out = tmp_path / "r.html"
    result = run("report", run_dir, "--out", out, "--count", 3, "--no-meteor")
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert "s3cr3t" not in html and private not in html
    gallery = html[html.index('id="gallery"') :]
    assert _data_uris(gallery) == [] and gallery.count("picture folder") == 3
    assert "not the layout `captioner gradients --json` writes" in html
    for link in ("gradients.json", "gradients-x.png", "compare-y.png"):
        assert f"captioner: warning: {run_dir / link}: not shown in the report" in result.output
    assert f"gallery pictures from {trained / 'images'}" in result.output
    # asked for: pictures from elsewhere are shown, each named
    out2 = tmp_path / "r2.html"
    result = run(
        "report", run_dir, "--out", out2, "--count", 3, "--no-meteor", "--outside-pictures"
    )
    assert result.exit_code == 0, result.output
    assert len(_data_uris(out2.read_text().split('id="gallery"')[1])) == 3
    assert f"{secret / 'private.png'}: shown from outside the dataset's picture folder" in (
        result.output
    )
    assert "s3cr3t" not in out2.read_text()  # links are never followed out of the run


def test_gradients_json_shows_only_labels_and_numbers():
    ok = {"runs": [{"label": "a", "cell": "lstm", "gain_per_step": 0.5, "note": "x"}]}
    assert report._gradient_summary(ok) == {
        "table": (["label", "cell", "gain_per_step"], [["a", "lstm", "0.5"]])
    }
    for bad in ([1], {"runs": []}, {"runs": [{"label": {"k": "v"}}]}, {"runs": [1]}, None):
        assert "not shown" in report._gradient_summary(bad)["summary"]
    mixed = {"runs": [{"label": "a", "gain_per_step": 0.5}, {"label": "b", "gain_per_step": "k"}]}
    assert "'gain_per_step' is not a number" in report._gradient_summary(mixed)["summary"]


def test_sample_prints_picture_names_and_captions_inert(trained, tmp_path):
    """Class 6: a picture name with a line break and terminal escape sequences prints as
    one escaped line, on stdout and (for a picture that cannot be read) on stderr."""
    from click.testing import CliRunner

    from captioner.cli import cli

    evil = tmp_path / "x\n  a forged caption\x1b]0;pwned\x07\x1b[2J.jpg"
    shutil.copy(trained / "images" / "demo_000000000001.jpg", evil)
    bad = tmp_path / "y\x1b[2J\u202e.jpg"
    bad.write_text("not a picture")
    result = CliRunner().invoke(
        cli,
        ["sample", str(evil), str(bad), "--checkpoint", str(trained / "run" / "best.npz")],
        color=True,  # keep what click would strip from a pipe: the terminal's view
    )
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{tmp_path}/x\\n  a forged caption\\x1b]0;pwned\\x07\\x1b[2J.jpg"
    assert len(lines) == 3 and not lines[1].startswith("  a forged caption")
    assert lines[2].startswith(f"captioner: error: {tmp_path}/y\\x1b[2J\\u202e.jpg: ")
    assert "\x1b" not in result.output and "\x07" not in result.output


def _appears_meanwhile(monkeypatch, module, name, path):
    """Make `path` appear (another command's output) while `module.name` runs."""
    real = getattr(module, name)

    def racing(*args, **kwargs):
        out = real(*args, **kwargs)
        path.write_text("the other command's output")
        return out

    monkeypatch.setattr(module, name, racing)


@pytest.mark.parametrize("command", ["sample --json", "sample --html", "report", "evaluate"])
def test_an_output_that_appears_meanwhile_is_kept(trained, tmp_path, monkeypatch, command):
    """Class 7: the "no overwrite without --force" check at the start is kept to the end:
    the file is created without replacing anything, so of two commands writing one new
    file, the second fails in one line and the first one's file is intact."""
    from captioner import evaluation, pictures

    out = tmp_path / "out.file"
    ckpt = ["--checkpoint", trained / "run" / "best.npz"]
    picture = trained / "images" / "demo_000000000001.jpg"
    args = {
        "sample --json": ["sample", picture, *ckpt, "--json", out],
        "sample --html": ["sample", picture, *ckpt, "--html", out],
        "report": ["report", trained / "run", "--out", out, "--count", 3, "--no-meteor"],
        "evaluate": ["evaluate", *ckpt, "--no-meteor", "--save-results", out],
    }[command]
    if command == "report":
        _appears_meanwhile(monkeypatch, report, "build_report", out)
    elif command == "evaluate":
        _appears_meanwhile(monkeypatch, evaluation, "evaluate_model", out)
    else:
        _appears_meanwhile(monkeypatch, pictures, "caption_images", out)
    result = run(*args)
    one_error_line(result, f"{out}: appeared while this command ran", "--force")
    assert out.read_text() == "the other command's output"
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")] == []
    # --force keeps its meaning: replace whatever is there
    result = run(*args, "--force")
    assert result.exit_code == 0 and out.read_text() != "the other command's output"


def test_sigterm_while_the_report_is_written_leaves_nothing_behind(trained, tmp_path):
    """SIGTERM arriving as the page is written (here: at its fsync) unwinds like Ctrl-C: the
    temp file is removed, no half page is left, one line and exit 143."""
    import subprocess
    import sys

    script = (
        "import os, signal, sys\n"
        "real = os.fsync\n"
        "def fsync(fd):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return real(fd)\n"
        "os.fsync = fsync\n"
        "from captioner.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    out = tmp_path / "r.html"
    args = [
        "report",
        trained / "run",
        "--out",
        out,
        "--count",
        3,
        "--no-meteor",
        "--max-images",
        4,
    ]
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(
            os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        ),
    )
    assert done.returncode == 143, done.stderr
    assert done.stderr.splitlines()[-1].startswith("captioner: interrupted; files are written")
    assert "Traceback" not in done.stderr and os.listdir(tmp_path) == []
