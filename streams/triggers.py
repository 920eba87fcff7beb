"""Triggers: time-window conditions over a user's events, delayed triggers, and the offers feed.

The schema is in :mod:`streams.rules` (``triggers:``) and ``docs/RULES.md``. Here is what runs it:

- **Event times** (:meth:`Triggers.record`, ``lua/trigger_record.lua``): for each event whose type a
  trigger looks at, one script per event (pipelined, after the event is applied) records
  ``<ts>/<event_id>`` under the item in ``pr:{u:<id>}:ev:<type>`` (a hash, field the item, the
  latest 16 entries within the rules' longest window; key TTL that window + 1 h), then evaluates
  the immediate triggers ``on`` that type for that item, and schedules the delayed ones ``after``
  it as durable timers — all in the same script, so the condition is read atomically with the
  write. Recording is idempotent (an event id counts once per item), so a retried batch changes
  nothing.
- **Offers feed** (:class:`Offers`): a normal versioned feed (``pr:{u:<id>}:feed:offers``, CAS
  writes with diffs and history, published like ``home``). Each entry is the catalog payload plus
  ``badge``, ``expires_at`` (ms) and ``trigger`` (:data:`OFFER_FIELDS`); one entry per item (a
  newer offer of an item replaces the older one), newest first, at most 20. Expired entries go at
  every write, and an expiry timer per entry makes that write happen when the entry expires. The
  writes keep the shown-items index like every feed write, so catalog propagation
  (:mod:`streams.propagate`) drops an item that goes out of stock from open offers feeds and
  brings a changed payload in, keeping the entry's offer fields.
- **Durable timers** (:class:`Triggers`), in :data:`~sessions.keys.TIMER_BUCKETS` buckets: a
  user's timers are in bucket ``crc32(user) % buckets`` (:func:`~sessions.keys.timer_bucket`),
  zset ``pr:{tm:<b>}:timers``, score = due ms, member
  ``o\\n<trigger>\\n<user>\\n<item>\\n<event ts>\\n<due>`` for a delayed trigger,
  ``x\\n<feed>\\n<user>\\n\\n0\\n<due>`` for an expiry. Recording returns the delayed triggers'
  timers and they are added (``ZADD NX``) in one more pipelined round trip, after the user's script:
  every script call touches one slot (the user's, or one bucket's). A poller in every worker
  claims due members of every bucket, one script call per bucket, pipelined
  (``lua/timer_claim.lua``: moved to the bucket's ``pr:{tm:<b>}:claimed`` with a lease), handles
  them, then removes them from the claimed set.

Guarantees:

- **Exactly once, effectively.** The claim is atomic, so of any number of pollers exactly one gets
  a due member. A node dying (or stalling past the lease, 30 s) between claim and acknowledgement
  leaves the member in its bucket's claimed set; once its lease runs out the next claim puts it back
  and another poller handles it again: at least once. The handling is idempotent: the entry it
  writes is fixed by the timer (item, trigger, badge, ``expires_at`` = due + ttl), and an offers
  write that finds the same entry already there leaves the list as it is (no new version), so a
  second run shows the client nothing new. Net: the offer appears once.
- **No offer once its unless event is recorded.** An offer whose trigger has an ``unless`` is
  written by one script that re-checks that condition against the event-time hash and then makes
  the compare-and-set write (``lua/offer_guard.lua`` in front of the feed store's own
  ``feed_write.lua``): a purchase recorded before the write refuses it (nothing is written, not
  even briefly), whether the offer comes from a delayed trigger's timer or from an immediate
  trigger whose purchase came later in the same batch.
- **An unless event takes a shown offer back.** When :meth:`Triggers.record` records an event of
  a type some trigger names in ``unless``, it removes from that trigger's feed the entry of that
  item the trigger made, if the event is at or after the time from which it would have held the
  offer back (the ``after`` event of a delayed trigger; the triggering event minus
  ``unless.within`` of an immediate one): a new version with its diff, published. Together with
  the guard, whichever of the offer write and the purchase comes first, the purchase ends with no
  offer of the item. Idempotent: a retried batch finds the entry gone and writes nothing; an
  entry made after the event (not held back by it) is kept.
- **A merged visitor's timers reach the user.** ``identify`` (:mod:`streams.merge`) carries the
  visitor's event times into the user's and marks the visitor as merged
  (``pr:{u:<anon>}:merged``, :func:`~sessions.keys.merged_key`, in the visitor's slot); a delayed
  timer of that visitor is retargeted to the user when it falls due: checked against the user's
  event times (and the visitor's, for events still in flight) and offered in the user's feed,
  never in the deleted visitor's. A merge landing between the handler's look at the marker and
  its write refuses the write (the marker is a guard too, in the visitor's slot like the
  visitor's feed), and the timer is retargeted at once. The retargeted write's guard is the
  user's event times (the user's slot); the visitor's are read just before it (another slot:
  not atomic with the write), so a purchase of the visitor recorded in between does not hold
  that offer back.

Counters (``observe(kind, outcome, n)``): kind ``offers`` — ``fired_immediate``,
``fired_delayed`` (entries written), ``suppressed`` (held back by ``unless``, at evaluation or by
the guard), ``removed`` (taken back by an unless event); kind ``timers`` — ``claimed``,
``handled`` (acknowledged), ``retried`` (leases that ran out, put back), ``dropped`` (trigger
gone from the rules), ``retargeted`` (visitor merged into a user), ``failed`` (non-transient
error, logged and acknowledged).

Caveats: an expiry timer is scheduled right after the write that added the entry; a node dying in
between leaves the expired entry until the user's next offers write (its ``expires_at`` tells the
client anyway). An unless event is guarded against once :meth:`Triggers.record` has recorded it,
which is right after the event script applied it; an offer written in that gap is taken back by
the same record call. Time is the events' own ``ts`` for windows and for due times (a replayed old
log fires at once, and its offers are already expired, so none are made); expiry is wall-clock.
Recording and a crash: the user's script and the timers' ``ZADD NX`` are two round trips; a node
dying in between leaves the event recorded without its timer, and the batch's redelivery schedules
it (recording returns the delayed triggers' timers whether or not the event was new).
Every script call touches one slot: the event-time hashes and the offers feed are the user's, the
timers one bucket's, the merge marker (a guard of a visitor's offers write) the visitor's.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessions.backoff import Backoff
from sessions.broker import Broker
from sessions.exceptions import VersionConflict, WriteRefused
from sessions.feeds import FeedState, FeedStore, FeedUpdate
from sessions.keys import (
    TIMER_BUCKETS,
    claimed_key,
    merged_key,
    timer_bucket,
    timers_key,
    user_tag,
)
from sessions.scripts import Call, PipelinedScript
from sessions.text import text
from sessions.tokens import ANON_PREFIX
from streams.catalog import Catalog
from streams.events import Event
from streams.rules import RuleSet, Trigger

log = structlog.get_logger(__name__)

_RECORD_LUA = resources.files("streams").joinpath("lua/trigger_record.lua").read_text()
_CLAIM_LUA = resources.files("streams").joinpath("lua/timer_claim.lua").read_text()
#: The prelude of the guarded offers writes (see sessions.feeds.FeedStore.guarded).
_GUARD_LUA = resources.files("streams").joinpath("lua/offer_guard.lua").read_text()

#: Entries kept per (user, event type, item): enough for any ``count.at_least``.
KEEP_PER_ITEM = 16
MAX_OFFERS = 20
LEASE_MS = 30_000
CLAIM_BATCH = 100
#: The fields an offers entry adds to the catalog payload.
OFFER_FIELDS = ("badge", "expires_at", "trigger")
_CAS_TRIES = 3
_KEY_MARGIN_S = 3600

#: Called with (kind, outcome, count); see the module docstring.
TriggerObserver = Callable[[str, str, int], None]


def events_key(user: str, etype: str) -> str:
    """The hash of ``user``'s recent event times of type ``etype``, per item."""
    return f"{user_tag(user)}ev:{etype}"


