"""Erasure and export of everything stored about one user (GDPR art. 15 and 17, CCPA).

What mentions a user in Redis:

- **Per-user keys**, all under the user's hash tag ``pr:{u:<id>}:`` (profile, dedup, feeds and
  their histories, trigger event times, experiment marks and exposures, the consent record):
  found by ``SCAN``. The id in the tag is encoded (:func:`sessions.keys.encode_user`: no ``}``
  nor glob special), so the tag is a prefix of that user's keys only — ``tagx`` does not find
  ``tagx}:evil``'s keys — and the ``MATCH`` pattern is escaped all the same. Keys written
  before ids were encoded, under the raw id's tag, are found too where that is exact
  (:func:`_legacy_tag`).
- **Item-side indexes** with the user as a member, tagged by item (:mod:`sessions.keys`):
  ``pr:{i:<item>}:is`` (session kNN, members are encoded ids) and
  ``pr:{i:<item>}:shown:<feed>`` (catalog propagation, members are ids). Their members can
  outlive the user's own keys (an item dropped from the user's recent list, an expired feed), so
  every such key is found by ``SCAN`` of those patterns, not only the items the user's keys
  still name; each key is then changed on its own (one slot per command). The names of the
  layout before issue 13 (``pr:is:<item>``, ``pr:shown:<feed>:<item>``) are scanned too: data
  stored before an upgrade is unreachable by the engine but still names users.
- **Timers** of the user: in the user's timers bucket (``pr:{tm:<b>}:timers`` / ``:claimed``,
  :func:`sessions.keys.timer_bucket`; before issue 13 ``pr:timers`` / ``pr:timers:claimed``).
- **Merge markers** (:mod:`streams.merge`): the user's own (``pr:{u:<id>}:merged``, a per-user
  key), the markers of visitors merged into the user (``pr:{u:<anon>}:merged`` whose value is
  the user; before issue 13 ``pr:merged:<anon>``), and the snapshot of a merge into the user
  still under way (``pr:{u:<anon>}:merging``).

Aggregates that name no user stay: co-visitation and complements (item → item), trending, the
count of users seen, experiment totals.

Guarantee: after :func:`erase_user` returns, no key name, member, field or value in Redis holds
the user id, except what an event or request for that user wrote meanwhile (erasure does not
block the user's future traffic: stop sending it first). Cost: one ``SCAN`` of the keyspace for
the per-user keys and one per index prefix, pipelined in chunks; meant for an admin request,
not a hot path.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

import msgpack
from redis.asyncio import Redis

from sessions.keys import (
    PREFIX,
    claimed_key,
    decode_user,
    encode_user,
    merged_key,
    timer_bucket,
    timers_key,
    user_tag,
)
from sessions.text import text


def _same(user: str) -> str:
    return user


#: Item-side sorted sets whose members name users: export label → how a member names its user.
USER_INDEXES: dict[str, Callable[[str], str]] = {"is": encode_user, "shown": _same}
#: The ``SCAN`` patterns of each index, and the exact shape of its keys (a glob ``*`` also
#: matches ``}``): today's names, then those of the layout before issue 13.
_INDEX_KEYS: dict[str, list[tuple[str, re.Pattern[str]]]] = {
    "is": [
        ("pr:{i:*}:is", re.compile(r"pr:\{i:[^}]*\}:is")),
        ("pr:is:*", re.compile(r"pr:is:.*", re.S)),
    ],
    "shown": [
        ("pr:{i:*}:shown:*", re.compile(r"pr:\{i:[^}]*\}:shown:[^:]*")),
        ("pr:shown:*", re.compile(r"pr:shown:.*", re.S)),
    ],
}
#: Merge markers and snapshots of visitors (their values name the user merged into).
_MERGE_KEYS = re.compile(r"pr:\{u:[^}]*\}:(merged|merging)")
#: Before issue 13: ``pr:merged:<anon>``, value the user.
_LEGACY_MERGED = "pr:merged:"
#: Before issue 13: the global timers.
_LEGACY_TIMERS = ("pr:timers", "pr:timers:claimed")
#: Characters that encoding always escapes, ``%`` aside: an id holding one can be no other id's
#: encoded form, so its keys from before ids were encoded are told apart exactly (below).
_NEVER_ENCODED = re.compile(r"[{}*?\[\]\\\x00-\x1f\x7f-\x9f]")


def _legacy_tag(user: str) -> str | None:
    """The tag ``user``'s keys had before ids were encoded (``pr:{u:<raw id>}:``), for ids whose
    encoding changed it; None otherwise, or when that tag may be another user's today.

    Under it, ``user``'s old keys are exactly those whose rest holds no ``}``: their last ``}`` is
    then the one closing the tag, so the id before it is ``user``'s (another id extending it,
    ``tagx}:evil`` for ``tagx}``, leaves a ``}`` in the rest). And as ``user`` holds a character
    that encoding always escapes, no encoded id equals it: no current key is found there."""
    if not _NEVER_ENCODED.search(user):
        return None
    return f"{PREFIX}{{u:{user}}}:"


async def _user_keys(redis: Redis, user: str) -> AsyncIterator[list[tuple[str, str]]]:
    """``user``'s per-user keys as ``(key, name after the tag)``, in chunks: under the tag of
    the encoded id, then (see :func:`_legacy_tag`) any written before ids were encoded."""
    tag = user_tag(user)
    async for chunk in _scan(redis, _glob(tag) + "*"):
        yield [(key, key[len(tag) :]) for key in chunk]
    legacy = _legacy_tag(user)
    if legacy is not None:
        async for chunk in _scan(redis, _glob(legacy) + "*"):
            mine = [(key, key[len(legacy) :]) for key in chunk]
            yield [(key, rest) for key, rest in mine if "}" not in rest]


def _members_naming(label: str, user: str) -> list[str]:
    """The members of index ``prefix`` that name ``user``: today's, and the raw id an index of
    encoded ids held before ids were encoded (only where :func:`_legacy_tag` tells it apart)."""
    member = USER_INDEXES[label](user)
    if member != user and _legacy_tag(user) is not None:
        return [member, user]
    return [member]


def timer_keys(user: str) -> tuple[str, ...]:
    """The timers keys that may hold ``user``'s timers: their bucket's, then the old global."""
    bucket = timer_bucket(user)
    return (timers_key(bucket), claimed_key(bucket), *_LEGACY_TIMERS)


_CHUNK = 500


def _glob(text: str) -> str:
    """``text`` with the glob specials of ``SCAN MATCH`` escaped (user ids are free text)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


