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
  ``badge``, ``expires_at`` (ms) and ``trigger``; one entry per item (a newer offer of an item
  replaces the older one), newest first, at most 20. Expired entries go at every write, and an
  expiry timer per entry makes that write happen when the entry expires.
- **Durable timers** (:class:`Triggers`, ``pr:timers`` zset, score = due ms, member
  ``o\\n<trigger>\\n<user>\\n<item>\\n<event ts>\\n<due>`` for a delayed trigger,
  ``x\\n<feed>\\n<user>\\n\\n0\\n<due>`` for an expiry). A poller in every worker claims due members
  with one script (``lua/timer_claim.lua``: moved to ``pr:timers:claimed`` with a lease), handles
  them, then removes them from the claimed set.

**Exactly once, effectively.** The claim is atomic, so of any number of pollers exactly one gets a
due member. A node dying (or stalling past the lease, 30 s) between claim and acknowledgement
leaves the member in ``pr:timers:claimed``; once its lease runs out the next claim puts it back
and another poller handles it again: at least once. The handling is idempotent: the entry it
writes is fixed by the timer (item, trigger, badge, ``expires_at`` = due + ttl), and an offers
write that finds the same entry already there leaves the list as it is (no new version), so a
second run shows the client nothing new. Net: the offer appears once.

