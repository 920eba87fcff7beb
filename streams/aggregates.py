"""Item-side aggregates, written after the user lane: co-visitation, complements, the session
index, trending and the users count.

The user lane (``lua/user_event.lua``) tells, per event, what the item side needs: the user's
previous items (co-visitation), the cart and recent purchases (complements), whether the user is
new (the users count). Here a lane's increments are computed, merged per key (a hot item's
trending across 100 events of a lane is one increment) and written in one pipelined round trip:
per item (``pr:{i:<item>}:nb``, ``…:cb``, ``…:is``) plain commands, one ``ZINCRBY`` per member
and one ``ZADD`` of the visitors (a script call costs Redis several times the few commands it
would run); per trending bucket (``pr:{t:<b>}:trend`` and ``…:meta``) and per category
(``pr:{c:<cat>}:trend`` and ``…:meta``) one ``lua/trend.lua`` call, which reads and moves the
slot's decay origin atomically with its increments. The scores Redis returns are applied to the
worker's :class:`~streams.itemcache.ItemCache`, so the worker sees its own increments at once.

Guarantees:

- **Counted once per accepted event**: only events the user lane applied (``applied`` or
  ``coalesced``, not ``duplicate``) of users with personalization consent count. A redelivered
  batch finds its events duplicates and writes nothing again. The write is not atomic with the
  user lane: a crash between the two loses that lane's increments (at most once; the profile
  keeps the events, the aggregates are statistics rebuilt by traffic). The per-item commands are
  not atomic with each other either: a crash in the round trip may keep some of a lane's
  increments and lose others (the same at-most-once).
- **Bounded**: every zset keeps its cap (``neighbours_kept`` neighbours and complements,
  ``session_index_max`` users per item, ``ceil(5000 / buckets)`` items per trending bucket, 1,000
  per category). A per-item set that gained a member is trimmed in a second round trip right
  after the increments (a new member is seen in the reply: ``ZINCRBY`` returns exactly the
  increment, ``ZADD`` counts it), so it exceeds its cap only between the two round trips of a
  write, by the members that write (and any other worker's write in flight) added; a worker
  that dies between them leaves that excess until the next write that adds a member to the set.
  The trending sets are trimmed inside their script.
- **Decay**: trending increments are time-scaled (``2^((t - t0) / half-life)``) against each
  slot's own origin ``t0`` (in its meta hash, moved and the slot rescaled past 200 half-lives).
  The decay clock is each event's time, never past the worker's clock, so one event stamped far
  ahead cannot move an origin there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import msgpack
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sessions import rawpipe
from sessions.keys import (
    TREND_BUCKETS,
    category_meta_key,
    category_trend_key,
    complements_key,
    encode_user,
    neighbours_key,
    trend_bucket,
    trend_key,
    trend_meta_key,
    visitors_key,
)
from sessions.scripts import PipelinedScript, run_scripts
from streams.events import Event
from streams.itemcache import ItemCache
from streams.scoring import merge_buckets

_TREND_LUA = resources.files("streams").joinpath("lua/trend.lua").read_text()

log = structlog.get_logger(__name__)

#: Items kept per global trending list before it was bucketed; each bucket keeps its share.
TRENDING_KEPT = 5000
#: Items kept per category's trending list.
CATEGORY_TRENDING_KEPT = 1000
#: Complement partners per event: the cart sample and what was bought within the hour.
COMPLEMENT_WEIGHTS = {"add_to_cart": 1.0, "purchase": 2.0}


@dataclass(frozen=True, slots=True)
class Accepted:
    """One event the user lane applied, with what it returned for the item side."""

    event: Event
    categories: Sequence[str]
    #: (affinity, co-visitation, trending) weights of the event's type.
    weights: tuple[float, float, float]
    #: The user's latest distinct items before this event, newest first.
    prev: Sequence[str] = ()
    new_user: bool = False
    partners: Sequence[str] = ()


@dataclass(slots=True)
class Increments:
    """A lane's merged item-side increments (see :func:`collect`)."""

    nb: dict[str, dict[str, float]] = field(default_factory=dict)
    cb: dict[str, dict[str, float]] = field(default_factory=dict)
    #: item → encoded user id → time of the user's latest touch.
    visitors: dict[str, dict[str, int]] = field(default_factory=dict)
    #: bucket → item → increment relative to ``ref``; category → the same.
    trend: dict[int, dict[str, float]] = field(default_factory=dict)
    cat_trend: dict[str, dict[str, float]] = field(default_factory=dict)
    #: bucket → new users.
    users: dict[int, int] = field(default_factory=dict)
    #: The decay clock the trending increments are relative to (ms).
    ref: int = 0

    def __bool__(self) -> bool:
        return bool(self.nb or self.cb or self.visitors or self.trend or self.cat_trend)