async def _scan(redis: Redis, pattern: str) -> AsyncIterator[list[str]]:
    """The keys matching ``pattern``, in chunks of up to ``_CHUNK``."""
    chunk: list[str] = []
    async for key in redis.scan_iter(match=pattern, count=1000):
        chunk.append(text(key))
        if len(chunk) >= _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


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
    async for found in _user_keys(redis, user):
        keys = [k for k, _ in found if k not in keep]
        if keys:
            counts["keys"] += int(await redis.unlink(*keys))
    for label in USER_INDEXES:
        members = _members_naming(label, user)
        async for keys in _index_keys(redis, label):
            pipe = redis.pipeline(transaction=False)
            for key in keys:
                pipe.zrem(key, *members)
            counts["index_entries"] += sum(int(n) for n in await pipe.execute())
    for key in timer_keys(user):
        mine = [m for m in await _members(redis, key) if _timer_user(m) == user]
        if mine:
            counts["timers"] += int(await redis.zrem(key, *mine))
    async for keys in _markers_naming(redis, user):
        pipe = redis.pipeline(transaction=False)
        for key in keys:
            # Not pipe.unlink(): the cluster pipeline's own coroutine of that name queues nothing.
            pipe.execute_command("UNLINK", key)
        counts["markers"] += sum(int(n) for n in await pipe.execute())
    return counts


async def _index_keys(redis: Redis, label: str) -> AsyncIterator[list[str]]:
    """The keys of index ``label`` (see :data:`_INDEX_KEYS`), in chunks."""
    for pattern, shape in _INDEX_KEYS[label]:
        async for keys in _scan(redis, pattern):
            mine = [k for k in keys if shape.fullmatch(k)]
            if mine:
                yield mine


async def _markers_naming(redis: Redis, user: str) -> AsyncIterator[list[str]]:
    """Merge markers and snapshots of other ids whose value names ``user`` (visitors merged into
    them), today's and the old ``pr:merged:<anon>``, in chunks. One command per key (each its
    own slot), pipelined."""
    for pattern in ("pr:{u:*}:merg*", _LEGACY_MERGED + "*"):
        async for keys in _scan(redis, pattern):
            found = [k for k in keys if k.startswith(_LEGACY_MERGED) or _MERGE_KEYS.fullmatch(k)]
            if not found:
                continue
            pipe = redis.pipeline(transaction=False)
            for key in found:
                if key.endswith(":merging"):
                    pipe.hget(key, "user")
                else:
                    pipe.get(key)
            values = await pipe.execute()
            mine = [
                k for k, v in zip(found, values, strict=True) if v is not None and text(v) == user
            ]
            if mine:
                yield mine


