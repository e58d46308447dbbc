"""Progress lines for long work, on stderr so that stdout stays the report."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Prints ``label: done/total unit (rate/s)`` at most every ``every`` seconds, and at the end."""

    def __init__(
        self, label: str, total: int | None = None, unit: str = "", every: float = 2.0,
        stream: TextIO | None = None, enabled: bool = True,
    ) -> None:
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.done = 0
        self.start = self._last = time.monotonic()

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.monotonic()
        finished = self.total is not None and self.done >= self.total
        if finished or now - self._last >= self.every:
            self._last = now
            self.say(note)

    def say(self, note: str = "") -> None:
        if not self.enabled:
            return
        elapsed = max(time.monotonic() - self.start, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        rate = self.done / elapsed
        text = f"{self.label}: {self.done:,}{of} {self.unit} ({rate:,.{0 if rate >= 10 else 2}f}/s)"
        print(text + (f" {note}" if note else ""), file=self.stream, flush=True)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.start
