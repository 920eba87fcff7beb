"""Integration tests of streams/profile.py: the user lane (streams/lua/user_event.lua), the
item-side aggregates (streams/aggregates.py) and scoring in the worker (streams/scoring.py).

Redis is real: the one named by ``PUSHREC_TEST_REDIS_URL`` (on a dedicated DB, flushed), else a
private embedded server. Nothing is mocked: events go through :class:`ProfileStore` and the test
reads the keys back. Every test starts from an empty DB (trending is global).

Scores are asserted exactly where the model makes them exact: the ``EXACT`` tuning sets half-lives
so long that no decay shows within a test, so each score is a plain sum of normalised counts (and
scores keep 14 significant digits, hence the 1e-12 tolerance). Global trending is bucketed
(``pr:{t:<b>}:trend``): :func:`trending` reads it back merged, as scoring does.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from redis.asyncio import Redis

from push.redis_server import EmbeddedRedis
from sessions.feeds import FeedState, FeedStore
from sessions.keys import (
    TREND_BUCKETS,
    category_trend_key,
    feed_key,
    neighbours_key,
    trend_bucket,
    trend_key,
    trend_meta_key,
    user_tag,
    visitors_key,
)
from sessions.versions import Version
from streams.events import Event
from streams.profile import ProfileStore, ProfileTuning, ProfileView, Scored, ScoringTuning
from tests.integration.conftest import run, sync_redis

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY_MS = 86_400_000
TEST_DB = 14
#: One entry of ProfileStore.apply_many: event, categories, known feed, score it.
Batched = tuple[Event, list[str], FeedState | None, bool]
#: Half-lives far beyond any test's span: 2^(dt/half-life) rounds to exactly 1.0.
EXACT = ProfileTuning(affinity_halflife_ms=10**22, trending_halflife_ms=10**22)


def _dedicated(url: str) -> str:
    """``url`` moved to the test DB, so a shared server's other data is never flushed."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "db"] + [("db", str(TEST_DB))]
        return urlunsplit(parts._replace(query=urlencode(query)))
    return urlunsplit(parts._replace(path=f"/{TEST_DB}"))


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A real, empty Redis DB: ``PUSHREC_TEST_REDIS_URL`` (DB 14) or a private embedded one."""
    external = os.environ.get("PUSHREC_TEST_REDIS_URL")
    if external:
        url = _dedicated(external)
        client = sync_redis(url)
        try:
            client.flushdb()
        finally:
            client.close()
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


#: The sources these tests pin down, without session kNN and the repeat slot (tested apart).
CLASSIC = ScoringTuning(session_w=0.0, repeat_w=0.0)


class Sim:
    """Sends events through a :class:`ProfileStore`; the clock moves 1 s per event."""

    def __init__(
        self,
        r: Redis,
        tuning: ProfileTuning = EXACT,
        scoring: ScoringTuning | None = None,
    ) -> None:
        self.r = r
        self.store = ProfileStore(r, tuning, scoring or CLASSIC)
        self.clock = NOW
        self._ids = itertools.count()

    def event(
        self,
        user: str,
        etype: str,
        item: str | None = None,
        *,
        ts: int | None = None,
        eid: str = "",
    ) -> Event:
        if ts is None:
            self.clock += 1000
            ts = self.clock
        return Event(eid or f"e{next(self._ids)}", user, etype, item, ts)

    async def send(
        self,
        user: str,
        etype: str,
        item: str | None = None,
        cats: Sequence[str] = (),
        *,
        ts: int | None = None,
        eid: str = "",
    ) -> tuple[str, ProfileView | None]:
        return await self.store.apply(self.event(user, etype, item, ts=ts, eid=eid), list(cats))

    async def ok(
        self,
        user: str,
        etype: str,
        item: str | None = None,
        cats: Sequence[str] = (),
        *,
        ts: int | None = None,
    ) -> ProfileView:
        status, view = await self.send(user, etype, item, cats, ts=ts)
        assert status == "ok"
        assert view is not None
        return view

    async def views(self, user: str, *items: str, cats: Sequence[str] = ()) -> ProfileView:
        """``user`` views ``items`` in order; the view after the last."""
        view = None
        for item in items:
            view = await self.ok(user, "view", item, cats)
        assert view is not None
        return view

    async def refresh(self, user: str) -> Scored:
        return (await self.ok(user, "refresh")).candidates


def assert_scored(actual: Scored, expected: Scored) -> None:
    assert [i for i, _ in actual] == [i for i, _ in expected]
    assert all(type(s) is float for _, s in actual)
    assert [s for _, s in actual] == pytest.approx([s for _, s in expected], rel=1e-12)


def key(user: str, name: str) -> str:
    return user_tag(user) + name


async def zset(r: Redis, name: str) -> list[tuple[str, float]]:
    """A sorted set, best first, members decoded."""
    flat: list[Any] = await r.zrevrange(name, 0, -1, withscores=True)
    return [(m.decode(), float(s)) for m, s in flat]


async def trending(
    r: Redis, origin: int = NOW, halflife_ms: float = EXACT.trending_halflife_ms
) -> list[tuple[str, float]]:
    """Global trending, every bucket merged on decay origin ``origin``, best first (as
    ``ZREVRANGE``: ties by the greater member)."""
    merged: list[tuple[str, float]] = []
    for b in range(TREND_BUCKETS):
        t0 = await r.hget(trend_meta_key(b), "t0")
        factor = 2.0 ** ((int(t0) - origin) / halflife_ms) if t0 is not None else 1.0
        merged.extend((m, s * factor) for m, s in await zset(r, trend_key(b)))
    return sorted(merged, key=lambda kv: (kv[1], kv[0]), reverse=True)


async def trend_score(r: Redis, item: str) -> float | None:
    """``item``'s raw score in its trending bucket."""
    return await r.zscore(trend_key(trend_bucket(item)), item)