def _anon_of(key: str) -> str:
    """The id whose tag a marker key ``pr:{u:<encoded id>}:merged`` is under."""
    encoded = key[len(PREFIX) + 3 : key.index("}")]
    try:
        return decode_user(encoded)
    except ValueError:  # written before ids were encoded: the raw id
        return encoded


async def _members(redis: Redis, key: str) -> list[str]:
    return [text(m) async for m, _ in redis.zscan_iter(key, count=1000)]


async def export_user(redis: Redis, user: str) -> dict[str, Any]:
    """Everything stored about ``user``, as JSON-ready data: each per-user key by name with its
    type and content (feed bodies and history diffs decoded), the item-side indexes that list the
    user, their timers and merge markers."""
    tag = user_tag(user)
    keys: dict[str, Any] = {}
    legacy: dict[str, Any] = {}
    async for found in _user_keys(redis, user):
        for key, name in sorted(found):
            (keys if key.startswith(tag) else legacy)[name] = await _dump(redis, key)
    indexes: dict[str, list[str]] = {}
    for label in USER_INDEXES:
        members = _members_naming(label, user)
        listed: set[str] = set()
        async for chunk in _index_keys(redis, label):
            pipe = redis.pipeline(transaction=False)
            for key in chunk:
                for member in members:
                    pipe.zscore(key, member)
            scores = await pipe.execute()
            per_key = [scores[i : i + len(members)] for i in range(0, len(scores), len(members))]
            listed |= {
                k for k, s in zip(chunk, per_key, strict=True) if any(x is not None for x in s)
            }
        indexes[label] = sorted(listed)
    timers = {
        key: mine
        for key in timer_keys(user)
        if (mine := sorted(m for m in await _members(redis, key) if _timer_user(m) == user))
    }
    raw = await redis.get(merged_key(user))
    if raw is None:
        raw = await redis.get(_LEGACY_MERGED + user)
    merged = text(raw) if raw is not None else None
    merged_from = sorted(
        [
            k[len(_LEGACY_MERGED) :] if k.startswith(_LEGACY_MERGED) else _anon_of(k)
            async for keys in _markers_naming(redis, user)
            for k in keys
            if not k.endswith(":merging")
        ]
    )
    return {
        "user": user,
        "keys": keys,
        "indexes": indexes,
        "timers": timers,
        "merged_into": merged,
        # Visitors merged into this user (their markers name the user).
        "merged_from": merged_from,
        # Keys written before user ids were encoded in key names, under the raw id's tag.
        **({"legacy_keys": legacy} if legacy else {}),
    }


async def _dump(redis: Redis, key: str) -> dict[str, Any]:
    kind = text(await redis.type(key))
    value: Any
    if kind == "string":
        raw = await redis.get(key)
        value = None if raw is None else _value(raw)
    elif kind == "hash":
        value = {text(f): _decode(text(f), v) for f, v in (await redis.hgetall(key)).items()}
    elif kind == "zset":
        pairs: list[Any] = await redis.zrange(key, 0, -1, withscores=True)
        value = [[text(m), s] for m, s in pairs]
    elif kind == "set":
        value = sorted(text(m) for m in await redis.smembers(key))
    elif kind == "list":
        value = [_value(v) for v in await redis.lrange(key, 0, -1)]
    elif kind == "stream":
        entries: list[Any] = list(await redis.xrange(key) or [])
        value = [
            {"id": text(entry_id), **{text(f): _decode(text(f), v) for f, v in fields.items()}}
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
    return _value(raw)


def _value(raw: bytes | str) -> Any:
    """A stored value as JSON-ready data: its text when it is UTF-8; else the msgpack objects it
    is made of (a history entry is several, one after the other), one alone as itself; else
    ``{"base64": …}``. Binary values must not end as text with lone surrogates, which no JSON
    encoder can write (the export answered 500)."""
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(raw)
    try:
        objects = list(unpacker)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        objects = []
    if objects and unpacker.tell() == len(raw) and all(_jsonable(o) for o in objects):
        return objects[0] if len(objects) == 1 else objects
    return {"base64": base64.b64encode(raw).decode("ascii")}


def _jsonable(obj: object) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _jsonable(v) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return all(_jsonable(v) for v in obj)
    return obj is None or isinstance(obj, str | int | float | bool)
