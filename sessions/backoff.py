"""Retry waits: capped exponential backoff with full jitter, the one policy every retry loop uses.

Each wait is drawn uniformly from ``[0, ceiling]``; the ceiling starts at ``base_s`` and doubles
after every wait up to ``cap_s``; :meth:`Backoff.reset` after a success starts again from
``base_s``. Full jitter spreads the retries of many processes that lost the same server at the
same moment (a Redis restart, a Kafka failover), so they do not all come back in step.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """One retry loop's waits (see the module docstring). Not shared between loops."""

    def __init__(
        self, base_s: float, cap_s: float, *, draw: Callable[[], float] = random.random
    ) -> None:
        if not 0 < base_s <= cap_s:
            raise ValueError("Backoff needs 0 < base_s <= cap_s")
        self.base_s, self.cap_s = base_s, cap_s
        self.ceiling = base_s
        self._draw = draw

    def next(self) -> float:
        """The next wait (seconds), in ``[0, ceiling]``; the ceiling doubles up to the cap."""
        wait = self._draw() * self.ceiling
        self.ceiling = min(self.ceiling * 2, self.cap_s)
        return wait

    def reset(self) -> None:
        """A success: the next failure waits from ``base_s`` again."""
        self.ceiling = self.base_s


__all__ = ["Backoff"]
