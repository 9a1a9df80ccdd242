"""How often does captioner.metrics.tokenize give the tokens of the toolkit's Java PTB tokenizer?

Runs stanford-corenlp-3.4.1.jar (shipped in pycocoevalcap) once over every caption of a COCO
annotation file, one caption a line in file order, exactly as pycocoevalcap's PTBTokenizer calls
it, applies the toolkit's punctuation filter, and compares caption by caption with tokenize().
Nothing is cached. Needs pycocoevalcap and java.

    .venv/bin/python scripts/tokenizer_agreement.py [captions.json] [--show 20]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from captioner.metrics import PUNCTUATIONS, tokenize

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "coco" / "captions_val2014.json"


def java_tokens(captions):
    from pycocoevalcap.tokenizer import ptbtokenizer

    jar = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "captions.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(c.replace("\n", " ") for c in captions))
        out = subprocess.run(
            [
                "java",
                "-cp",
                str(jar),
                "edu.stanford.nlp.process.PTBTokenizer",
                "-preserveLines",
                "-lowerCase",
                path,
            ],
            capture_output=True,
            check=True,
        ).stdout.decode("utf-8")
    lines = out.split("\n")
    # the toolkit's post-processing (ptbtokenizer.py): split on ' ', drop its punctuation list
    return [
        [w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS and w]
        for line in lines[: len(captions)]
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("annotations", nargs="?", default=str(DEFAULT))
    ap.add_argument("--show", type=int, default=20, help="disagreements to print")
    args = ap.parse_args()
    with open(args.annotations, encoding="utf-8") as f:
        captions = [a["caption"] for a in json.load(f)["annotations"]]
    t = time.perf_counter()
    theirs = java_tokens(captions)
    t_java = time.perf_counter() - t
    t = time.perf_counter()
    ours = [tokenize(c) for c in captions]
    t_ours = time.perf_counter() - t
    bad = [k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    for k in bad[: args.show]:
        print(f"caption {k}: {captions[k]!r}\n  java: {theirs[k]}\n  ours: {ours[k]}")
    agree = 1 - len(bad) / len(captions)
    print(
        f"agreement {agree:.6%}: {len(captions) - len(bad):,} of {len(captions):,} captions "
        f"give identical tokens ({len(bad)} differ); java {t_java:.1f} s, python {t_ours:.1f} s"
    )
    return 0 if len(theirs) == len(captions) else 1


if __name__ == "__main__":
    sys.exit(main())
