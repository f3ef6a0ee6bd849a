"""How far a long step got: a bar on a terminal; off one (a file, a pipe, CI) a plain line now
and then instead, as pip does, where a bar would write thousands of carriage-return updates
(a seven-minute comparison left 120 KB of them in a redirected log); nothing with --quiet."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from .output import bars_disabled, on_terminal, verbosity

EVERY = 30.0  # seconds between two plain lines
log = logging.getLogger(__name__)


def progress(desc: str, total: int | None, unit: str, initial: int = 0, leave: bool = True) -> Any:
    """A bar (tqdm) on a terminal, plain lines off one, a silent bar with --quiet; each takes
    `update(count)`, `set_postfix(**figures)` and `close()`."""
    if verbosity() != "quiet" and not on_terminal():
        return PlainProgress(desc, total, unit, initial)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                leave=leave, disable=bars_disabled())


class PlainProgress:
    """One line at most every EVERY seconds, and one when a step that took longer ends (a
    shorter one says nothing: the messages around it tell that it ran)."""

    def __init__(self, desc: str, total: int | None, unit: str, initial: int = 0) -> None:
        self.desc, self.total, self.unit, self.n, self.first = desc, total, unit, initial, initial
        self.started = self.said = time.monotonic()
        self.figures = ""

    def update(self, count: int = 1) -> None:
        self.n += count
        if time.monotonic() - self.said >= EVERY:
            self._say()

    def set_postfix(self, **figures: Any) -> None:
        self.figures = ", ".join(f"{name} {value}" for name, value in figures.items())

    def close(self) -> None:
        if self.said > self.started:
            self._say()

    def _say(self) -> None:
        now = time.monotonic()
        self.said, elapsed, done = now, now - self.started, self.n - self.first
        count = f"{self.n}/{self.total} {self.unit}s ({100 * self.n / self.total:.0f}%)" if self.total \
            else f"{self.n} {self.unit}s"
        parts = [f"{self.desc}: {count}", f"{_clock(elapsed)} elapsed"]
        if self.total and done and self.n < self.total:
            parts.append(f"~{_clock(elapsed * (self.total - self.n) / done)} left")
        log.info(", ".join(parts + ([self.figures] if self.figures else [])))


def _clock(seconds: float) -> str:
    """h:mm:ss, or m:ss under an hour."""
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
