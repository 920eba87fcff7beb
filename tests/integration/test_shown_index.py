"""The shown index without removals on the event path (issue 13), on a real Redis.

Feed writes add the items entering a list and leave the entries of items that left it (stale);
catalog propagation checks each indexed user's stored list, edits only those that show the item
and removes the stale entries it meets; the index keys' TTL is refreshed at most once per
``index_refresh_s`` per store; a denial of consent of a user whose lists left entries behind is a
withdrawal (its erasure scans the index). Counts, not times (INFO commandstats).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis

from push.redis_server import EmbeddedRedis
from sessions.broker_memory import MemoryBroker
from sessions.diff import ids_of
from sessions.feeds import HOME, FeedStore, FeedUpdate, shown_key
from sessions.keys import feed_key
from streams.catalog import Catalog, Item
from streams.privacy import erase_user
from streams.profile import ProfileStore
from streams.propagate import Propagator
from tests.integration.commandstats import calls, delta
from tests.integration.conftest import run
from tests.integration.test_profile import EXACT

TTL_S = 600
T0 = 1_000_000.0


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A private real Redis: INFO commandstats counts the whole server."""
    with EmbeddedRedis() as server:
        yield server.url


def payloads(*ids: str) -> list[dict[str, Any]]:
    return [{"id": i, "title": i, "price": 1.0, "category": "c"} for i in ids]


async def members(r: Redis, item: str) -> dict[str, float]:
    pairs: list[tuple[bytes, float]] = await r.zrange(  # type: ignore[assignment]
        shown_key(HOME, item), 0, -1, withscores=True
    )
    return {u.decode(): s for u, s in pairs}


def test_a_write_that_drops_items_runs_no_script_on_the_index(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        now = [T0]
        store = FeedStore(r, ttl_s=TTL_S, index_refresh_s=60, clock=lambda: now[0])
        first = await store.write("drop-u", HOME, None, payloads("d-a", "d-b", "d-c"))
        assert first is not None
        now[0] += 1
        before = await calls(r)
        second = await store.write("drop-u", HOME, first.state, payloads("d-b", "d-c", "d-d"))
        assert second is not None
        spent = delta(before, await calls(r))
        # The compare-and-set alone (before: one shown_remove.lua call for d-a, after the write).
        assert spent.get("evalsha", 0) == 1, spent
        assert spent.get("zadd", 0) == 1, spent  # d-d entering
        # The left item's entry stays, stale, with the score of its last confirmation.
        assert await members(r, "d-a") == {"drop-u": T0 * 1000}
        assert await members(r, "d-d") == {"drop-u": (T0 + 1) * 1000}
        # Another user's write into a key this store refreshed within the interval: no EXPIRE
        # (before: one EXPIRE per key per round).
        before = await calls(r)
        assert await store.write("drop-v", HOME, None, payloads("d-d", "d-a")) is not None
        spent = delta(before, await calls(r))
        assert spent.get("expire", 0) == 1, spent  # the feed hash's own, in the script
        for item in ("d-a", "d-d"):
            assert 0 < await r.ttl(shown_key(HOME, item)) <= store.index_ttl_s
        # Past the interval: refreshed (and trimmed) again.
        now[0] += 61
        before = await calls(r)
        assert await store.write("drop-w", HOME, None, payloads("d-d")) is not None
        spent = delta(before, await calls(r))
        assert spent.get("expire", 0) == 2, spent
        assert spent.get("zremrangebyscore", 0) == 1, spent

    run(redis_url, body)


def test_stale_entries_age_out_by_score(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        now = [T0]
        store = FeedStore(r, ttl_s=TTL_S, index_refresh_s=60, clock=lambda: now[0])
        s1 = await store.write("age-u", HOME, None, payloads("g-a", "g-b"))
        assert s1 is not None
        assert await store.write("age-u", HOME, s1.state, payloads("g-b")) is not None
        assert set(await members(r, "g-a")) == {"age-u"}  # stale, kept
        # Older than the bound (TTL + refresh): the next write touching the key trims it.
        now[0] += store.index_bound_s + 1
        assert await store.write("age-v", HOME, None, payloads("g-a")) is not None
        assert set(await members(r, "g-a")) == {"age-v"}

    run(redis_url, body)


def item(item_id: str, price: float = 1.0, *, in_stock: bool = True) -> Item:
    return Item(item_id, item_id, price, "c", "", in_stock, {})


def test_propagation_skips_and_removes_entries_of_lists_the_item_left(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        catalog = Catalog(r)
        store = FeedStore(r, ttl_s=TTL_S, history_len=20)
        broker = MemoryBroker()
        published: list[FeedUpdate] = []
        await broker.start(published.append)
        propagator = Propagator(
            redis=r, catalog=catalog, feeds=store, broker=broker, feed_names=(HOME,), settle_s=None
        )
        x, y, z = item("p-x"), item("p-y"), item("p-z")
        await catalog.upsert([x, y, z])
        left = await store.write("p-left", HOME, None, [x.payload, y.payload])
        assert left is not None
        assert await store.write("p-left", HOME, left.state, [y.payload]) is not None
        shows = await store.write("p-shows", HOME, None, [x.payload, z.payload])
        assert shows is not None
        assert set(await members(r, "p-x")) == {"p-left", "p-shows"}
        for user in ("p-left", "p-shows"):
            await broker.watch(user)

        result = await propagator.upsert([item("p-x", 2.0)])
        # Only the feed that shows x is edited; the stale entry is met, skipped and removed.
        assert (result.edited, result.unindexed) == (1, 1)
        assert [u.user for u in published] == ["p-shows"]
        assert set(await members(r, "p-x")) == {"p-shows"}
        # Out of stock: x leaves the feed that showed it, and its entry goes with it.
        result = await propagator.upsert([item("p-x", 2.0, in_stock=False)])
        assert result.edited == 1
        state = await store.read("p-shows", HOME)
        assert state is not None and ids_of(state.items) == ["p-z"]
        assert await members(r, "p-x") == {}

    run(redis_url, body)


def test_a_denial_of_a_visitor_whose_lists_left_items_erases_the_stale_entries(
    redis_url: str,
) -> None:
    async def body(r: Redis) -> None:
        store = FeedStore(r, ttl_s=TTL_S)
        profiles = ProfileStore(r, replace(EXACT, ttl_s=TTL_S))
        # A visitor with feeds only (no event of theirs: no profile, no dedup window).
        kept = await store.write("deny-kept", HOME, None, payloads("n-a"))
        assert kept is not None
        change = await profiles.record_consent("deny-kept", False, source="api")
        # Its stored list alone named it: unindexed at once, nothing else to erase.
        assert change.outcome == "denied" and change.marker is None
        assert await members(r, "n-a") == {}

        first = await store.write("deny-left", HOME, None, payloads("n-b", "n-c"))
        assert first is not None
        assert await store.write("deny-left", HOME, first.state, payloads("n-c")) is not None
        assert await r.hget(feed_key("deny-left", HOME), "g") == b"1"
        change = await profiles.record_consent("deny-left", False, source="api")
        # n-b's entry is named by no stored list: the denial is a withdrawal, whose erasure
        # (the user's lane runs it; here directly) scans the index.
        assert change.outcome == "withdrawn" and change.marker is not None
        assert await members(r, "n-c") == {}
        assert set(await members(r, "n-b")) == {"deny-left"}
        await erase_user(r, "deny-left")
        assert await members(r, "n-b") == {}

    run(redis_url, body)
