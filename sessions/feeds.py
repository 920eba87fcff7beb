"""Stored feed versions and per-user diff history, in Redis.

Guarantees:

- A write is a compare-and-set on the stored version, in one round trip (Lua): two writers racing
  on one user's feed never interleave; the loser gets :class:`VersionConflict` and recomputes.
- Every version after the first of an epoch has its diff in the history (a list, newest first),
  written atomically with the version itself, unless the diff is larger than
  ``history_max_diff_bytes``: then the history is emptied instead (no chain crosses that version).
- The history exists only for resume after a short disconnect, and is bounded three ways: at most
  ``history_len`` entries (trimmed exactly on every write), none older than ``history_ttl_s`` by
  Redis's clock (older ones are trimmed on write, the key expires that long after its newest
  entry, and a read never uses one), and no diff above the byte bound. Why a list and not a
  stream: Redis 7 preallocates 4 KB for a stream's first node, so even a one-entry stream costs
  ~4.7 KB, where a short list costs its bytes.
- A feed whose key vanished (TTL, flush) starts a new epoch on its next write, and that write
  deletes the history of the older epoch: every history entry belongs to the stored epoch.
- Each history entry carries the time it was written, its version's ``n``, its diff and the
  checksum of the list it produces (``sum``), so a replay needs neither the intermediate lists
  nor a recomputation.
- Resume is all or nothing (:meth:`FeedStore.read_since`): the stored state and the history are
  read together in one script (a concurrent write cannot fall between them), and the missed diffs
  come back only when the history holds every one of them, consecutive, ending at the stored
  version; otherwise none do, and the caller sends a snapshot.

**Who shows what** (for catalog propagation, :mod:`streams.propagate`): every write also keeps an
index, one sorted set per (item, feed) — ``pr:{i:<item>}:shown:<feed>``
(:func:`sessions.keys.shown_key`), member the user, score the time (ms, the writer's clock) the
entry was last confirmed. The index is item-side (each item's key in its own slot), so it is
written around the user-slot compare-and-set, not inside it (issue 13: every script call on one
slot):

- items entering the list are added *before* the compare-and-set, in the same pipeline (plain
  ``ZADD … GT``, one per item key for all the writes of a round, however many users share the
  item: the score only moves forward, so a writer whose clock is behind never ages an entry).
  So for a feed that exists, the users in an item's set include those whose stored list shows
  it (once the feed has been written by this code: a feed stored before the index existed joins
  it at its next write).
- items leaving a list are **not** removed on the write (issue 13: that was one script call per
  item key per round, the third largest cost per event when many visitors share items). The set
  holds more users than show the item — stale entries: lists the item left, writes that lost
  their compare-and-set, feeds whose key vanished (TTL, merge, flush). They are harmless: the
  reader checks every indexed user's stored list before acting (:mod:`streams.propagate` reads
  each one and skips those that do not show the item), and removes the stale entries it met
  (:meth:`FeedStore.unindex_many`, only if the feed is still as read, and the entry as read).
  A write that leaves entries behind marks its feed (field ``g``), so a denial of consent of a
  user with no other personal data still erases them (``streams/lua/user_event.lua``: such a
  denial is a withdrawal, whose erasure scans the index).
- **Age bound**: every item of a list is confirmed again by the first write after
  ``index_refresh_s`` (field ``x`` of the feed hash: the write script says when that is due, the
  confirmations follow the write), and a feed lives ``ttl_s`` after its last write, so an entry
  older than :attr:`FeedStore.index_bound_s` (TTL + ``index_refresh_s``) is surely stale. A
  store trims those (``ZREMRANGEBYSCORE`` after the write) from each set its writes touch, at
  most once per ``index_refresh_s`` per set.
- **Size bound**: a set holds at most the users whose indexed write showed the item within
  ``index_bound_s`` + ``index_refresh_s`` before the set's last trim, plus those written since
  (and those a crashed writer added without its trim). Since leaving items stay, that is every
  user whose list showed the item in that window, not only those showing it now: more memory
  and more feeds read by a propagation of that item (each stale entry it meets is removed, so
  it is read once).
- **Key TTL**: ``index_bound_s`` + ``index_refresh_s`` (:attr:`FeedStore.index_ttl_s`),
  refreshed by a store at most once per ``index_refresh_s`` per key: an entry written at ``t``
  follows that store's refresh at some ``t' >= t - index_refresh_s``, so its key lives until at
  least ``t + index_bound_s`` (assuming every store runs with the same settings). A set untouched
  that long expires. A key deleted from outside (flush) and recreated between a store's
  refreshes has no TTL until that store's next refresh of it (its trims still empty it).
- what is given up against the single-script version this replaced: a writer dying between its
  write and the confirmations that follow it (a full confirmation, not an entering item) leaves
  those entries unconfirmed until the next one; on Redis Cluster the additions and the write go
  to different nodes in one round trip, so a crash in that round trip can store the write
  without its additions (until the next full confirmation); :meth:`FeedStore.unindex_many` can
  drop an entry whose write's additions and compare-and-set both fall between its two reads
  (they are one pipeline); writers' clocks are assumed to agree to within the time between two
  writes of one feed.
- Cost per round of writes (:meth:`FeedStore.write_many`): one plain command per item key
  entering any of its lists (in the writes' own round trip), plus an ``EXPIRE`` for a key this
  store has not refreshed within ``index_refresh_s``; when a set is due a trim or a full
  confirmation is due, one more round trip: one plain command per set to trim, and once per
  ``index_refresh_s`` one ``ZADD`` per item key of the confirmed lists. No script call on the
  index.
- Item ids must not contain a newline (catalog ids are printable).
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeGuard

import msgpack
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sessions.diff import DiffBody, checksum, ids_of, make_diff
from sessions.exceptions import VersionConflict, WriteRefused
from sessions.keys import feed_key, history_key
from sessions.keys import shown_key as _shown_key
from sessions.scripts import Call, PipelinedScript, run_scripts
from sessions.text import text
from sessions.versions import Version, new_epoch

log = structlog.get_logger(__name__)

#: The personalised feed every connection follows by default.
HOME = "home"
_WRITE_LUA = resources.files("sessions").joinpath("lua/feed_write.lua").read_text()
_SINCE_LUA = resources.files("sessions").joinpath("lua/feed_since.lua").read_text()
_REMOVE_LUA = resources.files("sessions").joinpath("lua/shown_remove.lua").read_text()

#: How often (at most) a write confirms every item of its list in the index, by default.
INDEX_REFRESH_S = 3600
#: Index keys whose last refresh (TTL and trim) a store remembers (bounds its memory: ~100
#: bytes a key; a key forgotten is only refreshed again sooner).
TRIMS_KEPT = 100_000
#: History bounds by default: entries per feed, age (s), largest diff kept (bytes).
HISTORY_LEN = 32
HISTORY_TTL_S = 300.0
HISTORY_MAX_DIFF_BYTES = 1024


def shown_key(feed: str, item: str) -> str:
    """The sorted set of users whose stored ``feed`` shows ``item`` (score: ms last confirmed);
    :func:`sessions.keys.shown_key` with the arguments in this module's order."""
    return _shown_key(item, feed)


