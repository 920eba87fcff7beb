"""The worker's cache of item-side lists: what scoring reads, at most ``max_age_s`` old.

Scoring (:mod:`streams.scoring`) reads the same few lists for many events: the neighbours of
popular items, the trending buckets, the visitors of a shared item. Read from Redis per event,
a trending item shared by 10,000 visitors would cost Redis once per event; through this cache it
costs about once per ``max_age_s`` per worker.

A lane :meth:`ItemCache.prefetch` es what it will read in one pipelined round trip for all the
keys it misses (a second one for what depends on the first: the chosen session neighbours'
latest items), and gets a :class:`Snapshot` that serves every read of its scoring without I/O.

Guarantees:

- **Staleness**: an entry is served at most ``max_age_s`` after it was read from Redis (0: every
  lane reads again). Other workers' writes show within that bound.
- **Own writes at once**: the aggregate writes of this worker (:mod:`streams.aggregates`) are
  applied to the cached copies with the exact scores Redis returned, so a worker sees its own
  increments without a read. A read in flight while such a write lands is served to the lane
  that asked for it but not kept past that lane (it may predate the write).
- **Memory**: at most ``max_entries`` entries (least recently used go first); each entry is one
  bounded list (the sizes scoring asks for: tens to a few hundred members).
- Hits and misses are counted (``observe``, the ``pushrec_item_cache`` metric).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from sessions.keys import (
    MODEL_KEY,
    TREND_BUCKETS,
    category_trend_key,
    complements_key,
    encoded_user_tag,
    model_neighbours_key,
    neighbours_key,
    trend_key,
    trend_meta_key,
    visitors_key,
)
from streams.scoring import Ranked, merge_buckets, redis_order

# Kinds of read: top of a sorted set with scores; the same plus its size (the session index);
# a user's latest items (ascending); a hash's fields.
_TOP, _INDEX, _SEQ, _HASH = "top", "index", "seq", "hash"


@dataclass(slots=True)
class _Entry:
    kind: str
    #: Monotonic time of the read from Redis (-inf: not to be served again).
    at: float
    #: _TOP/_INDEX: [(member, score)] best first; _SEQ: [member] oldest first; _HASH: dict.
    value: Any
    #: How many members were asked for (a shorter answer means the whole set is here).
    depth: int = 0
    #: _INDEX: the set's size.
    card: int = 0

    @property
    def complete(self) -> bool:
        return len(self.value) < self.depth


def _ignore(_result: str, _n: int) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Want:
    """One read a lane needs: ``kind`` of ``key``, ``depth`` members (or hash fields)."""

    kind: str
    key: str
    depth: int = 0
    fields: tuple[str, ...] = ()


def top(key: str, depth: int) -> Want:
    """The best ``depth`` members of sorted set ``key`` with their scores."""
    return Want(_TOP, key, depth)


def index(key: str, depth: int) -> Want:
    """The latest ``depth`` members of session index ``key``, and its size."""
    return Want(_INDEX, key, depth)


def seq(key: str, depth: int) -> Want:
    """The latest ``depth`` members of a user's ``recent`` list, oldest first."""
    return Want(_SEQ, key, depth)


def fields(key: str, *names: str) -> Want:
    """Fields of hash ``key``."""
    return Want(_HASH, key, 0, names)


