"""The split event path (issue 13) on a real Redis: the user lane, the item-side aggregates and
scoring in the worker through its item cache (streams/profile.py, streams/aggregates.py,
streams/itemcache.py, streams/scoring.py).

- every call of the event path touches one hash slot and only the keys it was given (the guard
  of tests/integration/slot_guard.py, watching Redis with MONITOR);
- Redis's work per event does not grow with how many visitors share an item;
- a redelivered batch counts its aggregates once;
- another worker's increments show within the cache's staleness bound, the worker's own at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis

from sessions.feeds import FeedState
from sessions.keys import neighbours_key, trend_bucket, trend_key, visitors_key
from streams.events import Event
from streams.itemcache import ItemCache
from streams.profile import ProfileStore, ProfileTuning, ScoringTuning
from tests.integration.conftest import redis_database, run, skip_on_cluster
from tests.integration.slot_guard import watching

DB = 29
NOW = 1_767_225_600_000
#: Half-lives far beyond any test's span: trending scores are plain sums.
EXACT = ProfileTuning(affinity_halflife_ms=10**22, trending_halflife_ms=10**22)
_ids = itertools.count()


@pytest.fixture
def url() -> Iterator[str]:
    with redis_database(DB) as u:
        yield u


def event(user: str, etype: str, item: str | None, ts: int, eid: str = "") -> Event:
    return Event(eid or f"ev{next(_ids)}", user, etype, item, ts)


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store(r: Redis, clock: Clock | None = None, max_age_s: float = 1.0) -> ProfileStore:
    cache = ItemCache(
        r,
        max_age_s=max_age_s,
        trending_halflife_ms=EXACT.trending_halflife_ms,
        clock=clock or Clock(),
    )
    return ProfileStore(r, EXACT, ScoringTuning(), cache=cache)


def _tcp(url: str) -> bool:
    # MONITOR watches one server: a cluster spreads the calls over its masters (and refuses a
    # cross-slot call itself), so these counts are a single Redis's.
    skip_on_cluster("MONITOR watches one server, a cluster spreads the event over its masters")
    return url.startswith(("redis://127.0.0.1", "redis://localhost"))


def test_every_call_of_the_event_path_touches_one_slot_and_only_its_keys(url: str) -> None:
    if not _tcp(url):
        pytest.skip("the slot guard needs PUSHREC_TEST_REDIS_URL (MONITOR on a TCP Redis)")

    async def body(r: Redis) -> None:
        s = store(r)
        batch = [
            event("u1", "view", "a", NOW),
            event("u1", "view", "b", NOW + 1),
            event("u2", "view", "a", NOW + 2),
            event("u2", "add_to_cart", "b", NOW + 3),
            event("u2", "add_to_cart", "c}", NOW + 4),
            event("u2", "purchase", "b", NOW + 5),
            event("u3", "search", None, NOW + 6),
        ]
        with watching(url) as report:
            results = await s.apply_many(
                [(e, ["cat"], None, True) for e in batch], context=("similar", "cart")
            )
            await s.record_consent("u1", False, source="api")
        assert report.scripts > 0
        assert report.violations == [], "\n".join(report.violations[:20])
        assert all(not isinstance(res, Exception) for res in results)
        # Co-visitation and the session index landed under the item-tagged names.
        assert (await r.zscore(neighbours_key("a"), "b") or 0) > 0
        assert await r.zscore(visitors_key("a"), "u2") == NOW + 2

    run(url, body)


async def _redis_commands(url: str, s: ProfileStore, e: Event) -> int:
    with watching(url) as report:
        [res] = await s.apply_many([(e, [], None, True)])
    assert not isinstance(res, Exception) and res[0] == "ok"
    # A new connection's handshake is no work of the event's.
    return sum(1 for c in report.commands if c.name not in ("hello", "client", "select"))


def test_redis_work_per_event_does_not_grow_with_visitors_sharing_an_item(url: str) -> None:
    """Before the split, the event script walked the session neighbours' lists inside Redis:
    one read per neighbour, up to 50 per event, when many visitors share an item."""
    if not _tcp(url):
        pytest.skip("counting Redis's commands needs MONITOR on a TCP Redis")

    async def body(r: Redis) -> None:
        clock = Clock()
        s = store(r, clock, max_age_s=3600.0)  # a warm cache: what it serves costs Redis nothing
        counts = []
        for sharers in (3, 60):
            for n in range(sharers):
                await s.apply(event(f"s{sharers}-{n}", "view", f"hot{sharers}", NOW + n), [])
                await s.apply(event(f"s{sharers}-{n}", "view", f"next{n}", NOW + n + 1), [])
            # The visitor's first event warms the cache; the cost of the next one is measured.
            await s.apply(event(f"m{sharers}", "view", f"hot{sharers}", NOW + 1000), [])
            counts.append(
                await _redis_commands(
                    url, s, event(f"m{sharers}", "view", f"hot{sharers}", NOW + 2000)
                )
            )
        assert counts[0] == counts[1], counts

    run(url, body)


def test_a_redelivered_batch_counts_its_aggregates_once(url: str) -> None:
    async def body(r: Redis) -> None:
        s = store(r)
        batch: list[tuple[Event, list[str], FeedState | None, bool]] = [
            (event("u", "view", "a", NOW, "e1"), [], None, False),
            (event("u", "view", "b", NOW + 1, "e2"), [], None, True),
            (event("v", "add_to_cart", "a", NOW + 2, "e3"), [], None, True),
        ]
        first = await s.apply_many(batch)
        assert [res[0] for res in first if not isinstance(res, Exception)] == [
            "coalesced",
            "ok",
            "ok",
        ]
        before = {
            "nb": await r.zrange(neighbours_key("a"), 0, -1, withscores=True),
            "trend": await r.zscore(trend_key(trend_bucket("a")), "a"),
            "is": await r.zrange(visitors_key("a"), 0, -1, withscores=True),
        }
        again = await s.apply_many(batch)  # the source redelivers the batch after a crash
        assert [res[0] for res in again if not isinstance(res, Exception)] == ["duplicate"] * 3
        assert before == {
            "nb": await r.zrange(neighbours_key("a"), 0, -1, withscores=True),
            "trend": await r.zscore(trend_key(trend_bucket("a")), "a"),
            "is": await r.zrange(visitors_key("a"), 0, -1, withscores=True),
        }
        assert before["trend"] == 3.0  # a view (1) and an add to cart (2), once each

    run(url, body)


def test_other_workers_increments_show_within_the_staleness_bound(url: str) -> None:
    async def body(r: Redis) -> None:
        clock = Clock()
        mine, theirs = store(r, clock, max_age_s=1.0), store(r)
        await mine.apply(event("o", "view", "x", NOW), [])
        await mine.apply(event("o", "view", "mine", NOW + 1), [])
        # The worker's own increments at once: x's neighbour is in its next scoring.
        _, view = await mine.apply(event("u", "view", "x", NOW + 2), [])
        assert view is not None and "mine" in dict(view.candidates)
        # Another worker's increments: x gets a new, stronger neighbour.
        for n in range(3):
            await theirs.apply(event(f"p{n}", "view", "x", NOW + 10 + n), [])
            await theirs.apply(event(f"p{n}", "view", "theirs", NOW + 20 + n), [])
        _, view = await mine.apply(event("v", "view", "x", NOW + 30), [])
        assert view is not None and "theirs" not in dict(view.candidates)  # within max_age_s
        clock.now += 1.01
        _, view = await mine.apply(event("w", "view", "x", NOW + 40), [])
        assert view is not None and "theirs" in dict(view.candidates)

    run(url, body)
