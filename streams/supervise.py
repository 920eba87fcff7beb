"""Keeping a background loop alive, and honest about it: restart policy and quiet warnings.

:class:`Restarts` is the consumer loop's policy, as plain state (unit-tested without Kafka): a
crash (an unexpected error after the loop was connected) restarts the loop after a growing delay;
crashes in a row with no progress between them make the loop unhealthy (``/healthz`` fails), one
whole poll handled heals it. An outage (the broker unreachable) is not a crash: readiness reports
it, and restarting the process would not bring the broker back.

:class:`ThrottledWarning` logs the first of a run of identical failures (a broker away retries
every few seconds, aiokafka's own loops many times a second), then at most one summary per
interval with how many were left out, and one line when the failures stop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: Crashes in a row, with no poll completed between them, after which the loop is unhealthy.
UNHEALTHY_AFTER = 3


class Restarts:
    """When to restart a crashed loop, and whether it is healthy."""

    def __init__(
        self,
        *,
        unhealthy_after: int = UNHEALTHY_AFTER,
        first_delay_s: float = 0.5,
        max_delay_s: float = 10.0,
    ) -> None:
        self._unhealthy_after = unhealthy_after
        self._first_delay_s = first_delay_s
        self._max_delay_s = max_delay_s
        #: Crashes since the last progress.
        self.in_a_row = 0
        #: Crashes since start.
        self.total = 0

    @property
    def healthy(self) -> bool:
        """False once :data:`UNHEALTHY_AFTER` crashes happened with no progress between them."""
        return self.in_a_row < self._unhealthy_after

    def crashed(self) -> float:
        """Record a crash; returns how long to wait before restarting (doubling, capped)."""
        self.in_a_row += 1
        self.total += 1
        delay: float = self._first_delay_s * 2.0 ** (self.in_a_row - 1)
        return min(delay, self._max_delay_s)

    def progressed(self) -> None:
        """Record progress (a poll handled and committed, or a quiet session that lasted):
        healthy again."""
        self.in_a_row = 0


class ThrottledWarning:
    """One warning event, logged at most once per ``every_s`` while it keeps happening."""

    def __init__(
        self,
        log: Any,
        event: str,
        every_s: float = 30.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._event = event
        self._every_s = every_s
        self._clock = clock
        self._logged_at: float | None = None
        self._suppressed = 0
        self._failures = 0

    def warn(self, **fields: Any) -> None:
        """A failure: logged if it is the first, or the first after ``every_s``."""
        self._failures += 1
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < self._every_s:
            self._suppressed += 1
            return
        extra = {"suppressed": self._suppressed} if self._suppressed else {}
        self._log.warning(self._event, **fields, **extra)
        self._logged_at, self._suppressed = now, 0

    def recovered(self) -> None:
        """The failures stopped: say so once, with how many there were."""
        if self._failures:
            self._log.info(f"{self._event}_recovered", failures=self._failures)
        self._logged_at, self._suppressed, self._failures = None, 0, 0
