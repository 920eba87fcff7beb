"""Unit tests of streams/itemcache.py: staleness, memory bound, own writes, hit/miss counts.

Redis is replaced by a tiny in-memory stand-in of the four reads the cache pipelines (sorted
sets and hashes held in dicts); the integration tests (tests/integration/test_event_path.py)
run the cache on a real Redis.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sessions.keys import encoded_user_tag
from streams.itemcache import ItemCache, fields, index, seq, top

#: A user's recent list, as the session kNN reads it.
R = encoded_user_tag("u1") + "recent"


class Pipe:
    """A pipeline answering raw commands as a RESP3 connection does (sessions/rawpipe.py)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._ops: list[Any] = []

    def execute_command(self, name: str, key: str, *args: Any) -> None:
        store = self._store
        if name == "ZREVRANGE":
            start, stop = args[0], args[1]
            self._ops.append(lambda: [[m, s] for m, s in store.zrev(key)[start : stop + 1]])
        elif name == "ZCARD":
            self._ops.append(lambda: len(store.z.get(key, {})))
        elif name == "ZRANGE":
            start = args[0]
            if "WITHSCORES" in args:
                self._ops.append(lambda: [[m, s] for m, s in reversed(store.zrev(key))][start:])
            else:
                self._ops.append(lambda: [m for m, _ in reversed(store.zrev(key))][start:])
        elif name == "HMGET":
            h = store.h.get(key, {})
            self._ops.append(lambda: [h[n].encode() if n in h else None for n in args])
        else:
            raise AssertionError(f"unexpected command {name}")

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        self._store.round_trips += 1
        return [op() for op in self._ops]


