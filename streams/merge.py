"""Merging an anonymous visitor's profile into a user's, when the visitor logs in (``identify``).

The visitor's keys and the user's live in different hash slots (``{u:<id>}`` tags), so the merge
is three steps, each one script call on one slot (issue 13), each safe to redo:

1. **take** (``lua/merge_take.lua``, the visitor's slot): the visitor's profile keys and trigger
   event times are read into a snapshot, kept in the visitor's merging hash
   (:func:`~sessions.keys.merging_key`), and the visitor's keys (profile, event times, feeds and
   their histories) are deleted — atomically. If a snapshot is already kept (an earlier attempt
   died before step 3) it is returned as it is and nothing else happens.
2. **apply** (``lua/merge_apply.lua``, the user's slot): the snapshot is folded into the user's
   keys, unless field ``mg`` of the user's profile hash (the last 8 snapshots applied) already
   names its id (a redo): so nothing is counted twice, not even the affinity, which is a sum.
3. **finish** (``lua/merge_finish.lua``, the visitor's slot): the merge marker is set (below)
   and the snapshot dropped.

A crash between any two steps leaves a state the next call completes: after 1, the kept
snapshot is applied (events the visitor sent meanwhile build a new visitor profile, which a later
merge picks up); after 2, the apply is skipped and the marker set. What the user's keys get:

- ``recent`` (item → last touch): union, the later touch kept per item, capped to
  ``ProfileTuning.recent_max`` (the newest stay) — exactly what one timeline of both would hold.
- ``bought`` (item → purchase time): the same, capped to :data:`BOUGHT_MAX` (as the event script).
- ``cart``: items the visitor bought leave the user's cart, then the visitor's cart is added (the
  visitor's session is the latest activity). A ``remove_from_cart`` by the visitor of an item in
  the user's cart leaves no trace in the visitor's profile, so that item stays.
- ``dedup`` (event id → ts): union, so the visitor's events are duplicates for the user too (a
  client re-sending them under the user's id changes nothing); then trimmed like the event script
  does: ids older than ``dedup_window_ms`` before the newest id go, then the oldest beyond
  ``dedup_max``.
- ``aff`` (category → decayed weight, scaled from the origin in field ``a0`` of ``p``): both sets
  are rescaled to the later of the two origins (a factor ``2^((a0 - origin)/half-life) <= 1``,
  so nothing can overflow) and added; ``a0`` becomes that origin. Decayed to any time, the result
  equals what one profile receiving both visitors' events would hold (within float rounding).
  When the user has no affinity, the visitor's is taken over with its origin.
- ``p`` scalars: ``a0`` as above; ``x`` (when all of the user's keys last had their TTL
  refreshed) the later of the two — never later than the truth, as this merge refreshes them;
  any other field of the visitor's only where the user has none (the user's profile wins).
- trigger event times (``pr:{u:<id>}:ev:<type>``, :mod:`streams.triggers`): carried over, not
  deleted, because they are facts about the same person: per item the ``<ts>/<event_id>``
  entries are united (an event id once) and the newest ``KEEP_PER_ITEM`` kept, as recording
  keeps them; each hash expires at the later of the two expiries. So a trigger's window counts
  the visitor's and the user's events together (a view before logging in and one after make a
  "second look"), and an ``unless`` event of the visitor (a purchase before logging in) still
  holds back the user's offers of that item; deleting them would offer what was just bought.
- pending delayed-trigger timers of the visitor (members of a timers bucket naming it) are not
  searched for. When the visitor had event times (so there may be timers), step 3 sets the
  marker ``pr:{u:<visitor>}:merged`` (in the visitor's slot) to the user, for as long as those
  event times would have lived and at least the profile TTL; the timer handler retargets a due
  timer of a marked visitor to the user — checked against the user's event times (now both
  timelines), offered in the user's feed, never in the deleted visitor's. Retargeted rather than
  dropped for the reason the event times are carried: the delay started with this person's event
  (a cart reminder reaches them logged in; their purchase after logging in still cancels it).

**Consent** (:mod:`streams.consent`): only a user with personalization consent (under the
policy in ``tuning``) receives the visitor's profile and event times; for any other user the
visitor's keys are deleted and nothing is merged, so no profile exists for them. Consent is per
id: the visitor's own record is not carried to the user (the user's record and the policy rule
the account).

Every key of the user's profile then gets the profile TTL. The visitor's profile keys, event times,
feeds and feed histories (``feeds``, default ``home``: every feed served) are deleted in step 1;
its offers are not carried into the user's offers feed. With ``sweep=True``, every other key
under the visitor's hash tag but the merge marker is found with ``SCAN MATCH`` and deleted too;
off by default because ``SCAN`` walks the whole keyspace whatever the pattern (measured: 0.5 to
0.7 s per million keys on a local Redis), and no other per-user key exists today but the
visitor's consent record, which stays (it expires like the visitor's profile).

Cost: three round trips (``EVALSHA`` each; one more to load a script after a Redis restart),
plus the ``SCAN`` walk and one ``DEL`` with ``sweep``. The caller should recompute the user's
feed after every successful call, even one that merged nothing (a previous attempt may have
merged and crashed before recomputing).

Events still addressed to the visitor's id after the merge (in flight on the bus) build a new
visitor profile; merging again picks them up. Delayed timers they schedule go to the marked user
too (the marker outlives the merge). Between steps 1 and 3 the marker is not set yet: a timer of
the visitor falling due in that window is offered in the visitor's (deleted) feed, as before the
merge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import msgpack
from redis.asyncio import Redis

from sessions.keys import (
    feed_key,
    history_key,
    merged_key,
    merging_key,
    user_tag,
)
from sessions.scripts import PipelinedScript
from sessions.tokens import ANON_PREFIX
from streams.consent import consent_key
from streams.events import ITEM_TYPES
from streams.profile import ProfileTuning, user_keys
from streams.triggers import KEEP_PER_ITEM, events_key

_TAKE_LUA = resources.files("streams").joinpath("lua/merge_take.lua").read_text()
_APPLY_LUA = resources.files("streams").joinpath("lua/merge_apply.lua").read_text()
_FINISH_LUA = resources.files("streams").joinpath("lua/merge_finish.lua").read_text()

#: Purchases kept per user: fixed in streams/lua/user_event.lua.
BOUGHT_MAX = 500
_SCAN_COUNT = 1000
#: How long a taken snapshot waits for its merge to finish (s): a merge that died is redone by
#: the next identify within that time, else the snapshot (and the visitor's data) is dropped.
SNAPSHOT_TTL_S = 7 * 86_400


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What a merge moved: members of each of the visitor's profile keys, and keys deleted."""

    recent: int
    aff: int
    cart: int
    bought: int
    dedup: int
    deleted: int
    #: (event type, item) fields of trigger event times carried over.
    events: int = 0

    @property
    def merged(self) -> bool:
        """Whether the visitor had a profile (or trigger event times) to merge."""
        return any((self.recent, self.aff, self.cart, self.bought, self.dedup, self.events))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What step 1 took from the visitor (see the module docstring): ``data`` as stored."""

    id: str
    #: The user the snapshot is for (a redo of a merge into another user finishes that first).
    user: str
    data: bytes
    #: Keys of the visitor deleted when it was taken.
    deleted: int
    #: Whether the visitor had trigger event times, and their longest remaining life (ms).
    events_ms: int


def _types() -> list[str]:
    # Every type an event can be recorded under (whatever the rules now): times recorded under
    # rules since changed are carried too.
    return sorted(ITEM_TYPES)


async def take_snapshot(
    redis: Redis, anon: str, user: str, feeds: Sequence[str], tuning: ProfileTuning
) -> Snapshot:
    """Step 1: the visitor's snapshot (a kept one if a merge died), its keys deleted."""
    types = _types()
    extra = [key for feed in feeds for key in (feed_key(anon, feed), history_key(anon, feed))]
    keys = [*user_keys(anon), *(events_key(anon, e) for e in types), merging_key(anon), *extra]
    script = PipelinedScript(redis, _TAKE_LUA, name="merge_take.lua")
    [reply] = await script.run_many([(keys, [len(types), user, SNAPSHOT_TTL_S])])
    if isinstance(reply, Exception):
        raise reply
    data = bytes(reply)
    snap = msgpack.unpackb(data, raw=False)
    events = snap.get("events") or []
    had_events = any(len(fields) for fields in events)
    return Snapshot(
        str(snap["id"]),
        str(snap["user"]),
        data,
        int(snap.get("deleted", 0)),
        max(int(snap.get("events_ms", -1)), 0) if had_events else -1,
    )


