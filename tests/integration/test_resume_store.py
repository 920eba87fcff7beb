"""FeedStore.read_since on a real Redis: resume is all or nothing (docs/PROTOCOL.md)."""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgpack
import pytest
from redis.asyncio import Redis

from sessions import rawpipe
from sessions.diff import apply_diff, checksum, ids_of
from sessions.feeds import FeedState, FeedStore, ReplayedDiff, Resume
from sessions.keys import feed_key, history_key
from sessions.versions import Version
from tests.integration.conftest import redis_client, redis_database, skip_on_cluster

TTL_S = 600
FEED = "home"


@pytest.fixture
def redis_url() -> Iterator[str]:
    with redis_database(13) as url:
        yield url


def run(url: str, body: Callable[[Redis], Awaitable[None]]) -> None:
    async def scenario() -> None:
        redis = redis_client(url)
        try:
            await body(redis)
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def new_user() -> str:
    """A user of this test only: the database may be shared, so nothing is flushed."""
    return f"resume-{secrets.token_hex(6)}"


async def forget(redis: Redis, user: str) -> None:
    await redis.delete(feed_key(user, FEED), history_key(user, FEED))


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 - reproducible feeds, not secrets


async def history(redis: Redis, key: str) -> list[bytes]:
    """The raw entries of a history (a list, newest first), oldest first."""
    entries = [e for e in await redis.lrange(key, 0, -1) if isinstance(e, bytes)]
    return entries[::-1]


async def put_history(redis: Redis, key: str, entries: list[bytes]) -> None:
    """Replace a history by ``entries`` (oldest first)."""
    await redis.delete(key)
    for entry in entries:
        await redis.lpush(key, entry)


def decode_entry(raw: bytes) -> list[Any]:
    """``[ms, n, sum, tag, diff]`` of a history entry (see sessions/lua/feed_write.lua)."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(raw)
    return list(unpacker)


def random_list(rng: random.Random) -> list[dict[str, Any]]:
    """A feed drawn from a small pool: consecutive lists share, move and patch items."""
    ids = rng.sample([f"i{k}" for k in range(24)], rng.randrange(0, 12))
    out: list[dict[str, Any]] = []
    for item_id in ids:
        payload: dict[str, Any] = {"id": item_id, "title": f"T{item_id}"}
        if rng.random() < 0.5:
            payload["price"] = rng.choice([1.0, 2.5, 9.99])
        out.append(payload)
    return out


async def write_chain(
    store: FeedStore, user: str, rng: random.Random, changes: int
) -> list[FeedState]:
    """A new epoch and then ``changes`` changes; the stored state after each write."""
    first = await store.write(user, FEED, None, random_list(rng))
    assert first is not None
    states = [first.state]
    while len(states) <= changes:
        update = await store.write(user, FEED, states[-1], random_list(rng))
        if update is not None:
            states.append(update.state)
    return states


def replay(held: list[dict[str, Any]], updates: tuple[ReplayedDiff, ...]) -> list[Any]:
    """Apply replayed diffs like a client: each one's checksum must hold; the lists seen."""
    seen = []
    current = held
    for u in updates:
        current = apply_diff(current, u.diff)
        assert checksum(ids_of(current)) == u.sum
        seen.append(current)
    return seen


def assert_chain(resume: Resume, held: FeedState, states: list[FeedState]) -> None:
    """``resume`` replays exactly ``states[held.n:]`` from ``held``."""
    stored = states[-1]
    assert resume.state == stored
    assert resume.updates is not None
    assert len(resume.updates) == stored.version.n - held.version.n
    base = held.version
    for u in resume.updates:
        assert u.feed == FEED
        assert u.base == base
        assert u.version == Version(base.epoch, base.n + 1)
        base = u.version
    assert base == stored.version
    assert resume.updates[-1].sum == stored.sum
    seen = replay(list(held.items), resume.updates)
    for lst, u in zip(seen, resume.updates, strict=True):
        assert lst == list(states[u.version.n - 1].items)
        assert u.sum == states[u.version.n - 1].sum
    assert seen[-1] == list(stored.items)


