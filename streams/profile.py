"""The Redis profile model: one round trip applies an event and returns the recompute inputs.

Per-user keys (one hash tag, one slot): ``dedup`` (event ids seen, by time, capped), ``recent``
(distinct items by last touch), ``aff`` (category affinity, decayed), ``cart``, ``bought``, ``p``
(profile scalars). Item-side keys: ``pr:nb:<item>`` (co-visitation neighbours, capped),
``pr:trend`` and ``pr:trend:c:<category>`` (decayed popularity), ``pr:meta``.

Guarantees: the update is atomic (one Lua script); an event id seen within the dedup window
changes nothing and is reported as a duplicate; every per-user key carries the profile TTL.
Caveat: the script derives item-side key names itself, so it needs a single Redis (not Cluster).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis

from sessions.feeds import FeedState, decode_body
from sessions.keys import feed_key, user_tag
from sessions.versions import Version
from streams.events import Event

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
    "refresh": (0.0, 0.0, 0.0),  # not an event: read the inputs without changing anything
}

Scored = list[tuple[str, float]]


@dataclass(frozen=True, slots=True)
class ProfileTuning:
    """Sizes and half-lives of the profile model."""

    ttl_s: int = 30 * 86_400
    dedup_window_ms: int = 86_400_000
    dedup_max: int = 2_000
    recent_max: int = 50
    neighbours_kept: int = 100
    recent_fetched: int = 5
    neighbours_fetched: int = 30
    categories_fetched: int = 3
    trending_fetched: int = 30
    affinity_halflife_ms: int = 3 * 86_400_000
    trending_halflife_ms: int = 6 * 3_600_000
    bought_fetched: int = 200
    covisit_window: int = 5


@dataclass(frozen=True, slots=True)
class ProfileView:
    """What the recommender sees of a user right after an event."""

    recent: Scored
    categories: Scored
    neighbours: list[Scored]
    category_trending: list[Scored]
    global_trending: Scored
    cart: frozenset[str]
    bought: frozenset[str]
    feed: FeedState | None


def _scored(flat: list[bytes]) -> Scored:
    return [(flat[i].decode(), float(flat[i + 1])) for i in range(0, len(flat), 2)]


def _strings(values: list[bytes]) -> list[str]:
    return [v.decode() for v in values]


def user_keys(user: str) -> list[str]:
    """The per-user keys the event script touches, in its KEYS order."""
    tag = user_tag(user)
    return [tag + k for k in ("dedup", "recent", "aff", "cart", "bought", "p")]


class ProfileStore:
    """Applies events to profiles in Redis."""

    def __init__(self, redis: Redis, tuning: ProfileTuning) -> None:
        self._script = redis.register_script(_EVENT_LUA)
        self.tuning = tuning

    async def apply(self, event: Event, categories: list[str]) -> tuple[str, ProfileView | None]:
        """Apply ``event`` in one round trip.

        Returns ``("duplicate", None)`` for an event id already seen, ``("noop", None)`` for an
        event that cannot change a feed (impression), else ``("ok", view)``.
        """
        t = self.tuning
        w_aff, w_cov, w_trend = WEIGHTS[event.type]
        res = await self._script(
            keys=[*user_keys(event.user_id), feed_key(event.user_id, "home")],
            args=[
                event.event_id,
                event.type,
                event.item_id or "",
                "\n".join(categories),
                event.ts,
                t.ttl_s,
                t.dedup_window_ms,
                t.dedup_max,
                t.recent_max,
                t.neighbours_kept,
                t.recent_fetched,
                t.neighbours_fetched,
                t.categories_fetched,
                t.trending_fetched,
                t.affinity_halflife_ms,
                t.trending_halflife_ms,
                t.bought_fetched,
                w_aff,
                w_cov,
                w_trend,
                t.covisit_window,
            ],
        )
        status = int(res[0])
        if status == 0:
            return "duplicate", None
        if status == 2:
            return "noop", None
        return "ok", self._view(event.user_id, res)

    @staticmethod
    def _view(user: str, res: list[Any]) -> ProfileView:
        recent, cats, nbs, cat_trend, glob, cart, bought, fe, fn, fb = res[1:]
        feed = None
        if fe:
            version = Version(fe.decode(), int(fn))
            feed = FeedState(user, "home", version, decode_body(fb or None))
        return ProfileView(
            recent=_scored(recent),
            categories=_scored(cats),
            neighbours=[_scored(x) for x in nbs],
            category_trending=[_scored(x) for x in cat_trend],
            global_trending=_scored(glob),
            cart=frozenset(_strings(cart)),
            bought=frozenset(_strings(bought)),
            feed=feed,
        )
