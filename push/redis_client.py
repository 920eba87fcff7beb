"""The Redis client of a node: redis-py's asyncio client with hiredis packing the commands.

With ``cluster=True`` (``PUSHREC_REDIS_CLUSTER=1``) the client is redis-py's asyncio
:class:`~redis.asyncio.cluster.RedisCluster`, built from the URL of any node: it discovers the
others, routes each command and each pipelined command by its key's slot and follows MOVED/ASK
and failovers itself. It is typed as :class:`~redis.asyncio.Redis` for the code above (both answer
the same command methods); what differs (scripts, pub/sub, SCAN) is handled in
:mod:`sessions.cluster`, :mod:`sessions.scripts` and :mod:`sessions.broker_cluster`.

Why hiredis: redis-py's asyncio connections build the wire form of every command in pure
Python. Each event sends two script calls with up to seven arguments (one a packed feed of
~1.5 KB), and the profiler put that packing first among the worker's costs. hiredis (already
installed for parsing replies) packs in C. Figures: docs/benchmarks.md, "worker throughput".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.connection import (
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)


def _pack(args: tuple[Any, ...]) -> list[bytes]:
    # Like redis-py: a command name holding spaces ("SCRIPT LOAD") goes out as separate words.
    head = args[0]
    if (isinstance(head, str) and " " in head) or (isinstance(head, bytes) and b" " in head):
        args = (*head.split(), *args[1:])
    packed: bytes = hiredis.pack_command(args)
    return [packed]


class _Fast:
    """Mixin: pack commands with hiredis."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return _pack(args)

    def pack_commands(self, commands: Any) -> list[bytes]:
        return [b"".join(_pack(tuple(cmd))[0] for cmd in commands)]


class FastConnection(_Fast, Connection):
    """TCP connection packing with hiredis."""


class FastUnixConnection(_Fast, UnixDomainSocketConnection):
    """Unix-socket connection packing with hiredis."""


class FastSSLConnection(_Fast, SSLConnection):
    """TLS connection packing with hiredis."""


_FAST = {
    Connection: FastConnection,
    UnixDomainSocketConnection: FastUnixConnection,
    SSLConnection: FastSSLConnection,
}


#: Told (command name, seconds) after each round trip; a pipeline is one, named "pipeline".
RedisObserver = Callable[[str, float], None]


def _ignore(_command: str, _seconds: float) -> None:
    return None


class _TimedPipeline(Pipeline):
    """A pipeline whose ``execute`` (its one round trip) is timed."""

    observe: RedisObserver = _ignore

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        started = time.perf_counter()
        try:
            return await super().execute(raise_on_error)
        finally:
            self.observe("pipeline", time.perf_counter() - started)


class TimedRedis(Redis):
    """redis-py's client with every round trip timed: commands by name, pipelines as one.

    The names are the commands this code base sends, so the label set stays small. A failed
    call is timed too (a timeout is the latency an operator must see).
    """

    observe: RedisObserver = _ignore

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        started = time.perf_counter()
        try:
            # redis-py leaves this one unannotated
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        finally:
            self.observe(_name(args[0]), time.perf_counter() - started)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = _TimedPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
        pipe.observe = self.observe
        return pipe


class _TimedClusterPipeline(ClusterPipeline):
    """A cluster pipeline whose ``execute`` (one round trip per node, in parallel) is timed."""

    observe: RedisObserver = _ignore

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        started = time.perf_counter()
        try:
            return await super().execute(raise_on_error, allow_redirections)
        finally:
            self.observe("pipeline", time.perf_counter() - started)


class TimedRedisCluster(RedisCluster):
    """redis-py's cluster client with every call timed like :class:`TimedRedis` (a command
    redirected or retried after a failover is one call: the time the caller waited)."""

    observe: RedisObserver = _ignore

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            self.observe(_name(args[0]), time.perf_counter() - started)

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # raises: no shard hints here
        pipe = _TimedClusterPipeline(self, transaction)  # type: ignore[abstract]
        pipe.observe = self.observe
        return pipe


def _name(head: object) -> str:
    text = head.decode("ascii", "replace") if isinstance(head, bytes) else str(head)
    return text.upper()[:32]


def connect(
    url: str, *, observe: RedisObserver | None = None, cluster: bool = False, **kwargs: Any
) -> Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` or ``unix://``) owning its pool; with
    ``observe``, told the duration of every round trip. With ``cluster``, a
    :class:`~redis.asyncio.cluster.RedisCluster` for the cluster ``url``'s node belongs to (see
    the module docstring; it connects on its first command)."""
    if cluster:
        return _connect_cluster(url, observe, kwargs)
    options: dict[str, Any] = {**parse_url(url), **kwargs}
    plain = options.get("connection_class", Connection)
    options["connection_class"] = _FAST.get(plain, plain)
    pool = ConnectionPool(**options)
    if observe is None:
        return Redis.from_pool(pool)
    client = TimedRedis.from_pool(pool)
    assert isinstance(client, TimedRedis)  # from_pool builds cls
    client.observe = observe
    return client


def _connect_cluster(url: str, observe: RedisObserver | None, kwargs: dict[str, Any]) -> Redis:
    options: dict[str, Any] = {**parse_url(url), **kwargs}
    if options.get("connection_class") is UnixDomainSocketConnection:
        raise ValueError("Redis Cluster needs a redis:// or rediss:// URL (no unix sockets)")
    if options.pop("db", 0):
        raise ValueError("Redis Cluster has only database 0: drop the /<db> from the URL")
    fast = _FAST[options.pop("connection_class", Connection)]
    if fast is FastSSLConnection:
        options["ssl"] = True
    client = (TimedRedisCluster if observe is not None else RedisCluster)(**options)
    # RedisCluster has no connection_class argument; every node's pool is built from these
    # kwargs (the startup node's already was), so the hiredis packing reaches every node.
    client.connection_kwargs["connection_class"] = fast
    for node in client.startup_nodes:
        node.connection_class = fast
    if isinstance(client, TimedRedisCluster) and observe is not None:
        client.observe = observe
    # Typed as the single-node client: both answer the same command methods (module docstring).
    return client  # type: ignore[return-value]
