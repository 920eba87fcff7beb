"""sessions/scripts.py on real Redis: loaded once, reloaded after SCRIPT FLUSH, run once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from sessions.scripts import PipelinedScript
from tests.integration.conftest import redis_client, redis_database

# One hash tag: a script call's keys must share a slot on Redis Cluster.
COUNT = "return redis.call('INCR', KEYS[1])"


@pytest.fixture
def redis_url() -> Iterator[str]:
    with redis_database(15) as url:
        yield url


def test_runs_in_order_and_survives_a_script_flush(redis_url: str) -> None:
    async def scenario() -> None:
        redis = redis_client(redis_url)
        try:
            await redis.delete("{scripts}:n")
            script = PipelinedScript(redis, COUNT)
            assert await script.run_many([(["{scripts}:n"], [])] * 3) == [1, 2, 3]
            await redis.script_flush()  # as after a Redis restart: the SHA is unknown
            assert await script.run_many([(["{scripts}:n"], [])] * 2) == [4, 5]  # not 6, 7
            replies = await script.run_many(
                [(["{scripts}:n", "{scripts}:extra"], []), (["{scripts}:n"], [])]
            )
            assert replies == [6, 7]
        finally:
            await redis.aclose()

    asyncio.run(scenario())