def test_replays_every_missed_diff_in_order(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        store = FeedStore(redis, ttl_s=TTL_S, history_len=20)
        user = new_user()
        states = await write_chain(store, user, seeded(1), 12)
        for held in states[:-1]:  # from every older version of the epoch
            assert_chain(await store.read_since(user, FEED, held.version), held, states)
        await forget(redis, user)

    run(redis_url, body)


def test_history_entries_carry_the_checksum(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        store = FeedStore(redis, ttl_s=TTL_S, history_len=20)
        user = new_user()
        # write_many, as the processor writes.
        [first] = await store.write_many([(user, FEED, None, [{"id": "a"}, {"id": "b"}])])
        assert not isinstance(first, Exception) and first is not None
        [second] = await store.write_many([(user, FEED, first.state, [{"id": "b"}, {"id": "c"}])])
        assert not isinstance(second, Exception) and second is not None
        entries = await history(redis, history_key(user, FEED))
        assert len(entries) == 1  # the first version of an epoch has no diff
        _ms, n, sum_, tag, diff = decode_entry(entries[0])
        assert n == 2
        assert sum_ == second.state.sum == checksum(["b", "c"])
        assert tag == ""
        assert diff == second.diff
        await forget(redis, user)

    run(redis_url, body)


def test_at_stored_version_sends_nothing(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        store = FeedStore(redis, ttl_s=TTL_S, history_len=20)
        user = new_user()
        states = await write_chain(store, user, seeded(2), 3)
        assert await store.read_since(user, FEED, states[-1].version) == Resume(states[-1], ())
        # Also on the first version of an epoch (no history at all).
        other = new_user()
        first = await store.write(other, FEED, None, [{"id": "x"}])
        assert first is not None
        assert await store.read_since(other, FEED, first.state.version) == Resume(first.state, ())
        await forget(redis, user)
        await forget(redis, other)

    run(redis_url, body)


def test_unprovable_held_versions_get_a_snapshot(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        store = FeedStore(redis, ttl_s=TTL_S, history_len=20)
        user = new_user()
        states = await write_chain(store, user, seeded(3), 4)
        stored = states[-1]
        epoch = stored.version.epoch
        for held in (
            None,  # nothing held
            Version("other", 2),  # another epoch
            Version("other", stored.version.n),
            Version(epoch, stored.version.n + 1),  # ahead of the store
            Version(epoch, 10**30),
            Version(epoch, 0),  # no version of an epoch has n = 0
            Version(epoch, -3),
        ):
            assert await store.read_since(user, FEED, held) == Resume(stored, None), held
        await forget(redis, user)

    run(redis_url, body)


def test_missing_feed(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        store = FeedStore(redis, ttl_s=TTL_S, history_len=20)
        user = new_user()
        for held in (None, Version("abc", 1)):
            assert await store.read_since(user, FEED, held) == Resume(None, None)
        # A history left without its feed is never replayed either.
        await redis.lpush(history_key(user, FEED), b"\x02")
        assert await store.read_since(user, FEED, Version("abc", 1)) == Resume(None, None)
        await forget(redis, user)

    run(redis_url, body)


def test_trimmed_history(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        store = FeedStore(redis, ttl_s=TTL_S, history_len=3)
        user = new_user()
        states = await write_chain(store, user, seeded(4), 10)
        stored = states[-1]
        # More changes behind than the history keeps: a snapshot.
        for held in states[: -1 - 3]:
            assert await store.read_since(user, FEED, held.version) == Resume(stored, None)
        # Within the history length: replayed.
        for held in states[-1 - 3 : -1]:
            assert_chain(await store.read_since(user, FEED, held.version), held, states)
        # The history trimmed below what a held version needs.
        await redis.ltrim(history_key(user, FEED), 0, 1)
        assert await store.read_since(user, FEED, states[-4].version) == Resume(stored, None)
        assert_chain(await store.read_since(user, FEED, states[-3].version), states[-3], states)
        await forget(redis, user)

    run(redis_url, body)


def test_lost_or_broken_history(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        store = FeedStore(redis, ttl_s=TTL_S, history_len=20)
        user = new_user()
        hist = history_key(user, FEED)
        states = await write_chain(store, user, seeded(5), 6)
        stored = states[-1]
        held = states[1]  # 5 behind

        # An entry missing in the middle (a gap).
        entries = await history(redis, hist)
        await put_history(redis, hist, [e for i, e in enumerate(entries) if i != 3])
        assert await store.read_since(user, FEED, held.version) == Resume(stored, None)

        # A duplicate entry at the end (as if a diff were appended twice).
        await put_history(redis, hist, entries)
        assert_chain(await store.read_since(user, FEED, held.version), held, states)
        await redis.lpush(hist, entries[-1])
        assert await store.read_since(user, FEED, held.version) == Resume(stored, None)

        # Out of order.
        await put_history(redis, hist, [entries[0], entries[2], entries[1], *entries[3:]])
        assert await store.read_since(user, FEED, states[0].version) == Resume(stored, None)

        # An entry without its checksum (not ours, or malformed): cannot be proven.
        ms, n, _sum, tag, diff = decode_entry(entries[4])
        broken = msgpack.packb(ms) + msgpack.packb(n) + msgpack.packb(tag) + msgpack.packb(diff)
        await put_history(redis, hist, [broken if i == 4 else e for i, e in enumerate(entries)])
        assert await store.read_since(user, FEED, held.version) == Resume(stored, None)
        assert_chain(await store.read_since(user, FEED, states[-2].version), states[-2], states)

        # The whole history deleted.
        await redis.delete(hist)
        assert await store.read_since(user, FEED, held.version) == Resume(stored, None)
        assert await store.read_since(user, FEED, stored.version) == Resume(stored, ())
        await forget(redis, user)

    run(redis_url, body)


def test_new_epoch_drops_the_old_history(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        store = FeedStore(redis, ttl_s=TTL_S, history_len=20)
        user = new_user()
        rng = seeded(6)
        old = await write_chain(store, user, rng, 4)
        await redis.delete(feed_key(user, FEED))  # as when the feed's TTL ran out
        states = await write_chain(store, user, rng, 2)
        assert states[0].version.epoch != old[0].version.epoch
        for held in old:
            assert await store.read_since(user, FEED, held.version) == Resume(states[-1], None)
        assert_chain(await store.read_since(user, FEED, states[0].version), states[0], states)
        await forget(redis, user)

    run(redis_url, body)


def test_one_round_trip_and_script_reload(redis_url: str) -> None:
    # A cluster client's round trips go one per node through its own pipeline: this counts a
    # single Redis's.
    skip_on_cluster("counts the round trips of one Redis server")

    async def body(redis: Redis) -> None:
        store = FeedStore(redis, ttl_s=TTL_S, history_len=20)
        user = new_user()
        states = await write_chain(store, user, seeded(7), 5)
        await store.read_since(user, FEED, states[0].version)  # the script is loaded

        trips = 0
        real_pipeline = redis.pipeline
        real_command: Callable[..., Awaitable[Any]] = redis.execute_command

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = real_pipeline(*args, **kwargs)
            real_execute = pipe.execute

            async def execute(*a: Any, **k: Any) -> Any:
                nonlocal trips
                trips += 1
                return await real_execute(*a, **k)

            pipe.execute = execute  # type: ignore[method-assign]
            return pipe

        async def command(*args: Any, **kwargs: Any) -> Any:
            nonlocal trips
            trips += 1
            return await real_command(*args, **kwargs)

        real_raw = rawpipe.execute

        async def raw(*args: Any, **kwargs: Any) -> Any:  # script calls' pipelines
            nonlocal trips
            trips += 1
            return await real_raw(*args, **kwargs)

        redis.pipeline = pipeline  # type: ignore[method-assign]
        redis.execute_command = command  # type: ignore[method-assign]
        rawpipe.execute = raw
        try:
            for held in states:
                trips = 0
                await store.read_since(user, FEED, held.version)
                assert trips == 1
            await redis.script_flush()  # as after a Redis restart
            trips = 0
            assert_chain(await store.read_since(user, FEED, states[1].version), states[1], states)
            assert trips == 3  # NOSCRIPT, SCRIPT LOAD, again
        finally:
            del redis.pipeline
            del redis.execute_command
            rawpipe.execute = real_raw
        await forget(redis, user)

    run(redis_url, body)


def test_state_and_history_agree_under_concurrent_writes(redis_url: str) -> None:
    """A resume read while another client keeps writing always proves its chain."""

    async def body(redis: Redis) -> None:
        writer_redis = redis_client(redis_url)
        writer = FeedStore(writer_redis, ttl_s=TTL_S, history_len=100_000)
        reader = FeedStore(redis, ttl_s=TTL_S, history_len=100_000)
        user = new_user()
        rng = seeded(8)
        first = await writer.write(user, FEED, None, random_list(rng))
        assert first is not None
        done = asyncio.Event()
        written: dict[int, FeedState] = {1: first.state}

        async def write_forever() -> None:
            state = first.state
            while not done.is_set():
                update = await writer.write(user, FEED, state, random_list(rng))
                if update is not None:
                    state = update.state
                    written[state.version.n] = state

        task = asyncio.create_task(write_forever())
        try:
            held_version, held_items = first.state.version, list(first.state.items)
            oldest = first.state
            replayed = 0
            seen: list[FeedState] = []
            for i in range(400):
                if i % 50 == 49:  # now and then, a client far behind
                    resume = await reader.read_since(user, FEED, oldest.version)
                    assert resume.state is not None and resume.updates is not None
                    assert replay(list(oldest.items), resume.updates)[-1] == list(
                        resume.state.items
                    )
                resume = await reader.read_since(user, FEED, held_version)
                state, updates = resume.state, resume.updates
                assert state is not None
                assert updates is not None, "the chain must be provable: nothing is trimmed"
                if updates:
                    replayed += 1
                    assert updates[0].base == held_version
                    assert updates[-1].version == state.version
                    held_items = replay(held_items, updates)[-1]
                else:
                    assert state.version == held_version
                assert held_items == list(state.items)
                assert checksum(ids_of(held_items)) == state.sum
                held_version = state.version
                seen.append(state)
                await asyncio.sleep(0)
        finally:
            done.set()
            await task
            await writer_redis.aclose()
        assert replayed > 40, replayed  # the writer really did run between the reads
        for state in seen:
            assert written[state.version.n] == state
        await forget(redis, user)

    run(redis_url, body)
