"""Redis work per event (issue 13): what the event path asks of Redis, counted on a real Redis
(INFO commandstats before and after), with the outcomes it must still have.

- The shown index (sessions/feeds.py): a round of feed writes confirms each item key once,
  with plain commands, however many users' lists show the item (no script call per user and
  item).
- The user lane (streams/lua/user_event.lua): an active user's keys get their TTL refreshed
  together at most once per refresh interval, not on every event, and every key still has a
  TTL, including one an event creates between two refreshes.

Counts, not times: the commands Redis runs are the cost the benchmark measures
(benchmarks/event_cost.py); a count is exact where a time is noise.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis

from push.redis_server import EmbeddedRedis
from sessions.feeds import HOME, FeedStore
from sessions.keys import shown_key
from tests.integration.commandstats import calls, delta
from tests.integration.conftest import run
from tests.integration.test_profile import EXACT, Sim, key

TTL_S = 3600
USER_KEYS = ("dedup", "recent", "aff", "cart", "bought", "p")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A private real Redis: INFO commandstats counts the whole server, so no other test's
    traffic (a server of an earlier test still draining) may land in the counts."""
    with EmbeddedRedis() as server:
        yield server.url


def test_a_round_of_writes_confirms_each_item_once_however_many_users_show_it(
    redis_url: str,
) -> None:
    async def body(r: Redis) -> None:
        store = FeedStore(r, ttl_s=TTL_S, index_refresh_s=60, clock=lambda: 1_000_000.0)
        items = [f"cost-i{i}" for i in range(10)]
        users = [f"cost-u{u}" for u in range(40)]
        payload = [{"id": i} for i in items]
        await store.write("cost-warm", HOME, None, [{"id": "cost-warm"}])  # the script is loaded
        before = await calls(r)
        results = await store.write_many([(u, HOME, None, payload) for u in users])
        spent = delta(before, await calls(r))
        assert all(res is not None and not isinstance(res, Exception) for res in results)
        # One script call per feed write (the compare-and-set), none per (user, item); one
        # ZADD per item key (before: 400 shown_add.lua calls).
        assert spent.get("evalsha", 0) == len(users), spent
        assert spent.get("zadd", 0) == len(items), spent
        for i in items:
            shown: Any = await r.zrange(shown_key(i, HOME), 0, -1, withscores=True)
            assert dict(shown) == {u.encode(): 1e9 for u in users}
            assert 0 < await r.ttl(shown_key(i, HOME)) <= store.index_ttl_s

    run(redis_url, body)


def test_an_active_users_keys_are_not_expired_again_on_every_event(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, replace(EXACT, ttl_s=TTL_S))
        await sim.ok("busy", "view", "a", ["hats"])
        before = await calls(r)
        await sim.ok("busy", "view", "b", ["hats"])
        await sim.ok("busy", "view", "c", ["shoes"])
        spent = delta(before, await calls(r))
        # Before: EXPIRE of the dedup, recent, affinity keys and the profile hash per event.
        assert spent.get("expire", 0) == 0, spent
        # A key created between two refreshes gets its TTL at once; every key has one.
        await sim.ok("busy", "add_to_cart", "c", ["shoes"])
        await sim.ok("busy", "purchase", "c", ["shoes"])
        for name in USER_KEYS:
            if await r.exists(key("busy", name)):
                assert 0 < await r.ttl(key("busy", name)) <= TTL_S, name
        # A user whose first event is an impression: its dedup key alone, with a TTL.
        assert await sim.send("shy", "impression", "a", eid="imp-1") == ("noop", None)
        assert 0 < await r.ttl(key("shy", "dedup")) <= TTL_S

    run(redis_url, body)


def test_keys_that_vanished_are_refreshed_by_the_next_event(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, replace(EXACT, ttl_s=TTL_S))
        await sim.ok("gone", "view", "a", ["hats"])
        # The profile hash (with its refresh mark) vanishes: the next event refreshes all.
        await r.delete(key("gone", "p"))
        await r.persist(key("gone", "recent"))
        await sim.ok("gone", "view", "b", ["hats"])
        for name in ("dedup", "recent", "aff", "p"):
            assert 0 < await r.ttl(key("gone", name)) <= TTL_S, name

    run(redis_url, body)
