"""The Redis client of a node: redis-py's asyncio client with hiredis packing the commands.

Why: redis-py's asyncio connections build the wire form of every command in pure Python. Each
event sends two script calls with up to seven arguments (one a packed feed of ~1.5 KB), and the
profiler put that packing first among the worker's costs. hiredis (already installed for
parsing replies) packs in C. Figures: docs/benchmarks.md, "worker throughput".
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio import Redis
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


def connect(url: str, **kwargs: Any) -> Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` or ``unix://``) owning its pool."""
    options: dict[str, Any] = {**parse_url(url), **kwargs}
    plain = options.get("connection_class", Connection)
    options["connection_class"] = _FAST.get(plain, plain)
    return Redis.from_pool(ConnectionPool(**options))
