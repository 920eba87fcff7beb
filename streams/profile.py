"""The Redis profile model: one round trip applies an event and returns the recompute inputs.

Per-user keys (one hash tag, one slot): ``dedup`` (event ids seen, by time, capped), ``recent``
(distinct items by last touch), ``aff`` (category affinity, decayed), ``cart``, ``bought``, ``p``
(profile scalars). Item-side keys: ``pr:nb:<item>`` (co-visitation neighbours, capped),
``pr:trend`` and ``pr:trend:c:<category>`` (decayed popularity), ``pr:meta``.

The same script scores the user's candidates right after the update (see
:class:`ScoringTuning`), so what crosses the wire is a short ranked list, not the raw inputs.

Guarantees: the update is atomic (one Lua script); an event id seen within the dedup window
changes nothing and is reported as a duplicate; every per-user key carries the profile TTL. The
user's consent record is read in the same script: for a user without personalization consent
nothing is written and the candidates are a visitor's with no profile (:mod:`streams.consent`).
Caveat: the script derives item-side key names itself, so it needs a single Redis (not Cluster).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from string import Template
from typing import Any

from redis.asyncio import Redis

from sessions.feeds import FeedState, decode_body
from sessions.keys import encode_user, feed_key, user_tag
from sessions.scripts import PipelinedScript, run_scripts
from sessions.versions import Version
from streams.consent import (
    DENIED,
    GRANTED,
    NO_CONSENT,
    ConsentChange,
    ConsentStore,
    consent_key,
    feed_prefixes,
    parse_record,
    withdrawal_keys,
)
from streams.events import CONSENT, Event
from streams.rules import OFFER_FEEDS

_EVENT_LUA = resources.files("streams").joinpath("lua/event.lua").read_text()

#: (affinity, co-visitation, trending) weight of each event type.
WEIGHTS: dict[str, tuple[float, float, float]] = {
    "view": (1.0, 1.0, 1.0),
    "click": (1.0, 1.0, 1.0),
    "add_to_cart": (3.0, 2.0, 2.0),
    "remove_from_cart": (0.0, 0.0, 0.0),
    "purchase": (5.0, 3.0, 3.0),
    "search": (2.0, 0.0, 0.0),
    "impression": (0.0, 0.0, 0.0),
    "refresh": (0.0, 0.0, 0.0),  # not an event: score the candidates without changing anything
    CONSENT: (0.0, 0.0, 0.0),  # recorded (streams/consent.py), then scored like a refresh
}

Scored = list[tuple[str, float]]
#: Scripts kept per scoring tuning before the cache starts over.
_MAX_SCRIPTS = 64


@dataclass(frozen=True, slots=True)
class ProfileTuning:
    """Sizes and half-lives of the profile model."""

    ttl_s: int = 30 * 86_400
    dedup_window_ms: int = 86_400_000
    dedup_max: int = 2_000
    recent_max: int = 50
    neighbours_kept: int = 100
    affinity_halflife_ms: int = 3 * 86_400_000
    trending_halflife_ms: int = 6 * 3_600_000
    covisit_window: int = 5
    #: Latest users kept per item in the session-kNN index (``pr:is:<item>``, members are ids
    #: encoded as in key names, :func:`sessions.keys.encode_user`).
    session_index_max: int = 200
    #: Consent policy (``PUSHREC_CONSENT``, streams/consent.py): personalize only users with a
    #: recorded grant (True, ``required``), or everyone who did not deny (False, ``implied``).
    consent_required: bool = False


@dataclass(frozen=True, slots=True)
class ScoringTuning:
    """How candidates are scored (inside the event script).

    Sources, each normalised to [0, 1] by its best score: co-visitation neighbours of the user's
    latest ``recent_fetched`` items (``neighbour_w``, times ``recency_decay`` per step back),
    trending items of the user's top ``categories_fetched`` categories (``category_w`` times the
    category's share of the user's affinity), global trending (``global_w``), and session kNN
    (``session_w``: users with overlapping recent items vote for theirs, see event.lua). With
    ``repeat_w`` > 0 the item being looked at leads the list. The best ``candidates`` (bought
    items excluded) come back, best first, ties by id.
    """

    recent_fetched: int = 4
    neighbours_fetched: int = 15
    categories_fetched: int = 3
    trending_fetched: int = 15
    neighbour_w: float = 1.0
    recency_decay: float = 0.6
    category_w: float = 0.35
    global_w: float = 0.1
    candidates: int = 24
    #: Session kNN: this user's latest ``session_items`` items find up to ``session_sample``
    #: recent users per item; the best ``session_neighbours`` of them vote for their items.
    session_items: int = 8
    session_sample: int = 200
    #: 50 neighbours reading their latest 20 items each: the same HR@20/MRR@20 on YOOCHOOSE as
    #: 100 neighbours reading whole lists (.6963/.3796 against .6969/.3797), at a fraction of
    #: the Redis time when many visitors share trending items (docs/benchmarks.md, sweep).
    session_neighbours: int = 50
    #: How many of each neighbour's latest items are read and voted for.
    session_seq: int = 20
    #: exp((position - last) / decay): how fast older items of this user stop counting.
    session_position_decay: float = 1.5
    #: exp(-distance / decay): how fast a neighbour's items far from the shared one stop counting.
    session_item_decay: float = 2.0
    session_w: float = 1.0
    #: The item being looked at leads the list (> 0), or is never in it (0).
    repeat_w: float = 1.0
    #: Offline model (``pushrec train``, streams/train.py): when ``pr:model`` names a version,
    #: its neighbours of the same latest items are one more source (``model_w``, times
    #: ``recency_decay`` per step back, ``model_fetched`` per item). 0 = never read.
    model_w: float = 1.0
    model_fetched: int = 15


#: The context feeds the event script can score (see ``lua/event.lua``): ``similar``, the
#: neighbours of the item being looked at, and ``cart``, the complements of the cart.
CONTEXT_FEEDS = ("similar", "cart")
#: Every feed a user can have (what a withdrawal of consent unindexes, erases and rebuilds).
USER_FEEDS = ("home", *CONTEXT_FEEDS, *OFFER_FEEDS)


@dataclass(frozen=True, slots=True)
class ContextView:
    """A context feed's ranked candidates and its stored state (the base of its next version)."""

    candidates: Scored
    feed: FeedState | None


