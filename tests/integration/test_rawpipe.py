"""Issue 13 (worker CPU): the event path's pipelines (sessions/rawpipe.py) on a real Redis.

redis-py's asyncio pipeline armed one timeout per reply (a timer handle scheduled and
cancelled on the event loop for each command), the largest single cost of the worker per event.
The raw pipeline reads a round trip's replies under one deadline, and keeps what callers rely
on: replies in order, an error reply in its command's place, a dead connection replaced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from redis.exceptions import NoScriptError, ResponseError

from push.redis_client import connect
from sessions import rawpipe
from sessions.scripts import PipelinedScript, run_scripts
from tests.integration.conftest import redis_database, skip_on_cluster


@pytest.fixture
def url() -> Iterator[str]:
    # The raw path serves redis-py's single-node client; a cluster client's own pipeline is
    # used on a cluster.
    skip_on_cluster("the raw path is the single-node client's")
    with redis_database(14) as u:
        yield u


class _CountingTimers:
    """Counts the timer handles scheduled on the running loop (``call_at``) in a block."""

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self) -> _CountingTimers:
        loop = asyncio.get_running_loop()
        self._loop = loop
        original = loop.call_at

        def call_at(when: float, callback: Any, *args: Any, **kw: Any) -> asyncio.TimerHandle:
            self.count += 1
            return original(when, callback, *args, **kw)

        loop.call_at = call_at  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        del self._loop.call_at  # the instance attribute: back to the class's method


def test_a_round_trip_of_many_script_calls_arms_one_deadline_not_one_per_reply(url: str) -> None:
    async def main() -> None:
        redis = connect(url)
        script = PipelinedScript(redis, "return redis.call('INCR', KEYS[1])")
        calls: list[tuple[PipelinedScript, list[str], list[Any]]] = [
            (script, [f"k{i}"], []) for i in range(100)
        ]
        await run_scripts(redis, calls)  # loads the script, connects
        with _CountingTimers() as timers:
            replies = await run_scripts(redis, calls)
        assert replies == [2] * 100
        # Before: one timeout per reply (100 timers and more); now one per round trip.
        assert timers.count <= 2, timers.count
        await redis.aclose()

    asyncio.run(main())


def test_replies_come_raw_in_order_with_errors_in_place(url: str) -> None:
    async def main() -> None:
        redis = connect(url)
        await redis.zadd("z", {"a": 1.5, "b": 2.0})
        await redis.set("s", "x")
        replies = await rawpipe.execute(
            redis,
            [
                ("ZREVRANGE", "z", 0, -1, "WITHSCORES"),
                ("ZRANGE", "s", 0, -1),  # wrong type: an error reply, in place
                ("EVALSHA", "0" * 40, 0),  # unknown script
                ("HMGET", "nothing", "f", "g"),
                ("ZCARD", "z"),
            ],
        )
        assert rawpipe.score_pairs(replies[0]) == [("b", 2.0), ("a", 1.5)]
        assert isinstance(replies[1], ResponseError)
        assert isinstance(replies[2], NoScriptError)
        assert replies[3] == [None, None]
        assert replies[4] == 2
        # The connection is whole again: nothing left unread, back in the pool.
        assert await rawpipe.execute(redis, [("ZCARD", "z")]) == [2]
        assert await redis.ping()
        await redis.aclose()

    asyncio.run(main())


def test_a_connection_killed_by_the_server_is_replaced(url: str) -> None:
    async def main() -> None:
        redis = connect(url)
        other = connect(url)
        assert await rawpipe.execute(redis, [("CLIENT", "SETNAME", "victim")]) == [b"OK"]
        killed = await other.client_kill_filter(_type="normal", skipme=True)
        assert int(killed) >= 1
        assert await rawpipe.execute(redis, [("ZCARD", "z"), ("ZCARD", "z")]) == [0, 0]
        await redis.aclose()
        await other.aclose()

    asyncio.run(main())


def test_score_pairs_reads_resp2_too(url: str) -> None:
    async def main() -> None:
        redis = connect(url, protocol=2)
        await redis.zadd("z", {"a": 1.5, "b": 2.0})
        [raw] = await rawpipe.execute(redis, [("ZREVRANGE", "z", 0, -1, "WITHSCORES")])
        assert rawpipe.score_pairs(raw) == [("b", 2.0), ("a", 1.5)]
        await redis.aclose()

    asyncio.run(main())
