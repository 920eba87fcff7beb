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
  increments without a read; so are the user lanes' writes to users' recent lists
  (:meth:`ItemCache.recent_written`: the event's item at its time, as ``ZADD`` then the trim
  did), which other users' session kNN reads. Applying a write never makes an entry younger: it
  is read again ``max_age_s`` after its read, whatever was applied since (other workers' writes
  keep their bound). A read in flight while such a write lands is served to the lane that asked
  for it but not kept past that lane (it may predate the write).
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
from operator import itemgetter
from typing import Any

from redis.asyncio import Redis

from sessions import rawpipe
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
from sessions.rawpipe import score_pairs
from streams.scoring import Ranked, merge_buckets

# Kinds of read: top of a sorted set with scores; the same plus its size (the session index);
# a user's latest items (ascending); a hash's fields.
_TOP, _INDEX, _SEQ, _HASH = "top", "index", "seq", "hash"


@dataclass(slots=True)
class _Entry:
    kind: str
    #: Monotonic time of the read from Redis (-inf: not to be served again).
    at: float
    #: _TOP/_INDEX: [(member, score)] best first; _SEQ: [member] oldest first (ties by member,
    #: as ZRANGE orders); _HASH: dict.
    value: Any
    #: How many members were asked for (a shorter answer means the whole set is here).
    depth: int = 0
    #: _INDEX: the set's size.
    card: int = 0
    #: _SEQ: each member's score (the time of the user's latest touch), in ``value``'s order.
    times: list[float] | None = None
    #: _TOP/_INDEX: ``value``'s members in its order, built on first use (a write placing
    #: members, a lane reading visitors) and kept in step with ``value`` from then on: the
    #: session kNN reads every visitor of eight items per event, and a write searches the list.
    members: list[str] | None = None

    @property
    def complete(self) -> bool:
        return len(self.value) < self.depth


def _ignore(_result: str, _n: int) -> None:
    return None


#: One read a lane needs: (kind, key, depth, hash field names) — ``kind`` of ``key``, ``depth``
#: members (or the hash's fields). A plain tuple, built by :func:`top`, :func:`index`,
#: :func:`seq`, :func:`seqs` and :func:`fields`: a lane builds about a hundred per event, and a
#: named tuple's construction costs several times a tuple display's.
Want = tuple[str, str, int, tuple[str, ...]]


def top(key: str, depth: int) -> Want:
    """The best ``depth`` members of sorted set ``key`` with their scores."""
    return (_TOP, key, depth, ())


def index(key: str, depth: int) -> Want:
    """The latest ``depth`` members of session index ``key``, and its size."""
    return (_INDEX, key, depth, ())


def seq(key: str, depth: int) -> Want:
    """The latest ``depth`` members of a user's ``recent`` list, oldest first."""
    return (_SEQ, key, depth, ())


def seqs(keys: Iterable[str], depth: int) -> list[Want]:
    """:func:`seq` of each of ``keys`` (a lane names some fifty per event)."""
    return [(_SEQ, key, depth, ()) for key in keys]