@dataclass(frozen=True, slots=True)
class FeedState:
    """One stored version of a feed: its items in order."""

    user: str
    feed: str
    version: Version
    items: tuple[dict[str, Any], ...]
    #: How the list was made, opaque here: the experiment variants that computed it (see
    #: :mod:`streams.experiments`), stored with the version; "" when none.
    tag: str = ""
    #: Checksum of the id order (see :func:`sessions.diff.checksum`); computed once, since
    #: every frame carrying this state repeats it.
    sum: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sum", checksum(ids_of(self.items)))

    @property
    def rec_id(self) -> str:
        """The list's recommendation id (``<epoch>.<n>~<tag>``), "" when it has no tag: what
        impression and click events quote so they count for the variants that made the list."""
        return rec_id(self.version, self.tag)


def rec_id(version: Version, tag: str) -> str:
    """The recommendation id of the list at ``version`` made as ``tag`` ("" when untagged)."""
    return f"{version.epoch}.{version.n}~{tag}" if tag else ""


#: Longest recommendation id accepted back from a client.
MAX_REC_ID = 2048


def parse_rec_id(value: str) -> tuple[Version, str] | None:
    """``(version, tag)`` of a recommendation id made by :func:`rec_id`; None when malformed."""
    if len(value) > MAX_REC_ID:
        return None
    head, sep, tag = value.partition("~")
    epoch, dot, n = head.rpartition(".")
    if not sep or not tag or not dot or not epoch or not n.isdigit() or not n.isascii():
        return None
    return Version(epoch, int(n)), tag


