"""What the CLI prints, and how it ends: one escaped line per message, user errors and
Ctrl-C/SIGTERM as one line and an exit code (never a traceback), the library's progress
bar, and the library's log shown on stderr. Only the CLI prints; this is where."""

import signal
import sys
import threading

import click

from ..errors import CaptionerError, printable


def echo(text="", err=False):
    """click.echo of one line (after any leading blank lines), with every character a
    terminal would act on escaped (errors.printable): file, run and picture names and
    captions come from users, and must not forge lines or send escape sequences."""
    text = str(text)
    body = text.lstrip("\n")
    click.echo(text[: len(text) - len(body)] + printable(body), err=err)


def plural(n, word):
    """3, 'image' -> '3 images'; 1 -> '1 image'."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C is, so that what a command cleans up on the way out (temp
    files, an unpacking folder, child processes) is cleaned up for a kill too."""

    signum = signal.SIGTERM


def _terminate(signum, frame):
    raise _Terminated


def interrupted(e):
    """The exit status of a command stopped by Ctrl-C (130) or SIGTERM (143)."""
    return 128 + getattr(e, "signum", signal.SIGINT)


class Group(click.Group):
    """Turn CaptionerError into one line on stderr and its exit code, never a traceback;
    and Ctrl-C or SIGTERM that a command does not handle itself into one line and 130/143."""

    def invoke(self, ctx):
        main = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGTERM, _terminate) if main else None
        try:
            return super().invoke(ctx)
        except CaptionerError as e:
            echo(f"captioner: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt as e:
            echo("", err=True)
            echo(
                "captioner: interrupted; files are written whole or not at all: run the same "
                "command again (download and prepare resume where they stopped)",
                err=True,
            )
            ctx.exit(interrupted(e))
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)


def show_library_log():
    """The library reports through the "captioner" logger; the CLI shows it on stderr, as
    bare lines (each invocation: click's test runner swaps sys.stderr)."""
    import logging

    log = logging.getLogger("captioner")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def progress_bar(quiet=False, leave=True):
    """The library's progress callback, progress(desc, done, total, unit, **figures) (training,
    prepare, download, encoding), drawn as a tqdm bar, a new one for each desc; None when
    quiet. leave: the finished bar stays on screen."""
    if quiet:
        return None
    from tqdm import tqdm

    # the bar, and the (desc, done) it shows: off a terminal tqdm keeps neither
    bar, shown = None, (None, 0)

    def show(desc, done, total, unit="it", **figures):
        nonlocal bar, shown
        if bar is None or shown[0] != desc or done < shown[1]:  # a new task
            if bar is not None:
                bar.close()
            bar = tqdm(
                initial=done,
                total=total,
                desc=desc,
                unit=unit,
                unit_scale=unit == "B",
                disable=None,  # only on a terminal, never in logs
                leave=leave,
                dynamic_ncols=True,
            )
        else:
            if figures:
                bar.set_postfix(
                    {k: f"{v:.3f}" if isinstance(v, float) else v for k, v in figures.items()},
                    refresh=False,
                )
            bar.update(done - shown[1])
        shown = (desc, done)
        if total is not None and done >= total:
            bar.close()
            bar = None

    return show
