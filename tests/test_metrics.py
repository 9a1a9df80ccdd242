"""COCO caption metrics: each toolkit quirk by hand, pycocoevalcap as the oracle, and the loaders'
errors."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captioner import metrics as M
from captioner.errors import CaptionerError

needs_toolkit = pytest.mark.usefixtures("toolkit")  # conftest: skip, or fail under CI=true
needs_java = pytest.mark.usefixtures("java")


def toks(d):
    return {k: [s.split() for s in v] if isinstance(v, list) else v.split() for k, v in d.items()}


# --- tokeniser -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "caption, tokens",
    [
        ("A man riding a horse.", "a man riding a horse"),
        ("Two dogs can't play; it's John's toy.", "two dogs ca n't play it 's john 's toy"),
        ("she'll we've I'm they'd", "she 'll we 've i 'm they 'd"),
        ("I cannot go, gonna wanna", "i can not go gon na wan na"),
        ("a x-ray, t-shirt, co-ed -- well - yes", "a x-ray t-shirt co-ed well yes"),
        ("a - b -- c --- d ---- e ----- f", "a b c d e ----- f"),  # 3 or 4 hyphens are --
        ("The U.S. flag in the U.S. The end", "the u.s. flag in the u.s. the end"),
        (
            "a hat (red) and [green] {x}",
            "a hat -lrb- red -rrb- and -lsb- green -rsb- -lcb- x -rcb-",
        ),
        ("He said \"hi there\" and 'bye' `ok'", "he said hi there and bye ok"),
        ("Wait... what . . . really.... yes..", "wait what really yes"),
        ("a 3 1/2 inch 1,000.5 $5 50% a&b AT&T", "a 3\u00a01/2 inch 1,000.5 $ 5 50 % a & b at&t"),
        ("Mr. Smith vs. Dr. Jones, st. etc. t.v.", "mr. smith vs. dr. jones st. etc. t.v."),
        (
            "a 1960's car at 5:30pm, 2nd 4x4 w/ his/her",
            "a 1960 's car at 5:30 pm 2nd 4x4 w / his/her",
        ),
        ("the 'shark' o'clock rock'n'roll y'all", "the shark o'clock rock 'n' roll y' all"),
        ("truck.,", "truck."),
        ("track.passengers", "track.passengers"),
        ("", ""),
        (" . , ", ""),
    ],
)
def test_tokenize_matches_the_ptb_tokenizer_on_caption_cases(caption, tokens):
    # expected tokens are what stanford-corenlp-3.4.1 -preserveLines -lowerCase gives, filtered
    assert M.tokenize(caption) == (tokens.split(" ") if tokens else [])


# --- BLEU ----------------------------------------------------------------------------------------


def test_bleu_closest_reference_length_ties_take_the_shorter():
    # result of 3 words, references of 2 and 4: the tie goes to 2, so no brevity penalty
    b = M.bleu(toks({1: ["a b", "a b c d"]}), toks({1: "a b c"}), n=1)
    assert b[0] == pytest.approx((3 + 1e-15) / (3 + 1e-9), abs=1e-12)


def test_bleu_clips_counts_by_the_best_single_reference():
    b = M.bleu(toks({1: ["the cat", "a dog"]}), toks({1: "the the the the"}), n=1)
    assert b[0] == pytest.approx(0.25, abs=1e-9)  # 'the' counts once: 1 match of 4


def test_bleu_brevity_penalty_only_when_shorter():
    short = M.bleu(toks({1: ["a b c d"]}), toks({1: "a b"}), n=1)[0]
    assert short == pytest.approx(math.exp(1 - 4 / 2), abs=1e-9)
    long_ = M.bleu(toks({1: ["a b"]}), toks({1: "a b c d"}), n=1)[0]
    assert long_ == pytest.approx(0.5, abs=1e-9)


def test_bleu_is_corpus_level_not_a_mean_of_images():
    refs, res = toks({1: ["a b c d"], 2: ["x y z w"]}), toks({1: "a b c d", 2: "x q"})
    corpus = M.bleu(refs, res, n=1)[0]
    assert corpus == pytest.approx(5 / 6 * math.exp(1 - 8 / 6), abs=1e-9)
    _, per_image = M.bleu(refs, res, n=1, per_image=True)
    assert per_image.shape == (1, 2) and per_image[0, 0] == pytest.approx(1.0)


# --- ROUGE-L -------------------------------------------------------------------------------------


def test_rouge_takes_best_precision_and_best_recall_from_different_references():
    # ref 1 gives recall 1 (P .5), ref 2 gives precision 1 (R .5): the toolkit combines P=1, R=1
    r = M.rouge_l(toks({1: ["a b", "a b c d e f g h"]}), toks({1: "a b c d"}))
    assert r == pytest.approx(1.0)


def test_rouge_beta_and_mean_over_images():
    p, r, beta = 2 / 3, 2 / 4, 1.2
    f = (1 + beta**2) * p * r / (r + beta**2 * p)
    mean, per = M.rouge_l(
        toks({1: ["a x b y"], 2: ["q"]}), toks({1: "a b z", 2: "w"}), per_image=True
    )
    assert per.tolist() == pytest.approx([f, 0.0]) and mean == pytest.approx(f / 2)


@given(
    st.lists(st.sampled_from("abcd"), max_size=12), st.lists(st.sampled_from("abcd"), max_size=12)
)
def test_bit_parallel_lcs_equals_dynamic_programming(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            table[i + 1][j + 1] = (
                table[i][j] + 1 if a[i] == b[j] else max(table[i][j + 1], table[i + 1][j])
            )
    assert M._lcs(a, b) == table[-1][-1]


# --- CIDEr-D -------------------------------------------------------------------------------------


def test_cider_by_hand_with_length_penalty():
    # 2 images, so every n-gram seen in one image's references has idf log 2; image 1: unigram
    # cosine 1/sqrt2, bigram 1/sqrt3, no 3/4-grams; lengths counted in bigrams: 1 vs 3
    refs, res = toks({1: ["p q r s"], 2: ["x"]}), toks({1: "p q", 2: "x"})
    _, per = M.cider_d(refs, res, per_image=True)
    expected = 10 * (1 / math.sqrt(2) + 1 / math.sqrt(3)) / 4 * math.exp(-(2**2) / (2 * 6.0**2))
    assert per[0] == pytest.approx(expected, abs=1e-12)
    assert per[1] == pytest.approx(10 / 4)  # only the unigram exists


def test_cider_document_frequency_uses_only_the_scored_images():
    refs, res = toks({1: ["p q r s"], 2: ["x y"]}), toks({1: "p q", 2: "x"})
    more_refs = {
        **refs,
        3: [["p", "q", "r", "s"]],
        4: [["p", "q"]],
    }  # unscored images must not count
    assert M.cider_d(more_refs, res) == M.cider_d(refs, res)
    with_3 = M.cider_d(more_refs, toks({1: "p q", 2: "x", 3: "p"}))
    assert with_3 != pytest.approx(M.cider_d(refs, res))


# --- pycocoevalcap as the oracle -----------------------------------------------------------------

sentence = st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), min_size=0, max_size=9).map(
    " ".join
)


@needs_toolkit
@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(sentence, st.lists(sentence, min_size=1, max_size=4)), min_size=1, max_size=5
    )
)
def test_bleu_rouge_cider_equal_pycocoevalcap_on_random_corpora(corpus):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {k: refs for k, (_, refs) in enumerate(corpus)}
    res = {k: [hyp] for k, (hyp, _) in enumerate(corpus)}
    refs_tok = {k: [r.split() for r in v] for k, v in gts.items()}
    res_tok = {k: v[0].split() for k, v in res.items()}
    theirs = Bleu(4).compute_score(gts, res, verbose=0)
    ours = M.bleu(refs_tok, res_tok, per_image=True)
    assert ours[0] == pytest.approx(theirs[0], abs=1e-9)
    assert ours[1] == pytest.approx(np.array(theirs[1]), abs=1e-9)
    assert M.rouge_l(refs_tok, res_tok) == pytest.approx(
        Rouge().compute_score(gts, res)[0], abs=1e-9
    )
    if any(r for _, refs in corpus for r in refs):  # the toolkit fails on all-empty references
        with np.errstate(all="ignore"):
            cider = Cider().compute_score(gts, res)
        assert M.cider_d(refs_tok, res_tok, per_image=True)[1] == pytest.approx(cider[1], abs=1e-9)


@pytest.fixture
def fakecap(shared):
    refs = M.load_annotations(shared / "coco" / "captions_val2014.json")
    res = M.load_results(shared / "coco" / "captions_val2014_fakecap_results.json", refs)
    return refs, res


@needs_toolkit
@needs_java
def test_fakecap_reproduces_the_published_scores(fakecap):
    scores, notes = M.score(*fakecap)
    published = {
        "Bleu_1": 0.579,
        "Bleu_2": 0.404,
        "Bleu_3": 0.279,
        "Bleu_4": 0.191,
        "METEOR": 0.195,
        "ROUGE_L": 0.396,
        "CIDEr": 0.600,
    }
    assert notes == [] and list(scores) == list(published)
    assert {k: round(v, 3) for k, v in scores.items()} == published


@needs_toolkit
@needs_java
def test_fakecap_matches_pycocoevalcap_with_its_own_java_tokenizer(fakecap):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    refs, res = fakecap
    gts = PTBTokenizer().tokenize({i: [{"caption": c} for c in refs[i]] for i in res})
    hyp = PTBTokenizer().tokenize({i: [{"caption": res[i]}] for i in res})
    ours, _ = M.score(refs, res, meteor=False)
    bleu = Bleu(4).compute_score(gts, hyp, verbose=0)[0]
    assert [ours[f"Bleu_{k}"] for k in range(1, 5)] == pytest.approx(bleu, abs=1e-6)
    assert ours["ROUGE_L"] == pytest.approx(Rouge().compute_score(gts, hyp)[0], abs=1e-6)
    assert ours["CIDEr"] == pytest.approx(Cider().compute_score(gts, hyp)[0], abs=1e-6)
    # and token for token on the 1,000 result captions
    assert all(M.tokenize(res[i]) == hyp[i][0].split(" ") for i in res)


@needs_toolkit
def test_meteor_is_skipped_with_a_reason_when_java_is_missing(monkeypatch):
    monkeypatch.setattr(M.shutil, "which", lambda _name: None)
    scores, notes = M.score({1: ["a dog"], 2: ["a cat"]}, {1: "a dog", 2: "a cow"})
    assert "METEOR" not in scores and set(scores) == {
        "Bleu_1",
        "Bleu_2",
        "Bleu_3",
        "Bleu_4",
        "ROUGE_L",
        "CIDEr",
    }
    assert len(notes) == 1 and "Java not found" in notes[0]


def test_meteor_is_skipped_with_a_reason_when_pycocoevalcap_is_missing(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pycocoevalcap.meteor", None)
    scores, notes = M.score({1: ["a dog"]}, {1: "a dog"})
    assert "METEOR" not in scores and "pip install captioner[meteor]" in notes[0]
    assert scores["Bleu_1"] == pytest.approx(1.0) and scores["ROUGE_L"] == pytest.approx(1.0)


# --- loaders and their errors --------------------------------------------------------------------


def write(tmp_path, data, name="f.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


ANN = {
    "images": [{"id": 1}, {"id": 2}],
    "annotations": [
        {"id": 1, "image_id": 1, "caption": "A dog."},
        {"id": 2, "image_id": 1, "caption": "A pup."},
        {"id": 3, "image_id": 2, "caption": "A cat."},
    ],
}


def test_loaders_read_coco_files_in_order(tmp_path):
    refs = M.load_annotations(write(tmp_path, ANN, "a.json"))
    assert refs == {1: ["A dog.", "A pup."], 2: ["A cat."]}
    res = M.load_results(
        write(tmp_path, [{"image_id": 2, "caption": "a cat"}, {"image_id": 1, "caption": "dog"}]),
        refs,
    )
    assert list(res.items()) == [(2, "a cat"), (1, "dog")]


@pytest.mark.parametrize(
    "data, words",
    [
        ('[{"image_id": 1, "caption": "a"}', ["line 1", "column"]),
        ({"image_id": 1, "caption": "a"}, ["JSON list", "dict"]),
        ([], ["empty"]),
        (
            [{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}],
            ["entry 1", "repeats image_id 1", "entry 0"],
        ),
        ([{"image_id": 7, "caption": "a"}], ["entry 0", "image_id 7", "not in the annotations"]),
        ([{"image_id": "1", "caption": "a"}], ["entry 0", "string here"]),
        ([{"image_id": 1, "caption": "  "}], ["entry 0", "empty caption"]),
        ([{"image_id": 1, "caption": 5}], ["entry 0", "expected a string"]),
        ([{"caption": "a"}], ["entry 0", "no 'image_id'"]),
        ([{"image_id": 1}], ["entry 0", "no 'caption'"]),
        (["a dog"], ["entry 0", "is a str"]),
        ([{"image_id": True, "caption": "a"}], ["entry 0", "expected an integer"]),
    ],
)
def test_bad_results_name_the_file_and_the_entry(tmp_path, data, words):
    path = write(tmp_path, data)
    with pytest.raises(CaptionerError) as e:
        M.load_results(path, known_ids={1: ["x"], 2: ["y"]})
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg and e.value.exit_code == 2
    assert all(w in msg for w in words), msg


@pytest.mark.parametrize(
    "data, words",
    [
        ('{\n  "annotations": [,]}', ["line 2", "column"]),
        ([1, 2], ["'annotations' list"]),
        ({"images": []}, ["'annotations' list"]),
        ({"annotations": []}, ["empty"]),
        ({"annotations": [{"image_id": 1}]}, ["annotations[0]", "no 'caption'"]),
        (
            {"annotations": [{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": None}]},
            ["annotations[1]", "string"],
        ),
        ({"annotations": [{"caption": "a"}]}, ["annotations[0]", "no 'image_id'"]),
    ],
)
def test_bad_annotations_name_the_file_and_the_entry(tmp_path, data, words):
    path = write(tmp_path, data)
    with pytest.raises(CaptionerError) as e:
        M.load_annotations(path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg and all(w in msg for w in words), msg


def test_missing_file_and_unscorable_results(tmp_path):
    with pytest.raises(CaptionerError, match="results file not found"):
        M.load_results(tmp_path / "nope.json")
    with pytest.raises(CaptionerError, match="image id 3 has no reference captions"):
        M.score({1: ["a dog"]}, {3: "a dog"}, meteor=False)


@given(st.text(max_size=40))
def test_tokenize_never_fails_and_gives_clean_tokens(text):
    tokens = M.tokenize(text)
    assert all(t and " " not in t and t not in M.PUNCTUATIONS and t == t.lower() for t in tokens)


def test_diversity_numbers_and_the_same_caption_warning():
    refs = [["a b c", "a b"]] * 20
    varied = [f"caption {i} words" for i in range(20)]
    d = M.diversity(varied, refs, vocab_size=50)
    assert d["distinct"] == 20 and d["distinct_share"] == 1.0 and d["warning"] is None
    assert d["words_used"] == 22 and d["ref_words_used"] == 3 and d["gen_lengths"] == {3: 20}
    assert d["ref_lengths"] == {3: 20, 2: 20} and d["repeated"] == [] and d["few"] == 2
    same = ["a dog"] * 12 + ["a cat"] * 4 + [f"x {i}" for i in range(4)]
    d = M.diversity(same, refs)
    assert d["distinct"] == 6 and d["repeated"][:2] == [("a dog", 12), ("a cat", 4)]
    assert d["few_share"] == pytest.approx(16 / 20) and "80% of the 20 images" in d["warning"]


def test_score_is_driven_by_the_metrics_table(monkeypatch):
    """A metric is one entry of metrics.METRICS: score() reports it, per-image figures averaged."""
    lengths = lambda c: {"Length": np.array([len(c.res_tok[i]) for i in c.ids], float)}
    monkeypatch.setattr(M, "METRICS", M.METRICS | {"Length": (("Length",), lengths)})
    scores, notes = M.score({1: ["a dog runs"], 2: ["a cat sits"]}, {1: "a dog runs", 2: "a cat"})
    assert scores["Length"] == 2.5 and list(scores)[-1] == "Length"
    assert "METEOR" in scores or notes  # the table's METEOR ran, or said why not