class Store:
    """Sorted sets and hashes; answers as Redis does (bytes members, float scores)."""

    def __init__(self) -> None:
        self.z: dict[str, dict[str, float]] = {}
        self.h: dict[str, dict[str, str]] = {}
        self.round_trips = 0

    def zrev(self, key: str) -> list[tuple[bytes, float]]:
        items = sorted(self.z.get(key, {}).items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        return [(m.encode(), s) for m, s in items]

    def pipeline(self, transaction: bool = False) -> Pipe:
        return Pipe(self)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(store: Store, clock: Clock, **kw: Any) -> tuple[ItemCache, list[tuple[str, int]]]:
    seen: list[tuple[str, int]] = []
    cache = ItemCache(
        store,  # type: ignore[arg-type]  # the stand-in answers the calls the cache makes
        clock=clock,
        observe=lambda result, n: seen.append((result, n)),
        **kw,
    )
    return cache, seen


def test_entries_are_served_until_max_age_then_read_again() -> None:
    async def main() -> None:
        store, clock = Store(), Clock()
        store.z["k"] = {"a": 2.0, "b": 1.0}
        cache, seen = make(store, clock, max_age_s=1.0)
        snap = await cache.prefetch([top("k", 10)])
        assert snap.entries["k"].value == [("a", 2.0), ("b", 1.0)]
        store.z["k"]["c"] = 5.0  # another worker's write
        clock.now += 1.0
        assert (await cache.prefetch([top("k", 10)])).entries["k"].value[0] == ("a", 2.0)
        clock.now += 0.01
        assert (await cache.prefetch([top("k", 10)])).entries["k"].value[0] == ("c", 5.0)
        assert seen == [("miss", 1), ("hit", 1), ("miss", 1)]
        assert store.round_trips == 2

    asyncio.run(main())


def test_zero_max_age_reads_every_time_and_misses_share_one_round_trip() -> None:
    async def main() -> None:
        store, clock = Store(), Clock()
        cache, _ = make(store, clock, max_age_s=0.0)
        wants = [top("a", 5), index("b", 5), seq("c", 3), fields("d", "t0", "users")]
        await cache.prefetch(wants)
        clock.now += 0.001
        await cache.prefetch(wants)
        assert store.round_trips == 2

    asyncio.run(main())


def test_a_deeper_read_of_a_cut_list_misses_but_a_whole_list_serves_any_depth() -> None:
    async def main() -> None:
        store, clock = Store(), Clock()
        store.z["long"] = {f"m{n}": float(n) for n in range(40)}
        store.z["short"] = {"x": 1.0}
        cache, seen = make(store, clock)
        await cache.prefetch([top("long", 15), top("short", 15)])
        await cache.prefetch([top("long", 30), top("short", 30)])
        assert seen == [("miss", 2), ("hit", 1), ("miss", 1)]

    asyncio.run(main())


def test_memory_is_bounded_least_recently_used_first() -> None:
    async def main() -> None:
        store, clock = Store(), Clock()
        cache, _ = make(store, clock, max_entries=2)
        await cache.prefetch([top("a", 1), top("b", 1)])
        await cache.prefetch([top("a", 1)])  # a is now the most recently used
        await cache.prefetch([top("c", 1)])
        assert len(cache) == 2
        before = store.round_trips
        await cache.prefetch([top("a", 1)])
        assert store.round_trips == before  # a stayed, b went
        await cache.prefetch([top("b", 1)])
        assert store.round_trips == before + 1

    asyncio.run(main())


def test_own_writes_keep_a_cached_top_exact() -> None:
    async def main() -> None:
        store, clock = Store(), Clock()
        store.z["k"] = {"a": 5.0, "b": 4.0, "c": 3.0, "d": 1.0}
        cache, _ = make(store, clock)
        await cache.prefetch([top("k", 3)])
        cache.scores_written("k", [("d", 4.5), ("e", 0.5), ("c", 6.0)])
        snap = await cache.prefetch([top("k", 3)])
        # d entered (4.5 beats the cut), e did not (0.5), c moved up; the cut list stays 3 long.
        assert snap.entries["k"].value == [("c", 6.0), ("a", 5.0), ("d", 4.5)]
        cache.index_written("k", [], 9)  # not an index: ignored

    asyncio.run(main())


def test_own_index_writes_update_members_and_size() -> None:
    async def main() -> None:
        store, clock = Store(), Clock()
        store.z["is"] = {"u1": 1.0, "u2": 2.0}
        cache, _ = make(store, clock)
        await cache.prefetch([index("is", 200)])
        cache.index_written("is", [("u3", 3.0), ("u1", 4.0)], 3)
        entry = (await cache.prefetch([index("is", 200)])).entries["is"]
        assert entry.value == [("u1", 4.0), ("u3", 3.0), ("u2", 2.0)]
        assert entry.card == 3

    asyncio.run(main())


def test_visitors_follow_own_writes_and_the_depth_after_being_read() -> None:
    """The members kept beside a cached index (read once by a lane) follow later writes and
    the trim to the depth read, as the scored list does."""

    async def main() -> None:
        store, clock = Store(), Clock()
        store.z["pr:{i:x}:is"] = {"u1": 1.0, "u2": 2.0, "u0": 0.5}
        cache, _ = make(store, clock)
        snap = await cache.prefetch([index("pr:{i:x}:is", 2)])
        assert snap.visitors("x", 200) == (["u2", "u1"], 3)
        cache.index_written("pr:{i:x}:is", [("u3", 3.0), ("u1", 4.0)], 4)
        snap = await cache.prefetch([index("pr:{i:x}:is", 2)])
        assert snap.visitors("x", 200) == (["u1", "u3"], 4)
        assert snap.visitors("x", 1) == (["u1"], 4)
        assert snap.entries["pr:{i:x}:is"].value == [("u1", 4.0), ("u3", 3.0)]

    asyncio.run(main())


def test_a_write_during_a_read_in_flight_is_not_kept_past_that_read() -> None:
    async def main() -> None:
        store, clock = Store(), Clock()
        store.z["k"] = {"a": 1.0}
        cache, _ = make(store, clock)
        gate = asyncio.Event()
        original = Pipe.execute

        async def slow(self: Pipe, raise_on_error: bool = True) -> list[Any]:
            await gate.wait()
            return await original(self, raise_on_error)

        Pipe.execute = slow  # type: ignore[method-assign]
        try:
            reading = asyncio.create_task(cache.prefetch([top("k", 5)]))
            await asyncio.sleep(0)
            cache.scores_written("k", [("a", 2.0)])  # lands while the read is in flight
            store.z["k"]["a"] = 2.0
            gate.set()
            first = await reading
        finally:
            Pipe.execute = original  # type: ignore[method-assign]
        assert first.entries["k"].value == [("a", 2.0)]
        before = store.round_trips
        await cache.prefetch([top("k", 5)])
        assert store.round_trips == before + 1  # the in-flight answer was not kept

    asyncio.run(main())


def test_own_recent_writes_keep_a_cached_sequence_exact_without_a_read() -> None:
    async def main() -> None:
        store, clock = Store(), Clock()
        store.z[R] = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
        cache, seen = make(store, clock)
        await cache.prefetch([seq(R, 3)])
        assert (await cache.prefetch([seq(R, 3)])).sequence("u1", 20) == ["b", "c", "d"]

        def touch(member: str, ts: float) -> None:  # what the user lane does, and tells
            store.z[R][member] = ts
            cache.recent_written(R, member, ts, cap=50)

        touch("e", 5.0)  # a new item: the oldest of the window leaves it
        touch("c", 6.0)  # a seen one moves to the newest end
        touch("z", 0.5)  # a late event older than the window: the window is unchanged
        before = store.round_trips
        snap = await cache.prefetch([seq(R, 3)])
        assert store.round_trips == before  # served from the updated copy
        assert snap.sequence("u1", 20) == ["d", "e", "c"]
        assert snap.sequence("u1", 3) == ["d", "e", "c"]
        assert ("hit", 1) in seen

        touch("e", 0.25)  # a member of the window moves below it: an unknown one takes its place
        await cache.prefetch([seq(R, 3)])
        assert store.round_trips == before + 1
        assert (await cache.prefetch([seq(R, 3)])).sequence("u1", 20) == ["b", "d", "c"]

    asyncio.run(main())


def test_a_lanes_read_of_a_recent_list_is_kept_until_max_age_after_its_send() -> None:
    async def main() -> None:
        store, clock = Store(), Clock()
        store.z[R] = {"a": 1.0, "b": 2.0, "c": 3.0}
        cache, _ = make(store, clock)
        sent = cache.now()
        clock.now += 0.5  # the lane's round trip
        cache.seq_read(R, ["a", "1", "b", "2", "c", "3"], 20, sent)
        store.z[R]["d"] = 4.0  # another worker's write: shows within the bound, counted from send
        snap = await cache.prefetch([seq(R, 3)])
        assert store.round_trips == 0
        assert snap.sequence("u1", 20) == ["a", "b", "c"]  # a whole list serves any depth
        clock.now += 0.6  # max age (1 s) after the send, not after the reply
        snap = await cache.prefetch([seq(R, 3)])
        assert store.round_trips == 1
        assert snap.sequence("u1", 20) == ["b", "c", "d"]
        with pytest.raises(ValueError):
            cache.seq_read(R, ["a"], 20, sent)

    asyncio.run(main())


def test_own_recent_writes_to_a_whole_list_keep_the_lanes_cap() -> None:
    async def main() -> None:
        store, clock = Store(), Clock()
        store.z[R] = {"a": 1.0, "b": 2.0}
        cache, _ = make(store, clock)
        await cache.prefetch([seq(R, 20)])  # the whole list (2 < 20)
        cache.recent_written(R, "c", 3.0, cap=2)  # the lane trims to its cap of 2
        snap = await cache.prefetch([seq(R, 20)])
        assert store.round_trips == 1
        assert snap.sequence("u1", 20) == ["b", "c"]
        cache.recent_written("nothing cached", "c", 3.0, cap=2)  # not cached: nothing to do
        assert len(cache) == 1

    asyncio.run(main())


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_age_s"):
        ItemCache(None, max_age_s=-1)  # type: ignore[arg-type]
