"""streams/processor.py on a real Redis: coalescing keeps every event's effect in the feed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from streams.events import Event
from tests.integration.conftest import redis_database
from tests.integration.rig import plain_items, processor_rig


@pytest.fixture
def redis_url() -> Iterator[str]:
    with redis_database(11) as url:
        yield url


def _view(n: int, user: str, item: str, ts: int, event_id: str | None = None) -> Event:
    return Event(event_id or f"{user}-{n}", user, "view", item, ts)


async def _scenario(url: str) -> None:
    rig = await processor_rig(url, plain_items("abcdefgh"), size=3)
    processor, feeds, redis = rig.processor, rig.feeds, rig.redis
    now = int(time.time() * 1000)
    # Others teach neighbours: a→b, c→d.
    await processor.handle_batch([_view(0, "o1", "a", now), _view(1, "o1", "b", now + 1)])
    await processor.handle_batch([_view(0, "o2", "c", now), _view(1, "o2", "d", now + 1)])

    # A batch whose last event of the user is a replay: the views before it were coalesced,
    # and their effect must still reach the stored feed.
    first = _view(0, "u", "a", now + 10)
    await processor.handle_batch([first])
    await processor.handle_batch([_view(1, "u", "c", now + 11), first])
    state = await feeds.read("u", "home")
    assert state is not None
    assert state.items[0]["id"] == "d"  # the neighbour of the coalesced view of c

    # An impression last does not hide the view before it: the feed is recomputed with "a"
    # as the current item (so "a" leaves the list).
    impression = Event("u-imp", "u", "impression", "x", now + 13)
    await processor.handle_batch([_view(2, "u", "a", now + 12), impression])
    after = await feeds.read("u", "home")
    assert after is not None and after.version.n == state.version.n + 1
    assert "a" not in [p["id"] for p in after.items]
    await redis.aclose()


def test_coalesced_events_reach_the_feed_even_when_the_last_is_a_replay(redis_url: str) -> None:
    asyncio.run(_scenario(redis_url))
