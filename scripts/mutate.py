"""`make mutate`: mutation testing (mutmut) of the core the numbers depend on, per module.

    .venv/bin/python scripts/mutate.py [GROUP ...]     run those groups (default: all), then
                                                       print the scores
    .venv/bin/python scripts/mutate.py --sample N [GROUP ...]    N mutants of each, evenly
                                                       spread (a quicker estimate)
    .venv/bin/python scripts/mutate.py --again [GROUP ...]    judge the survivors again
                                                       (after new tests), only them
    .venv/bin/python scripts/mutate.py --scores [--survivors]   only print the scores

mutmut (configured in pyproject.toml) copies the tree to mutants/, records which of the
selected tests run which function, then judges each mutant by those tests alone, fastest
first. Its results persist in mutants/: a rerun only judges mutants without a verdict
(mutmut drops the verdicts of a function that changed when it next copies the tree). The
score is killed / judged, where judged counts survivors, mutants no test runs, and timeouts.
Runs niced (the machine may be shared); MUTATE_JOBS sets the worker processes (default 2).
The tests in mutants/ find ../shared (the real-data tests) through CAPTIONER_SHARED.
"""

import fnmatch
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

GROUPS = {
    "optim.py": ["captioner.optim.*"],
    "training step": [
        "captioner.training.x_train__mutmut_*",
        "captioner.training.x_resume_state*",
        "captioner.training.x__split_optim*",
        "captioner.training.x__join_optim*",
        "captioner.training.x_batch*",
        # saving and keeping the best epoch, reached through the loop's callbacks
        "captioner.runs.x_train_in*",
        "captioner.runs.x_saver*",
        "captioner.runs.x_save_epoch*",
        "captioner.runs.x_keep_best*",
    ],
    "packed.py": ["captioner.packed.*"],
    "layers.py": ["captioner.layers.*"],
    "metrics.py": ["captioner.metrics.*"],
    "splits and vocabulary": [
        "captioner.sources.coco.x_read_split*",
        "captioner.sources.coco.x__karpathy*",
        "captioner.sources.karpathy.x_parse*",
        "captioner.sources.karpathy.x_read__*",
        "captioner.vocab.x_build_vocab*",
        "captioner.vocab.x_encode_captions*",
        "captioner.prepare.x_tokenize*",
        "captioner.prepare.x__tokenize*",
        "captioner.prepare.x__read_split_file*",
    ],
}


LIVE = ("survived", "no tests", "timeout")  # not killed


def results():
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        capture_output=True,
        text=True,
    ).stdout  # its exit status is 1 while a run is under way
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name.startswith("captioner."):
            yield name, status


def _in(group, name):
    return any(fnmatch.fnmatch(name, p) for p in GROUPS[group])


def run(groups, sample=None, again=False):
    """Judge the mutants of the groups (or `sample` of each, evenly spread) that have no
    verdict yet; again: only the survivors, again (after new tests)."""
    shared = Path(__file__).resolve().parents[2] / "shared"
    if shared.is_dir():
        os.environ.setdefault("CAPTIONER_SHARED", str(shared))
    status = dict(results())  # empty before the first run: then mutmut judges every mutant
    if sample and not status:
        sys.exit("no mutants yet to sample from: run one group first (e.g. optim.py)")
    todo = []
    for group in groups:
        mine = [n for n in status if _in(group, n)]
        if sample:
            mine = mine[:: max(1, len(mine) // sample)][:sample]
        mine = [n for n in mine if status[n] in (LIVE if again else ("not checked",))]
        todo += mine if status else GROUPS[group]
        print(f"== {group}: {len(mine) if status else 'all'} mutants to judge", flush=True)
    if todo:  # one mutmut run: each begins by running the whole test selection once
        subprocess.run(
            ["nice", "-n", "19", sys.executable, "-m", "mutmut", "run", "--max-children"]
            + [os.environ.get("MUTATE_JOBS", "2"), *todo],
            check=True,
        )


def scores(argv):
    counts, survivors = defaultdict(Counter), defaultdict(list)
    for name, status in results():
        group = next((g for g in GROUPS if _in(g, name)), None)
        if group is None:
            continue
        counts[group][status] += 1
        if status in LIVE:
            survivors[group].append(f"{name}: {status}")
    head = ("killed", "survived", "no tests", "timeout", "not run", "score")
    print(f"{'module':24}" + "".join(f"{h:>10}" for h in head))
    for group in GROUPS:
        c = counts[group]
        judged = c["killed"] + c["survived"] + c["no tests"] + c["timeout"]
        score = f"{100 * c['killed'] / judged:.1f}%" if judged else "-"
        row = (c["killed"], c["survived"], c["no tests"], c["timeout"], c["not checked"], score)
        print(f"{group:24}" + "".join(f"{x:>10}" for x in row))
    if "--survivors" in argv:
        for group in GROUPS:
            for line in survivors[group]:
                print(line)


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--scores" not in args:
        sample = int(args[args.index("--sample") + 1]) if "--sample" in args else None
        run([a for a in args if a in GROUPS] or list(GROUPS), sample, "--again" in args)
    scores(args)
