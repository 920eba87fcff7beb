"""A processor on a real Redis, without a server: the rig of the processor-level tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from sessions.broker_memory import MemoryBroker
from sessions.feeds import FeedStore, FeedUpdate
from streams.catalog import Catalog, Item
from streams.experiment_stats import ExperimentStats
from streams.processor import Processor
from streams.profile import ProfileStore, ScoringTuning
from streams.recommender import Recommender, RecommenderTuning
from tests.integration.conftest import redis_client


@dataclass
class Rig:
    redis: Redis
    catalog: Catalog
    feeds: FeedStore
    broker: MemoryBroker
    processor: Processor
    #: Updates published for the users the broker watches (see :func:`processor_rig`).
    published: list[FeedUpdate] = field(default_factory=list)


async def processor_rig(
    url: str,
    items: Sequence[Item],
    *,
    size: int = 4,
    watched: Sequence[str] = (),
    stats: bool = False,
) -> Rig:
    """A flushed database holding ``items``, and a processor scoring with the classic sources
    only (no session kNN, no repeat slot: the tests assert those rankings), ``size`` items per
    feed. The broker delivers the updates of ``watched`` users to ``Rig.published``."""
    redis = redis_client(url)
    await redis.flushdb()
    catalog = Catalog(redis)
    await catalog.upsert(list(items))
    feeds = FeedStore(redis, ttl_s=3600, history_len=10)
    broker = MemoryBroker()
    published: list[FeedUpdate] = []
    await broker.start(published.append)
    for user in watched:
        await broker.watch(user)
    processor = Processor(
        profiles=ProfileStore(redis, scoring=ScoringTuning(session_w=0.0, repeat_w=0.0)),
        recommender=Recommender(catalog, RecommenderTuning(size=size, repeat=False)),
        feeds=feeds,
        broker=broker,
        catalog=catalog,
        stats=ExperimentStats(redis, exposure_ttl_s=3600) if stats else None,
    )
    return Rig(redis, catalog, feeds, broker, processor, published)


def plain_items(ids: Sequence[str], category: str = "c") -> list[Item]:
    """In-stock catalog items named by their ids."""
    return [Item(i, i, 1.0, category, "", True, {}) for i in ids]
