"""Per-connection conflating outbox.

A connection's writer takes work from its outbox; producers (the hub) never wait for it. Memory
per connection is bounded: per feed at most ``max_diffs`` diffs wait; one more and the waiting
diffs of that feed collapse into a single "send a snapshot of the latest state" marker, which the
writer resolves by reading the stored feed when it gets to it. A slow client therefore costs at
most ``max_diffs`` updates per feed, whatever the event rate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from sessions.feeds import FeedUpdate


@dataclass(frozen=True, slots=True)
class SnapshotWanted:
    """Send the current stored state of ``feed`` (diffs were conflated or the chain broke)."""

    feed: str


Work = FeedUpdate | SnapshotWanted


class Outbox:
    """Bounded, conflating queue of feed work for one connection."""

    def __init__(
        self,
        *,
        max_diffs: int = 8,
        on_conflate: Callable[[], None] | None = None,
        feeds: frozenset[str] = frozenset({"home"}),
    ) -> None:
        self.feeds = feeds
        self._max_diffs = max_diffs
        self._pending: dict[str, list[FeedUpdate] | SnapshotWanted] = {}
        self._ready = asyncio.Event()
        self._on_conflate = on_conflate
        self.closed = False

    def offer(self, update: FeedUpdate) -> None:
        """Queue ``update``; conflate when this feed already has ``max_diffs`` waiting."""
        if self.closed:
            return
        pending = self._pending.get(update.feed)
        if isinstance(pending, SnapshotWanted):
            return
        if pending is None:
            self._pending[update.feed] = [update]
        elif len(pending) >= self._max_diffs:
            self._pending[update.feed] = SnapshotWanted(update.feed)
            if self._on_conflate is not None:
                self._on_conflate()
        else:
            pending.append(update)
        self._ready.set()

    def want_snapshot(self, feed: str) -> None:
        """Replace whatever waits for ``feed`` by a snapshot of its latest state."""
        if self.closed:
            return
        self._pending[feed] = SnapshotWanted(feed)
        self._ready.set()

    def resync(self) -> None:
        """Updates may have been missed (broker gap): take a snapshot of every feed."""
        for feed in self.feeds:
            self.want_snapshot(feed)

    @property
    def pending(self) -> int:
        """How many work items wait (a snapshot marker counts as one)."""
        return sum(1 if isinstance(p, SnapshotWanted) else len(p) for p in self._pending.values())

    async def take(self) -> list[Work]:
        """Wait until work is pending, then take all of it (per feed, in order)."""
        while not self._pending:
            if self.closed:
                return []
            self._ready.clear()
            await self._ready.wait()
        work: list[Work] = []
        for pending in self._pending.values():
            if isinstance(pending, SnapshotWanted):
                work.append(pending)
            else:
                work.extend(pending)
        self._pending.clear()
        return work

    def close(self) -> None:
        """Drop pending work and wake the writer so it can finish."""
        self.closed = True
        self._pending.clear()
        self._ready.set()
