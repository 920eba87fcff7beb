"""The per-event processor: profile update → recompute → compare-and-set write → publish.

Cost per event: one Redis round trip to apply the event and read the recompute inputs (Lua), and
one more to store the new feed version with its diff (Lua compare-and-set) — none when the list
did not change. A lost race (another writer moved the feed) costs one read and one retry.

Guarantees: events of one user are handled in the order given (callers keep per-user order); a
duplicate ``event_id`` has no effect; a feed version is published only after it is stored. Redis
being unreachable raises out of :meth:`Processor.handle_batch` so the source retries the batch
(dedup makes the retry harmless); any other failure of one event is logged and counted, and does
not stop the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessions.broker import Broker
from sessions.exceptions import VersionConflict
from sessions.feeds import FeedState, FeedStore, FeedUpdate
from streams.catalog import Catalog
from streams.events import Event
from streams.profile import ProfileStore
from streams.recommender import Recommender

log = structlog.get_logger(__name__)

#: Called once per event with (event type, outcome, seconds spent recomputing).
Observer = Callable[[str, str, float], None]
HOME = "home"
_CAS_TRIES = 3


def _ignore(_type: str, _outcome: str, _seconds: float) -> None:
    return None


class Processor:
    """Turns events into stored, published feed versions."""

    def __init__(
        self,
        *,
        profiles: ProfileStore,
        recommender: Recommender,
        feeds: FeedStore,
        broker: Broker,
        catalog: Catalog,
        observe: Observer = _ignore,
    ) -> None:
        self._profiles = profiles
        self._recommender = recommender
        self._feeds = feeds
        self._broker = broker
        self._catalog = catalog
        self._observe = observe

    async def handle_batch(self, events: Sequence[Event]) -> None:
        """Handle ``events`` in order (the source's batch handler)."""
        for event in events:
            await self.handle(event)

    async def handle(self, event: Event) -> str:
        """Handle one event; returns its outcome: ok, unchanged, duplicate, noop or failed."""
        started = time.perf_counter()
        try:
            outcome = await self._handle(event)
        except (RedisConnectionError, RedisTimeoutError):
            raise
        except Exception:
            log.exception("event_failed", event_id=event.event_id, type=event.type)
            outcome = "failed"
        self._observe(event.type, outcome, time.perf_counter() - started)
        return outcome

    async def _handle(self, event: Event) -> str:
        status, view = await self._profiles.apply(event, self._categories(event))
        if view is None:
            return status
        items = self._recommender.home(view, current=event.item_id)
        update = await self._store(event.user_id, view.feed, items)
        if update is None:
            return "unchanged"
        await self._broker.publish(update)
        return "ok"

    async def ensure_feed(self, user: str) -> FeedState:
        """The user's stored home feed, computing and storing a first one when there is none."""
        state = await self._feeds.read(user, HOME)
        if state is not None:
            return state
        refresh = Event(event_id="", user_id=user, type="refresh", item_id=None, ts=_now_ms())
        _, view = await self._profiles.apply(refresh, [])
        if view is None:  # pragma: no cover - refresh always returns a view
            raise RuntimeError("refresh returned no profile view")
        items = self._recommender.home(view, current=None)
        update = await self._store(user, view.feed, items)
        if update is not None:
            await self._broker.publish(update)
            return update.state
        state = await self._feeds.read(user, HOME)
        if state is None:  # pragma: no cover - unchanged means a stored version exists
            raise RuntimeError("feed vanished while being created")
        return state

    async def _store(
        self, user: str, base: FeedState | None, items: list[dict[str, Any]]
    ) -> FeedUpdate | None:
        for _ in range(_CAS_TRIES - 1):
            try:
                return await self._feeds.write(user, HOME, base, items)
            except VersionConflict:
                base = await self._feeds.read(user, HOME)
        return await self._feeds.write(user, HOME, base, items)

    def _categories(self, event: Event) -> list[str]:
        if event.item_id is not None:
            item = self._catalog.get(event.item_id)
            return [item.category] if item is not None and item.category else []
        query = event.props.get("query")
        if event.type == "search" and isinstance(query, str):
            return self._catalog.categories_for_query(query[:200])[:5]
        return []


def _now_ms() -> int:
    return int(time.time() * 1000)
