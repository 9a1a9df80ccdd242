"""The README walk: every code block marked `<!-- walk -->` runs, in order, exactly as printed,
in a fresh clone of the repository, and its output has the shape the README shows.

A walked block is either a shell block (each line that is not empty or a `#` comment is one
command) or a transcript (`$ command` lines, each followed by the output the README shows).
Every command must exit 0. The output shown must appear in the real output, line by line and
in order, as a shape (see `shape`): numbers vary between machines (scores, times, losses),
indented lines are generated captions, table rows and details (checked up to their `label:`
when they have one, else not), and a `...` line stands for lines left out.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- walk -->"
NUMBER = r"-?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?"


def walked_blocks(text):
    """-> [(line number of the fence, [command, expected output lines])] in README order."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        assert lines[i + 1].startswith("```"), f"README.md:{i + 1}: {MARK} must precede a fence"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
        body = lines[i + 2 : end]
        steps = []
        if any(b.startswith("$ ") for b in body):  # a transcript
            for b in body:
                if b.startswith("$ "):
                    steps.append([b[2:], []])
                else:
                    assert steps, f"README.md:{i + 2}: output before the first `$ ` command"
                    steps[-1][1].append(b)
        else:
            steps = [[b, []] for b in body if b.strip() and not b.lstrip().startswith("#")]
        blocks.append((i + 2, steps))
    return blocks


def shape(line):
    """The regex a shown output line must match, or None when the line is not checked:
    `...`, and indented lines without a `label: ` (captions, table rows). An indented line
    with a label is checked up to it (`      generated: ...` -> `      generated:`), any
    other line whole; numbers match any number."""
    if line.strip() in ("", "...") or line.strip().startswith("..."):
        return None
    labelled = line[:1] == " " and ": " in line
    if labelled:
        line = line[: line.index(": ") + 1]
    elif line[:1] == " ":
        return None
    parts = re.split(NUMBER, line)
    return "^" + NUMBER.join(re.escape(p) for p in parts) + ("" if labelled else "$")


def check_output(command, expected, output):
    """Each checked line of `expected`, as a shape, matches a line of `output`, in order."""
    got = output.splitlines()
    at = 0
    for line in expected:
        pattern = shape(line)
        if pattern is None:
            continue
        for k in range(at, len(got)):
            if re.match(pattern, got[k]):
                at = k + 1
                break
        else:
            raise AssertionError(
                f"`{command}`: no output line after line {at} has the shape of the README's\n"
                f"  {line}\n(pattern {pattern})\noutput:\n{output[-3000:]}"
            )


def test_shape_reads_numbers_labels_and_captions():
    assert re.match(
        shape("epoch 1/20  train loss 20.4861  lr 2.00e-03  1.2s"),
        "epoch 3/9  train loss 7.5  lr 1.9e-04  88.0s",
    )
    assert not re.match(shape("epoch 1/20  train loss 20.4861"), "epoch 1/20  val loss 20.4861")
    assert shape("      generated: there is a green star") == "^\\ \\ \\ \\ \\ \\ generated:"
    assert shape("  there is a green star on the left   (log p -1.90)") is None
    assert shape("  ...") is None and shape("...") is None
    assert re.match(shape("20,000 training captions, lstm"), "5,000 training captions, lstm")
    with pytest.raises(AssertionError, match="shape of the README"):
        check_output("x", ["done: runs/lstm/last.npz"], "done: runs/rnn/last.npz\n")
    check_output("x", ["a", "  b", "c 1"], "a\nzzz\nc 12\n")
    with pytest.raises(AssertionError):
        check_output("x", ["c 1", "a"], "a\nc 1\n")  # in order


def test_the_readme_marks_its_offline_walk():
    blocks = walked_blocks((ROOT / "README.md").read_text())
    commands = [c.split("  #")[0].strip() for _, steps in blocks for c, _ in steps]
    assert commands[0] == "captioner demo"
    assert "python scripts/make_synthetic_coco.py data/synthetic" in commands
    assert "captioner overfit --small --data data/synthetic" in commands
    # every walked command runs offline on what the walk made before it: no downloads, no
    # study commands of "RNN vs LSTM" (long; not walked)
    assert not [c for c in commands if "download" in c or "compare" in c or "gradients" in c]


@pytest.mark.slow
def test_readme_walk_from_a_fresh_clone(tmp_path, shared):
    clone = tmp_path / "captioner"
    (tmp_path / "shared").symlink_to(shared)  # ../shared beside the clone, as beside a checkout
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = dict(
        os.environ,
        # the clone's code, run by this venv's `captioner` and `python` (no second install)
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONPATH=str(clone),
    )
    blocks = walked_blocks((clone / "README.md").read_text())
    assert blocks, "README.md marks no block with <!-- walk -->"
    log = tmp_path / "walk.log"  # every command's output, kept with the test's files
    for line, steps in blocks:
        for command, expected in steps:
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=clone,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=900,
            )
            with open(log, "a") as f:
                f.write(f"$ {command}\n{done.stdout}")
            assert done.returncode == 0, (
                f"README.md:{line}: `{command}` exited {done.returncode}:\n{done.stdout[-3000:]}"
            )
            assert "Traceback" not in done.stdout, done.stdout[-3000:]
            check_output(command, expected, done.stdout)