async def users_seen(r: Redis) -> int:
    """The users count (the session idf's N), summed over the buckets."""
    return sum([int(await r.hget(trend_meta_key(b), "users") or 0) for b in range(TREND_BUCKETS)])


async def snapshot(r: Redis) -> dict[bytes, bytes | None]:
    """Every key's serialised value: equal snapshots mean no state changed."""
    names: list[Any] = await r.keys("*")
    return {k: await r.dump(k) for k in sorted(names)}


# Scoring ----------------------------------------------------------------------------------------


def test_neighbours_of_the_latest_item_rank_first(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r)
        await sim.views("o1", "x", "n1")
        await sim.views("o2", "x", "n2")
        await sim.views("o3", "n1", "x")
        for n in range(5):
            await sim.views(f"t{n}", "t")  # t: the most popular item, but no neighbour of x
        assert await zset(r, neighbours_key("x")) == [("n1", 2.0), ("n2", 1.0)]
        assert await zset(r, neighbours_key("n1")) == [("x", 2.0)]
        assert await trending(r) == [("t", 5.0), ("x", 3.0), ("n1", 2.0), ("n2", 1.0)]

        view = await sim.views("u", "x")
        # n1: 2/2 + 0.1 * 2/5; n2: 1/2 + 0.1 * 1/5; t: 0.1 * 5/5; x is the current item.
        assert_scored(view.candidates, [("n1", 1.04), ("n2", 0.52), ("t", 0.1)])
        assert view.feed is None

    run(redis_url, body)


def test_co_visits_weigh_less_with_distance(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r)
        await sim.views("o1", "a", "b", "c", "d")
        assert await zset(r, neighbours_key("d")) == [
            ("c", 1.0),
            ("b", 0.5),
            ("a", pytest.approx(1 / 3)),
        ]
        assert await zset(r, neighbours_key("a")) == [
            ("b", 1.0),
            ("c", 0.5),
            ("d", pytest.approx(1 / 3)),
        ]
        # Viewing an item again does not make it its own neighbour.
        await sim.views("o1", "d")
        assert "d" not in dict(await zset(r, neighbours_key("d")))

    run(redis_url, body)