@dataclass(frozen=True, slots=True)
class ProfileView:
    """What the recommender sees of a user right after an event: ranked candidates, and the
    currently stored feed (the base of the next version); ``context`` the same per context feed
    the user has (or that was asked for)."""

    candidates: Scored
    feed: FeedState | None
    context: dict[str, ContextView] = field(default_factory=dict)
    #: False: the user has no personalization consent; the candidates are those of a visitor
    #: with no profile, and the lists made of them are stored without index or experiment tag.
    personal: bool = True


def user_keys(user: str) -> list[str]:
    """The per-user keys the event script touches, in its KEYS order."""
    tag = user_tag(user)
    return [tag + k for k in ("dedup", "recent", "aff", "cart", "bought", "p")]


def script_source(profile: ProfileTuning, scoring: ScoringTuning) -> str:
    """The event script with its tuning constants filled in (numbers only, from typed settings)."""
    values: dict[str, int | float] = {}
    for tuning in (profile, scoring):
        for f in fields(tuning):
            value = getattr(tuning, f.name)
            if isinstance(value, bool):  # a flag is 1 or 0 in Lua ("true" would not compile)
                value = int(value)
            if not isinstance(value, int | float):
                raise TypeError(f"tuning {f.name} must be a number")
            values[f.name.upper()] = value
    return Template(_EVENT_LUA).substitute(values)


