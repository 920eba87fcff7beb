"""Pipelined commands with raw replies: one round trip without redis-py's per-reply work.

redis-py's asyncio pipeline spends about 10 µs of Python per command beyond the packing: a
timeout context per reply (a timer handle armed and cancelled), response callbacks, the
observability hooks of each read. The event path sends 10 to 20 commands per event (script
calls, the item cache's reads), so that was the largest single cost of the worker on the
REES46 replay (issue 13: ``python -m benchmarks.event_cost``). Here a pipeline is packed in one
write (hiredis, :mod:`push.redis_client`'s connections) and its replies are read back under one
deadline for the whole round trip.

Guarantees:

- **Raw replies**, as the connection's protocol gives them (bytes, ints, floats, lists; no
  response callbacks, no decoding): with RESP3 (redis-py's default) ``ZRANGE … WITHSCORES``
  is ``[[member, score], …]`` with float scores, with RESP2 a flat ``[member, score, …]`` list
  of bytes (:func:`score_pairs` reads both). An error reply comes back in its command's place
  as redis-py's exception (``NOSCRIPT`` → :class:`~redis.exceptions.NoScriptError`).
- **Connection errors raise** for the whole pipeline (redis-py's ``ConnectionError`` /
  ``TimeoutError``) once the connection's retry policy gave up, as a redis-py pipeline does:
  the commands are sent again on a fresh connection, so callers send only commands that may
  run twice (idempotent, or deduplicated like the user lane's events).
- A connection that failed or timed out mid-reply is closed, never handed out with replies
  still pending; every connection goes back to its pool.
- **Redis Cluster** (or any client but redis-py's single-node one): the client's own pipeline
  (for a cluster: routing by slot, MOVED/ASK, failovers). redis-py's response callbacks still
  apply there; they leave raw the replies the event path reads
  (``EVALSHA``, ``ZRANGE``/``ZREVRANGE`` without the ``withscores`` option, ``HMGET``,
  ``ZCARD``), while a few write replies differ in type (``EXPIRE``: a bool, not 1/0).
- The round trip is told to the client's observer as ``pipeline`` (the
  ``pushrec_redis_seconds`` metric, :class:`push.redis_client.TimedRedis`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import hiredis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: One command: its name and arguments (str, bytes, int or float), a tuple.
Command = tuple[Any, ...]


async def execute(redis: Redis, commands: Sequence[Command]) -> list[Any]:
    """Each command's raw reply, or its error reply as an exception, in order (see the module
    docstring); raises on connection errors and timeouts."""
    if not commands:
        return []
    started = time.perf_counter()
    try:
        if isinstance(redis, Redis):
            return await _single(redis, commands)
        return await _pipelined(redis, commands)
    finally:
        observe = getattr(redis, "observe", None)
        if observe is not None:
            observe("pipeline", time.perf_counter() - started)


async def _single(redis: Redis, commands: Sequence[Command]) -> list[Any]:
    pool = redis.connection_pool
    conn: Connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        # hiredis packs in C, as push/redis_client.py's connections do, without their per-command
        # wrapper (no command name here holds a space).
        packed = [b"".join(map(hiredis.pack_command, commands))]

        async def attempt() -> list[Any]:
            return await _round_trip(conn, packed, len(commands))

        async def failed(_error: Exception) -> None:
            await conn.disconnect()

        replies: list[Any] = await conn.retry.call_with_retry(attempt, failed)
        return replies
    finally:
        await pool.release(conn)


async def _round_trip(conn: Connection, packed: list[bytes], count: int) -> list[Any]:
    await conn.send_packed_command(packed)
    # The connection's own parser (hiredis): ``Connection.read_response`` would arm one timeout
    # per reply; one deadline covers them all here.
    parser: Any = conn._parser
    replies: list[Any] = []
    try:
        async with asyncio.timeout(conn.socket_timeout):
            if isinstance(parser, _AsyncHiredisParser) and parser._connected:
                await _read_all(parser, count, replies)
            else:
                read = parser.read_response
                for _ in range(count):
                    replies.append(await read(disable_decoding=True))
    except TimeoutError as exc:
        await conn.disconnect(nowait=True)
        raise RedisTimeoutError(f"Timeout reading {count} pipelined replies") from exc
    except OSError as exc:
        await conn.disconnect(nowait=True)
        raise RedisConnectionError(f"Error reading pipelined replies: {exc}") from exc
    except BaseException:
        # Cancelled, or the parser failed: replies may still be on the socket.
        await conn.disconnect(nowait=True)
        raise
    if conn.health_check_interval:  # a read counts as a health check (as in read_response)
        conn.next_health_check = asyncio.get_running_loop().time() + conn.health_check_interval
    return replies


async def _read_all(parser: _AsyncHiredisParser, count: int, replies: list[Any]) -> None:
    """``count`` replies from the hiredis reader itself, as ``parser.read_response`` reads them
    (raw, a push notification handed to the parser and skipped, a ConnectionError the reader
    built raised) but with no coroutine per reply: most replies of a pipeline are parsed from
    bytes already read, and the socket is awaited only when the reader needs more."""
    reader: Any = parser._reader
    gets = reader.gets
    push = parser._hiredis_PushNotificationType
    append = replies.append
    while len(replies) < count:
        response = gets(False)
        while response is NOT_ENOUGH_DATA:
            if not parser._connected:
                raise RedisConnectionError("Connection closed by the client")
            await parser.read_from_socket()  # type: ignore[no-untyped-call]
            response = gets(False)
        if push is not None and isinstance(response, push):
            await parser.handle_push_response(response)
            continue
        if isinstance(response, RedisConnectionError) or (
            isinstance(response, list)
            and response
            and isinstance(response[0], RedisConnectionError)
        ):
            raise response if isinstance(response, RedisConnectionError) else response[0]
        append(response)


async def _pipelined(redis: Redis, commands: Sequence[Command]) -> list[Any]:
    pipe = redis.pipeline(transaction=False)
    for args in commands:
        pipe.execute_command(*args)
    replies: list[Any] = await pipe.execute(raise_on_error=False)
    return replies


def score_pairs(raw: list[Any]) -> list[tuple[str, float]]:
    """``ZRANGE … WITHSCORES``'s raw reply as (member, score) pairs, members decoded."""
    if not raw:
        return []
    if isinstance(raw[0], list):  # RESP3: [[member, score], …], scores already floats
        return [(m.decode(), float(s)) for m, s in raw]
    it = iter(raw)  # RESP2: member, score, member, score …
    return [(m.decode(), float(s)) for m, s in zip(it, it, strict=True)]
