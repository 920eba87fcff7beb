"""Merging an anonymous visitor's profile into a user's, when the visitor logs in (``identify``).

One Lua script (``streams/lua/merge.lua``) folds the visitor's profile keys (see
:mod:`streams.profile`) into the user's and deletes the visitor's keys, atomically:

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
- pending delayed-trigger timers of the visitor (members of the global ``pr:timers`` naming it)
  are not searched for (that walks the whole zset). When the visitor had event times (so there
  may be timers), the script sets ``pr:merged:<visitor>`` to the user, for as long as those
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
feeds and feed histories (``feeds``, default ``home``: every feed served) are deleted in the same
script; its offers are not carried into the user's offers feed. With ``sweep=True``, every other
key under the visitor's hash tag is found with ``SCAN MATCH`` and deleted too; off by default
because ``SCAN`` walks the whole keyspace whatever the pattern (measured: 0.5 to 0.7 s per
million keys on a local Redis), and no other per-user key exists today but the visitor's consent
record, which stays (it expires like the visitor's profile; the marker is not under the
visitor's tag).

Cost: one round trip (``EVALSHA``; one more to load the script after a Redis restart), plus the
``SCAN`` walk and one ``DEL`` with ``sweep``.

Idempotent and safe to retry: the merge and the deletion of the visitor's profile keys are one
atomic script, so either both happened or neither did. After a crash anywhere (or a lost reply)
a retry either redoes everything or finds no visitor profile and only refreshes the user's TTLs.
The sweep comes after the script and is itself repeatable. So the caller should recompute the
user's feed after every successful call, even one that merged nothing (a previous attempt may
have merged and crashed before recomputing).

Events still addressed to the visitor's id after the merge (in flight on the bus) build a new
visitor profile; merging again picks them up. Delayed timers they schedule go to the marked user
too (the marker outlives the merge).

Caveat: the script touches two users' keys, which live in different hash slots (``{u:<id>}``
tags), so it needs a single Redis, not Cluster (like the event script, which derives item-side
key names itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from redis.asyncio import Redis

from sessions.keys import feed_key, history_key, user_tag
from sessions.scripts import PipelinedScript
from sessions.tokens import ANON_PREFIX
from streams.consent import consent_key
from streams.events import ITEM_TYPES
from streams.profile import ProfileTuning, user_keys
from streams.triggers import KEEP_PER_ITEM, events_key, merged_key

_MERGE_LUA = resources.files("streams").joinpath("lua/merge.lua").read_text()

#: The prefix of anonymous visitors' ids (docs/PROTOCOL.md).
#: Purchases kept per user: fixed in streams/lua/event.lua.
BOUGHT_MAX = 500
_SCAN_COUNT = 1000


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
    extra = [key for feed in feeds for key in (feed_key(anon, feed), history_key(anon, feed))]
    # Every type an event can be recorded under (whatever the rules now): times recorded under
    # rules since changed are carried too.
    types = sorted(ITEM_TYPES)
    script = PipelinedScript(redis, _MERGE_LUA)
    reply = (
        await script.run_many(
            [
                (
                    [
                        *user_keys(user),
                        *user_keys(anon),
                        *(events_key(user, e) for e in types),
                        *(events_key(anon, e) for e in types),
                        merged_key(anon),
                        consent_key(user),
                        *extra,
                    ],
                    [
                        t.ttl_s,
                        t.dedup_window_ms,
                        t.dedup_max,
                        t.recent_max,
                        BOUGHT_MAX,
                        t.affinity_halflife_ms,
                        len(types),
                        KEEP_PER_ITEM,
                        user,
                        "1" if t.consent_required else "0",
                    ],
                )
            ]
        )
    )[0]
    if isinstance(reply, Exception):
        raise reply
    recent, aff, cart, bought, dedup, deleted, events = (int(n) for n in reply)
    if sweep:
        deleted += await _sweep(redis, anon)
    return MergeResult(recent, aff, cart, bought, dedup, deleted, events)


async def _sweep(redis: Redis, anon: str) -> int:
    """Delete every key under ``anon``'s hash tag; how many were deleted."""
    pattern = _glob_escape(user_tag(anon)) + "*"
    names = [name async for name in redis.scan_iter(match=pattern, count=_SCAN_COUNT)]
    if not names:
        return 0
    deleted: int = await redis.delete(*names)
    return deleted


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
