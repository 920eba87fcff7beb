"""The user lane of the event path, and the view scoring makes of it.

Per-user keys (one hash tag, one slot): ``dedup`` (event ids seen, by time, capped), ``recent``
(distinct items by last touch), ``aff`` (category affinity, decayed, origin ``a0`` in ``p``),
``cart``, ``bought``, ``p`` (profile scalars), ``consent``, ``feed:<name>``.

One event costs (issue 13, docs/ARCHITECTURE.md "Event path"):

1. **The user lane** (``lua/user_event.lua``): one slot-local script call per event, pipelined
   per lane, touching only the user's keys: consent, dedup, the profile update; it returns what
   the item side and scoring need (the request/reply contract: :mod:`streams.user_lane`). Its
   cost does not depend on how many other visitors share an item.
2. **The item-side aggregates** (:mod:`streams.aggregates`): co-visitation, complements, the
   session index, trending and the users count, merged per key over the lane and written per
   slot in one pipelined round trip, only for events the lane applied (never twice for a
   redelivered event, at most once across a crash between the two steps).
3. **Scoring in the worker** (:mod:`streams.scoring`) on item-side lists read through the
   worker's :class:`~streams.itemcache.ItemCache` (at most ``max_age_s`` stale, the worker's own
   writes seen at once): one pipelined read for what the lane misses, one more for the chosen
   session neighbours' items and the offline model's lists (named by :mod:`streams.reads`).

The settings are :mod:`streams.tunings`' and the views handed to the processor
:mod:`streams.views`' (both re-exported here); what scoring reads is named in :mod:`streams.reads`.

Guarantees: the user lane is atomic; an event id seen within the dedup window changes nothing and
is reported as a duplicate; every per-user key carries the profile TTL. The user's consent record
is read in the same script: for a user without personalization consent nothing is written (no
aggregate either) and the candidates are a visitor's with no profile (:mod:`streams.consent`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessions.feeds import FeedState, decode_body
from sessions.keys import (
    TREND_BUCKETS,
    encode_user,
    feed_key,
    shown_key,
    user_tag,
)
from sessions.scripts import PipelinedScript, run_scripts
from sessions.versions import Version
from streams import reads, scoring
from streams.aggregates import Accepted, Aggregates
from streams.consent import (
    DENIED,
    GRANTED,
    NO_CONSENT,
    ConsentChange,
    ConsentStore,
    consent_key,
    parse_record,
    withdrawal_keys,
)
from streams.events import CONSENT, Event
from streams.itemcache import ItemCache, Snapshot, Want
from streams.rules import OFFER_FEEDS
from streams.tunings import WEIGHTS, ProfileTuning, ScoringTuning
from streams.user_lane import (
    FeedReply,
    UserLaneReply,
    UserLaneRequest,
    script_source,
    user_keys,
)
from streams.views import CONTEXT_FEEDS, USER_FEEDS, ContextView, ProfileView, Scored

log = structlog.get_logger(__name__)


#: The user lane's outcomes as the processor names them.
_STATUS = {"applied": "ok", "no_consent": NO_CONSENT}
#: Outcomes whose event the item side counts (when the user is personal).
_ACCEPTED = ("applied", "coalesced")

Entry = tuple[Event, list[str], FeedState | None, bool]


class ProfileStore:
    """Applies events to profiles in Redis and scores the users' candidates."""

    def __init__(
        self,
        redis: Redis,
        tuning: ProfileTuning | None = None,
        scoring: ScoringTuning | None = None,
        *,
        cache: ItemCache | None = None,
        buckets: int = TREND_BUCKETS,
    ) -> None:
        self._redis = redis
        self.tuning = tuning or ProfileTuning()
        self.scoring = scoring or ScoringTuning()
        self._script = PipelinedScript(redis, script_source(self.tuning))
        #: Item-side reads for scoring (staleness and memory bounds: see streams/itemcache.py).
        self.cache = (
            cache
            if cache is not None  # an empty cache is falsy (it has a length)
            else ItemCache(
                redis, buckets=buckets, trending_halflife_ms=self.tuning.trending_halflife_ms
            )
        )
        #: The item-side writes after the user lane (streams/aggregates.py).
        self.aggregates = Aggregates(
            redis,
            self.cache,
            neighbours_kept=self.tuning.neighbours_kept,
            session_index_max=self.tuning.session_index_max,
            trending_halflife_ms=self.tuning.trending_halflife_ms,
            buckets=self.cache.buckets,
        )
        #: Consent records and the erasure completing a withdrawal (streams/consent.py).
        self.consent = ConsentStore(redis, required=self.tuning.consent_required)

    async def apply(self, event: Event, categories: list[str]) -> tuple[str, ProfileView | None]:
        """Apply ``event`` and score its user.

        Returns ``("duplicate", None)`` for an event id already seen, ``("noop", None)`` for an
        event that cannot change a feed (impression), else ``("ok", view)``.
        """
        result = (await self.apply_many([(event, categories, None, True)]))[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def apply_many(
        self,
        batch: Sequence[Entry],
        scorings: Sequence[ScoringTuning | None] | None = None,
        *,
        context: Sequence[str] = (),
        withdrawals: dict[str, str] | None = None,
    ) -> list[tuple[str, ProfileView | None] | Exception]:
        """Several :meth:`apply` calls: the user lane of all in one pipelined round trip, in
        order, then the lane's item-side aggregates (one more), then the scoring reads the
        cache misses (at most two more).

        Redis runs a pipeline's scripts one after the other, in order, so several events of one
        user in one batch apply in batch order. An entry whose last flag is False is applied but
        not scored (``("coalesced", None)``): a later event of the same user will score, and
        sees every aggregate of the lane.

        Each entry may carry the feed state the caller believes is stored; when it still is,
        Redis sends back only its version and the view reuses the caller's copy.

        ``scorings``: per entry, the tuning its candidates are scored with (an experiment arm's);
        None (all, or one) means the store's own. ``context``: context feeds to score for every
        entry even where the user has none stored yet (to create one); the stored ones always
        are.

        Consent (:mod:`streams.consent`): an event of a user without personalization consent
        stores nothing and is ``("no_consent", view or None)``, its view not ``personal``. A
        ``consent`` event's status is what recording it did (``granted``, ``withdrawn`` …).
        ``withdrawals`` (when given) receives, per user whose record asks for the erasure that
        completes a withdrawal, its marker (see :meth:`ConsentStore.erase_for_withdrawal`).

        A Redis error reply fails that event alone (returned in its place); connection errors
        raise for all, and a retry is absorbed by dedup.
        """
        tunings = [
            (scorings[i] if scorings is not None else None) or self.scoring
            for i in range(len(batch))
        ]
        calls = [
            (self._script, *self._call(event, cats, known, score, context, tunings[i]))
            for i, (event, cats, known, score) in enumerate(batch)
        ]
        sent = self.cache.now()
        raw = await run_scripts(self._redis, calls)
        replies: list[UserLaneReply | Exception] = []
        for res in raw:
            if isinstance(res, Exception):
                replies.append(res)
                continue
            try:
                replies.append(UserLaneReply.unpack(res))
            except Exception as exc:  # a malformed reply fails that event alone
                replies.append(exc)
        await self._after_lane(batch, replies, tunings, sent)
        views = await self._score(batch, replies, tunings)
        out: list[tuple[str, ProfileView | None] | Exception] = []
        for (event, _, _, _), reply, view in zip(batch, replies, views, strict=True):
            if isinstance(reply, Exception):
                out.append(reply)
                continue
            if reply.marker and withdrawals is not None:
                withdrawals[event.user_id] = reply.marker
            status = reply.change or _STATUS.get(reply.outcome, reply.outcome)
            out.append((status, view))
        return out

    async def _after_lane(
        self,
        batch: Sequence[Entry],
        replies: Sequence[UserLaneReply | Exception],
        tunings: Sequence[ScoringTuning],
        sent: float,
    ) -> None:
        """The item side of the lane: aggregates of the accepted events, the shown index of
        withdrawn users' lists, and the cache's copies of the lane's users' lists (``sent``:
        the cache's clock before the lane's round trip)."""
        accepted: list[Accepted] = []
        unindex: list[tuple[str, str, str]] = []  # (feed, item, user)
        cache = self.cache
        cap = self.tuning.recent_max
        # Where each user's list is read back later in this lane (the scored entry's ``seq``):
        # applying the user's earlier writes one by one would be overwritten by that read.
        seeded: dict[str, int] = {}
        for i, ((event, _, _, _), reply) in enumerate(zip(batch, replies, strict=True)):
            if not isinstance(reply, Exception) and reply.seq:
                seeded[event.user_id] = i
        for i, ((event, cats, _, _), reply, tuning) in enumerate(
            zip(batch, replies, tunings, strict=True)
        ):
            if isinstance(reply, Exception):
                continue
            if reply.outcome in _ACCEPTED and reply.personal and event.item_id:
                weights = WEIGHTS[event.type]
                accepted.append(
                    Accepted(event, cats, weights, reply.prev, reply.new_user, reply.partners)
                )
                if weights[1] > 0 and seeded.get(event.user_id, -1) < i:
                    # The lane added the item to the user's recent list at the event's time (a
                    # co-visiting event, lua/user_event.lua): the session kNN of other users
                    # reads that list, so the cached copy follows (in lane order), unless the
                    # list is read back at or after this entry.
                    cache.recent_written(
                        user_tag(event.user_id) + "recent", event.item_id, event.ts, cap=cap
                    )
            for feed, body in reply.unindex.items():
                for p in decode_body(body or None):
                    if isinstance(p, dict) and p.get("id") is not None:
                        unindex.append((feed, str(p["id"]), event.user_id))
            if reply.seq:
                # The scored entry's atomic read of the user's latest items (after all of the
                # user's events in this lane): a fresh copy for other users' session kNN.
                depth = max(_seq_n(tuning), _recent_n(tuning))
                cache.seq_read(user_tag(event.user_id) + "recent", reply.seq, depth, sent)
            if reply.change:  # a withdrawal may have erased the profile
                cache.invalidate(user_tag(event.user_id) + "recent")
        if unindex:
            pipe = self._redis.pipeline(transaction=False)
            for feed, item, user in unindex:
                pipe.zrem(shown_key(item, feed), user)
            await pipe.execute()
        if accepted:
            try:
                await self.aggregates.write(self.aggregates.collect(accepted))
            except (RedisConnectionError, RedisTimeoutError):
                raise  # the batch is retried: its events are duplicates then, counted once
            except Exception as exc:  # one slot's script failed: the others were written
                log.error("aggregates_failed", error=str(exc)[:200])

    def _call(
        self,
        event: Event,
        categories: list[str],
        known: FeedState | None,
        score: bool,
        context: Sequence[str],
        tuning: ScoringTuning,
        source: str = "event",
    ) -> tuple[list[str], list[Any]]:
        """The user lane's keys and request for one entry (see ``lua/user_event.lua``)."""
        user = event.user_id
        w_aff, w_cov, _ = WEIGHTS[event.type]
        keys = [
            *user_keys(user),
            consent_key(user),
            feed_key(user, "home"),
            *(feed_key(user, f) for f in CONTEXT_FEEDS),
        ]
        decision = ""
        if event.type == CONSENT:
            decision = GRANTED if event.props.get("personalization") is True else DENIED
            keys += [feed_key(user, OFFER_FEEDS[0]), *withdrawal_keys(user)]
        req = UserLaneRequest(
            event_id=event.event_id,
            type=event.type,
            item=event.item_id or "",
            categories=categories,
            ts=event.ts,
            w_aff=w_aff,
            w_cov=w_cov,
            score=score,
            user=user,
            known_epoch=known.version.epoch if known else "",
            known_n=known.version.n if known else 0,
            context=context,
            recent_n=_recent_n(tuning),
            cats_n=tuning.categories_fetched,
            seq_n=_seq_n(tuning),
            decision=decision,
            source=source,
        )
        return keys, [req.pack()]

    async def _score(
        self,
        batch: Sequence[Entry],
        replies: Sequence[UserLaneReply | Exception],
        tunings: Sequence[ScoringTuning],
    ) -> list[ProfileView | None]:
        """The views of the scored entries (None for the others), from one cache snapshot."""
        jobs: list[tuple[int, scoring.UserInputs, ScoringTuning, FeedReply | None]] = []
        for i, ((event, cats, _, _), reply) in enumerate(zip(batch, replies, strict=True)):
            if isinstance(reply, Exception) or reply.feeds is None:
                continue
            personal = reply.personal
            user = scoring.UserInputs(
                me=encode_user(event.user_id),
                item=(event.item_id or "") if personal else "",
                categories=tuple(cats) if personal else (),
                recent=reply.recent,
                top_categories=reply.categories,
                bought=reply.bought,
                cart=reply.cart,
                personal=personal,
            )
            jobs.append((i, user, tunings[i], reply.feeds.get("home")))
        views: list[ProfileView | None] = [None] * len(batch)
        if not jobs:
            return views
        first = reads.shared_reads({t for _, _, t, _ in jobs}, self.cache.buckets)
        for _, user, t, _ in jobs:
            reads.first_reads(user, t, first)
        snap = await self.cache.prefetch(first)
        chosen: list[list[tuple[str, float]]] = []
        second: list[Want] = []
        version = snap.model_version()
        for _, user, t, _ in jobs:
            neighbours = scoring.session_neighbours(user, snap, t)
            chosen.append(neighbours)
            reads.second_reads(user, t, neighbours, version, second)
        if second:
            await self.cache.prefetch(second, into=snap)
        for (i, user, t, home), neighbours in zip(jobs, chosen, strict=True):
            reply = replies[i]
            assert not isinstance(reply, Exception) and reply.feeds is not None
            event, _, known, _ = batch[i]
            context: dict[str, ContextView] = {}
            for name, st in reply.feeds.items():
                if name == "similar":
                    ranked = scoring.similar(user, snap, t)
                elif name == "cart":
                    ranked = scoring.cart(user, snap, t)
                else:
                    continue
                context[name] = ContextView(ranked, _state(event.user_id, name, st))
            feed = known if home is not None and home.same and known is not None else None
            if feed is None and home is not None:
                feed = _state(event.user_id, "home", home)
            candidates = scoring.home(user, snap, t, neighbours)
            views[i] = ProfileView(candidates, feed, context, user.personal)
        return views

    async def record_consent(self, user: str, granted: bool, *, source: str) -> ConsentChange:
        """Record ``user``'s decision now, from ``source`` (``api``), as a ``consent`` event
        would: the same script, so the same rules (see :mod:`streams.consent`); then the record
        is read back. A withdrawal's erasure is left to the user's lane (``ConsentChange.marker``).
        """
        event = Event("", user, CONSENT, None, 0, {"personalization": granted})
        keys, args = self._call(event, [], None, False, (), self.scoring, source)
        [res] = await run_scripts(self._redis, [(self._script, keys, args)])
        if isinstance(res, Exception):
            raise res
        reply = UserLaneReply.unpack(res)
        await self._after_lane([(event, [], None, False)], [reply], [self.scoring], 0.0)
        fields = await self._redis.hmget(consent_key(user), ["state", "at", "source", "erase"])
        return ConsentChange(reply.change, parse_record(list(fields)), reply.marker or None)


def _state(user: str, feed: str, st: FeedReply) -> FeedState | None:
    """A stored feed's state from the user lane's reply (None: no feed stored)."""
    if not st.epoch:
        return None
    return FeedState(user, feed, Version(st.epoch, st.n), decode_body(st.body or None))


def _recent_n(tuning: ScoringTuning) -> int:
    """How many of a user's latest items scoring reads from the user lane's reply."""
    return max(tuning.recent_fetched, tuning.session_items)


def _seq_n(tuning: ScoringTuning) -> int:
    """How many of a user's latest items, with their times, the user lane returns for the item
    cache: what other users' session kNN reads of this list (none when it is off)."""
    return tuning.session_seq if tuning.session_w > 0 else 0


__all__ = [
    "CONTEXT_FEEDS",
    "USER_FEEDS",
    "WEIGHTS",
    "ContextView",
    "ProfileStore",
    "ProfileTuning",
    "ProfileView",
    "Scored",
    "ScoringTuning",
    "Snapshot",
    "UserLaneReply",
    "UserLaneRequest",
    "script_source",
    "user_keys",
]