@dataclass(slots=True)
class FeedUpdate:
    """A change of one user's feed, as published to the nodes holding that user's sockets.

    ``base`` is None when the change starts a new epoch (then ``diff`` is None and clients take a
    snapshot of ``state``). ``frames`` caches the encoded frame per codec, so an update is
    serialised once however many connections receive it. ``entered_ms`` is when the oldest
    event behind this version entered the pipeline (epoch ms; 0: no event, e.g. a catalog edit):
    the start of the event→push latency that the nodes measure when they write the frame.
    """

    state: FeedState
    base: Version | None
    diff: DiffBody | None
    frames: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)
    entered_ms: int = field(default=0, compare=False)

    @property
    def user(self) -> str:
        """The user whose feed changed."""
        return self.state.user

    @property
    def feed(self) -> str:
        """The feed that changed."""
        return self.state.feed


@dataclass(frozen=True, slots=True)
class ReplayedDiff:
    """One missed change of a feed, replayed from the history on resume.

    Unlike :class:`FeedUpdate` it carries no full list: the history stores diffs only, so the
    lists between the held version and the stored one are never rebuilt on the server. ``sum`` is
    the checksum of the list after applying ``diff`` to the list at ``base`` (as stored at write
    time); a client applies the diffs in order and checks each ``sum``. ``version`` is always
    ``base`` with ``n + 1``.
    """

    feed: str
    base: Version
    version: Version
    diff: DiffBody
    sum: str
    #: The tag of the list at ``version`` (see :attr:`FeedState.tag`).
    tag: str = ""


@dataclass(frozen=True, slots=True)
class Resume:
    """What a client holding some version of a feed needs to reach the stored one.

    ``state`` is the stored state (None: the feed does not exist). ``updates``:

    - None: the chain from the held version cannot be proven (no held version, another epoch,
      held ahead, history trimmed or lost): send a snapshot of ``state``;
    - ``()``: the client already holds ``state.version``: send nothing;
    - ``(u1, …, uk)``: every change from the held version to ``state.version``, in order:
      ``u1.base`` is the held version, each ``ui.base`` is ``u(i-1).version``, and
      ``uk.version == state.version`` with ``uk.sum == state.sum``.
    """

    state: FeedState | None
    updates: tuple[ReplayedDiff, ...] | None


def decode_body(raw: bytes | None) -> tuple[dict[str, Any], ...]:
    """Decode a stored feed body (msgpack list of payloads)."""
    if not raw:
        return ()
    items = msgpack.unpackb(raw)
    return tuple(items)


#: The fields of a feed hash that make its state (``HMGET`` order of :func:`parse_state`).
STATE_FIELDS = ("e", "n", "b", "r")


