"""Redis work per event on the event path, second pass (issue 13): commands counted on a real
Redis (INFO commandstats before and after), with the outcomes they must still have.

- Item-side aggregates (streams/aggregates.py): plain pipelined commands per item, no script
  call; only the sets that gained a member are trimmed, and every set is within its cap once
  the write returned.
- Trending (streams/lua/trend.lua): a category's call does not read a users count it never has.
- The user lane (streams/lua/user_event.lua): the dedup check and the id's record are one
  command.
- The feed write (sessions/lua/feed_write.lua): the history is trimmed only when it is over its
  length bound.
- The dedup trim (streams/lua/user_event.lua) runs on one new id in 16 of a user, whatever the
  timestamps' granularity.

Counts, not times (see tests/integration/test_redis_cost.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis

from push.redis_server import EmbeddedRedis
from sessions.feeds import HOME, FeedStore
from sessions.keys import (
    category_trend_key,
    complements_key,
    encode_user,
    history_key,
    neighbours_key,
    visitors_key,
)
from streams.aggregates import Aggregates, Increments
from streams.events import Event
from streams.itemcache import ItemCache, seqs, top
from streams.profile import ProfileStore
from streams.user_lane import user_keys
from tests.integration.commandstats import calls, delta
from tests.integration.conftest import run
from tests.integration.test_profile import EXACT

NOW = 1_700_000_000_000


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A private real Redis: INFO commandstats counts the whole server."""
    with EmbeddedRedis() as server:
        yield server.url


def aggregates(r: Redis, **kw: Any) -> Aggregates:
    return Aggregates(r, ItemCache(r, max_age_s=3600.0), **kw)