async def apply_snapshot(
    redis: Redis, anon: str, user: str, snapshot: Snapshot, tuning: ProfileTuning
) -> tuple[int, list[int]]:
    """Step 2: fold ``snapshot`` into ``user``'s keys once; (applied: 1 now, 2 before, 0 no
    consent; counts recent, aff, cart, bought, dedup, events)."""
    types = _types()
    keys = [
        *user_keys(user),
        *(events_key(user, e) for e in types),
        consent_key(user),
    ]
    t = tuning
    script = PipelinedScript(redis, _APPLY_LUA, name="merge_apply.lua")
    [reply] = await script.run_many(
        [
            (
                keys,
                [
                    snapshot.data,
                    t.ttl_s,
                    t.dedup_window_ms,
                    t.dedup_max,
                    t.recent_max,
                    BOUGHT_MAX,
                    t.affinity_halflife_ms,
                    len(types),
                    KEEP_PER_ITEM,
                    "1" if t.consent_required else "0",
                ],
            )
        ]
    )
    if isinstance(reply, Exception):
        raise reply
    applied, *counts = (int(n) for n in reply)
    return applied, counts


async def finish(
    redis: Redis, anon: str, snapshot: Snapshot, applied: bool, tuning: ProfileTuning
) -> None:
    """Step 3: the marker (when the user took the visitor's event times), the snapshot gone."""
    marker_ms = (
        max(snapshot.events_ms, tuning.ttl_s * 1000) if applied and snapshot.events_ms >= 0 else 0
    )
    script = PipelinedScript(redis, _FINISH_LUA, name="merge_finish.lua")
    [reply] = await script.run_many(
        [([merging_key(anon), merged_key(anon)], [snapshot.id, snapshot.user, marker_ms])]
    )
    if isinstance(reply, Exception):
        raise reply