def fields(key: str, *names: str) -> Want:
    """Fields of hash ``key``."""
    return (_HASH, key, 0, names)


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

    async def prefetch(self, wants: Iterable[Want], into: Snapshot | None = None) -> Snapshot:
        """Every entry of ``wants`` in a :class:`Snapshot` (``into``'s, when given), the missing
        or expired ones read in one pipelined round trip."""
        snap = into if into is not None else Snapshot(self)
        oldest = self._clock() - self.max_age_s
        entries = snap.entries
        cached = self._entries
        missing: dict[str, Want] = {}
        hits = 0
        # The lane's hot loop (about a hundred wants per event, most of them hits): inlined.
        for want in wants:
            kind, key, depth, names = want
            known = entries.get(key)
            if known is not None and (
                kind == _HASH or known.depth >= depth or len(known.value) < known.depth
            ):
                continue  # already in this snapshot, deep enough (or the whole list)
            entry = cached.get(key)
            if (
                entry is not None
                and entry.kind == kind
                and entry.at >= oldest
                and (
                    entry.value.keys() >= set(names)
                    if kind == _HASH
                    else entry.depth >= depth or len(entry.value) < entry.depth
                )
            ):
                cached.move_to_end(key)
                entries[key] = entry
                hits += 1
                continue
            prior = missing.get(key)
            if prior is None or prior[2] < depth:
                missing[key] = want
        if hits:
            self.observe("hit", hits)
        if missing:
            self.observe("miss", len(missing))
            await self._read(list(missing.values()), snap)
        return snap

    async def _read(self, wants: Sequence[Want], snap: Snapshot) -> None:
        commands: list[tuple[Any, ...]] = []
        keys = [w[1] for w in wants]
        for kind, key, depth, names in wants:
            if kind == _TOP:
                commands.append(("ZREVRANGE", key, 0, depth - 1, "WITHSCORES"))
            elif kind == _INDEX:
                commands.append(("ZREVRANGE", key, 0, depth - 1, "WITHSCORES"))
                commands.append(("ZCARD", key))
            elif kind == _SEQ:
                commands.append(("ZRANGE", key, -depth, -1, "WITHSCORES"))
            else:
                commands.append(("HMGET", key, *names))
        inflight = self._inflight
        for key in keys:
            inflight[key] = inflight.get(key, 0) + 1
        at = self._clock()
        try:
            replies = iter(await rawpipe.execute(self._redis, commands))
        finally:
            for key in keys:
                left = inflight[key] - 1
                if left:
                    inflight[key] = left
                else:
                    del inflight[key]
        entries = snap.entries
        tainted = self._tainted
        for w, key in zip(wants, keys, strict=True):
            entry = _parse(w, replies, at)
            entries[key] = entry
            if tainted and key in tainted:
                # An own write landed while this read was in flight: the answer may predate it.
                entry.at = -math.inf
                if key not in inflight:
                    tainted.discard(key)
            self._store(key, entry)

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

    def recent_written(self, key: str, member: str, at: float, *, cap: int) -> None:
        """A user's recent list ``key`` now holds ``member`` at time ``at`` (the user lane's
        ``ZADD``, then its trim to the ``cap`` latest; an own write).

        A cached window of the latest items stays exactly the list's latest: the member moves
        (or enters) at its time, the oldest leaves a full window; a member that leaves the
        window downwards (a late event) would let an uncached one in: the copy is dropped."""
        entry = self._touch(key)
        if entry is None or entry.kind != _SEQ or entry.times is None:
            return
        items: list[str] = entry.value
        times = entry.times
        complete = len(items) < entry.depth
        try:
            was = items.index(member)
        except ValueError:
            was = -1
        else:
            del items[was]
            del times[was]
        mark = (at, member)
        if not complete and items and mark < (times[0], items[0]):
            # Below the window: the list's other members there are not cached.
            if was >= 0:
                self.invalidate(key)
            return
        # Ascending (time, member), as ZRANGE orders: a touch now lands at the newest end.
        i = len(items)
        while i > 0 and (times[i - 1], items[i - 1]) > mark:
            i -= 1
        items.insert(i, member)
        times.insert(i, at)
        keep = min(entry.depth, cap)
        if len(items) > keep:
            del items[: len(items) - keep]
            del times[: len(times) - keep]

    def now(self) -> float:
        """The cache's clock (what :meth:`seq_read`'s ``at`` is on)."""
        return self._clock()

    def seq_read(self, key: str, flat: Sequence[Any], depth: int, at: float) -> None:
        """A user's recent list ``key`` was read elsewhere, atomically, no earlier than ``at``
        (the user lane's reply: ``flat`` member, time, … oldest first, the latest ``depth``):
        keep it as a fresh read, so other users' session kNN finds it without a round trip.

        ``at`` is taken before the lane's round trip was sent, so the entry is never younger
        than what it holds; a read of ``key`` in flight meanwhile is not kept past its lane."""
        if len(flat) % 2:
            raise ValueError("seq_read needs member, time pairs")
        self._touch(key)
        members = [str(m) for m in flat[0::2]]
        self._store(key, _Entry(_SEQ, at, members, depth, 0, [float(t) for t in flat[1::2]]))

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
    """The entry of ``w`` from its raw replies (:mod:`sessions.rawpipe`); an error reply raises."""
    kind, _, depth, names = w
    raw = next(replies)
    if isinstance(raw, Exception):
        raise raw
    if kind == _TOP:
        return _Entry(_TOP, at, score_pairs(raw), depth)
    if kind == _INDEX:
        card = next(replies)
        if isinstance(card, Exception):
            raise card
        return _Entry(_INDEX, at, score_pairs(raw), depth, int(card))
    if kind == _SEQ:
        pairs = score_pairs(raw)
        return _Entry(_SEQ, at, list(map(_MEMBER, pairs)), depth, 0, list(map(_SCORE, pairs)))
    return _Entry(
        _HASH,
        at,
        {f: (v.decode() if v is not None else None) for f, v in zip(names, raw, strict=True)},
    )


def _place_all(entry: _Entry, scores: Iterable[tuple[str, float]]) -> None:
    items: list[tuple[str, float]] = entry.value
    complete = entry.complete
    floor = _BY_REDIS_ORDER(items[-1]) if items and not complete else None
    members = _members(entry)  # searched in C: a write names a few of hundreds
    changed = False
    for member, score in scores:
        try:
            at = members.index(member)
        except ValueError:
            if floor is not None and (score, member) < floor:
                # Not cached: the set's other members score at most the last cached one.
                continue
        else:
            del items[at]
            del members[at]
        # Moved in place, not re-sorted: the list stays in ZREVRANGE's order, descending
        # (score, member); a member written now usually lands near the front (a session index
        # by time), so the scan is short.
        key = (score, member)
        at = len(items)
        for i, (m, s) in enumerate(items):
            if (s, m) < key:
                at = i
                break
        items.insert(at, (member, score))
        members.insert(at, member)
        changed = True
    if changed and (not complete or len(items) > entry.depth):
        del items[entry.depth :]
        del members[entry.depth :]


def _members(entry: _Entry) -> list[str]:
    """``entry.members``, built from its value when not yet (see :class:`_Entry`)."""
    members = entry.members
    if members is None:
        members = entry.members = list(map(_MEMBER, entry.value))
    return members


#: :func:`streams.scoring.redis_order` as a C-level key.
_BY_REDIS_ORDER = itemgetter(1, 0)
_MEMBER = itemgetter(0)
_SCORE = itemgetter(1)


class Snapshot:
    """The entries one lane's scoring reads (an :class:`streams.scoring.ItemSource`)."""

    def __init__(self, cache: ItemCache) -> None:
        self._cache = cache
        self.entries: dict[str, _Entry] = {}
        self._trend: Ranked | None = None
        self._trend_n = 0
        self._users: int | None = None

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
        """The cached index's members (the entry's own list when it is at most ``n`` long:
        read it, never change it)."""
        entry = self.entries[visitors_key(item)]
        members = _members(entry)
        return (members[:n] if len(members) > n else members), entry.card

    def users(self) -> int:
        if self._users is None:  # once per snapshot: every user of the lane asks
            self._users = self._count_users()
        return self._users

    def _count_users(self) -> int:
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
