"""Deletions that go through a pipeline delete on Redis Cluster too (issue 13, cluster suite).

redis-py's cluster pipeline has a coroutine of its own named ``unlink`` (it queues nothing), so
``pipe.unlink(key)`` deleted nothing there while the single Redis was fine. Real parts only: the
Redis of :func:`~tests.integration.conftest.redis_database` (the test cluster in cluster mode,
``PUSHREC_TEST_REDIS_CLUSTER=1``; a single Redis otherwise).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from sessions.cluster import dbsize
from sessions.keys import merged_key
from streams.privacy import erase_user
from streams.train import load_model, neighbour_key
from tests.integration.conftest import redis_client, redis_database
from tests.integration.harness import new_id

DB = 11


@pytest.fixture
def url() -> Iterator[str]:
    with redis_database(DB) as u:
        yield u


def test_erasing_a_user_deletes_the_markers_of_visitors_merged_into_them(url: str) -> None:
    """Today's code on a cluster: ``pipe.unlink`` queued nothing, so 0 markers were deleted and
    all three stayed (still naming the erased user)."""

    async def scenario() -> None:
        redis = redis_client(url)
        try:
            user = new_id("p")
            visitors = ["anon:" + new_id(f"m{n}") for n in range(3)]  # spread over the slots
            for anon in visitors:
                await redis.set(merged_key(anon), user)
            counts = await erase_user(redis, user)
            assert counts["markers"] == 3
            assert [await redis.exists(merged_key(a)) for a in visitors] == [0, 0, 0]
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def test_a_replaced_model_version_is_deleted_from_every_slot(url: str) -> None:
    """Today's code on a cluster: ``removed_keys`` was 0 and the old lists stayed forever."""

    async def scenario() -> None:
        redis = redis_client(url)
        try:
            first = await load_model(redis, {f"i{n}": [("x", 1.0)] for n in range(40)}, grace_s=0)
            second = await load_model(redis, {"i0": [("y", 1.0)]}, grace_s=0)
            assert second.previous == first.version and second.removed_keys == 40
            assert await redis.exists(neighbour_key(first.version, "i7")) == 0
            # What is left: the new version's one list and the model pointer (every master).
            assert await dbsize(redis) == 2
        finally:
            await redis.aclose()

    asyncio.run(scenario())
