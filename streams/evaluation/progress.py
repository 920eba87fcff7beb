"""A one-line progress bar on a text stream: done/total, events/s and ETA, redrawn in place.

Redrawn at most every ``interval`` seconds (and once more, complete, on :meth:`Progress.close`),
so a fast loop pays a clock read per call. Disabled, it writes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    minutes, secs = divmod(seconds, 60)
    return f"{minutes}:{secs:02d}" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class Progress:
    """Progress of ``total`` steps labelled ``label``, drawn on ``stream`` when ``enabled``."""

    def __init__(
        self,
        total: int,
        label: str,
        *,
        stream: TextIO,
        enabled: bool,
        interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self._stream = stream
        self._enabled = enabled
        self._interval = interval
        self._clock = clock
        self._started = clock()
        self._drawn = self._started

    def advance(self, steps: int = 1) -> None:
        """Count ``steps`` more; redraw when the interval has passed."""
        self.done += steps
        if self._enabled:
            now = self._clock()
            if now - self._drawn >= self._interval:
                self._drawn = now
                self._draw(now, end="")

    def close(self) -> None:
        """Draw the final line and end it."""
        if self._enabled:
            self._draw(self._clock(), end="\n")

    def line(self, now: float) -> str:
        """The text of the bar at time ``now``."""
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        share = self.done / self.total if self.total else 1.0
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        filled = int(share * 20)
        return (
            f"{self.label:<10} [{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total} "
            f"{share:4.0%} {rate:,.0f} ev/s elapsed {_duration(elapsed)} ETA {_duration(left)}"
        )

    def _draw(self, now: float, *, end: str) -> None:
        self._stream.write("\r" + self.line(now) + "\033[K" + end)
        self._stream.flush()