@dataclass(frozen=True, slots=True)
class Guard:
    """A condition checked in the same script as the offers write; when it fails the offer it
    belongs to is not written. ``since`` set: ``key`` is an event-time hash, and an entry of the
    offer's item at or after ``since`` (ms) fails it. ``since`` None: ``key`` existing fails it."""

    key: str
    since: int | None


@dataclass(frozen=True, slots=True)
class OfferEntry:
    """One offer to make: ``item`` in ``feed`` with ``badge`` until ``expires_at`` (ms), unless one
    of ``guards`` fails at the write."""

    feed: str
    item: str
    trigger: str
    badge: str
    expires_at: int
    guards: tuple[Guard, ...] = ()


@dataclass(slots=True)
class OfferChange:
    """What :meth:`Offers.apply` did."""

    #: The version written and published (None: nothing changed).
    update: FeedUpdate | None
    #: Offers written as new entries.
    added: list[OfferEntry] = field(default_factory=list)
    #: Offers refused by a guard (nothing of them was written).
    refused: list[OfferEntry] = field(default_factory=list)
    #: Entries taken out by ``drop``.
    removed: int = 0


class Offers:
    """Reads and writes of the offers feeds (see the module docstring)."""

    def __init__(
        self,
        redis: Redis,
        feeds: FeedStore,
        broker: Broker,
        catalog: Catalog,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._feeds = feeds
        #: The same store, its writes run behind offer_guard.lua (atomic with the write).
        self._guarded = feeds.guarded(_GUARD_LUA)
        self._broker = broker
        self._catalog = catalog
        self._clock = clock

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def ensure(self, user: str, feed: str) -> FeedState:
        """The stored feed, or a first, empty version of it when there is none."""
        state = await self._feeds.read(user, feed)
        if state is not None:
            return state
        try:
            update = await self._feeds.write(user, feed, None, [])
        except VersionConflict:
            update = None
        if update is not None:
            return update.state
        state = await self._feeds.read(user, feed)
        if state is None:  # pragma: no cover - a conflict means a version exists
            raise RuntimeError("offers feed vanished while being created")
        return state

    async def add(self, user: str, feed: str, offers: Sequence[OfferEntry]) -> FeedUpdate | None:
        """:meth:`apply` with offers only; the version written, if any."""
        return (await self.apply(user, feed, offers)).update

    async def expire(self, user: str, feed: str) -> FeedUpdate | None:
        """Drop the expired entries of the user's ``feed`` (publish when one went)."""
        return (await self.apply(user, feed, ())).update

    async def apply(
        self,
        user: str,
        feed: str,
        offers: Sequence[OfferEntry],
        *,
        drop: Callable[[dict[str, Any]], bool] | None = None,
    ) -> OfferChange:
        """One write of the user's ``feed``: expired entries and those ``drop`` selects go, then
        ``offers`` come in (items unknown, out of stock or already expired are skipped); publish
        the new version. Idempotent: an offer whose exact entry is already there changes nothing.

        An offer with guards is written only if they all hold, checked in the write's own script;
        a refused offer is left out and the rest written (see :class:`OfferChange`)."""
        pending = list(offers)
        refused: list[OfferEntry] = []
        added: list[OfferEntry] = []
        removed = 0

        def change(items: list[dict[str, Any]], now: int) -> list[dict[str, Any]]:
            nonlocal removed
            added.clear()
            removed = 0
            out: list[dict[str, Any]] = []
            for p in items:
                if int(p.get("expires_at", 0)) <= now:
                    continue
                if drop is not None and drop(p):
                    removed += 1
                    continue
                out.append(p)
            for offer in pending:
                if offer.expires_at <= now:
                    continue
                same = [p for p in out if str(p["id"]) == offer.item]
                if same and (
                    same[0].get("trigger") == offer.trigger
                    and same[0].get("badge") == offer.badge
                    and same[0].get("expires_at") == offer.expires_at
                ):
                    continue  # this very offer is there already
                item = self._catalog.get(offer.item)
                if item is None or not item.in_stock:
                    continue
                payload = {
                    **item.payload,
                    "badge": offer.badge,
                    "expires_at": offer.expires_at,
                    "trigger": offer.trigger,
                }
                out = [payload] + [p for p in out if str(p["id"]) != offer.item]
                added.append(offer)
            return out[:MAX_OFFERS]

        conflicts = 0
        while True:
            base = await self._feeds.read(user, feed)
            items = change(list(base.items) if base is not None else [], self._now_ms())
            if base is None and not items:
                return OfferChange(None, [], refused, 0)
            guards = [(i, o.item, g) for i, o in enumerate(added) for g in o.guards]
            try:
                update = await self._write(user, feed, base, items, guards)
            except WriteRefused as exc:
                bad = added[exc.code - 1]  # the guard returns its offer's 1-based index
                refused.append(bad)
                pending = [o for o in pending if o is not bad]
                continue  # the same write without it (each round drops one offer)
            except VersionConflict:
                conflicts += 1
                if conflicts == _CAS_TRIES:
                    raise
                continue
            if update is not None:
                await self._broker.publish(update)
            if added:
                # An expiry timer per new entry: the write that removes it happens when it expires.
                member = f"x\n{feed}\n{user}\n\n0\n"
                expiries = {f"{member}{o.expires_at}": o.expires_at for o in added}
                await self._redis.zadd(timers_key(timer_bucket(user)), expiries, nx=True)
            return OfferChange(update, list(added), refused, removed)

    async def _write(
        self,
        user: str,
        feed: str,
        base: FeedState | None,
        items: list[dict[str, Any]],
        guards: Sequence[tuple[int, str, Guard]],
    ) -> FeedUpdate | None:
        """Write the new list; with ``guards`` ((offer index, item, guard)), only if they hold,
        checked in the write's own script (:class:`WriteRefused` otherwise)."""
        if not guards:
            return await self._feeds.write(user, feed, base, items)
        keys = [guard.key for _, _, guard in guards]
        args: list[Any] = []
        for owner, item, guard in guards:
            args += [item, "" if guard.since is None else guard.since, owner + 1]
        args.append(len(guards))
        return await self._guarded.write(user, feed, base, items, extra=(keys, args))


@dataclass(slots=True)
class _Plan:
    """What one :meth:`Triggers.record` call does to one user's feed."""

    offers: list[OfferEntry] = field(default_factory=list)
    #: (item, trigger, event ts) of each unless event recorded.
    takebacks: list[tuple[str, Trigger, int]] = field(default_factory=list)

    def taken_back(self, entry: dict[str, Any]) -> bool:
        """Whether an unless event recorded now takes ``entry`` back (see the module docstring)."""
        item, name = str(entry.get("id")), entry.get("trigger")
        for it, trigger, ts in self.takebacks:
            if it == item and trigger.name == name and ts >= _held_back_from(entry, trigger):
                return True
        return False


def _held_back_from(entry: dict[str, Any], trigger: Trigger) -> int:
    """From when an unless event would have held ``entry`` (made by ``trigger``) back: the
    ``after`` event of a delayed trigger, the triggering event minus ``unless.within`` of an
    immediate one (both derived from ``expires_at``, which is the offer's reference + ttl)."""
    made = int(entry.get("expires_at", 0)) - trigger.offer.ttl_ms
    return made - (trigger.delay_ms if trigger.delayed else trigger.unless_within_ms)


class Triggers:
    """Event times, immediate triggers and the timer poller (see the module docstring)."""

    def __init__(
        self,
        redis: Redis,
        offers: Offers,
        rules: Callable[[], RuleSet],
        *,
        clock: Callable[[], float] = time.time,
        lease_ms: int = LEASE_MS,
        interval_s: float = 1.0,
        observe: TriggerObserver | None = None,
    ) -> None:
        self._redis = redis
        self.offers = offers
        self._rules = rules
        self._clock = clock
        self._lease_ms = lease_ms
        self._interval_s = interval_s
        self._observe = observe
        self._record = PipelinedScript(redis, _RECORD_LUA, name="trigger_record.lua")
        self._claim = PipelinedScript(redis, _CLAIM_LUA, name="timer_claim.lua")
        #: How many timer buckets the poller visits (the writers' bucket count).
        self._buckets = TIMER_BUCKETS

    def _seen(self, kind: str, outcome: str, n: int = 1) -> None:
        if self._observe is not None and n:
            self._observe(kind, outcome, n)

    async def record(self, events: Sequence[Event]) -> int:
        """Record the times of ``events`` that triggers look at, evaluate the immediate triggers
        and schedule the delayed ones; write the offers that fired and take back the offers the
        recorded unless events cancel. Returns how many offers were written.

        One pipelined round trip (none when no trigger looks at these events), plus one offers
        write per user with a fired trigger or an unless event (a read only, when it changes
        nothing). Redis connection errors raise (the batch is retried; recording and taking back
        are idempotent)."""
        rules = self._rules()
        if not rules.triggers:
            return 0
        types = sorted(rules.trigger_events())
        index = {t: i + 1 for i, t in enumerate(types)}
        horizon = rules.trigger_horizon_ms()
        ttl_s = horizon // 1000 + _KEY_MARGIN_S
        calls: list[Call] = []
        asked: list[tuple[Event, list[Trigger], list[Trigger]]] = []
        for event in events:
            if event.type not in index or event.item_id is None:
                continue
            now = [t for t in rules.triggers if t.on == event.type]
            later = [t for t in rules.triggers if t.after == event.type]
            args: list[Any] = [
                index[event.type],
                event.item_id,
                event.ts,
                ttl_s,
                horizon,
                event.user_id,
                event.event_id,
                KEEP_PER_ITEM,
                len(now),
            ]
            for t in now:
                assert t.count_event is not None
                args += [
                    index[t.count_event],
                    t.at_least,
                    t.within_ms,
                    index[t.unless_event] if t.unless_event else 0,
                    t.unless_within_ms,
                ]
            args.append(len(later))
            for t in later:
                args += [t.name, t.delay_ms]
            keys = [events_key(event.user_id, t) for t in types]
            calls.append((keys, args))
            cancels = [t for t in rules.triggers if t.unless_event == event.type]
            asked.append((event, now, cancels))
        if not calls:
            return 0
        plans: dict[tuple[str, str], _Plan] = defaultdict(_Plan)
        blocked = 0
        due: dict[str, dict[str, int]] = {}  # timers key → {member: due ms}
        replies = await self._record.run_many(calls)
        for (event, now, cancels), reply in zip(asked, replies, strict=True):
            if isinstance(reply, Exception):
                log.error("trigger_record_failed", event_id=event.event_id, error=str(reply)[:200])
                continue
            assert event.item_id is not None
            positions, held, timers = reply
            blocked += int(held)
            if timers:
                bucket = timers_key(timer_bucket(event.user_id))
                due.setdefault(bucket, {}).update(
                    {text(timers[j]): int(timers[j + 1]) for j in range(0, len(timers), 2)}
                )
            for position in positions:
                t = now[int(position) - 1]
                # Re-checked at the write: an unless event recorded after this evaluation (later
                # in this batch, or a merge) keeps the offer out.
                guards: tuple[Guard, ...] = ()
                if t.unless_event is not None:
                    since = event.ts - t.unless_within_ms
                    guards = (Guard(events_key(event.user_id, t.unless_event), since),)
                plans[(event.user_id, t.offer.feed)].offers.append(
                    OfferEntry(
                        t.offer.feed,
                        event.item_id,
                        t.name,
                        t.offer.badge,
                        event.ts + t.offer.ttl_ms,
                        guards,
                    )
                )
            for t in cancels:
                plans[(event.user_id, t.offer.feed)].takebacks.append((event.item_id, t, event.ts))
        self._seen("offers", "suppressed", blocked)
        if due:  # idempotent (NX): a redelivered batch schedules the same members again
            pipe = self._redis.pipeline(transaction=False)
            for key, members in due.items():
                pipe.zadd(key, members, nx=True)
            await pipe.execute()
        if not plans:
            return 0
        changes = await asyncio.gather(
            *(
                self.offers.apply(
                    user, feed, plan.offers, drop=plan.taken_back if plan.takebacks else None
                )
                for (user, feed), plan in plans.items()
            )
        )
        made = sum(len(c.added) for c in changes)
        self._seen("offers", "fired_immediate", made)
        self._seen("offers", "suppressed", sum(len(c.refused) for c in changes))
        self._seen("offers", "removed", sum(c.removed for c in changes))
        return made

    async def poll_once(self) -> list[str]:
        """Claim the due timers of every bucket and handle them; returns the members handled
        (acknowledged). One pipelined round trip claims from every bucket (one script call per
        bucket: one slot each); a bucket that gave a full batch is asked again."""
        done: list[str] = []
        buckets = list(range(self._buckets))
        while buckets:
            now = int(self._clock() * 1000)
            replies = await self._claim.run_many(
                [
                    ([timers_key(b), claimed_key(b)], [now, self._lease_ms, CLAIM_BATCH])
                    for b in buckets
                ]
            )
            full: list[int] = []
            for bucket, claimed in zip(buckets, replies, strict=True):
                if isinstance(claimed, Exception):
                    raise claimed
                due, requeued = claimed
                members = [text(m) for m in due]
                self._seen("timers", "retried", int(requeued))
                self._seen("timers", "claimed", len(members))
                for member in members:
                    try:
                        await self._handle(member)
                    except (RedisConnectionError, RedisTimeoutError):
                        raise  # not acknowledged: handled again once the lease runs out
                    except Exception:
                        # Not a transient failure: retrying would fail the same way every lease.
                        log.exception("timer_failed", timer=member.replace("\n", "|")[:200])
                        self._seen("timers", "failed")
                    await self._redis.zrem(claimed_key(bucket), member)
                    self._seen("timers", "handled")
                    done.append(member)
                if len(members) >= CLAIM_BATCH:
                    full.append(bucket)
            buckets = full
        return done

    async def _handle(self, member: str) -> None:
        parts = member.split("\n")
        if len(parts) != 6:
            log.warning("timer_malformed", timer=member.replace("\n", "|")[:200])
            return
        kind, name, user, item, ref_raw, due_raw = parts
        if kind == "x":
            await self.offers.expire(user, name)
            return
        trigger = self._rules().trigger(name)
        if trigger is None or not trigger.delayed:
            self._seen("timers", "dropped")  # the trigger was removed since the timer was set
            return
        ref = int(ref_raw)
        anonymous = user.startswith(ANON_PREFIX)
        for _ in range(2):  # a second round only when a merge refused the first
            target, guards = user, list[Guard]()
            if anonymous:
                merged = await self._redis.get(merged_key(user))
                if merged is None:
                    # A merge landing before the write refuses it; the next round retargets.
                    guards.append(Guard(merged_key(user), None))
                else:
                    target = text(merged)
                    self._seen("timers", "retargeted")
            if trigger.unless_event is not None:
                # Since the after event, of the user the offer goes to (a guard: atomic with the
                # write, in the target's slot) and of the id the event came under (a visitor's
                # events may still arrive after its merge: another slot, so read just before).
                guards.append(Guard(events_key(target, trigger.unless_event), ref))
                if target != user and await self._held_back(user, trigger.unless_event, item, ref):
                    self._seen("offers", "suppressed")
                    return
            entry = OfferEntry(
                trigger.offer.feed,
                item,
                trigger.name,
                trigger.offer.badge,
                int(due_raw) + trigger.offer.ttl_ms,
                tuple(guards),
            )
            change = await self.offers.apply(target, trigger.offer.feed, [entry])
            if change.added:
                self._seen("offers", "fired_delayed")
                return
            if not change.refused:
                return  # already there (a second run after a lost lease), or not in stock
            if target == user and anonymous and await self._redis.exists(merged_key(user)):
                continue  # refused by the merge marker: retarget
            self._seen("offers", "suppressed")
            return

    async def _held_back(self, user: str, etype: str, item: str, since: int) -> bool:
        """Whether ``user``'s event times of ``etype`` hold an entry of ``item`` at or after
        ``since`` (ms): the check ``lua/offer_guard.lua`` makes, as a plain read."""
        raw = await self._redis.hget(events_key(user, etype), item)
        for line in text(raw).split("\n") if raw is not None else ():
            ts, _, _ = line.partition("/")
            if ts.lstrip("-").isdigit() and int(ts) >= since:
                return True
        return False

    async def run(self) -> None:
        """Poll every ``interval_s`` until cancelled; Redis failures are logged and retried."""
        backoff = Backoff(self._interval_s, max(self._interval_s, 10.0))
        while True:
            delay = self._interval_s
            try:
                await self.poll_once()
                backoff.reset()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.warning("timers_poll_failed", error=type(exc).__name__)
                delay = backoff.next()
            except Exception:
                log.exception("timers_poll_failed")
            await asyncio.sleep(delay)
