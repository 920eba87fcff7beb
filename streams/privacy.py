"""Erasure and export of everything stored about one user (GDPR art. 15 and 17, CCPA).

What mentions a user in Redis:

- **Per-user keys**, all under the user's hash tag ``pr:{u:<id>}:`` (profile, dedup, feeds and
  their histories, trigger event times, experiment marks and exposures, the consent record):
  found by ``SCAN``.
- **Item-side indexes** with the user as a member: ``pr:is:<item>`` (session kNN) and
  ``pr:shown:<feed>:<item>`` (catalog propagation). Their members can outlive the user's own
  keys (an item dropped from the user's recent list, an expired feed), so every such key is
  scanned, not only the items the user's keys still name.
- **Timers** of the user in ``pr:timers`` / ``pr:timers:claimed`` (delayed triggers, offer
  expiry), and ``pr:merged:<anon>`` markers naming the user or named after them.

Aggregates that name no user stay: co-visitation and complements (item → item), trending, the
count of users seen, experiment totals.

Guarantee: after :func:`erase_user` returns, no key name, member, field or value in Redis holds
the user id, except what an event or request for that user wrote meanwhile (erasure does not
block the user's future traffic: stop sending it first). Cost: one ``SCAN`` of the keyspace for
the per-user keys and one per index prefix, pipelined in chunks; meant for an admin request,
not a hot path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from typing import Any

import msgpack
from redis.asyncio import Redis

from sessions.keys import user_tag

#: Item-side sorted sets whose members are user ids.
USER_INDEXES = ("pr:is:", "pr:shown:")
TIMER_KEYS = ("pr:timers", "pr:timers:claimed")
MERGED_PREFIX = "pr:merged:"
_CHUNK = 500


def _glob(text: str) -> str:
    """``text`` with the glob specials of ``SCAN MATCH`` escaped (user ids are free text)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


async def _scan(redis: Redis, pattern: str) -> AsyncIterator[list[str]]:
    """The keys matching ``pattern``, in chunks of up to ``_CHUNK``."""
    chunk: list[str] = []
    async for key in redis.scan_iter(match=pattern, count=1000):
        chunk.append(_text(key))
        if len(chunk) >= _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _text(value: object) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _timer_user(member: str) -> str | None:
    """The user a timer member belongs to (its third field, see streams/triggers.py)."""
    fields = member.split("\n")
    return fields[2] if len(fields) > 2 else None


async def erase_user(
    redis: Redis, user: str, *, keep: Collection[str] = frozenset()
) -> dict[str, int]:
    """Remove everything stored about ``user`` (see the module docstring) but the per-user keys
    named in ``keep`` (a withdrawal of consent keeps the consent record); returns counts of what
    went: ``keys`` (per-user keys), ``index_entries``, ``timers``, ``markers``."""
    counts = {"keys": 0, "index_entries": 0, "timers": 0, "markers": 0}
    async for found in _scan(redis, _glob(user_tag(user)) + "*"):
        keys = [k for k in found if k not in keep]
        if keys:
            counts["keys"] += int(await redis.unlink(*keys))
    for prefix in USER_INDEXES:
        async for keys in _scan(redis, prefix + "*"):
            pipe = redis.pipeline(transaction=False)
            for key in keys:
                pipe.zrem(key, user)
            counts["index_entries"] += sum(int(n) for n in await pipe.execute())
    for key in TIMER_KEYS:
        mine = [m for m in await _members(redis, key) if _timer_user(m) == user]
        if mine:
            counts["timers"] += int(await redis.zrem(key, *mine))
    async for keys in _scan(redis, MERGED_PREFIX + "*"):
        values = await redis.mget(keys)
        gone = [
            k
            for k, v in zip(keys, values, strict=True)
            if k == MERGED_PREFIX + user or (v is not None and _text(v) == user)
        ]
        if gone:
            counts["markers"] += int(await redis.unlink(*gone))
    return counts


async def _members(redis: Redis, key: str) -> list[str]:
    return [_text(m) async for m, _ in redis.zscan_iter(key, count=1000)]


async def export_user(redis: Redis, user: str) -> dict[str, Any]:
    """Everything stored about ``user``, as JSON-ready data: each per-user key by name with its
    type and content (feed bodies and history diffs decoded), the item-side indexes that list the
    user, their timers and merge markers."""
    tag = user_tag(user)
    keys: dict[str, Any] = {}
    async for chunk in _scan(redis, _glob(tag) + "*"):
        for key in sorted(chunk):
            keys[key[len(tag) :]] = await _dump(redis, key)
    indexes: dict[str, list[str]] = {}
    for prefix in USER_INDEXES:
        listed: list[str] = []
        async for chunk in _scan(redis, prefix + "*"):
            pipe = redis.pipeline(transaction=False)
            for key in chunk:
                pipe.zscore(key, user)
            scores = await pipe.execute()
            listed += [k for k, s in zip(chunk, scores, strict=True) if s is not None]
        indexes[prefix.rstrip(":")] = sorted(listed)
    timers = {
        key: sorted(m for m in await _members(redis, key) if _timer_user(m) == user)
        for key in TIMER_KEYS
    }
    merged = _text(raw) if (raw := await redis.get(MERGED_PREFIX + user)) is not None else None
    return {
        "user": user,
        "keys": keys,
        "indexes": indexes,
        "timers": timers,
        "merged_into": merged,
    }


async def _dump(redis: Redis, key: str) -> dict[str, Any]:
    kind = _text(await redis.type(key))
    value: Any
    if kind == "string":
        value = _text(await redis.get(key))
    elif kind == "hash":
        value = {_text(f): _decode(_text(f), v) for f, v in (await redis.hgetall(key)).items()}
    elif kind == "zset":
        pairs: list[Any] = await redis.zrange(key, 0, -1, withscores=True)
        value = [[_text(m), s] for m, s in pairs]
    elif kind == "set":
        value = sorted(_text(m) for m in await redis.smembers(key))
    elif kind == "list":
        value = [_text(v) for v in await redis.lrange(key, 0, -1)]
    elif kind == "stream":
        entries: list[Any] = list(await redis.xrange(key) or [])
        value = [
            {"id": _text(entry_id), **{_text(f): _decode(_text(f), v) for f, v in fields.items()}}
            for entry_id, fields in entries
        ]
    else:  # the key expired between the scan and now
        value = None
    return {"type": kind, "value": value, "ttl_s": await redis.ttl(key)}


def _decode(field: str, raw: bytes | str) -> Any:
    """A stored value as data: feed bodies (``b``) and history diffs (``d``) are msgpack."""
    if field in ("b", "d") and isinstance(raw, bytes) and raw:
        try:
            return msgpack.unpackb(raw)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            pass
    return _text(raw)
