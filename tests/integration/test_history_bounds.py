"""The resume history is bounded by entries, time and bytes, and resume stays all or nothing.

On a real Redis (docs/PROTOCOL.md, "Resume is all or nothing"; ``PUSHREC_HISTORY_LEN``,
``PUSHREC_HISTORY_TTL_S``, ``PUSHREC_HISTORY_MAX_DIFF_BYTES``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from sessions.feeds import FeedState, FeedStore, Resume
from sessions.keys import history_key
from tests.integration.conftest import redis_database
from tests.integration.harness import SCALE
from tests.integration.test_resume_store import (
    FEED,
    TTL_S,
    assert_chain,
    forget,
    new_user,
    random_list,
    run,
    seeded,
    write_chain,
)


@pytest.fixture
def redis_url() -> Iterator[str]:
    with redis_database(12) as url:
        yield url


def bounded(redis: Redis, **bounds: Any) -> FeedStore:
    """A store with the profile TTL of these tests and the given history bounds."""
    bounds.setdefault("history_len", 20)
    return FeedStore(redis, ttl_s=TTL_S, **bounds)


async def history_size(redis: Redis, user: str) -> int:
    """How many entries the user's history holds (whatever Redis type keeps it)."""
    key = history_key(user, FEED)
    kind = await redis.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "none":
        return 0
    if kind == "stream":
        return int(await redis.xlen(key))
    return int(await redis.llen(key))


async def redis_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def until_redis_ms(redis: Redis, deadline_ms: int) -> None:
    """Wait until Redis's own clock (which stamps the history) reaches ``deadline_ms``: the
    bound under test is time itself, so there is no event to await instead."""
    while (now := await redis_ms(redis)) < deadline_ms:  # noqa: ASYNC110 - time is the event
        await asyncio.sleep((deadline_ms - now) / 1000 + 0.01)


def test_history_holds_at_most_history_len_entries(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        store = bounded(redis, history_len=5)
        user = new_user()
        states = await write_chain(store, user, seeded(11), 14)
        assert await history_size(redis, user) == 5  # exactly: no lazy trimming past the bound
        for held in states[-1 - 5 : -1]:
            assert_chain(await store.read_since(user, FEED, held.version), held, states)
        for held in states[: -1 - 5]:
            assert await store.read_since(user, FEED, held.version) == Resume(states[-1], None)
        await forget(redis, user)

    run(redis_url, body)


def test_history_is_trimmed_by_time(redis_url: str) -> None:
    ttl_s = 1.0 * SCALE

    async def body(redis: Redis) -> None:
        store = bounded(redis, history_ttl_s=ttl_s)
        user = new_user()
        key = history_key(user, FEED)
        states = await write_chain(store, user, seeded(12), 4)
        written_ms = await redis_ms(redis)
        # Within the bound: every missed diff, exactly; the key lives no longer than the bound.
        for held in states[:-1]:
            assert_chain(await store.read_since(user, FEED, held.version), held, states)
        assert 0 < await redis.pttl(key) <= ttl_s * 1000

        # Past the bound: the entries are gone (key TTL) and resume sends a snapshot.
        await until_redis_ms(redis, written_ms + int(ttl_s * 1000) + 50)
        assert await history_size(redis, user) == 0
        for held in states[:-1]:
            assert await store.read_since(user, FEED, held.version) == Resume(states[-1], None)

        # A write trims by time too: after a pause longer than the bound, with the key kept
        # alive by newer writes, only the entries written within the bound remain.
        more = [states[-1]]
        for rng_seed in (13, 14):
            update = None
            rng = seeded(rng_seed)
            while update is None:
                update = await store.write(user, FEED, more[-1], random_list(rng))
            more.append(update.state)
        paused_ms = await redis_ms(redis)
        await until_redis_ms(redis, paused_ms + int(ttl_s * 1000) + 50)
        rng = seeded(15)
        last = None
        while last is None:
            last = await store.write(user, FEED, more[-1], random_list(rng))
        more.append(last.state)
        assert await history_size(redis, user) == 1
        held = more[-2]
        resume = await store.read_since(user, FEED, held.version)
        assert resume.updates is not None and len(resume.updates) == 1
        assert resume.updates[0].version == last.state.version
        assert resume.updates[0].sum == last.state.sum
        assert await store.read_since(user, FEED, more[0].version) == Resume(last.state, None)
        await forget(redis, user)

    run(redis_url, body)


def test_expired_entries_are_never_replayed_before_a_write_trims_them(redis_url: str) -> None:
    """Entries older than the bound may still be stored (trimmed at the next write, or when the
    key expires); a resume never uses them."""
    ttl_s = 1.0 * SCALE

    async def body(redis: Redis) -> None:
        store = bounded(redis, history_ttl_s=ttl_s)
        user = new_user()
        states = await write_chain(store, user, seeded(16), 3)
        # Keep the key alive past its entries' bound, as a slow expiry would.
        await redis.persist(history_key(user, FEED))
        written_ms = await redis_ms(redis)
        await until_redis_ms(redis, written_ms + int(ttl_s * 1000) + 50)
        assert await history_size(redis, user) == 3
        for held in states[:-1]:
            assert await store.read_since(user, FEED, held.version) == Resume(states[-1], None)
        await forget(redis, user)

    run(redis_url, body)


def big_list(states: list[FeedState]) -> list[dict[str, Any]]:
    """The last list with every payload grown: a diff of well over 4 KB."""
    return [{**item, "blurb": "x" * 800} for item in states[-1].items] + [
        {"id": f"big{k}", "blurb": "y" * 800} for k in range(6)
    ]


def test_a_too_big_diff_is_not_stored_and_resume_across_it_snapshots(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        store = bounded(redis, history_max_diff_bytes=1024)
        user = new_user()
        key = history_key(user, FEED)
        states = await write_chain(store, user, seeded(17), 4)
        big = await store.write(user, FEED, states[-1], big_list(states))
        assert big is not None and big.diff is not None
        states.append(big.state)
        assert len(await redis.dump(key) or b"") < 1024 * 2  # the big diff is not in there
        rng = seeded(18)
        while len(states) < 9:
            update = await store.write(user, FEED, states[-1], random_list(rng))
            if update is not None:
                states.append(update.state)
        stored = states[-1]
        n_big = big.state.version.n
        # Across the big diff: a snapshot, never the small diffs after it alone.
        for held in states[: n_big - 1]:
            assert await store.read_since(user, FEED, held.version) == Resume(stored, None)
        # From the big diff's version on: replayed exactly.
        for held in states[n_big - 1 : -1]:
            assert_chain(await store.read_since(user, FEED, held.version), held, states)
        await forget(redis, user)

    run(redis_url, body)


def test_resume_within_the_bounds_replays_exactly(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        store = bounded(redis, history_len=32, history_ttl_s=300, history_max_diff_bytes=4096)
        user = new_user()
        states = await write_chain(store, user, seeded(19), 30)
        for held in states[:-1]:
            assert_chain(await store.read_since(user, FEED, held.version), held, states)
        assert await store.read_since(user, FEED, states[-1].version) == Resume(states[-1], ())
        await forget(redis, user)

    run(redis_url, body)
