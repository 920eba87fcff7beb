"""The per-event processor: profile update → recompute → compare-and-set write → publish.

Cost per batch lane: one Redis round trip applies all its events and scores each user's
candidates (Lua), one more stores the new feed versions with their diffs (Lua compare-and-set),
one more publishes them — whatever the number of events. No write when a list did not change. A
lost race (another writer moved the feed) costs one read and one retry for that user.

Guarantees: events of one user are handled in the order given (callers keep per-user order); a
duplicate ``event_id`` has no effect; a feed version is published only after it is stored. An
event of a user without personalization consent changes nothing but that user's feeds, which are
non-personal (outcome ``no_consent``); a withdrawal of consent is completed in the user's lane,
after everything earlier of theirs (:mod:`streams.consent`). Redis
being unreachable raises out of :meth:`Processor.handle_batch` so the source retries the batch
(dedup makes the retry harmless); any other failure of one event is logged and counted, and does
not stop the batch.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessions.broker import Broker
from sessions.diff import Payload, ids_of
from sessions.exceptions import VersionConflict
from sessions.feeds import HOME, FeedCache, FeedState, FeedStore, FeedUpdate
from streams.catalog import Catalog
from streams.consent import NO_CONSENT
from streams.events import Event
from streams.experiment_stats import ExperimentStats
from streams.experiments import NO_EXPERIMENTS, Arm, ExperimentSet
from streams.profile import CONTEXT_FEEDS, USER_FEEDS, ProfileStore, ProfileView, ScoringTuning
from streams.propagate import edit_feed
from streams.recommender import Recommender
from streams.triggers import Triggers

log = structlog.get_logger(__name__)

#: Called once per event with (event type, outcome).
Observer = Callable[[str, str], None]
#: Called once per lane with (seconds from the lane's start to its publish, events in the lane).
LaneObserver = Callable[[float, int], None]
#: Concurrent lanes per batch, so Redis and Python work at the same time (measured: 4 beat 2).
LANES = 4
_CAS_TRIES = 3


def _ignore(_type: str, _outcome: str) -> None:
    return None


def _ignore_lane(_seconds: float, _events: int) -> None:
    return None


def _ignore_feed(_feed: str) -> None:
    return None


def no_worse(
    computed: list[dict[str, Any]], held: Sequence[Payload], catalog: Catalog
) -> list[dict[str, Any]]:
    """``computed``, unless the part of ``held`` the catalog still shows is longer: then that.

    For a feed whose stored version is gone (Redis restarted empty, flushed) while a client
    holds a list: the profile, neighbours and trending went with it, so a recompute is made of
    (almost) nothing. The held list's items the catalog does not know or has out of stock are
    dropped and the others take the catalog's current payload (as a catalog change would do,
    :func:`streams.propagate.edit_feed`); extra entry fields (an offer's) are not kept.
    Returns ``computed`` itself (the same object) when it is kept.
    """
    kept = edit_feed(held, ids_of(held), catalog.get)
    return kept if len(kept) > len(computed) else computed


class Processor:
    """Turns events into stored, published feed versions."""

    def __init__(
        self,
        *,
        profiles: ProfileStore,
        recommender: Recommender,
        feeds: FeedStore,
        broker: Broker,
        catalog: Catalog,
        observe: Observer = _ignore,
        observe_lane: LaneObserver = _ignore_lane,
        known_feeds: int = 50_000,
        triggers: Triggers | None = None,
        stats: ExperimentStats | None = None,
    ) -> None:
        self._profiles = profiles
        self._recommender = recommender
        self._feeds = feeds
        self._broker = broker
        self._catalog = catalog
        self._observe = observe
        self._observe_lane = observe_lane
        #: Time-window and delayed triggers, and the offers feeds (streams/triggers.py).
        self.triggers = triggers
        #: The experiments in force (streams/experiments.py): replaced whole, by assignment, so
        #: each lane computes with one complete set. A user in an experiment gets the arm's
        #: tunings, and the stored list carries the arm's tag (its ``rec`` on the wire).
        self.experiments: ExperimentSet = NO_EXPERIMENTS
        #: Counts impressions and clicks of tagged lists (None: not counted).
        self.stats = stats
        # The last version this process wrote per user: the usual base of the next one, so
        # Redis need not send it back (see ProfileStore.apply_many).
        self._known = FeedCache(capacity=known_feeds)
        #: Called with the feed name each time a held list was stored instead of a shorter
        #: computed one (:meth:`ensure_feed`, metrics).
        self.kept_on_loss: Callable[[str], None] = _ignore_feed

    async def handle_batch(self, events: Sequence[Event]) -> None:
        """Handle ``events``: every event applied in order, each user's feed recomputed once.

        Users are spread over ``LANES`` lanes that run concurrently, so Redis works on one
        lane's round trip while Python recomputes another's. A lane costs three pipelined round
        trips whatever its size: all its events applied in batch order (Redis runs a pipeline's
        scripts in order, so each user's events apply in order), then one new feed version per
        user, scored after that user's last event of the batch (the earlier ones are
        "coalesced": their effect is in that version), then one publish per changed feed.
        """
        lanes: list[list[Event]] = [[] for _ in range(LANES)]
        for event in events:
            lanes[zlib.crc32(event.user_id.encode()) % LANES].append(event)
        await asyncio.gather(*(self._lane(lane) for lane in lanes if lane))

    async def _lane(self, lane: list[Event]) -> list[str]:
        started = time.perf_counter()
        outcomes = ["failed"] * len(lane)
        experiments = self.experiments  # one set for the whole lane, however it is reloaded
        arms = self._arms(experiments, lane)
        # Each user's feed is scored on the user's last event that can change it (impressions
        # cannot); the earlier ones are applied unscored ("coalesced").
        last = {e.user_id: i for i, e in enumerate(lane) if e.type != "impression"}
        withdrawals: dict[str, str] = {}  # user → marker: consent withdrawn, erasure pending
        applied = await self._profiles.apply_many(
            [
                (e, self._categories(e), self._known.get(e.user_id), last.get(e.user_id) == i)
                for i, e in enumerate(lane)
            ],
            _scorings(arms, lane),
            withdrawals=withdrawals,
        )
        await self._score_missed(lane, applied, arms)
        writes: list[tuple[str, str, FeedState | None, list[dict[str, Any]]]] = []
        owners: list[int] = []
        tags: list[str] = []
        unindexed: set[str] = set()  # users without consent: no item-side index names them
        for i, (event, result) in enumerate(zip(lane, applied, strict=True)):
            if isinstance(result, Exception):
                log.error("event_failed", event_id=event.event_id, error=str(result)[:200])
                continue
            status, view = result
            outcomes[i] = status
            if view is None or event.user_id in withdrawals:  # rebuilt after the erasure
                continue
            arm = arms.get(event.user_id) if view.personal else None  # no consent: no experiment
            current = event.item_id if view.personal else None  # no consent: nothing of theirs
            if not view.personal:
                unindexed.add(event.user_id)
            try:
                items = self._recommender.home(
                    view, current=current, tuning=arm.feed if arm else None
                )
            except Exception:
                log.exception("recompute_failed", event_id=event.event_id)
                outcomes[i] = "failed"
                continue
            writes.append((event.user_id, HOME, view.feed, items))
            owners.append(i)
            tags.append(_tag(arm))
            # Context feeds the user has (subscribed to once): in the same write round trip.
            for feed, context in view.context.items():
                try:
                    listed = self._recommender.context(feed, context.candidates)
                except Exception:
                    log.exception("recompute_failed", event_id=event.event_id, feed=feed)
                    continue
                writes.append((event.user_id, feed, context.feed, listed))
                owners.append(i)
                tags.append("")
        stored = (
            await self._feeds.write_many(writes, tags=tags, unindexed=unindexed) if writes else []
        )
        updates: list[FeedUpdate] = []
        for i, (user, feed, _, items), tag, written in zip(
            owners, writes, tags, stored, strict=True
        ):
            if isinstance(written, VersionConflict):  # another writer moved the feed: rebase
                base = await self._feeds.read(user, feed)
                written = await self._store(user, feed, base, items, tag, user not in unindexed)
            if isinstance(written, Exception):
                log.error("store_failed", event_id=lane[i].event_id, error=str(written)[:200])
                continue
            if feed == HOME and outcomes[i] == "ok":  # a scoring duplicate stays one
                outcomes[i] = "unchanged" if written is None else "ok"
            if written is not None:
                updates.append(written)
                if feed == HOME:
                    self._known.put(written.state)
        _stamp(updates, lane)
        await self._broker.publish_many(updates)
        # The recompute time: a lane's events are applied, scored, stored and published
        # together, so the time is the lane's (per event it would repeat one figure n times).
        self._observe_lane(time.perf_counter() - started, len(lane))
        kept = _kept(lane, applied, withdrawals)
        if self.triggers is not None:
            # After the profile update, with every event that applied (a duplicate too: a
            # retried batch must still record what a failed attempt did not; recording is
            # idempotent per event id). Connection errors raise: the batch is retried.
            await self.triggers.record(kept)
        if self.stats is not None and experiments:
            # Like the triggers: duplicates too (counting is idempotent per list), so a retried
            # batch counts what a failed attempt did not.
            await self.stats.record(kept, experiments)
        for user, marker in withdrawals.items():  # rare: a user withdrew consent
            try:
                await self._complete_withdrawal(user, marker)
            except (RedisConnectionError, RedisTimeoutError):
                raise  # the batch is retried, and the marker makes it erase again
            except Exception as exc:  # the marker stays: the user's next event tries again
                log.error("withdrawal_failed", error=type(exc).__name__)
        for event, outcome in zip(lane, outcomes, strict=True):
            self._observe(event.type, outcome)
        return outcomes

    def _arms(self, experiments: ExperimentSet, events: Sequence[Event]) -> dict[str, Arm]:
        """The experiment arm of each user of ``events`` who is in one."""
        if not experiments:
            return {}
        scoring, tuning = self._profiles.scoring, self._recommender.tuning
        out: dict[str, Arm] = {}
        for user in {e.user_id for e in events}:
            arm = experiments.arm(user, scoring, tuning)
            if arm is not None:
                out[user] = arm
        return out

    async def _score_missed(
        self,
        lane: list[Event],
        applied: list[tuple[str, ProfileView | None] | Exception],
        arms: dict[str, Arm],
    ) -> None:
        """Score users whose scoring event turned out a duplicate after coalesced events.

        Rare (a replayed event ending a user's run in a batch), and then one more round trip:
        the coalesced events changed the profile, so the feed must still be recomputed.
        """
        coalesced = {
            e.user_id for e, r in zip(lane, applied, strict=True) if r == ("coalesced", None)
        }
        missed = [
            i
            for i, (e, r) in enumerate(zip(lane, applied, strict=True))
            if e.user_id in coalesced
            and isinstance(r, tuple)
            and r[0] == "duplicate"
            and all(lane[j].user_id != e.user_id for j in range(i + 1, len(lane)))
        ]
        if not missed:
            return
        refresh: list[tuple[Event, list[str], FeedState | None, bool]] = [
            (
                Event("", lane[i].user_id, "refresh", None, lane[i].ts),
                [],
                self._known.get(lane[i].user_id),
                True,
            )
            for i in missed
        ]
        scorings = _scorings(arms, [e for e, _, _, _ in refresh])
        rescored = await self._profiles.apply_many(refresh, scorings)
        for i, result in zip(missed, rescored, strict=True):
            if isinstance(result, tuple) and result[1] is not None:
                applied[i] = ("duplicate", result[1])

    @property
    def profiles(self) -> ProfileStore:
        """The profile store, through which consent decisions are recorded and read."""
        return self._profiles

    async def ensure_feed(
        self, user: str, feed: str = HOME, held: Sequence[Payload] | None = None
    ) -> FeedState:
        """The user's stored ``feed``, storing a first one when there is none: the computed home
        or context feed, or an empty list for the offers feed (filled by triggers).

        Storing a context feed is what opts the user in: from then on every event of theirs
        recomputes it (until the feed expires with the profile TTL).

        ``held``: the list a connection of the user still holds of ``feed`` (its stored version
        is gone: Redis lost it). A home or context feed computed shorter than what of ``held``
        the catalog still shows is not stored; that part of ``held`` is, as the first version of
        the new epoch (see :func:`no_worse`), so the client's snapshot carries a good list."""
        if feed in CONTEXT_FEEDS:
            state = await self._feeds.read(user, feed)
            return state if state is not None else await self._create_context(user, feed, held)
        if feed != HOME:
            if self.triggers is None:
                raise ValueError(f"no feed named {feed!r}")
            return await self.triggers.offers.ensure(user, feed)
        state = await self._feeds.read(user, HOME)
        if state is not None:
            return state
        return await self.refresh_feed(user, held)

    async def refresh_feed(self, user: str, held: Sequence[Payload] | None = None) -> FeedState:
        """Recompute, store and publish the user's home feed now (first visit, profile merge);
        ``held`` as in :meth:`ensure_feed`."""
        arm = self._arms(self.experiments, [_refresh(user)]).get(user)
        view = await self._refreshed(user, arm.scoring if arm else None, ())
        arm = arm if view.personal else None  # no consent: outside experiments
        items = self._recommender.home(view, current=None, tuning=arm.feed if arm else None)
        tag = _tag(arm)
        if held and view.personal:  # without consent the held (personal) list must not return
            items, tag = self._no_worse(user, HOME, items, tag, held)
        return await self._store_first(user, HOME, view.feed, items, tag, view.personal)

    async def _create_context(
        self, user: str, feed: str, held: Sequence[Payload] | None = None
    ) -> FeedState:
        """Score, store and publish the user's first ``feed`` (a context feed)."""
        view = await self._refreshed(user, None, (feed,))
        context = view.context.get(feed)
        if context is None:  # pragma: no cover - the script scores what it is asked for
            raise RuntimeError(f"refresh returned no {feed} candidates")
        items = self._recommender.context(feed, context.candidates)
        if held and view.personal:
            items, _ = self._no_worse(user, feed, items, "", held)
        return await self._store_first(user, feed, context.feed, items, "", view.personal)

    def _no_worse(
        self,
        user: str,
        feed: str,
        items: list[dict[str, Any]],
        tag: str,
        held: Sequence[Payload],
    ) -> tuple[list[dict[str, Any]], str]:
        kept = no_worse(items, held, self._catalog)
        if kept is items:
            return items, tag
        self.kept_on_loss(feed)
        log.warning("feed_kept_on_loss", feed=feed, items=len(kept), computed=len(items))
        return kept, ""  # the held list was not made by an arm now: no rec tag

    async def _refreshed(
        self, user: str, scoring: ScoringTuning | None, context: Sequence[str]
    ) -> ProfileView:
        """The user's view now, without an event (a ``refresh``), scoring ``context`` too."""
        [result] = await self._profiles.apply_many(
            [(_refresh(user), [], None, True)], [scoring], context=context
        )
        if isinstance(result, Exception):
            raise result
        if result[1] is None:  # pragma: no cover - refresh always returns a view
            raise RuntimeError("refresh returned no profile view")
        return result[1]

    async def _store_first(
        self,
        user: str,
        feed: str,
        base: FeedState | None,
        items: list[dict[str, Any]],
        tag: str,
        indexed: bool = True,
    ) -> FeedState:
        """Store and publish ``items`` as ``feed``'s next version; the stored state after."""
        update = await self._store(user, feed, base, items, tag, indexed)
        if update is not None:
            if feed == HOME:
                self._known.put(update.state)
            await self._broker.publish(update)
            return update.state
        state = await self._feeds.read(user, feed)
        if state is None:  # pragma: no cover - unchanged means a stored version exists
            raise RuntimeError("feed vanished while being computed")
        return state

    async def _store(
        self,
        user: str,
        feed: str,
        base: FeedState | None,
        items: list[dict[str, Any]],
        tag: str,
        indexed: bool = True,
    ) -> FeedUpdate | None:
        for _ in range(_CAS_TRIES - 1):
            try:
                return await self._feeds.write(user, feed, base, items, tag=tag, indexed=indexed)
            except VersionConflict:
                base = await self._feeds.read(user, feed)
        return await self._feeds.write(user, feed, base, items, tag=tag, indexed=indexed)

    async def _complete_withdrawal(self, user: str, marker: str) -> None:
        """A withdrawal of consent reached the user's lane: erase what is stored about them but
        the consent record, then store and publish fresh versions of the feeds they had (not
        personal, unless a grant followed). New epochs: the old histories are gone, so clients
        take a snapshot; sockets stay open. The marker is cleared last, so a crash before that
        means the user's next event does it all again."""
        consent = self._profiles.consent
        had = await consent.erase_for_withdrawal(user, USER_FEEDS)
        for feed in had:
            if feed == HOME:
                await self.refresh_feed(user)
            elif feed in CONTEXT_FEEDS:
                await self._create_context(user, feed)
            else:  # offers: what triggers made of the erased event times
                await self._store_first(user, feed, None, [], "", indexed=False)
        await consent.clear_withdrawal(user, marker)
        log.info("consent_withdrawal_erased", feeds=len(had))  # no user id: personal data

    def _categories(self, event: Event) -> list[str]:
        if event.item_id is not None:
            item = self._catalog.get(event.item_id)
            return [item.category] if item is not None and item.category else []
        query = event.props.get("query")
        if event.type == "search" and isinstance(query, str):
            return self._catalog.categories_for_query(query[:200])[:5]
        return []


def _scorings(arms: dict[str, Arm], events: Sequence[Event]) -> list[ScoringTuning | None] | None:
    """Per event, its user's arm's scoring tuning (None: the default); None when no arm."""
    if not arms:
        return None
    return [arm.scoring if (arm := arms.get(e.user_id)) else None for e in events]


def _kept(
    lane: list[Event],
    applied: list[tuple[str, ProfileView | None] | Exception],
    withdrawals: dict[str, str],
) -> list[Event]:
    """The events whose effects are kept beyond the profile (trigger times, experiment counts):
    applied, of a user with personalization consent and no erasure pending."""
    return [
        e
        for e, r in zip(lane, applied, strict=True)
        if not isinstance(r, Exception) and r[0] != NO_CONSENT and e.user_id not in withdrawals
    ]


def _refresh(user: str) -> Event:
    """Not an event: scores the user's candidates without changing anything."""
    return Event(event_id="", user_id=user, type="refresh", item_id=None, ts=_now_ms())


def _stamp(updates: list[FeedUpdate], lane: list[Event]) -> None:
    """Give each update the entry time of its user's oldest event in ``lane`` (the version
    carries all of them, so the oldest waited longest)."""
    entered: dict[str, int] = {}
    for event in lane:
        if event.entered_ms and event.user_id not in entered:
            entered[event.user_id] = event.entered_ms
    for update in updates:
        update.entered_ms = entered.get(update.user, 0)


def _tag(arm: Arm | None) -> str:
    return arm.tag if arm is not None else ""


def _now_ms() -> int:
    return int(time.time() * 1000)