async def merge_profiles(
    redis: Redis,
    anon: str,
    user: str,
    *,
    tuning: ProfileTuning | None = None,
    feeds: Sequence[str] = ("home",),
    sweep: bool = False,
) -> MergeResult:
    """Merge the profile of visitor ``anon`` into ``user``'s and delete ``anon``'s keys.

    ``tuning`` must be the one the :class:`~streams.profile.ProfileStore` uses (caps, TTL,
    affinity half-life). ``feeds``: the feeds whose stored version and history are deleted with
    the profile. ``sweep``: also delete any other key under ``anon``'s hash tag (see the module
    docstring for its cost). Raises :class:`ValueError` unless ``anon`` is an anonymous id and
    ``user`` is not (a merge deletes its source: it must never be a real user's profile).
    """
    if not anon.startswith(ANON_PREFIX) or len(anon) == len(ANON_PREFIX):
        raise ValueError(f"not an anonymous id: {anon!r}")
    if user.startswith(ANON_PREFIX) or not user:
        raise ValueError(f"not a user id: {user!r}")
    t = tuning or ProfileTuning()
    snapshot = await take_snapshot(redis, anon, user, feeds, t)
    if snapshot.user != user:
        # A merge of this visitor into another user died half-way: finish that one first (its
        # data is that user's now), then take what the visitor has since.
        applied, _ = await apply_snapshot(redis, anon, snapshot.user, snapshot, t)
        await finish(redis, anon, snapshot, applied != 0, t)
        snapshot = await take_snapshot(redis, anon, user, feeds, t)
    applied, counts = await apply_snapshot(redis, anon, user, snapshot, t)
    await finish(redis, anon, snapshot, applied != 0, t)
    recent, aff, cart, bought, dedup, events = counts if applied else [0] * 6
    deleted = snapshot.deleted
    if sweep:
        deleted += await _sweep(redis, anon)
    return MergeResult(recent, aff, cart, bought, dedup, deleted, events)


async def _sweep(redis: Redis, anon: str) -> int:
    """Delete every key under ``anon``'s hash tag but its merge marker; how many were deleted."""
    pattern = _glob_escape(user_tag(anon)) + "*"
    keep = {merged_key(anon).encode()}
    names = [
        name async for name in redis.scan_iter(match=pattern, count=_SCAN_COUNT) if name not in keep
    ]
    if not names:
        return 0
    deleted: int = await redis.delete(*names)
    return deleted


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