class ItemCache:
    """Item-side reads for scoring, cached; see the module docstring."""

    def __init__(
        self,
        redis: Redis,
        *,
        max_age_s: float = 1.0,
        max_entries: int = 100_000,
        buckets: int = TREND_BUCKETS,
        trending_halflife_ms: int = 6 * 3_600_000,
        clock: Callable[[], float] = time.monotonic,
        observe: Callable[[str, int], None] = _ignore,
    ) -> None:
        if max_age_s < 0 or max_entries < 1 or buckets < 1:
            raise ValueError("ItemCache needs max_age_s >= 0, max_entries >= 1, buckets >= 1")
        self._redis = redis
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self.buckets = buckets
        self.trending_halflife_ms = trending_halflife_ms
        self._clock = clock
        #: Called with ("hit" | "miss", count) once per prefetch.
        self.observe = observe
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, int] = {}
        self._tainted: set[str] = set()

    def __len__(self) -> int:
        return len(self._entries)

    # -- reads -----------------------------------------------------------------------------

    def _fresh(self, want: Want, now: float) -> _Entry | None:
        entry = self._entries.get(want.key)
        if entry is None or entry.kind != want.kind or now - entry.at > self.max_age_s:
            return None
        if want.kind in (_TOP, _INDEX, _SEQ) and entry.depth < want.depth and not entry.complete:
            return None
        if want.kind == _HASH and not set(want.fields) <= entry.value.keys():
            return None
        self._entries.move_to_end(want.key)
        return entry

    async def prefetch(self, wants: Iterable[Want], into: Snapshot | None = None) -> Snapshot:
        """Every entry of ``wants`` in a :class:`Snapshot` (``into``'s, when given), the missing
        or expired ones read in one pipelined round trip."""
        snap = into if into is not None else Snapshot(self)
        now = self._clock()
        missing: dict[str, Want] = {}
        hits = 0
        for want in wants:
            if want.key in snap.entries and want.key not in missing:
                known = snap.entries[want.key]
                if known.depth >= want.depth or known.complete or want.kind == _HASH:
                    continue
            entry = self._fresh(want, now)
            if entry is not None:
                snap.entries[want.key] = entry
                hits += 1
                continue
            prior = missing.get(want.key)
            if prior is None or prior.depth < want.depth:
                missing[want.key] = want
        if hits:
            self.observe("hit", hits)
        if missing:
            self.observe("miss", len(missing))
            await self._read(list(missing.values()), snap)
        return snap

    async def _read(self, wants: Sequence[Want], snap: Snapshot) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for w in wants:
            if w.kind == _TOP:
                pipe.zrevrange(w.key, 0, w.depth - 1, withscores=True)
            elif w.kind == _INDEX:
                pipe.zrevrange(w.key, 0, w.depth - 1, withscores=True)
                pipe.zcard(w.key)
            elif w.kind == _SEQ:
                pipe.zrange(w.key, -w.depth, -1)
            else:
                pipe.hmget(w.key, list(w.fields))
        for w in wants:
            self._inflight[w.key] = self._inflight.get(w.key, 0) + 1
        at = self._clock()
        try:
            replies = iter(await pipe.execute())
        finally:
            for w in wants:
                left = self._inflight[w.key] - 1
                if left:
                    self._inflight[w.key] = left
                else:
                    del self._inflight[w.key]
        for w in wants:
            entry = _parse(w, replies, at)
            snap.entries[w.key] = entry
            if w.key in self._tainted:
                # An own write landed while this read was in flight: the answer may predate it.
                entry.at = -math.inf
                if w.key not in self._inflight:
                    self._tainted.discard(w.key)
            self._store(w.key, entry)

    def _store(self, key: str, entry: _Entry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    # -- own writes ------------------------------------------------------------------------

    def _touch(self, key: str) -> _Entry | None:
        if key in self._inflight:
            self._tainted.add(key)
        return self._entries.get(key)

    def scores_written(self, key: str, scores: Iterable[tuple[str, float]]) -> None:
        """Sorted set ``key`` now holds these members with these exact scores (an own write).

        A cached top list stays exactly the set's top: a member enters when its new score
        reaches the list's last one (the rest of the set scores below that)."""
        entry = self._touch(key)
        if entry is None or entry.kind not in (_TOP, _INDEX):
            return
        _place_all(entry, scores)

    def index_written(self, key: str, members: Iterable[tuple[str, float]], card: int) -> None:
        """Session index ``key`` now holds these members at these times, ``card`` in all."""
        entry = self._touch(key)
        if entry is None or entry.kind != _INDEX:
            return
        entry.card = card
        _place_all(entry, members)

    def meta_written(self, key: str, values: dict[str, str]) -> None:
        """Hash ``key``'s fields now hold ``values``."""
        entry = self._touch(key)
        if entry is not None and entry.kind == _HASH:
            entry.value.update(values)

    def invalidate(self, key: str) -> None:
        """Forget ``key`` (its value changed in a way not applied here: a rescale, a user's
        own list)."""
        if key in self._inflight:
            self._tainted.add(key)
        self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()


def _parse(w: Want, replies: Any, at: float) -> _Entry:
    if w.kind == _TOP:
        return _Entry(_TOP, at, [(m.decode(), s) for m, s in next(replies)], w.depth)
    if w.kind == _INDEX:
        value = [(m.decode(), s) for m, s in next(replies)]
        return _Entry(_INDEX, at, value, w.depth, int(next(replies)))
    if w.kind == _SEQ:
        return _Entry(_SEQ, at, [m.decode() for m in next(replies)], w.depth)
    raw = next(replies)
    return _Entry(
        _HASH,
        at,
        {f: (v.decode() if v is not None else None) for f, v in zip(w.fields, raw, strict=True)},
    )


def _place_all(entry: _Entry, scores: Iterable[tuple[str, float]]) -> None:
    items: list[tuple[str, float]] = entry.value
    complete = entry.complete
    floor = items[-1] if items and not complete else None
    changed = False
    for member, score in scores:
        for i, (m, _) in enumerate(items):
            if m == member:
                del items[i]
                changed = True
                break
        else:
            # Not among the cached: the set's other members score at most the last cached one.
            if floor is not None and redis_order((member, score)) < redis_order(floor):
                continue
        items.append((member, score))
        changed = True
    if changed:
        items.sort(key=redis_order, reverse=True)
        if not complete or len(items) > entry.depth:
            del items[entry.depth :]


class Snapshot:
    """The entries one lane's scoring reads (an :class:`streams.scoring.ItemSource`)."""

    def __init__(self, cache: ItemCache) -> None:
        self._cache = cache
        self.entries: dict[str, _Entry] = {}
        self._trend: Ranked | None = None
        self._trend_n = 0

    def _top(self, key: str, n: int) -> Ranked:
        entry = self.entries.get(key)
        if entry is None:
            raise KeyError(f"not prefetched: {key}")
        ranked: Ranked = entry.value
        return ranked[:n] if len(ranked) > n else ranked

    def neighbours(self, item: str, n: int) -> Ranked:
        return self._top(neighbours_key(item), n)

    def complements(self, item: str, n: int) -> Ranked:
        return self._top(complements_key(item), n)

    def model_version(self) -> str | None:
        """The offline model's current version (None: no model loaded)."""
        entry = self.entries.get(MODEL_KEY)
        return entry.value.get("nb") if entry is not None else None

    def model(self, item: str, n: int) -> Ranked:
        version = self.model_version()
        if version is None:
            return []
        return self._top(model_neighbours_key(version, item), n)

    def category_trend(self, category: str, n: int) -> Ranked:
        return self._top(category_trend_key(category), n)

    def global_trend(self, n: int) -> Ranked:
        if self._trend is None or self._trend_n < n:
            self._trend = self._merged(n)
            self._trend_n = n
        return self._trend[:n]

    def _merged(self, n: int) -> Ranked:
        cache = self._cache
        origins: list[tuple[Ranked, float]] = []
        for b in range(cache.buckets):
            t0 = self.entries[trend_meta_key(b)].value.get("t0")
            if t0 is not None:
                origins.append((self._top(trend_key(b), n), float(t0)))
        if not origins:
            return []
        latest = max(t0 for _, t0 in origins)
        hl = cache.trending_halflife_ms
        return merge_buckets(((r, 2.0 ** ((t0 - latest) / hl)) for r, t0 in origins), n)

    def visitors(self, item: str, n: int) -> tuple[list[str], int]:
        entry = self.entries[visitors_key(item)]
        return [m for m, _ in entry.value[:n]], entry.card

    def users(self) -> int:
        total, seen = 0, False
        for b in range(self._cache.buckets):
            users = self.entries[trend_meta_key(b)].value.get("users")
            if users is not None:
                total += int(users)
                seen = True
        return total if seen else 1

    def sequence(self, member: str, n: int) -> list[str]:
        entry = self.entries[encoded_user_tag(member) + "recent"]
        items: list[str] = entry.value
        return items[-n:] if len(items) > n else items