def test_item_side_aggregates_are_plain_commands_and_sets_keep_their_cap(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        agg = aggregates(r, neighbours_kept=3, session_index_max=2)
        # A cached copy of a's neighbours: the write's scores are applied to it.
        snap = await agg.cache.prefetch([top(neighbours_key("a"), 10)])
        assert snap.neighbours("a", 10) == []
        first = Increments(
            nb={"a": {"b": 1.0, "c": 0.5}, "b": {"a": 1.0}},
            cb={"a": {"d": 2.0}},
            visitors={"a": {"u1": NOW, "u2": NOW + 1}},
        )
        before = await calls(r)
        await agg.write(first)
        spent = delta(before, await calls(r))
        # One ZINCRBY per increment, one ZADD (and ZCARD) per item's visitors, a trim per set
        # that gained a member; no script (before: one item_aggregates.lua call per item).
        assert spent.get("evalsha", 0) == 0, spent
        assert spent.get("zincrby", 0) == 4, spent
        assert spent.get("zadd", 0) == 1, spent
        assert spent.get("zremrangebyrank", 0) == 4, spent  # a:nb, b:nb, a:cb, a:is grew
        assert await r.zrange(neighbours_key("a"), 0, -1, withscores=True) == [
            (b"c", 0.5),
            (b"b", 1.0),
        ]
        assert await r.zscore(complements_key("a"), "d") == 2.0
        snap = await agg.cache.prefetch([top(neighbours_key("a"), 10)])
        assert snap.neighbours("a", 10) == [("b", 1.0), ("c", 0.5)]  # own write, no read

        # Existing members only: nothing grew, nothing is trimmed.
        before = await calls(r)
        await agg.write(Increments(nb={"a": {"b": 1.0}}, visitors={"a": {"u2": NOW + 5}}))
        spent = delta(before, await calls(r))
        assert spent.get("zremrangebyrank", 0) == 0, spent
        assert await r.zscore(neighbours_key("a"), "b") == 2.0

        # Over the caps: the weakest neighbours and the oldest visitors go, in the same write.
        await agg.write(
            Increments(
                nb={"a": {"x": 0.1, "y": 3.0, "z": 0.2}},
                visitors={"a": {"u3": NOW + 6, "u4": NOW + 7}},
            )
        )
        assert await r.zrevrange(neighbours_key("a"), 0, -1) == [b"y", b"b", b"c"]
        assert await r.zrange(visitors_key("a"), 0, -1) == [b"u3", b"u4"]

    run(redis_url, body)


def test_a_category_call_does_not_read_a_users_count(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        agg = aggregates(r)
        inc = Increments(cat_trend={"hats": {"a": 1.0}}, ref=NOW)
        await agg.write(inc)  # loads the script, sets the origin
        before = await calls(r)
        await agg.write(inc)
        spent = delta(before, await calls(r))
        assert spent.get("evalsha", 0) == 1, spent
        # The origin only (before: the origin and the users count, which no category has).
        assert spent.get("hget", 0) == 1, spent
        assert await r.zscore(category_trend_key("hats"), "a") == 2.0

    run(redis_url, body)


def event(user: str, item: str, ts: int, eid: str) -> Event:
    return Event(eid, user, "view", item, ts, {})


def test_the_user_lane_finds_a_duplicate_with_one_command(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        store = ProfileStore(r, replace(EXACT))
        assert (await store.apply(event("u", "a", NOW, "e0"), ["hats"]))[0] == "ok"
        before = await calls(r)
        assert (await store.apply(event("u", "b", NOW + 1, "e1"), ["hats"]))[0] == "ok"
        spent = delta(before, await calls(r))
        # The id is recorded by ZADD NX, which also says whether it was there (before: a
        # ZSCORE first).
        assert spent.get("zscore", 0) == 0, spent
        before = await calls(r)
        assert (await store.apply(event("u", "b", NOW + 1, "e1"), ["hats"]))[0] == "duplicate"
        spent = delta(before, await calls(r))
        assert spent.get("zscore", 0) == 0, spent
        # The duplicate changed nothing: b's time is the first event's.
        assert await r.zscore(user_keys("u")[0], "e1") == NOW + 1

    run(redis_url, body)


def test_the_history_is_trimmed_only_when_over_its_length(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        store = FeedStore(r, ttl_s=3600, history_len=4)
        state = await store.write("h", HOME, None, [{"id": "x0"}])
        assert state is not None
        before = await calls(r)
        for n in range(1, 4):
            update = await store.write("h", HOME, state.state, [{"id": f"x{n}"}])
            assert update is not None
            state = update
        spent = delta(before, await calls(r))
        assert spent.get("ltrim", 0) == 0, spent  # before: one per write
        assert await r.llen(history_key("h", HOME)) == 3
        for n in range(4, 7):
            update = await store.write("h", HOME, state.state, [{"id": f"x{n}"}])
            assert update is not None
            state = update
        assert await r.llen(history_key("h", HOME)) == 4
        assert state.state.version.n == 7

    run(redis_url, body)


def test_the_dedup_trim_runs_on_one_new_id_in_16_with_whole_second_timestamps(
    redis_url: str,
) -> None:
    async def body(r: Redis) -> None:
        store = ProfileStore(r, replace(EXACT, dedup_max=16))
        before = await calls(r)
        for n in range(32):  # whole seconds, as the REES46 replay's (before: half of them trimmed)
            seen = Event(f"s{n}", "sec", "impression", "x", NOW + 1000 * n, {})
            assert (await store.apply(seen, ["hats"]))[0] == "noop"  # writes the dedup key only
        spent = delta(before, await calls(r))
        assert spent.get("zremrangebyrank", 0) == 2, spent  # at 16 and 32 ids
        assert spent.get("zremrangebyscore", 0) == 2, spent
        assert await r.zcard(user_keys("sec")[0]) == 16

    run(redis_url, body)


def test_the_lanes_users_recent_lists_are_cached_from_the_lane_without_a_read(
    redis_url: str,
) -> None:
    """The session kNN of one user reads the recent lists of the item's latest visitors: users
    who just acted. The user lane returns each scored user's latest items with their times, and
    the worker's cache keeps that as a fresh read: no round trip for those lists follows."""

    async def body(r: Redis) -> None:
        cache = ItemCache(r, max_age_s=3600.0)
        store = ProfileStore(r, replace(EXACT), cache=cache)
        ts = NOW
        for user in ("v1", "v2"):
            for item in ("a", "b", "c"):
                ts += 1000
                assert (await store.apply(event(user, item, ts, f"{user}-{item}"), []))[0] == "ok"
        # Written behind the worker's back: a read would see it, the lane's copy does not.
        for user in ("v1", "v2"):
            await r.zadd(user_keys(user)[1], {"behind": ts + 1})
        snap = await cache.prefetch(seqs([user_keys(u)[1] for u in ("v1", "v2")], 20))
        for user in ("v1", "v2"):
            assert snap.sequence(encode_user(user), 20) == ["a", "b", "c"]
        # The next user's session kNN finds v1 and v2 on a and reads their lists from the cache.
        status, view = await store.apply(event("me", "a", ts + 2000, "me-a"), [])
        assert status == "ok" and view is not None
        assert {c[0] for c in view.candidates} >= {"b", "c"}
        assert "behind" not in {c[0] for c in view.candidates}

    run(redis_url, body)
