"""sessions/scripts.py on real Redis: loaded once, reloaded after SCRIPT FLUSH, run once."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from push.redis_client import connect
from push.redis_server import EmbeddedRedis
from sessions.scripts import PipelinedScript

COUNT = "return redis.call('INCR', KEYS[1])"


@pytest.fixture
def redis_url() -> Iterator[str]:
    external = os.environ.get("PUSHREC_TEST_REDIS_URL")
    if external:
        yield external.rsplit("/", 1)[0] + "/15"
        return
    with EmbeddedRedis() as server:
        yield server.url


def test_runs_in_order_and_survives_a_script_flush(redis_url: str) -> None:
    async def scenario() -> None:
        redis = connect(redis_url)
        try:
            await redis.delete("scripts:n")
            script = PipelinedScript(redis, COUNT)
            assert await script.run_many([(["scripts:n"], [])] * 3) == [1, 2, 3]
            await redis.script_flush()  # as after a Redis restart: the SHA is unknown
            assert await script.run_many([(["scripts:n"], [])] * 2) == [4, 5]  # not 6, 7
            replies = await script.run_many([(["scripts:n", "extra"], []), (["scripts:n"], [])])
            assert replies == [6, 7]
        finally:
            await redis.aclose()

    asyncio.run(scenario())