@pytest.mark.parametrize("decay", [0.6, 0.25])
def test_newest_recent_items_neighbours_outweigh_older_ones(redis_url: str, decay: float) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, scoring=replace(CLASSIC, recency_decay=decay))
        await sim.views("o1", "a", "na")
        await sim.views("o2", "b", "nb")
        view = await sim.views("u", "a", "b")  # u's recent: b (newest), a
        # From b (weight 1): nb 1, a 1; from a (weight decay): na, b; global trending (top 2):
        # a 0.1, na 0.05, nb 0.05. b is the current item.
        assert_scored(view.candidates, [("a", 1.1), ("nb", 1.05), ("na", decay + 0.05)])

    run(redis_url, body)


def test_only_the_latest_recent_items_are_fetched(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, scoring=replace(CLASSIC, recent_fetched=1))
        await sim.views("o1", "a", "na")
        await sim.views("o2", "b", "nb")
        view = await sim.views("u", "a", "b")
        assert_scored(view.candidates, [("a", 1.1), ("nb", 1.05), ("na", 0.05)])

    run(redis_url, body)


async def _categorised_trending(sim: Sim) -> None:
    """z: global trending only (5 views); g: hats (3 views); s: shoes (1 view)."""
    for n in range(5):
        await sim.views(f"z{n}", "z")
    for n in range(3):
        await sim.views(f"g{n}", "g", cats=["hats"])
    await sim.views("s0", "s", cats=["shoes"])


def test_preferred_category_trending_ranks_above_global_trending(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r)
        await _categorised_trending(sim)
        assert await zset(r, category_trend_key("hats")) == [("g", 3.0)]
        assert await zset(r, category_trend_key("shoes")) == [("s", 1.0)]
        await sim.ok("u", "search", None, ["shoes"])
        view = await sim.ok("u", "search", None, ["shoes", "hats"])
        assert await zset(r, key("u", "aff")) == [("shoes", 4.0), ("hats", 2.0)]
        # s: 0.35 * 4/6 + 0.1 * 1/5; g: 0.35 * 2/6 + 0.1 * 3/5; z: 0.1 * 5/5.
        assert_scored(
            view.candidates,
            [("s", 0.35 * 4 / 6 + 0.02), ("g", 0.35 * 2 / 6 + 0.06), ("z", 0.1)],
        )

    run(redis_url, body)


def test_cold_user_gets_global_trending_and_refresh_writes_nothing(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r)
        await _categorised_trending(sim)
        before = await snapshot(r)
        assert_scored(await sim.refresh("cold"), [("z", 0.1), ("g", 0.06), ("s", 0.02)])
        assert await snapshot(r) == before
        assert await r.keys(user_tag("cold") + "*") == []

    run(redis_url, body)


def test_empty_store_gives_no_candidates(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r)
        assert await sim.refresh("cold") == []
        view = await sim.views("u", "first")
        assert view.candidates == []  # its only trending item is the current one

    run(redis_url, body)


def test_bought_and_current_items_are_never_candidates(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r)
        await sim.views("o1", "p", "q", "r")
        view = await sim.views("u", "p")
        assert_scored(view.candidates, [("q", 1.05), ("r", 0.55)])

        view = await sim.ok("u", "purchase", "q")
        assert await zset(r, key("u", "bought")) == [("q", float(sim.clock))]
        # nb:q {p: 4, r: 1}, nb:p {q: 4, r: 0.5}, trending {q: 4, p: 2, r: 1}.
        assert_scored(view.candidates, [("p", 1.05), ("r", 0.25 + 0.6 * 0.5 / 4 + 0.025)])

        view = await sim.views("u", "r")
        # q is r's best neighbour and the top trending item, but bought; r is current.
        assert_scored(view.candidates, [("p", 0.5 + 0.6 + 0.05)])
        # Without a current item r is back: 0.6 * 2/4 (from q) + 0.36 * 1/4 (from p) + 0.1 * 2/4.
        assert_scored(await sim.refresh("u"), [("p", 0.5 + 0.6 + 0.05), ("r", 0.3 + 0.09 + 0.05)])

    run(redis_url, body)