Caveats: the ``unless`` check of a delayed trigger and the offer write are two steps (a purchase
landing between them still sees the offer; it expires as set). An expiry timer is scheduled right
after the write that added the entry; a node dying in between leaves the expired entry until the
user's next offers write (its ``expires_at`` tells the client anyway). Time is the events' own
``ts`` for windows and for due times (a replayed old log fires at once, and its offers are already
expired, so none are made); expiry is wall-clock. The event-time hashes are per user (one slot);
``pr:timers`` is global (one Redis, like the event script's item-side keys).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessions.broker import Broker
from sessions.exceptions import VersionConflict
from sessions.feeds import FeedState, FeedStore, FeedUpdate
from sessions.keys import user_tag
from sessions.scripts import Call, PipelinedScript
from streams.catalog import Catalog
from streams.events import Event
from streams.rules import RuleSet, Trigger

log = structlog.get_logger(__name__)

_RECORD_LUA = resources.files("streams").joinpath("lua/trigger_record.lua").read_text()
_CLAIM_LUA = resources.files("streams").joinpath("lua/timer_claim.lua").read_text()

TIMERS_KEY = "pr:timers"
CLAIMED_KEY = "pr:timers:claimed"
#: Entries kept per (user, event type, item): enough for any ``count.at_least``.
KEEP_PER_ITEM = 16
MAX_OFFERS = 20
LEASE_MS = 30_000
CLAIM_BATCH = 100
_CAS_TRIES = 3
_KEY_MARGIN_S = 3600


def events_key(user: str, etype: str) -> str:
    """The hash of ``user``'s recent event times of type ``etype``, per item."""
    return f"{user_tag(user)}ev:{etype}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class OfferEntry:
    """One offer to make: ``item`` in ``feed`` with ``badge`` until ``expires_at`` (ms)."""

    feed: str
    item: str
    trigger: str
    badge: str
    expires_at: int


def _times(raw: object) -> list[int]:
    out: list[int] = []
    if raw is None:
        return out
    for line in _text(raw).split("\n"):
        head, _, _ = line.partition("/")
        try:
            out.append(int(head))
        except ValueError:
            continue
    return out


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
        """Put ``offers`` (items unknown, out of stock or already expired are skipped) into the
        user's ``feed``, dropping expired entries; publish the new version. Idempotent: an offer
        whose exact entry is already there changes nothing."""
        added: list[int] = []

        def change(items: list[dict[str, Any]], now: int) -> list[dict[str, Any]]:
            added.clear()
            out = [p for p in items if int(p.get("expires_at", 0)) > now]
            for offer in offers:
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
                added.append(offer.expires_at)
            return out[:MAX_OFFERS]

        update = await self._edit(user, feed, change)
        if added:
            # An expiry timer per new entry: the write that removes it happens when it expires.
            member = f"x\n{feed}\n{user}\n\n0\n"
            await self._redis.zadd(TIMERS_KEY, {f"{member}{t}": t for t in added}, nx=True)
        return update

    async def expire(self, user: str, feed: str) -> FeedUpdate | None:
        """Drop the expired entries of the user's ``feed`` (publish when one went)."""
        return await self._edit(
            user, feed, lambda items, now: [p for p in items if int(p.get("expires_at", 0)) > now]
        )

    async def _edit(
        self,
        user: str,
        feed: str,
        change: Callable[[list[dict[str, Any]], int], list[dict[str, Any]]],
    ) -> FeedUpdate | None:
        for attempt in range(_CAS_TRIES):
            base = await self._feeds.read(user, feed)
            items = change(list(base.items) if base is not None else [], self._now_ms())
            if base is None and not items:
                return None
            try:
                update = await self._feeds.write(user, feed, base, items)
            except VersionConflict:
                if attempt == _CAS_TRIES - 1:
                    raise
                continue
            if update is not None:
                await self._broker.publish(update)
            return update
        return None  # pragma: no cover - the loop returns or raises


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
        observe: Callable[[str], None] | None = None,
    ) -> None:
        self._redis = redis
        self.offers = offers
        self._rules = rules
        self._clock = clock
        self._lease_ms = lease_ms
        self._interval_s = interval_s
        self._observe = observe
        self._record = PipelinedScript(redis, _RECORD_LUA)
        self._claim = PipelinedScript(redis, _CLAIM_LUA)

    def _seen(self, outcome: str) -> None:
        if self._observe is not None:
            self._observe(outcome)

    async def record(self, events: Sequence[Event]) -> int:
        """Record the times of ``events`` that triggers look at, evaluate the immediate triggers
        and schedule the delayed ones; write the offers that fired. Returns how many fired.

        One pipelined round trip (none when no trigger looks at these events), plus one offers
        write per user with a fired trigger. Redis connection errors raise (the batch is retried;
        recording is idempotent)."""
        rules = self._rules()
        if not rules.triggers:
            return 0
        types = sorted(rules.trigger_events())
        index = {t: i + 1 for i, t in enumerate(types)}
        horizon = rules.trigger_horizon_ms()
        ttl_s = horizon // 1000 + _KEY_MARGIN_S
        calls: list[Call] = []
        asked: list[tuple[Event, list[Trigger]]] = []
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
            keys = [events_key(event.user_id, t) for t in types] + [TIMERS_KEY]
            calls.append((keys, args))
            asked.append((event, now))
        if not calls:
            return 0
        fired: dict[tuple[str, str], list[OfferEntry]] = defaultdict(list)
        for (event, now), reply in zip(asked, await self._record.run_many(calls), strict=True):
            if isinstance(reply, Exception):
                log.error("trigger_record_failed", event_id=event.event_id, error=str(reply)[:200])
                continue
            for position in reply:
                t = now[int(position) - 1]
                assert event.item_id is not None
                fired[(event.user_id, t.offer.feed)].append(
                    OfferEntry(
                        t.offer.feed,
                        event.item_id,
                        t.name,
                        t.offer.badge,
                        event.ts + t.offer.ttl_ms,
                    )
                )
                self._seen("fired")
        if fired:
            await asyncio.gather(
                *(self.offers.add(user, feed, entries) for (user, feed), entries in fired.items())
            )
        return sum(len(v) for v in fired.values())

    async def poll_once(self) -> list[str]:
        """Claim the due timers and handle them; returns the members handled (acknowledged)."""
        done: list[str] = []
        while True:
            [claimed] = await self._claim.run_many(
                [
                    (
                        [TIMERS_KEY, CLAIMED_KEY],
                        [int(self._clock() * 1000), self._lease_ms, CLAIM_BATCH],
                    )
                ]
            )
            if isinstance(claimed, Exception):
                raise claimed
            members = [_text(m) for m in claimed]
            for member in members:
                try:
                    await self._handle(member)
                except (RedisConnectionError, RedisTimeoutError):
                    raise  # not acknowledged: handled again once the lease runs out
                except Exception:
                    # Not a transient failure: retrying would fail the same way every lease.
                    log.exception("timer_failed", timer=member.replace("\n", "|")[:200])
                await self._redis.zrem(CLAIMED_KEY, member)
                done.append(member)
            if len(members) < CLAIM_BATCH:
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
            self._seen("dropped")  # the trigger was removed since the timer was set
            return
        ref = int(ref_raw)
        if trigger.unless_event is not None:
            raw = await self._redis.hget(events_key(user, trigger.unless_event), item)
            if any(t >= ref for t in _times(raw)):
                self._seen("suppressed")
                return
        entry = OfferEntry(
            trigger.offer.feed,
            item,
            trigger.name,
            trigger.offer.badge,
            int(due_raw) + trigger.offer.ttl_ms,
        )
        await self.offers.add(user, trigger.offer.feed, [entry])
        self._seen("fired")

    async def run(self) -> None:
        """Poll every ``interval_s`` until cancelled; Redis failures are logged and retried."""
        delay = self._interval_s
        while True:
            try:
                await self.poll_once()
                delay = self._interval_s
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.warning("timers_poll_failed", error=type(exc).__name__)
                delay = min(delay * 2, 10.0)
            except Exception:
                log.exception("timers_poll_failed")
            await asyncio.sleep(delay)
