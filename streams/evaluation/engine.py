"""The real-time engine, wired for a replay: the real pipeline on a Redis the caller brings.

The same components as a node's runtime (``push/runtime.py``), built the same way: the catalog
mirror, the profile store (the user lane, the item-side aggregates and scoring through the
worker's item cache, ``item_cache_s`` stale at most), the recommender, the feed store
(versioned compare-and-set writes with diffs) and the :class:`~streams.processor.Processor`
that drives them. The caller passes the tunings a node
would use (``push/eval_cli.py`` derives them from the settings as the runtime does); the defaults
are the tunings' own, with ``2 * size`` candidates. Only the broker differs:
:class:`ScreenRecorder` keeps, for each user, the feed last published — what a connected client
would show — instead of fanning it out to sockets.

Guarantees: every event goes through :meth:`Processor.handle_batch`; a screen changes only when
the processor publishes a stored version (published only after it is stored), so a screen is
always a feed version that was stored for that user; the recompute seconds the processor reports
per event are kept for the events applied with ``timed=True``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from redis.asyncio import Redis

from sessions.broker import Deliver
from sessions.feeds import HOME, FeedStore, FeedUpdate
from sessions.keys import TREND_BUCKETS
from streams.catalog import Catalog, Item
from streams.evaluation.readers import Interaction
from streams.events import Event
from streams.itemcache import ItemCache
from streams.processor import Processor
from streams.profile import CONTEXT_FEEDS, ProfileStore, ProfileTuning, ScoringTuning
from streams.recommender import Recommender, RecommenderTuning

_UPSERT_CHUNK = 1000


class ScreenRecorder:
    """A :class:`~sessions.broker.Broker` that remembers each user's last published feed ids."""

    def __init__(self, feed: str = HOME) -> None:
        self._feed = feed
        self._screens: dict[str, tuple[str, ...]] = {}

    async def start(self, deliver: Deliver) -> None:
        """Nothing to connect: updates are only recorded."""

    async def stop(self) -> None:
        """Nothing to release."""

    async def publish(self, update: FeedUpdate) -> None:
        """Record ``update`` as its user's screen (when it is the evaluated feed)."""
        if update.feed == self._feed:
            self._screens[update.user] = tuple(str(p["id"]) for p in update.state.items)

    async def publish_many(self, updates: Sequence[FeedUpdate]) -> None:
        """Record each of ``updates``, in order."""
        for update in updates:
            await self.publish(update)

    async def watch(self, user: str) -> None:
        """Every user is recorded; nothing to do."""

    async def unwatch(self, user: str) -> None:
        """Every user is recorded; nothing to do."""

    def screen(self, user: str) -> list[str]:
        """The ids of ``user``'s last published feed, best first (empty before the first)."""
        return list(self._screens.get(user, ()))


def catalog_item(item_id: str, category: str) -> Item:
    """The minimal in-stock catalog item for a logged item id: ``{id, title, category}``."""
    return Item(item_id, f"Item {item_id}", None, category, "", True, {})


class Engine:
    """The real pipeline on ``redis``, showing ``size`` items; see the module docstring.

    ``item_cache_s`` and ``trend_buckets``: the item cache's staleness bound and the trending
    buckets (``PUSHREC_ITEM_CACHE_S``, ``PUSHREC_TREND_BUCKETS``).

    ``redis`` should hold no other pushrec data: the replay writes profiles, neighbours,
    trending counters, feeds and the catalog into it. Without ``scoring``, the default tuning
    with ``2 * size`` candidates; without ``recommender``, ``size`` items and the current item
    allowed exactly when the scoring gives it a repeat weight (as the runtime wires them).
    """

    def __init__(
        self,
        redis: Redis,
        *,
        size: int,
        feed: str = HOME,
        history_len: int = 100,
        profile: ProfileTuning | None = None,
        scoring: ScoringTuning | None = None,
        recommender: RecommenderTuning | None = None,
        item_cache_s: float = 1.0,
        trend_buckets: int = TREND_BUCKETS,
    ) -> None:
        if feed != HOME and feed not in CONTEXT_FEEDS:
            raise ValueError(f"the engine computes {HOME!r} and {', '.join(CONTEXT_FEEDS)} only")
        self.feed = feed
        #: Users whose context feed exists (a context feed is computed only for users who have
        #: one: each user's is created before their first event, as a subscription would).
        self._opted_in: set[str] = set()
        profile = profile or ProfileTuning()
        scoring = scoring or ScoringTuning(candidates=2 * size)
        recommender = recommender or RecommenderTuning(size=size, repeat=scoring.repeat_w > 0)
        if recommender.size != size:
            raise ValueError("the recommender's size must be the engine's size")
        self.size = size
        self.catalog = Catalog(redis)
        self.screens = ScreenRecorder(feed)
        #: Recompute seconds per processor lane applied with ``timed=True`` (the lane observer:
        #: a lane's events are applied, scored, stored and published together).
        self.latencies: list[float] = []
        #: Outcome counts of every applied event (``ok``, ``unchanged``, ``failed`` …).
        self.outcomes: Counter[str] = Counter()
        self._timing = False
        self._seq = 0
        self.processor = Processor(
            profiles=ProfileStore(
                redis,
                profile,
                scoring,
                cache=ItemCache(
                    redis,
                    max_age_s=item_cache_s,
                    buckets=trend_buckets,
                    trending_halflife_ms=profile.trending_halflife_ms,
                ),
                buckets=trend_buckets,
            ),
            recommender=Recommender(self.catalog, recommender),
            feeds=FeedStore(redis, ttl_s=profile.ttl_s, history_len=history_len),
            broker=self.screens,
            catalog=self.catalog,
            observe=self._observe,
            observe_lane=self._observe_lane,
        )

    def _observe(self, _type: str, outcome: str) -> None:
        self.outcomes[outcome] += 1

    def _observe_lane(self, seconds: float, _events: int) -> None:
        if self._timing:
            self.latencies.append(seconds)

    async def load_catalogue(self, items: dict[str, str]) -> None:
        """Store every ``item → category`` as an in-stock catalog item (Redis and mirror)."""
        ids = sorted(items)
        for start in range(0, len(ids), _UPSERT_CHUNK):
            chunk = ids[start : start + _UPSERT_CHUNK]
            await self.catalog.upsert([catalog_item(i, items[i]) for i in chunk])

    async def apply(self, events: Sequence[Interaction], *, timed: bool) -> None:
        """Run ``events`` through :meth:`Processor.handle_batch` as one batch, in order."""
        batch = []
        for e in events:
            self._seq += 1
            batch.append(Event(f"ev{self._seq}", e.user, e.type, e.item, e.ts_ms))
        if self.feed != HOME:
            for user in {e.user for e in events} - self._opted_in:
                await self.processor.ensure_feed(user, self.feed)
                self._opted_in.add(user)
        self._timing = timed
        try:
            await self.processor.handle_batch(batch)
        finally:
            self._timing = False

    def screen(self, user: str) -> list[str]:
        """What ``user`` sees now: the feed stored and published after their last event."""
        return self.screens.screen(user)
