"""One run of a local sweep or comparison in its own process, as sweep.run_all starts it:

    python -m captioner.cli.worker RUN_DIR PARENT_PID [MODULE:TASK]

runs TASK (default captioner.sweep.run_one) on RUN_DIR; its error, one line on stderr, is
what the sweep reports for the run."""

import contextlib
import os
import sys

from .. import sweep, training
from ..errors import CaptionerError


def _die_with_parent(parent):
    """Linux: SIGTERM this process when the sweep that started it dies (even by kill -9),
    so no orphan keeps training; SIGTERM saves last.npz first."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before prctl
        sys.exit(143)


def main(argv):
    """argv: RUN_DIR PARENT_PID [MODULE:TASK], as above."""
    import importlib

    _die_with_parent(int(argv[1]))
    task = sweep.run_one
    if len(argv) > 2:
        module, _, name = argv[2].partition(":")
        task = getattr(importlib.import_module(module), name)
    try:
        task(argv[0])
    except CaptionerError as e:
        print(f"captioner: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except training.Interrupted as e:
        print(f"{argv[0]}: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main(sys.argv[1:])
