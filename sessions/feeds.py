"""Stored feed versions and per-user diff history, in Redis.

Guarantees:

- A write is a compare-and-set on the stored version, in one round trip (Lua): two writers racing
  on one user's feed never interleave; the loser gets :class:`VersionConflict` and recomputes.
- Every version after the first of an epoch has its diff in the history stream (capped, with the
  feed's TTL), written atomically with the version itself.
- A feed whose key vanished (TTL, flush) starts a new epoch on its next write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import msgpack
from redis.asyncio import Redis

from sessions.diff import DiffBody, checksum, ids_of, make_diff
from sessions.exceptions import VersionConflict
from sessions.keys import feed_key, history_key
from sessions.versions import Version, new_epoch

_WRITE_LUA = resources.files("sessions").joinpath("lua/feed_write.lua").read_text()


@dataclass(frozen=True, slots=True)
class FeedState:
    """One stored version of a feed: its items in order."""

    user: str
    feed: str
    version: Version
    items: tuple[dict[str, Any], ...]

    @property
    def sum(self) -> str:
        """Checksum of the id order (see :func:`sessions.diff.checksum`)."""
        return checksum(ids_of(self.items))


@dataclass(slots=True)
class FeedUpdate:
    """A change of one user's feed, as published to the nodes holding that user's sockets.

    ``base`` is None when the change starts a new epoch (then ``diff`` is None and clients take a
    snapshot of ``state``). ``frames`` caches the encoded frame per codec, so an update is
    serialised once however many connections receive it.
    """

    state: FeedState
    base: Version | None
    diff: DiffBody | None
    frames: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def user(self) -> str:
        """The user whose feed changed."""
        return self.state.user

    @property
    def feed(self) -> str:
        """The feed that changed."""
        return self.state.feed


def decode_body(raw: bytes | None) -> tuple[dict[str, Any], ...]:
    """Decode a stored feed body (msgpack list of payloads)."""
    if not raw:
        return ()
    items = msgpack.unpackb(raw)
    return tuple(items)


def parse_state(user: str, feed: str, fields: list[Any]) -> FeedState | None:
    """Build a :class:`FeedState` from ``HMGET e n b``; None when the feed does not exist."""
    epoch, n, body = fields
    if epoch is None or n is None:
        return None
    e = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
    return FeedState(user, feed, Version(e, int(n)), decode_body(body))


class FeedStore:
    """Reads and compare-and-set writes of feed versions."""

    def __init__(self, redis: Redis, *, ttl_s: int, history_len: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._history_len = history_len
        self._write = redis.register_script(_WRITE_LUA)

    async def read(self, user: str, feed: str) -> FeedState | None:
        """The current version of a feed, or None when it has none."""
        fields = await self._redis.hmget(feed_key(user, feed), ["e", "n", "b"])
        return parse_state(user, feed, list(fields))

    async def write(
        self, user: str, feed: str, base: FeedState | None, items: list[dict[str, Any]]
    ) -> FeedUpdate | None:
        """Store ``items`` as the version after ``base`` (or a new epoch when ``base`` is None).

        Returns the published-to-be update, or None when ``items`` equals ``base`` (no write, no
        round trip). Raises :class:`VersionConflict` when the stored version is not ``base``.
        """
        diff: DiffBody | None = None
        if base is not None:
            diff = make_diff(base.items, items)
            if diff is None:
                return None
        res = await self._write(
            keys=[feed_key(user, feed), history_key(user, feed)],
            args=[
                base.version.epoch if base else "",
                base.version.n if base else 0,
                msgpack.packb(items),
                msgpack.packb(diff) if diff is not None else b"",
                self._history_len,
                self._ttl_s,
                new_epoch(),
            ],
        )
        ok, epoch, n = int(res[0]), res[1], int(res[2])
        if not ok:
            raise VersionConflict(f"feed {feed} moved on before our write (now at n={n})")
        e = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        state = FeedState(user, feed, Version(e, n), tuple(items))
        return FeedUpdate(state, base.version if base else None, diff)