class ProfileStore:
    """Applies events to profiles in Redis."""

    def __init__(
        self,
        redis: Redis,
        tuning: ProfileTuning | None = None,
        scoring: ScoringTuning | None = None,
    ) -> None:
        self._redis = redis
        self.tuning = tuning or ProfileTuning()
        self.scoring = scoring or ScoringTuning()
        #: One registered script per scoring tuning in use (the default, and each experiment
        #: arm's): the tuning is compiled into the script's constants.
        self._scripts: dict[ScoringTuning, PipelinedScript] = {}
        self._script = self._script_for(self.scoring)
        #: Consent records and the erasure completing a withdrawal (streams/consent.py).
        self.consent = ConsentStore(redis, required=self.tuning.consent_required)

    def _script_for(self, scoring: ScoringTuning) -> PipelinedScript:
        script = self._scripts.get(scoring)
        if script is None:
            if len(self._scripts) >= _MAX_SCRIPTS:  # experiments come and go: forget old arms
                self._scripts = {self.scoring: self._script}
            script = PipelinedScript(self._redis, script_source(self.tuning, scoring))
            self._scripts[scoring] = script
        return script

    async def apply(self, event: Event, categories: list[str]) -> tuple[str, ProfileView | None]:
        """Apply ``event`` in one round trip.

        Returns ``("duplicate", None)`` for an event id already seen, ``("noop", None)`` for an
        event that cannot change a feed (impression), else ``("ok", view)``.
        """
        result = (await self.apply_many([(event, categories, None, True)]))[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def apply_many(
        self,
        batch: Sequence[tuple[Event, list[str], FeedState | None, bool]],
        scorings: Sequence[ScoringTuning | None] | None = None,
        *,
        context: Sequence[str] = (),
        withdrawals: dict[str, str] | None = None,
    ) -> list[tuple[str, ProfileView | None] | Exception]:
        """Several :meth:`apply` calls in one pipelined round trip, in order.

        Redis runs a pipeline's scripts one after the other, in order, so several events of one
        user in one batch apply in batch order. An entry whose last flag is False is applied but
        not scored (``("coalesced", None)``): a later event of the same user will score.

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
        calls: list[tuple[PipelinedScript, Sequence[str], Sequence[Any]]] = []
        for i, (event, categories, known, score) in enumerate(batch):
            chosen = scorings[i] if scorings is not None else None
            script = self._script if chosen is None else self._script_for(chosen)
            calls.append((script, *self._call(event, categories, known, score, context)))
        replies = await run_scripts(self._redis, calls)
        out: list[tuple[str, ProfileView | None] | Exception] = []
        for (event, _, known, _), res in zip(batch, replies, strict=True):
            if isinstance(res, Exception):
                out.append(res)
                continue
            code = int(res[0])
            scored = code in (1, 5)
            tail = res[7:] if scored else res[1:]
            status = _STATUS[code]
            if tail:  # a consent event, or a withdrawal awaiting its erasure
                marker, change = _text(tail[0]), _text(tail[1])
                if marker and withdrawals is not None:
                    withdrawals[event.user_id] = marker
                status = change or status
            view = self._view(event.user_id, res, known, personal=code == 1) if scored else None
            out.append((status, view))
        return out

    def _call(
        self,
        event: Event,
        categories: list[str],
        known: FeedState | None,
        score: bool,
        context: Sequence[str],
        source: str = "event",
    ) -> tuple[list[str], list[Any]]:
        """The event script's keys and arguments for one entry (see ``lua/event.lua``)."""
        user = event.user_id
        w_aff, w_cov, w_trend = WEIGHTS[event.type]
        keys = [
            *user_keys(user),
            feed_key(user, "home"),
            *(feed_key(user, f) for f in CONTEXT_FEEDS),
            consent_key(user),
        ]
        args: list[Any] = [
            event.event_id,
            event.type,
            event.item_id or "",
            "\n".join(categories),
            event.ts,
            w_aff,
            w_cov,
            w_trend,
            known.version.epoch if known else "",
            known.version.n if known else 0,
            "1" if score else "0",
            user,
            "\n".join(context),
            encode_user(user),  # the session-kNN index's member: key names are built from it
        ]
        if event.type == CONSENT:
            granted = event.props.get("personalization") is True
            # The script's feeds: KEYS[7..9], then the offers feed.
            keys += [feed_key(user, OFFER_FEEDS[0]), *withdrawal_keys(user)]
            args += [GRANTED if granted else DENIED, source, *feed_prefixes(USER_FEEDS)]
        return keys, args

    async def record_consent(self, user: str, granted: bool, *, source: str) -> ConsentChange:
        """Record ``user``'s decision now, from ``source`` (``api``), as a ``consent`` event
        would: the same script, so the same rules (see :mod:`streams.consent`); then the record
        is read back. A withdrawal's erasure is left to the user's lane (``ConsentChange.marker``).
        """
        event = Event("", user, CONSENT, None, 0, {"personalization": granted})
        keys, args = self._call(event, [], None, False, (), source)
        [res] = await run_scripts(self._redis, [(self._script, keys, args)])
        if isinstance(res, Exception):
            raise res
        marker, change, _ = (_text(x) for x in res[1:4])
        fields = await self._redis.hmget(consent_key(user), ["state", "at", "source", "erase"])
        return ConsentChange(change, parse_record(list(fields)), marker or None)

    @staticmethod
    def _view(user: str, res: list[Any], known: FeedState | None, *, personal: bool) -> ProfileView:
        flat, fe, fn, fb, same, context = res[1:7]
        # The caller's copy when Redis says it is still the stored one (no body was sent).
        feed = known if int(same) and known is not None else _state(user, "home", fe, fn, fb)
        views = {
            name.decode(): ContextView(_scored(cands), _state(user, name.decode(), e, n, b))
            for name, cands, e, n, b in context
        }
        return ProfileView(_scored(flat), feed, views, personal)


#: The event script's status codes (``lua/event.lua``).
_STATUS = {0: "duplicate", 1: "ok", 2: "noop", 3: "coalesced", 4: NO_CONSENT, 5: NO_CONSENT}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _scored(flat: list[bytes]) -> Scored:
    return [(flat[i].decode(), float(flat[i + 1])) for i in range(0, len(flat), 2)]


def _state(user: str, feed: str, epoch: bytes, n: bytes, body: bytes) -> FeedState | None:
    """A stored feed's state from the script's reply (None: no feed stored)."""
    if not epoch:
        return None
    return FeedState(user, feed, Version(epoch.decode(), int(n)), decode_body(body or None))
