"""How the command line prints and ends: one line per warning, a closed pipe that ends the
output and not the work, exit codes that a scheduler can trust (0, 1, 2, 130)."""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """Exit with ``code`` at once, output flushed. The frameworks' threads can abort the
    interpreter's teardown ("terminate called without an active exception", exit 134) after the
    work is done and reported, and a nightly scheduler must see 0, 1 or 2."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def disk_full(prog: str, exc: OSError) -> str:
    where = f" writing {exc.filename}" if exc.filename else ""
    return (f"{prog}: error: no space left on the device{where} ({exc.strerror}). Nothing partial was committed: "
            "free space (or point --root elsewhere), then rerun the same command; a run resumes where it stopped")


def warning_printer() -> Callable[..., None]:
    """A ``warnings.showwarning`` for one command: batchml's own warnings as one line each
    ("batchml: WARNING: ..."), each once however many readers skipped the same file; others
    as Python shows them."""
    from batchml.integrity import DamagedFileWarning

    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if not issubclass(category, DamagedFileWarning):
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
        elif str(message) not in shown:
            shown.add(str(message))
            print(f"batchml: WARNING: {message}", file=sys.stderr, flush=True)

    return show


def say(text: str) -> None:
    """Print a line of the report; a reader that has gone (``| head``) ends the output, not the work."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        stdout_gone()


def stdout_gone() -> None:
    """Point stdout at /dev/null: the reader closed the pipe, and flushing at exit must not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def unexpected(prog: str) -> int:
    """Exit code 2 for an exception batchml did not foresee, with its traceback for the log."""
    traceback.print_exc()
    print(f"{prog}: unexpected error (the traceback above); nothing partial was committed. "
          "Rerun to resume; report it if it repeats.", file=sys.stderr)
    return 2
