"""Progress of long work, on stderr so that stdout stays the report: a bar with an ETA
(tqdm) where stderr is a terminal, plain lines where it is not (CI, nightly logs), and
nothing when silenced (``-q``)."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


class Progress:
    """``label: done/total unit (rate/s, ETA)`` as a tqdm bar on a terminal, else as a line at
    most every ``every`` seconds and at the end. ``done`` counts work finished before (a
    resumed run): it is shown, but the rate and ETA come from this process's work alone."""

    def __init__(
        self, label: str, total: int | None = None, unit: str = "", every: float = 2.0,
        stream: TextIO | None = None, enabled: bool = True, done: int = 0,
    ) -> None:
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.done = self._initial = done
        self.start = self._last = time.monotonic()
        self._bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm

            # a terminal that reports no width (some pseudo-terminals) would get an empty bar
            wide = _columns(self.stream) >= 40
            self._bar = tqdm(total=total, initial=done, desc=label, unit=f" {unit}" if unit else "it",
                             file=self.stream, dynamic_ncols=wide, ncols=None if wide else 100, smoothing=0.1)

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        if self._bar is not None:
            self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(n)
            if self.total is not None and self.done >= self.total:
                self.close()
            return
        now = time.monotonic()
        finished = self.total is not None and self.done >= self.total
        if finished or now - self._last >= self.every:
            self._last = now
            self.say(note)

    def say(self, note: str = "") -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(note)
            return
        print(self.line(note), file=self.stream, flush=True)

    def line(self, note: str = "") -> str:
        rate = (self.done - self._initial) / max(time.monotonic() - self.start, 1e-9)
        of = f"/{self.total:,}" if self.total is not None else ""
        eta = ""
        if self.total is not None and self.done < self.total and rate > 0:
            eta = f", ETA {_duration((self.total - self.done) / rate)}"
        text = f"{self.label}: {self.done:,}{of} {self.unit} ({rate:,.{0 if rate >= 10 else 2}f}/s{eta})"
        return text + (f" {note}" if note else "")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self.enabled = False  # the bar's last state stays on screen

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.start


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 0


def _duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``1h02m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