def test_bought_items_do_not_starve_the_candidates(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        # Every source fetched whole (trending_fetched), so only the ranking can lose the c items.
        sim = Sim(r, scoring=replace(CLASSIC, candidates=2, trending_fetched=40))
        for n in range(3):
            await sim.views(f"o{n}", f"c{n}")
        for n in range(20):
            await sim.ok("u", "purchase", f"b{n:02d}")
        # Every b is bought; the best two of the rest must still come back.
        assert_scored(await sim.refresh("u"), [("c0", 0.1 / 3), ("c1", 0.1 / 3)])

    run(redis_url, body)


def test_ties_break_by_id(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r)
        for n, item in enumerate(["t3", "t1", "t4", "t2"]):
            await sim.views(f"o{n}", item)
        assert_scored(await sim.refresh("cold"), [(f"t{n}", 0.1) for n in (1, 2, 3, 4)])

    run(redis_url, body)


def test_at_most_candidates_entries(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, scoring=replace(CLASSIC, candidates=3))
        users = itertools.count()
        for n in range(10):  # item k{n} viewed n + 1 times
            for _ in range(n + 1):
                await sim.views(f"o{next(users)}", f"k{n}")
        assert_scored(await sim.refresh("cold"), [("k9", 0.1), ("k8", 0.09), ("k7", 0.08)])

    run(redis_url, body)


def test_ties_past_the_pre_sort_cut_break_by_id(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        # All 30 tied items are fetched; far more than candidates + 16 tie at the cut.
        sim = Sim(r, scoring=replace(CLASSIC, candidates=3, trending_fetched=40))
        for n in range(30):
            await sim.views(f"p{n}", f"tie{n:02d}")
        assert_scored(await sim.refresh("cold"), [("tie00", 0.1), ("tie01", 0.1), ("tie02", 0.1)])

    run(redis_url, body)


def test_ties_at_the_fetch_limit_follow_redis_then_break_by_id(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        # 30 tied trending items, 15 fetched: Redis's ZREVRANGE fetches the greater ids among
        # ties (tie15..tie29, as documented in event.lua); among those, ties break by id.
        sim = Sim(r, scoring=replace(CLASSIC, candidates=3, trending_fetched=15))
        for n in range(30):
            await sim.views(f"p{n}", f"tie{n:02d}")
        assert_scored(await sim.refresh("cold"), [("tie15", 0.1), ("tie16", 0.1), ("tie17", 0.1)])

    run(redis_url, body)


def test_scores_are_floats_not_integers(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r)
        await sim.views("o1", "a", "b")
        await sim.views("o2", "a", "c")
        await sim.views("o3", "c", "a")
        view = await sim.views("u", "a")
        assert_scored(view.candidates, [("c", 1.05), ("b", 0.525)])
        assert any(s != int(s) for _, s in view.candidates)

    run(redis_url, body)


# Profile updates --------------------------------------------------------------------------------


def test_duplicate_event_changes_nothing(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r)
        await sim.views("o1", "a", "b")
        status, view = await sim.send("u", "view", "a", ["hats"], eid="dup")
        assert status == "ok"
        assert view is not None
        trend = await trend_score(r, "a")
        recent = await zset(r, key("u", "recent"))
        before = await snapshot(r)
        for etype, item in [("view", "a"), ("view", "b"), ("purchase", "b"), ("impression", "a")]:
            assert await sim.send("u", etype, item, ["shoes"], eid="dup") == ("duplicate", None)
        assert await trend_score(r, "a") == trend == 2.0
        assert await zset(r, key("u", "recent")) == recent == [("a", float(NOW + 3000))]
        assert await snapshot(r) == before

    run(redis_url, body)


def test_duplicate_within_one_batch(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r)
        first = sim.event("u", "view", "a", eid="same")
        again = sim.event("u", "view", "b", eid="same")
        results = await sim.store.apply_many([(first, [], None, True), (again, [], None, True)])
        assert results[0] == ("ok", ProfileView([], None))
        assert results[1] == ("duplicate", None)
        assert await trending(r) == [("a", 1.0)]

    run(redis_url, body)


def test_unscored_entries_are_applied_and_coalesced(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r)
        await sim.views("o1", "a", "b", "c")
        batch: list[Batched] = [
            (sim.event("u", "view", "a"), [], None, False),
            (sim.event("u", "view", "b"), [], None, True),
            (sim.event("u", "impression", "b"), [], None, False),
            (sim.event("v", "refresh"), [], None, False),
        ]
        results = await sim.store.apply_many(batch)
        assert results[0] == ("coalesced", None)
        assert results[2] == ("noop", None)
        assert results[3] == ("coalesced", None)
        assert not isinstance(results[1], Exception)
        status, view = results[1]
        assert status == "ok"
        assert view is not None
        # The scored view already sees the coalesced view of a (recent: b, a; trending a 2, b 2).
        assert [m for m, _ in await zset(r, key("u", "recent"))] == ["b", "a"]
        # From b (1): a 2/2, c 1/2; from a (0.6): b, c 0.6 * 0.5/2; global top 2: a .1, c .05.
        assert_scored(view.candidates, [("a", 1.1), ("c", 0.5 + 0.15 + 0.05)])

    run(redis_url, body)


def test_impression_is_a_noop_but_is_deduplicated(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r)
        await sim.views("o1", "a", "b")
        before = await snapshot(r)
        assert await sim.send("u", "impression", "a", ["hats"], eid="imp") == ("noop", None)
        assert await r.zrange(key("u", "dedup"), 0, -1) == [b"imp"]
        after = await snapshot(r)
        assert {k: v for k, v in after.items() if k != key("u", "dedup").encode()} == before
        assert await sim.send("u", "impression", "a", eid="imp") == ("duplicate", None)

    run(redis_url, body)


def test_cart_and_bought(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r)
        cart, bought = key("u", "cart"), key("u", "bought")
        await sim.ok("u", "add_to_cart", "x")
        await sim.ok("u", "add_to_cart", "y")
        await sim.ok("u", "add_to_cart", "x")
        assert await r.smembers(cart) == {b"x", b"y"}
        await sim.ok("u", "remove_from_cart", "x")
        await sim.ok("u", "remove_from_cart", "never-added")
        assert await r.smembers(cart) == {b"y"}
        assert await r.exists(bought) == 0
        await sim.ok("u", "purchase", "y")
        paid = sim.clock
        assert await r.exists(cart) == 0
        await sim.ok("u", "purchase", "z")  # bought without a cart
        assert await zset(r, bought) == [("z", float(sim.clock)), ("y", float(paid))]
        # remove_from_cart weighs nothing: no trending, no co-visit, no recent entry.
        assert await trending(r) == [("y", 5.0), ("x", 4.0), ("z", 3.0)]
        assert [m for m, _ in await zset(r, key("u", "recent"))] == ["z", "y", "x"]

    run(redis_url, body)


def test_a_redis_error_fails_that_event_alone(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r)
        await r.set(key("bad", "recent"), "not a sorted set")
        batch: list[Batched] = [
            (sim.event("good", "view", "a"), [], None, True),
            (sim.event("bad", "view", "a"), [], None, True),
            (sim.event("good", "view", "b"), [], None, True),
        ]
        results = await sim.store.apply_many(batch)
        # Every entry of a batch is scored after the whole batch's aggregates: the first sees b
        # (co-visited with its a by the third) as the third does.
        assert results[0] == ("ok", ProfileView([("b", 1.1)], None))
        assert isinstance(results[1], Exception)
        assert not isinstance(results[2], Exception)
        status, view = results[2]
        assert status == "ok"
        assert view is not None
        assert_scored(view.candidates, [("a", 1.1)])

    run(redis_url, body)


# Caps -------------------------------------------------------------------------------------------

SMALL = replace(EXACT, neighbours_kept=5, recent_max=4, dedup_max=4)


def test_neighbours_are_capped_keeping_the_strongest(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, SMALL)
        for n in range(3):
            await sim.views(f"o{n}", "hub", "top")
        for n in range(12):
            await sim.views(f"p{n}", "hub", f"x{n:02d}")
            assert await r.zcard(neighbours_key("hub")) <= 5
        nb = await zset(r, neighbours_key("hub"))
        assert len(nb) == 5
        assert nb[0] == ("top", 3.0)
        for name in await r.keys("pr:{i:*}:nb"):
            assert await r.zcard(name) <= 5

    run(redis_url, body)


def test_recent_is_capped_to_the_latest(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, SMALL)
        items = [f"i{n:02d}" for n in range(12)]
        for n, item in enumerate(items):
            await sim.views("u", item)
            assert await r.zcard(key("u", "recent")) == min(n + 1, 4)
        assert [m for m, _ in await zset(r, key("u", "recent"))] == items[:-5:-1]
        for name in await r.keys("pr:{i:*}:nb"):
            assert await r.zcard(name) <= 5
        await sim.views("u", "i09")  # an item already there moves up, nothing is dropped
        assert [m for m, _ in await zset(r, key("u", "recent"))] == ["i09", "i11", "i10", "i08"]

    run(redis_url, body)


def test_dedup_is_capped_on_trim_events(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, SMALL)
        sizes = []
        for n in range(40):
            await sim.send("u", "impression", "a", ts=NOW + 16 * n)
            sizes.append(await r.zcard(key("u", "dedup")))
        # The trim runs on one new id in 16 of the user (the set's size a multiple of 16),
        # whatever the timestamps: the cap (4) is restored then, and never exceeded by 15.
        assert sizes[:16] == [*range(1, 16), 4]
        assert sizes[16:28] == [*range(5, 16), 4]
        assert max(sizes) <= 4 + 15

    run(redis_url, body)


def test_dedup_stays_bounded_whatever_the_timestamps_granularity(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, SMALL)
        odd = NOW + 1  # odd ms: `ts % 16` is never 0 (before: never trimmed by count)
        for n in range(40):
            await sim.send("odd", "impression", "a", ts=odd + 2 * n)
            assert await r.zcard(key("odd", "dedup")) <= 4 + 15
        # By time too: ids past the window go within 16 new ids of their user.
        later = odd + SMALL.dedup_window_ms + 1_001
        for n in range(16):
            await sim.send("odd", "impression", "a", ts=later + 2 * n)
        assert await r.zcount(key("odd", "dedup"), "-inf", later - 1) == 0

    run(redis_url, body)


def test_trending_is_capped(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, SMALL)
        # The trending caps are fixed: 1000 items per category, 5000 overall, bucketed: each of
        # the 16 buckets keeps its share (313).
        batch: list[Batched] = [
            (sim.event(f"u{n}", "view", f"it{n:05d}"), ["c"] if n < 1010 else [], None, False)
            for n in range(5010)
        ]
        for start in range(0, len(batch), 1000):
            for res in await sim.store.apply_many(batch[start : start + 1000]):
                assert res == ("coalesced", None)  # applied, not scored: keeps the test fast
        assert await r.zcard(category_trend_key("c")) == 1000
        per_bucket: dict[int, int] = {}
        for n in range(5010):
            b = trend_bucket(f"it{n:05d}")
            per_bucket[b] = per_bucket.get(b, 0) + 1
        for b in range(TREND_BUCKETS):
            assert await r.zcard(trend_key(b)) == min(per_bucket.get(b, 0), 313)
        assert sum(per_bucket.values()) == 5010

    run(redis_url, body)


# TTL --------------------------------------------------------------------------------------------

TTL_S = 3600


async def assert_user_keys_expire(r: Redis, user: str) -> set[str]:
    names = set()
    async for name in r.scan_iter(match=user_tag(user) + "*"):
        ttl = await r.ttl(name)
        assert 0 < ttl <= TTL_S, (name, ttl)
        names.add(name.decode().removeprefix(user_tag(user)))
    return names


def test_every_per_user_key_has_a_ttl(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, replace(EXACT, ttl_s=TTL_S))
        steps: list[tuple[str, str | None, list[str]]] = [
            ("remove_from_cart", "z", []),
            ("search", None, ["hats"]),
            ("view", "x", ["hats"]),
            ("impression", "x", []),
            ("add_to_cart", "y", ["shoes"]),
            ("add_to_cart", "z", []),
            ("remove_from_cart", "z", []),
            ("purchase", "y", ["shoes"]),
            ("click", "w", []),
            ("add_to_cart", "v", []),
            ("refresh", None, []),
        ]
        for etype, item, cats in steps:
            await sim.send("u", etype, item, cats)
            await assert_user_keys_expire(r, "u")
        names = await assert_user_keys_expire(r, "u")
        assert names == {"dedup", "recent", "aff", "cart", "bought", "p"}

        # A purchase first (no other state yet), then a random mix, for several users.
        rng = random.Random(7)  # noqa: S311 - a reproducible mix, not a secret
        kinds = ["view", "click", "add_to_cart", "remove_from_cart", "purchase", "search"]
        kinds += ["impression"]
        for user in ("a", "b", "c"):
            await sim.send(user, "purchase", "p0", ["cat0"])
            assert await assert_user_keys_expire(r, user) == {
                "dedup",
                "recent",
                "bought",
                "aff",
                "p",
            }
            for _ in range(40):
                etype = rng.choice(kinds)
                item = None if etype == "search" else f"p{rng.randrange(6)}"
                cats = rng.sample(["cat0", "cat1", "cat2"], rng.randrange(3))
                await sim.send(user, etype, item, cats)
                await assert_user_keys_expire(r, user)

        # The feed the recommender writes carries its own TTL (FeedStore).
        await FeedStore(r, ttl_s=TTL_S, history_len=10).write("u", "home", None, [{"id": "x"}])
        assert "feed:home" in await assert_user_keys_expire(r, "u")

    run(redis_url, body)


# Known feed -------------------------------------------------------------------------------------


def test_known_feed_shortcut(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r)
        feeds = FeedStore(r, ttl_s=TTL_S, history_len=10)
        # No stored feed: None, whatever the caller believes.
        stale = FeedState("u", "home", Version("gone", 3), ({"id": "old"},))
        [res] = await sim.store.apply_many([(sim.event("u", "view", "a"), [], stale, True)])
        assert res == ("ok", ProfileView([], None))

        update = await feeds.write("u", "home", None, [{"id": "x", "title": "X"}, {"id": "y"}])
        assert update is not None
        stored = update.state
        assert await r.hget(feed_key("u", "home"), "n") == b"1"

        # The caller holds the stored version: its very object comes back.
        [res] = await sim.store.apply_many([(sim.event("u", "view", "b"), [], stored, True)])
        assert not isinstance(res, Exception)
        status, view = res
        assert status == "ok"
        assert view is not None
        assert view.feed is stored

        # A mismatching version (n or epoch): the stored body, decoded.
        for known in (
            replace(stored, version=Version(stored.version.epoch, 2), items=()),
            replace(stored, version=Version("other", 1), items=()),
            None,
        ):
            [res] = await sim.store.apply_many([(sim.event("u", "view", "c"), [], known, True)])
            assert not isinstance(res, Exception)
            status, view = res
            assert view is not None
            assert view.feed is not known
            assert view.feed == stored

        # After the next version, the old state is stale.
        update2 = await feeds.write("u", "home", stored, [{"id": "y"}])
        assert update2 is not None
        [res] = await sim.store.apply_many([(sim.event("u", "refresh"), [], stored, True)])
        assert not isinstance(res, Exception)
        status, view = res
        assert view is not None
        assert view.feed == update2.state
        assert view.feed.version == Version(stored.version.epoch, 2)

    run(redis_url, body)


# Decay ------------------------------------------------------------------------------------------


SIX_H = 6 * 3_600_000


def test_decay_origin_moves_and_the_recent_event_dominates(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, ProfileTuning())  # real half-lives: 3 days (affinity), 6 h (trending)
        past = NOW - 700 * DAY_MS  # 2800 trending and 233 affinity half-lives back
        await sim.ok("u", "view", "old", ["vintage"], ts=past)
        await sim.ok("o", "view", "old", ["vintage"], ts=past + 1000)
        old_meta = trend_meta_key(trend_bucket("old"))
        assert await r.hget(old_meta, "t0") == str(past).encode()
        view = await sim.ok("u", "view", "new", ["modern"], ts=NOW)
        # Both origins moved to now: the new increments weigh exactly their weight.
        assert await r.hget(trend_meta_key(trend_bucket("new")), "t0") == str(NOW).encode()
        assert await r.hget(key("u", "p"), "a0") == str(NOW).encode()
        assert await trend_score(r, "new") == 1.0
        assert await r.zscore(category_trend_key("modern"), "new") == 1.0
        assert await r.zscore(key("u", "aff"), "modern") == 1.0
        assert dict(await trending(r, halflife_ms=SIX_H)).get("old", 0.0) < 1e-300
        assert (await r.zscore(key("u", "aff"), "vintage") or 0.0) < 1e-60
        assert [i for i, _ in view.candidates] == ["old"]  # a neighbour; its trending is gone
        assert_scored(await sim.refresh("cold"), [("new", 0.1)])

        # Within the horizon the origin stays and newer increments simply weigh more.
        later = NOW + 10 * 6 * 3_600_000  # 10 trending half-lives
        await sim.ok("o2", "view", "newer", ts=later)
        assert dict(await trending(r, halflife_ms=SIX_H))["newer"] == 2.0**10
        assert_scored(await sim.refresh("cold"), [("newer", 0.1), ("new", 0.1 / 2**10)])

        # A late event from far back changes nothing visible and raises nothing.
        await sim.ok("o3", "view", "late", ["vintage"], ts=past)
        assert_scored(await sim.refresh("cold"), [("newer", 0.1), ("new", 0.1 / 2**10)])

    run(redis_url, body)


# -- session kNN and the repeat slot ---------------------------------------------------------

KNN_ONLY = ScoringTuning(neighbour_w=0.0, category_w=0.0, global_w=0.0, session_w=1.0, repeat_w=0.0)


def test_session_neighbours_vote_for_what_followed_the_shared_item(redis_url: str) -> None:
    """Users who viewed a then b vote for b next to a; the closer to the shared item, the more."""

    async def body(r: Redis) -> None:
        sim = Sim(r, scoring=KNN_ONLY)
        for n in range(3):
            await sim.views(f"n{n}", "a", "b", "c", "d")
        await sim.views("far", "a", "x", "y", "z", "w")
        scored = dict(await sim.refresh("u") or [])
        assert scored == {}  # no recent item: nobody to compare with
        view = await sim.views("u", "a")
        ranked = [i for i, _ in view.candidates]
        assert ranked[0] == "a" or ranked[0] == "b"
        scores = dict(view.candidates)
        assert scores["b"] > scores["c"] > scores["d"]  # distance to the shared item in order
        assert scores["b"] > scores["x"]  # three neighbours say b, one says x

    run(redis_url, body)


def test_session_index_is_capped_and_keeps_the_latest_users(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        sim = Sim(r, ProfileTuning(session_index_max=3), KNN_ONLY)
        for n in range(5):
            await sim.views(f"v{n}", "hot")
        members = [m for m, _ in await zset(r, visitors_key("hot"))]
        assert sorted(members) == ["v2", "v3", "v4"]
        assert await users_seen(r) == 5

    run(redis_url, body)


def test_rare_shared_items_weigh_more_than_popular_ones(redis_url: str) -> None:
    """idf: sharing a rare item makes a closer neighbour than sharing a popular one."""

    async def body(r: Redis) -> None:
        sim = Sim(r, scoring=replace(KNN_ONLY, session_position_decay=1e9))
        for n in range(6):  # "pop" is everywhere
            await sim.views(f"p{n}", "pop", f"other{n}")
        await sim.views("rare-fan", "rare", "gift")
        await sim.views("pop-fan", "pop", "meh")
        scores = dict((await sim.views("u", "pop", "rare")).candidates)
        assert scores["gift"] > scores["meh"]

    run(redis_url, body)


def test_the_current_item_leads_with_repeat_and_is_absent_without(redis_url: str) -> None:
    async def body(r: Redis) -> None:
        with_repeat = Sim(r, scoring=ScoringTuning())
        for n in range(3):
            await with_repeat.views(f"n{n}", "a", "b")
        view = await with_repeat.views("u", "b", "a")
        assert view.candidates[0][0] == "a"
        assert [i for i, _ in view.candidates].count("a") == 1
        assert (await with_repeat.refresh("u"))[0][0] == "a"  # no event item: the latest
        without = Sim(r, scoring=replace(ScoringTuning(), repeat_w=0.0))
        assert "a" not in dict((await without.views("u2", "b", "a")).candidates)

    run(redis_url, body)