def parse_state(user: str, feed: str, fields: list[Any]) -> FeedState | None:
    """Build a :class:`FeedState` from ``HMGET e n b [r]``; None when the feed does not exist."""
    epoch, n, body = fields[:3]
    if epoch is None or n is None:
        return None
    tag = text(fields[3]) if len(fields) > 3 and fields[3] else ""
    return FeedState(user, feed, Version(text(epoch), int(n)), decode_body(body), tag)


class FeedCache:
    """The last known state of each user's home feed, least recently used evicted first.

    Only a hint: whoever reads it compares its version with the stored one before relying on
    it, so a stale entry costs a round trip's worth of data, never a wrong diff.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._states: OrderedDict[str, FeedState] = OrderedDict()

    def get(self, user: str) -> FeedState | None:
        """The cached state of ``user``'s feed, if any."""
        state = self._states.get(user)
        if state is not None:
            self._states.move_to_end(user)
        return state

    def put(self, state: FeedState) -> None:
        """Remember ``state`` as the latest of its user."""
        self._states[state.user] = state
        self._states.move_to_end(state.user)
        if len(self._states) > self._capacity:
            self._states.popitem(last=False)


class FeedStore:
    """Reads and compare-and-set writes of feed versions."""

    def __init__(
        self,
        redis: Redis,
        *,
        ttl_s: int,
        history_len: int = HISTORY_LEN,
        history_ttl_s: float = HISTORY_TTL_S,
        history_max_diff_bytes: int = HISTORY_MAX_DIFF_BYTES,
        index_refresh_s: int = INDEX_REFRESH_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._history_len = history_len
        self._history_ttl_ms = max(1, round(history_ttl_s * 1000))
        self._history_max_diff_bytes = history_max_diff_bytes
        self._index_refresh_s = index_refresh_s
        self._clock = clock
        self._write = PipelinedScript(redis, _WRITE_LUA)
        self._since = PipelinedScript(redis, _SINCE_LUA)
        self._remove = PipelinedScript(redis, _REMOVE_LUA, name="shown_remove.lua")
        #: Index key → when this store last refreshed its TTL and trimmed it (ms; see
        #: :meth:`_refresh_due`).
        self._trimmed: OrderedDict[str, int] = OrderedDict()

    def guarded(self, prelude: str) -> FeedStore:
        """A store on the same Redis and settings whose writes run ``prelude`` (Lua) first, in
        the write's own script: a condition checked atomically with the compare-and-set.

        The prelude sees the write's KEYS and ARGV in place, followed by what each write passes
        as ``extra`` (keys, args), and reads those from the end (so it does not depend on how
        many the write takes). It refuses a write by returning ``{0, '', -1, code}``: nothing is
        written and the write's result is :class:`WriteRefused` with that ``code``.
        """
        store = copy.copy(self)
        store._write = PipelinedScript(self._redis, prelude + "\n" + _WRITE_LUA)
        return store

    @property
    def index_bound_s(self) -> int:
        """Age (s) past which an index entry is surely stale: the TTL plus the refresh interval."""
        return self._ttl_s + self._index_refresh_s

    @property
    def index_ttl_s(self) -> int:
        """TTL (s) an index key gets: the age bound plus the refresh interval, since a store
        refreshes it at most once per interval (see the module docstring)."""
        return self.index_bound_s + self._index_refresh_s

    async def read(self, user: str, feed: str) -> FeedState | None:
        """The current version of a feed, or None when it has none."""
        fields = await self._redis.hmget(feed_key(user, feed), list(STATE_FIELDS))
        return parse_state(user, feed, list(fields))

    async def read_since(self, user: str, feed: str, held: Version | None) -> Resume:
        """The stored state of a feed and every diff from ``held`` to it (see :class:`Resume`).

        One round trip (one script reads the state and the needed tail of the history
        atomically; a second one only when Redis lost the script). The history is read only
        when ``held`` is of the stored epoch and at most ``history_len`` changes behind, and then
        only its last ``stored n - held n`` entries, and only those within ``history_ttl_s``.
        """
        epoch, n = (held.epoch, held.n) if held is not None else ("", 0)
        keys = [feed_key(user, feed), history_key(user, feed)]
        [reply] = await self._since.run_many(
            [(keys, [epoch, n, self._history_len, self._history_ttl_ms])]
        )
        if isinstance(reply, Exception):
            raise reply
        if reply is None:
            return Resume(None, None)
        state = parse_state(user, feed, reply[:4])
        if state is None:  # not reached: the script answers nil for a missing feed
            return Resume(None, None)
        if held is None or held.epoch != state.version.epoch or held.n > state.version.n:
            return Resume(state, None)
        if held.n == state.version.n:
            return Resume(state, ())
        if len(reply) < 5:  # too far behind for the history (or an invalid held n)
            return Resume(state, None)
        return Resume(state, _chain(state, held, reply[4]))

    async def write(
        self,
        user: str,
        feed: str,
        base: FeedState | None,
        items: list[dict[str, Any]],
        *,
        tag: str | None = None,
        extra: tuple[Sequence[str], Sequence[Any]] | None = None,
        indexed: bool = True,
    ) -> FeedUpdate | None:
        """Store ``items`` as the version after ``base`` (or a new epoch when ``base`` is None).

        ``tag`` labels the new version (see :attr:`FeedState.tag`); None keeps the stored
        version's label (an edit of the list, not a new computation). ``extra``: the keys and
        arguments of a guarded store's prelude (:meth:`guarded`), which may refuse the write
        (:class:`WriteRefused`). ``indexed=False``: the write leaves the shown-items index alone
        (a user without personalization consent: no item-side key may name them).

        Returns the published-to-be update, or None when ``items`` equals ``base`` (no write, no
        round trip). Raises :class:`VersionConflict` when the stored version is not ``base``.
        """
        extras = [extra] if extra is not None else None
        unindexed = () if indexed else (user,)
        result = (
            await self.write_many(
                [(user, feed, base, items)], tags=[tag], extras=extras, unindexed=unindexed
            )
        )[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def write_many(
        self,
        writes: Sequence[tuple[str, str, FeedState | None, list[dict[str, Any]]]],
        *,
        tags: Sequence[str | None] | None = None,
        extras: Sequence[tuple[Sequence[str], Sequence[Any]]] | None = None,
        unindexed: Collection[str] = (),
    ) -> list[FeedUpdate | Exception | None]:
        """Several :meth:`write` calls in one pipelined round trip (none when nothing changed).

        ``tags``: each write's ``tag`` (see :meth:`write`); None (all) keeps every stored label.
        ``extras``: each write's ``extra`` (see :meth:`write`). ``unindexed``: users whose
        writes leave the shown-items index alone (see ``indexed`` of :meth:`write`).

        Each result is the update, None (unchanged), or the exception of that write alone
        (:class:`VersionConflict`, or a Redis error reply); connection errors raise for all.
        """
        out: list[FeedUpdate | Exception | None] = [None] * len(writes)
        pending: list[tuple[int, FeedState, FeedState | None, DiffBody | None, list[str]]] = []
        calls: list[Call] = []
        entering: dict[str, list[str]] = {}  # index key → users whose write adds the item
        now_ms = int(self._clock() * 1000)
        for i, (user, feed, base, items) in enumerate(writes):
            diff: DiffBody | None = None
            if base is not None:
                diff = make_diff(base.items, items)
                if diff is None:
                    continue
            draft = FeedState(user, feed, Version("", 0), tuple(items))
            new_ids = ids_of(items)
            old_ids = ids_of(base.items) if base is not None else []
            new_set, old_set = set(new_ids), set(old_ids)
            indexed = user not in unindexed
            kept = [i for i in new_ids if i in old_set]
            # Items leaving the list keep their entries (stale, see the module docstring); the
            # feed is marked as having left some (field g) for a denial of consent.
            leaves = indexed and any(i not in new_set for i in old_ids)
            if indexed:
                # Before the compare-and-set (same round trip): the index never misses an item a
                # stored list shows; a write that loses leaves stale entries, which are allowed.
                for item in new_ids:
                    if item not in old_set:
                        entering.setdefault(_shown_key(item, feed), []).append(user)
            more_keys, more_args = extras[i] if extras is not None else ((), ())
            calls.append(
                (
                    [feed_key(user, feed), history_key(user, feed), *more_keys],
                    [
                        base.version.epoch if base else "",
                        base.version.n if base else 0,
                        msgpack.packb(items),
                        msgpack.packb(diff) if diff is not None else b"",
                        self._history_len,
                        self._ttl_s,
                        new_epoch(),
                        draft.sum,
                        "1" if indexed else "",
                        now_ms,
                        self._index_refresh_s * 1000,
                        "0" if tags is None or tags[i] is None else "1" + str(tags[i]),
                        self._history_ttl_ms,
                        self._history_max_diff_bytes,
                        "1" if leaves else "",
                        *more_args,
                    ],
                )
            )
            pending.append((i, draft, base, diff, kept))
        if not pending:
            return out
        adds = self._confirm(entering, now_ms)
        replies = await run_scripts(
            self._redis, [(self._write, k, a) for k, a in calls], commands=adds
        )
        for reply in replies[: len(adds)]:
            if isinstance(reply, Exception):
                raise reply  # nothing of this round is relied on: the caller retries
        confirming: dict[str, list[str]] = {}
        for (i, draft, base, diff, kept), res in zip(pending, replies[len(adds) :], strict=True):
            if isinstance(res, Exception):
                out[i] = res
                continue
            ok, epoch, n = int(res[0]), res[1], int(res[2])
            if not ok and n == -1 and len(res) > 3:  # a guarded store's prelude said no
                out[i] = WriteRefused(int(res[3]))
                continue
            if not ok:
                out[i] = VersionConflict(f"feed {draft.feed} moved on before our write (n={n})")
                continue
            tag = text(res[3]) if len(res) > 3 and res[3] else ""
            state = FeedState(draft.user, draft.feed, Version(text(epoch), n), draft.items, tag)
            out[i] = FeedUpdate(state, base.version if base else None, diff)
            if draft.user not in unindexed and len(res) > 4 and int(res[4]):
                # The script says a full confirmation is due: every kept item, after the write.
                for item in kept:
                    confirming.setdefault(_shown_key(item, draft.feed), []).append(draft.user)
        after = self._confirm(confirming, now_ms)
        if after:
            await self._index_after([], after)
        return out

    def _refresh_due(self, key: str, now_ms: int) -> bool:
        """Whether this store refreshes ``key``'s TTL and trims it now: at most once per
        ``index_refresh_s`` per key (remembered for the latest :data:`TRIMS_KEPT` keys; one
        forgotten is refreshed sooner, which is always safe)."""
        last = self._trimmed.get(key)
        if last is not None and 0 <= now_ms - last < self._index_refresh_s * 1000:
            return False
        self._trimmed[key] = now_ms
        self._trimmed.move_to_end(key)
        if len(self._trimmed) > TRIMS_KEPT:
            self._trimmed.popitem(last=False)
        return True

    def _confirm(self, users: dict[str, list[str]], now_ms: int) -> list[tuple[Any, ...]]:
        """Plain commands confirming ``users`` in each index key at ``now_ms``: per key one
        ``ZADD GT`` (the score only moves forward: a writer whose clock is behind never ages an
        entry), and when this store's refresh of the key is due (:meth:`_refresh_due`) an
        ``EXPIRE`` (a set untouched for :attr:`index_ttl_s` expires) and a trim of the entries
        older than :attr:`index_bound_s` (surely stale: safe at any time)."""
        out: list[tuple[Any, ...]] = []
        ttl = self.index_ttl_s
        stale = f"({now_ms - self.index_bound_s * 1000}"
        for key, members in users.items():
            zadd: list[Any] = ["ZADD", key, "GT"]
            for user in members:
                zadd += (now_ms, user)
            out.append(tuple(zadd))
            if self._refresh_due(key, now_ms):
                out.append(("EXPIRE", key, ttl))
                out.append(("ZREMRANGEBYSCORE", key, "-inf", stale))
        return out

    async def _index_after(
        self,
        calls: Sequence[tuple[PipelinedScript, Sequence[str], Sequence[Any]]],
        commands: Sequence[Sequence[Any]] = (),
    ) -> None:
        """The index work that follows stored writes: the writes stand whatever happens here
        (a failure leaves stale or unconfirmed entries, which the index tolerates, see the module
        docstring), so errors are logged, not raised."""
        try:
            replies = await run_scripts(self._redis, calls, commands=commands)
        except (RedisError, OSError) as exc:
            log.warning(
                "feed_index_failed", calls=len(calls) + len(commands), error=type(exc).__name__
            )
            return
        failed = sum(1 for r in replies if isinstance(r, Exception))
        if failed:
            log.warning("feed_index_failed", calls=failed, error="reply")

    async def read_many(self, users: Sequence[str], feed: str) -> list[FeedState | None]:
        """:meth:`read` for each of ``users``, in one pipelined round trip."""
        if not users:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for user in users:
            pipe.hmget(feed_key(user, feed), list(STATE_FIELDS))
        replies = await pipe.execute()
        return [parse_state(u, feed, list(r)) for u, r in zip(users, replies, strict=True)]

    async def versions(self, users: Sequence[str], feed: str) -> list[Version | None]:
        """The stored version of each of ``users``' feed (None: none), one round trip, no bodies."""
        if not users:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for user in users:
            pipe.hmget(feed_key(user, feed), ["e", "n"])
        out: list[Version | None] = []
        for epoch, n in await pipe.execute():
            if epoch is None or n is None:
                out.append(None)
            else:
                out.append(Version(text(epoch), int(n)))
        return out

    async def shown(
        self, feed: str, items: Sequence[str], *, since_ms: int | None = None
    ) -> list[list[str]]:
        """For each of ``items``, the users whose stored ``feed`` shows it, per the index.

        One pipelined round trip. ``since_ms``: only entries confirmed at or after that time.
        Entries may be stale (see the module docstring): check the feed before relying on one.
        """
        if not items:
            return []
        pipe = self._redis.pipeline(transaction=False)
        low = "-inf" if since_ms is None else str(since_ms)
        for item in items:
            pipe.zrangebyscore(shown_key(feed, item), low, "+inf")
        replies = await pipe.execute()
        return [[text(u) for u in users] for users in replies]

    async def unindex_many(
        self, feed: str, stale: Sequence[tuple[str, Version | None, Sequence[str]]]
    ) -> int:
        """Remove index entries ``(user, version seen, items)`` the user's feed does not back.

        Each entry goes only if the feed is still absent (version None) or at the version seen,
        which did not show those items, and the entry is still as read before that check (a
        write in between confirms or re-adds it with a newer score: it stays). Two pipelined
        round trips (the entries' scores with the feeds' versions, then the removals); returns
        how many entries were removed.
        """
        wanted = [(user, seen, item) for user, seen, items in stale for item in items]
        if not wanted:
            return 0
        users = list(dict.fromkeys(user for user, _, _ in wanted))
        pipe = self._redis.pipeline(transaction=False)
        for user, _, item in wanted:  # the scores first: a write after them changes the score
            pipe.zscore(_shown_key(item, feed), user)
        for user in users:
            pipe.hmget(feed_key(user, feed), ["e", "n"])
        replies = await pipe.execute()
        scores, versions = replies[: len(wanted)], replies[len(wanted) :]
        now: dict[str, Version | None] = {}
        for user, (epoch, n) in zip(users, versions, strict=True):
            now[user] = None if epoch is None or n is None else Version(text(epoch), int(n))
        triples: dict[str, list[Any]] = {}
        for (user, seen, item), score in zip(wanted, scores, strict=True):
            if score is not None and now[user] == seen:
                triples.setdefault(_shown_key(item, feed), []).extend(
                    (user, "eq", repr(float(score)))
                )
        calls = [(self._remove, [key], args) for key, args in triples.items()]
        if not calls:
            return 0
        removed = 0
        for reply in await run_scripts(self._redis, calls):
            if isinstance(reply, Exception):
                raise reply
            removed += int(reply)
        return removed

    async def unindex(self, user: str, feeds: Sequence[str]) -> int:
        """Remove ``user`` from the index entries of every item of their stored ``feeds``, and
        clear each feed's confirmation mark (a later indexed write confirms every item again).

        What a withdrawal of consent calls once the user lane reported it: later writes of a
        user without consent leave the index alone (``indexed=False``), and the erasure that
        completes the withdrawal (:func:`streams.privacy.erase_user`) removes any entry this
        misses (one written concurrently). Two round trips (the feeds' lists, then the
        removals); returns how many entries were removed.
        """
        if not feeds:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for feed in feeds:
            pipe.hget(feed_key(user, feed), "b")
        bodies = await pipe.execute()
        calls: list[tuple[PipelinedScript, Sequence[str], Sequence[Any]]] = []
        for feed, body in zip(feeds, bodies, strict=True):
            for item in dict.fromkeys(ids_of(decode_body(body))):
                calls.append((self._remove, [_shown_key(item, feed)], [user, "any", 0]))
        removed = 0
        if calls:
            for reply in await run_scripts(self._redis, calls):
                if isinstance(reply, Exception):
                    raise reply
                removed += int(reply)
        pipe = self._redis.pipeline(transaction=False)
        for feed, body in zip(feeds, bodies, strict=True):
            if body is not None:
                pipe.hdel(feed_key(user, feed), "x")
        await pipe.execute()
        return removed


def _chain(state: FeedState, held: Version, entries: list[Any]) -> tuple[ReplayedDiff, ...] | None:
    """The diffs from ``held`` to ``state`` out of history ``entries`` (newest first).

    None unless the entries are exactly the versions ``held.n + 1 … state.version.n``, in order,
    each with a well-formed diff and checksum, the last checksum being the state's.
    """
    if len(entries) != state.version.n - held.n:
        return None
    out: list[ReplayedDiff] = []
    base = held
    for entry in reversed(entries):
        parsed = _entry(entry)
        if parsed is None or parsed[0] != base.n + 1:
            return None
        n, sum_, tag, diff = parsed
        version = Version(base.epoch, n)
        out.append(ReplayedDiff(state.feed, base, version, diff, sum_, tag))
        base = version
    if out[-1].sum != state.sum:
        return None
    return tuple(out)


def _entry(raw: object) -> tuple[int, str, str, DiffBody] | None:
    """``(n, sum, tag, diff)`` of one history entry (see ``feed_write.lua``: msgpack ms, n, sum,
    tag, then the diff); None when it is not well formed (cannot prove a chain)."""
    if not isinstance(raw, bytes):
        return None
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(raw)
    try:
        _ms, n, sum_, tag, diff = list(unpacker)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        return None
    if not (
        isinstance(n, int) and isinstance(sum_, str) and isinstance(tag, str) and _is_diff(diff)
    ):
        return None
    return n, sum_, tag, diff


def _is_diff(value: object) -> TypeGuard[DiffBody]:
    """Whether a decoded history entry has the shape of a :class:`DiffBody`."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("order"), list)
        and isinstance(value.get("items"), dict)
        and isinstance(value.get("patch"), dict)
    )