def _add(into: dict[str, dict[str, float]], key: str, member: str, by: float) -> None:
    row = into.get(key)
    if row is None:
        into[key] = {member: by}
    else:
        row[member] = row.get(member, 0.0) + by


def collect(
    accepted: Sequence[Accepted],
    *,
    trending_halflife_ms: int,
    buckets: int = TREND_BUCKETS,
    now_ms: int | None = None,
) -> Increments:
    """The merged increments of ``accepted`` (in lane order), as the event script made them one
    by one: co-visitation ``w_cov / i`` with the ``i``-th previous item both ways, complements
    (1 per cart partner, 2 per purchase partner) both ways, the session index (latest touch),
    trending ``w_trend * 2^((t - ref) / half-life)`` globally and per category."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    inc = Increments()
    trended: list[tuple[str, Sequence[str], float, int]] = []
    for a in accepted:
        item = a.event.item_id
        if not item:
            continue
        _, w_cov, w_trend = a.weights
        if w_cov > 0:
            for i, p in enumerate(a.prev, start=1):
                if p != item:
                    _add(inc.nb, item, p, w_cov / i)
                    _add(inc.nb, p, item, w_cov / i)
            seen = inc.visitors.setdefault(item, {})
            me = encode_user(a.event.user_id)
            seen.pop(me, None)  # ZADD: the latest touch counts (kept in lane order)
            seen[me] = a.event.ts
            if a.new_user:
                b = trend_bucket(item, buckets)
                inc.users[b] = inc.users.get(b, 0) + 1
        w = COMPLEMENT_WEIGHTS.get(a.event.type)
        if w is not None:
            for p in a.partners:
                if p != item:
                    _add(inc.cb, item, p, w)
                    _add(inc.cb, p, item, w)
        if w_trend > 0:
            trended.append((item, a.categories, w_trend, min(a.event.ts, now)))
    if trended:
        inc.ref = max(t for _, _, _, t in trended)
        hl = trending_halflife_ms
        for item, cats, w, t in trended:
            by = w * 2.0 ** ((t - inc.ref) / hl)
            b = trend_bucket(item, buckets)
            bucket = inc.trend.setdefault(b, {})
            bucket[item] = bucket.get(item, 0.0) + by
            for c in cats:
                _add(inc.cat_trend, c, item, by)
    return inc


class Aggregates:
    """Writes a lane's item-side increments, per slot, and applies them to ``cache``."""

    def __init__(
        self,
        redis: Redis,
        cache: ItemCache,
        *,
        neighbours_kept: int = 100,
        session_index_max: int = 200,
        trending_halflife_ms: int = 6 * 3_600_000,
        buckets: int = TREND_BUCKETS,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        self._redis = redis
        self.cache = cache
        self.neighbours_kept = neighbours_kept
        self.session_index_max = session_index_max
        self.trending_halflife_ms = trending_halflife_ms
        self.buckets = buckets
        self.trend_cap = math.ceil(TRENDING_KEPT / buckets)
        self._now_ms = now_ms
        self._trend = PipelinedScript(redis, _TREND_LUA)

    def collect(self, accepted: Sequence[Accepted]) -> Increments:
        """See :func:`collect`."""
        return collect(
            accepted,
            trending_halflife_ms=self.trending_halflife_ms,
            buckets=self.buckets,
            now_ms=self._now_ms() if self._now_ms is not None else None,
        )

    async def write(self, inc: Increments) -> None:
        """Write ``inc`` in one pipelined round trip, then apply the scores Redis returned to the
        cache; a second round trip trims the sets that gained a member. Connection errors of the
        first raise (the batch is retried: its events are then duplicates and count nothing
        again); an error reply is raised after the other keys were written and applied.

        Per item, plain commands (no script: an ``EVALSHA`` costs Redis several times the
        commands it runs): one ``ZINCRBY`` per neighbour and complement increment (its reply
        is the new score, which the cache needs), one ``ZADD`` of the item's visitors and a
        ``ZCARD``. A sorted set grows only when a member is new, and ``ZINCRBY`` then returns
        exactly the increment (``ZADD``: the count added), so only those sets are trimmed to
        their cap (``ZREMRANGEBYRANK``), in a second round trip right after the first. Per
        trending slot, one ``lua/trend.lua`` call (its decay origin is read and moved
        atomically with the increments)."""
        commands: list[tuple[Any, ...]] = []
        readers: list[Callable[[Iterator[Any]], None]] = []
        grown: dict[str, int] = {}  # key → cap, for the sets that gained a member
        for item in {*inc.nb, *inc.cb, *inc.visitors}:
            for key, rows in ((neighbours_key(item), inc.nb), (complements_key(item), inc.cb)):
                scores = rows.get(item)
                if scores:
                    for member, by in scores.items():
                        commands.append(("ZINCRBY", key, repr(by), member))
                    readers.append(self._scores_read(key, scores, grown))
            seen = inc.visitors.get(item)
            if seen:
                key = visitors_key(item)
                zadd: list[Any] = ["ZADD", key]
                for member, ts in seen.items():
                    zadd += (ts, member)
                commands.append(tuple(zadd))
                commands.append(("ZCARD", key))
                readers.append(self._index_read(key, seen, grown))
        calls: list[tuple[PipelinedScript, Sequence[str], Sequence[Any]]] = []
        after: list[Callable[[Any], None]] = []
        hl = float(self.trending_halflife_ms)  # msgpack: a tuning may exceed 64 bits
        for b in sorted({*inc.trend, *inc.users}):
            keys = [trend_key(b), trend_meta_key(b)]
            req = {
                "items": _flat(inc.trend.get(b)),
                "ref": inc.ref,
                "hl": hl,
                "cap": self.trend_cap,
                "users": inc.users.get(b, 0),
            }
            calls.append((self._trend, keys, [msgpack.packb(req)]))
            after.append(self._trend_written(keys))
        for c, row in inc.cat_trend.items():
            keys = [category_trend_key(c), category_meta_key(c)]
            req = {"items": _flat(row), "ref": inc.ref, "hl": hl, "cap": CATEGORY_TRENDING_KEPT}
            calls.append((self._trend, keys, [msgpack.packb(req)]))
            after.append(self._trend_written(keys))
        if not commands and not calls:
            return
        replies = await run_scripts(self._redis, calls, commands=commands)
        failed: Exception | None = None
        plain = iter(replies[: len(commands)])
        for read in readers:
            try:
                read(plain)
            except Exception as exc:  # an error reply: that key alone
                failed = failed or exc
        for apply, reply in zip(after, replies[len(commands) :], strict=True):
            if isinstance(reply, Exception):
                failed = failed or reply
                continue
            apply(msgpack.unpackb(reply, raw=False))
        if grown:
            await self._trim(grown)
        if failed is not None:
            raise failed

    def _scores_read(
        self, key: str, sent: dict[str, float], grown: dict[str, int]
    ) -> Callable[[Iterator[Any]], None]:
        """Reads one ``ZINCRBY`` reply per member of ``sent`` (the new scores) and applies them
        to the cache; a member whose new score is its increment was new: the set grew."""

        def read(replies: Iterator[Any]) -> None:
            scores: list[tuple[str, float]] = []
            failed: Exception | None = None
            for member, by in sent.items():
                reply = next(replies)
                if isinstance(reply, Exception):
                    failed = failed or reply
                    continue
                score = float(reply)
                if score == by:
                    grown[key] = self.neighbours_kept
                scores.append((member, score))
            if scores:
                self.cache.scores_written(key, scores)
            if failed is not None:
                raise failed

        return read

    def _index_read(
        self, key: str, visitors: dict[str, int], grown: dict[str, int]
    ) -> Callable[[Iterator[Any]], None]:
        """Reads the session index's ``ZADD`` (how many users are new) and ``ZCARD`` replies
        and applies the write to the cache (its size as after the trim that follows)."""

        def read(replies: Iterator[Any]) -> None:
            added, card = next(replies), next(replies)
            for reply in (added, card):
                if isinstance(reply, Exception):
                    raise reply
            cap = self.session_index_max
            if int(added):
                grown[key] = cap
            self.cache.index_written(
                key, [(m, float(t)) for m, t in visitors.items()], min(int(card), cap)
            )

        return read

    async def _trim(self, grown: dict[str, int]) -> None:
        """Trim each set that gained a member to its cap (its lowest scores go). A failure is
        logged, not raised: the increments stand, and the next write that adds a member to
        the set trims it again."""
        commands = [("ZREMRANGEBYRANK", key, 0, -cap - 1) for key, cap in grown.items()]
        try:
            replies = await rawpipe.execute(self._redis, commands)
        except (RedisError, OSError) as exc:
            log.warning("aggregates_trim_failed", keys=len(commands), error=type(exc).__name__)
            return
        failed = sum(1 for r in replies if isinstance(r, Exception))
        if failed:
            log.warning("aggregates_trim_failed", keys=failed, error="reply")

    def _trend_written(self, keys: list[str]) -> Callable[[Any], None]:
        def apply(out: dict[str, Any]) -> None:
            cache = self.cache
            if out.get("rescaled"):
                cache.invalidate(keys[0])
            else:
                cache.scores_written(keys[0], _pairs(out.get("scores") or []))
            meta = {"t0": str(out["t0"])}
            if out.get("users"):
                meta["users"] = str(out["users"])
            cache.meta_written(keys[1], meta)

        return apply


def _flat(row: dict[str, Any] | None) -> list[Any]:
    if not row:
        return []
    out: list[Any] = []
    for member, value in row.items():
        out.append(member)
        out.append(value)
    return out


def _pairs(flat: list[Any]) -> list[tuple[str, float]]:
    return [(str(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]


async def read_trending(
    redis: Redis, limit: int, buckets: int = TREND_BUCKETS, halflife_ms: float = 6 * 3_600_000
) -> list[tuple[str, float]]:
    """Global trending now: the best ``limit`` of every bucket, merged on one decay origin, best
    first (one pipelined round trip, uncached: for the catalog API, not the event path)."""
    pipe = redis.pipeline(transaction=False)
    for b in range(buckets):
        pipe.zrevrange(trend_key(b), 0, limit - 1, withscores=True)
        pipe.hget(trend_meta_key(b), "t0")
    replies = await pipe.execute()
    tops: list[tuple[list[tuple[str, float]], float]] = []
    for b in range(buckets):
        ranked, t0 = replies[2 * b], replies[2 * b + 1]
        if t0 is not None and ranked:
            tops.append(([(m.decode(), float(s)) for m, s in ranked], float(t0)))
    if not tops:
        return []
    latest = max(t0 for _, t0 in tops)
    return merge_buckets(((r, 2.0 ** ((t0 - latest) / halflife_ms)) for r, t0 in tops), limit)
