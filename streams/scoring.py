"""Candidate scoring in the worker: pure functions on plain data (no I/O).

The sources and weights are :class:`streams.tunings.ScoringTuning`'s; the math is the one the
event script ran inside Redis before the event path was split (issue 13), step for step, so that
relevance is unchanged:

- each source is normalised by its best score (no source drowns the others by scale), then
  weighted: co-visitation neighbours of the user's latest ``recent_fetched`` items
  (``neighbour_w``, times ``recency_decay`` per step back), the offline model's neighbours of the
  same items (``model_w``, the same decay), trending of the user's top categories (``category_w``
  times the category's share of the user's affinity), global trending (``global_w``);
- session kNN (after V-SKNN / VSTAN): other users whose recent items overlap the user's latest
  ``session_items`` ones are neighbours, each shared item counting by how recent it is here
  (``exp((p - L) / session_position_decay)``) and how rare it is (idf
  ``log(max(users / n, 1.0001))``); the best ``session_neighbours`` vote for their latest
  ``session_seq`` items by their distance to the last item shared
  (``exp(-|q - last| / session_item_decay)``), normalised by the best vote;
- the repeat slot: with ``repeat_w`` > 0 the item being looked at leads the list;
- the best ``candidates``, bought items excluded, best first, ties by id.

Reads go through an :class:`ItemSource` (the worker's :class:`streams.itemcache.ItemCache`
after its prefetch): every list is what ``ZREVRANGE … WITHSCORES`` returns, best first, ties in
Redis's order (greater member first).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from streams.tunings import ScoringTuning

Ranked = list[tuple[str, float]]


class ItemSource(Protocol):
    """The item-side lists scoring reads (each at most ``n`` long, best first)."""

    def neighbours(self, item: str, n: int) -> Ranked:
        """Co-visitation neighbours of ``item``."""

    def complements(self, item: str, n: int) -> Ranked:
        """Items carted or bought together with ``item``."""

    def model(self, item: str, n: int) -> Ranked:
        """The offline model's neighbours of ``item`` (empty without a model)."""

    def category_trend(self, category: str, n: int) -> Ranked:
        """Trending items of ``category``."""

    def global_trend(self, n: int) -> Ranked:
        """Global trending (the buckets merged on one decay origin)."""

    def visitors(self, item: str, n: int) -> tuple[list[str], int]:
        """The latest ``n`` users (encoded ids) who touched ``item``, newest first, and how many
        the index holds."""

    def users(self) -> int:
        """Users seen (the N of the session idf)."""

    def sequence(self, member: str, n: int) -> list[str]:
        """The latest ``n`` items of user ``member`` (an encoded id), oldest first."""


@dataclass(frozen=True, slots=True)
class UserInputs:
    """What the user lane returned for scoring one user (streams/lua/user_event.lua)."""

    #: The user id as encoded in key names (the session index's members).
    me: str
    #: The item of the event being scored ('' for none: a refresh, a search).
    item: str = ""
    #: The event's categories (empty for a user without consent).
    categories: Sequence[str] = ()
    #: The user's latest distinct items, newest first (empty without consent).
    recent: Sequence[str] = ()
    #: The user's top categories with their affinity, best first.
    top_categories: Sequence[tuple[str, float]] = ()
    bought: frozenset[str] = frozenset()
    #: A sample of the cart (at most 20), for the ``cart`` feed.
    cart: Sequence[str] = ()
    personal: bool = True


def _add(scores: dict[str, float], ranked: Ranked, weight: float) -> None:
    """Add ``ranked`` normalised by its best score, times ``weight`` (event.lua's ``add``)."""
    if weight <= 0 or not ranked:
        return
    top = ranked[0][1]
    if top <= 0:
        return
    get = scores.get
    for member, s in ranked:
        if s > 0:
            scores[member] = get(member, 0) + weight * s / top


def mine(user: UserInputs, tuning: ScoringTuning) -> list[str]:
    """The user's latest ``session_items`` items, oldest first (the session-kNN query)."""
    return list(reversed(user.recent[: tuning.session_items]))


def session_neighbours(
    user: UserInputs, source: ItemSource, tuning: ScoringTuning
) -> list[tuple[str, float]]:
    """The best ``session_neighbours`` other users (encoded ids) with their similarity, best
    first, ties by id; empty when session kNN is off or the user has no recent item."""
    items = mine(user, tuning)
    count = len(items)
    if tuning.session_w <= 0 or count == 0:
        return []
    users = source.users()
    sim: dict[str, float] = {}
    visitors = source.visitors
    sample, decay = tuning.session_sample, tuning.session_position_decay
    for p, it in enumerate(items, start=1):
        members, n = visitors(it, sample)
        if n <= 0:
            continue
        w = math.exp((p - count) / decay) * math.log(max(users / n, 1.0001))
        get = sim.get
        for o in members:
            sim[o] = get(o, 0) + w
    sim.pop(user.me, None)  # the user is no neighbour of their own
    return top_by_score_then_id(sim, tuning.session_neighbours)


def home(
    user: UserInputs,
    source: ItemSource,
    tuning: ScoringTuning,
    neighbours: Sequence[tuple[str, float]] = (),
) -> Ranked:
    """The home feed's candidates; ``neighbours`` from :func:`session_neighbours`."""
    scores: dict[str, float] = {}
    recent = user.recent[: tuning.recent_fetched]
    w, decay = tuning.neighbour_w, tuning.recency_decay
    fetched = tuning.neighbours_fetched
    for r in recent:
        _add(scores, source.neighbours(r, fetched), w)
        w *= decay
    if tuning.model_w > 0:
        mw, fetched = tuning.model_w, tuning.model_fetched
        for r in recent:
            _add(scores, source.model(r, fetched), mw)
            mw *= decay
    top = user.top_categories
    total = 0.0
    for _, s in top:
        total += max(s, 0)
    fetched = tuning.trending_fetched
    if total > 0:
        for c, s in top:
            _add(
                scores,
                source.category_trend(c, fetched),
                tuning.category_w * (max(s, 0) / total),
            )
    _add(scores, source.global_trend(fetched), tuning.global_w)
    latest_items = mine(user, tuning)
    if neighbours:
        _session_knn(scores, latest_items, neighbours, source, tuning)
    latest = user.item or (latest_items[-1] if latest_items else "")
    if tuning.repeat_w > 0 and latest:
        top_score = max(scores.values(), default=0.0)
        scores[latest] = scores.get(latest, 0) + tuning.repeat_w * max(top_score, 1)
    excluded = "" if tuning.repeat_w > 0 else user.item
    return best(scores, tuning.candidates, user.bought, {excluded})


def _session_knn(
    scores: dict[str, float],
    items: list[str],
    neighbours: Sequence[tuple[str, float]],
    source: ItemSource,
    tuning: ScoringTuning,
) -> None:
    pos = set(items)
    disjoint = pos.isdisjoint
    knn: dict[str, float] = {}
    get = knn.get
    depth = tuning.session_seq
    rows = _distance_weights(depth, tuning.session_item_decay)
    sequence = source.sequence
    for member, v in neighbours:
        seq = sequence(member, depth)
        # The position (from 1) of the last item shared with this user, 0 for none: searched
        # from the newest end (where a neighbour's shared item usually is), and not at all
        # when none is shared (a C-level test): about half a forward scan's cost.
        last = 0
        if not disjoint(seq):
            for q in range(len(seq) - 1, -1, -1):
                if seq[q] in pos:
                    last = q + 1
                    break
        for it, weight in zip(seq, rows[last], strict=False):  # seq: at most depth items
            knn[it] = get(it, 0) + v * weight
    # Votes only grow (similarities and weights are positive): the final best is the best.
    best_vote = max(knn.values(), default=0.0)
    if best_vote > 0:
        w = tuning.session_w
        sget = scores.get
        for it, s in knn.items():
            scores[it] = sget(it, 0) + w * s / best_vote


@functools.lru_cache(maxsize=16)
def _distance_weights(depth: int, decay: float) -> tuple[tuple[float, ...], ...]:
    """Per position ``last`` (0..depth) of the last shared item, ``exp(-|q - last| / decay)``
    for q = 1..depth: what a neighbour's item at position q counts."""
    return tuple(
        tuple(math.exp(-abs(q - last) / decay) for q in range(1, depth + 1))
        for last in range(depth + 1)
    )


def latest_item(user: UserInputs, tuning: ScoringTuning) -> str:
    """The item a context feed is about: the event's, else the user's newest."""
    return user.item or (user.recent[0] if user.recent and tuning.session_items > 0 else "")


def similar(user: UserInputs, source: ItemSource, tuning: ScoringTuning) -> Ranked:
    """More like the item being looked at: its co-visitation (and offline model) neighbours,
    then trending of its category, then global trending, so the list is never empty."""
    scores: dict[str, float] = {}
    latest = latest_item(user, tuning)
    if latest:
        _add(scores, source.neighbours(latest, 2 * tuning.neighbours_fetched), 1.0)
        if tuning.model_w > 0:
            _add(scores, source.model(latest, tuning.model_fetched), tuning.model_w)
    if user.categories:
        _add(scores, source.category_trend(user.categories[0], tuning.trending_fetched), 0.3)
    _add(scores, source.global_trend(tuning.trending_fetched), 0.05)
    return best(scores, tuning.candidates, user.bought, {latest} if latest else set())


def cart(user: UserInputs, source: ItemSource, tuning: ScoringTuning) -> Ranked:
    """Goes with the cart: items carted or bought together with its items, co-views as a weaker
    fallback; never an item already in it. An empty cart has no complements."""
    scores: dict[str, float] = {}
    for c in user.cart:
        _add(scores, source.complements(c, tuning.neighbours_fetched), 1.0)
        _add(scores, source.neighbours(c, tuning.neighbours_fetched), 0.25)
    return best(scores, tuning.candidates, user.bought, set(user.cart))


def best(
    scores: dict[str, float], n: int, bought: Iterable[str] = (), skip: Iterable[str] = ()
) -> Ranked:
    """The best ``n`` of ``scores`` but ``bought`` and ``skip``, best first, ties by id; each
    score rounded to 14 significant digits (what the event script sent as text)."""
    drop = [k for k in {*bought, *skip} if k in scores]  # a few, and most are not candidates
    if drop:
        scores = scores.copy()  # the caller's dict stays whole
        for k in drop:
            del scores[k]
    return [(k, float(f"{v:.14g}")) for k, v in top_by_score_then_id(scores, n)]


def top_by_score_then_id(scores: dict[str, float], n: int) -> Ranked:
    """The best ``n`` of ``scores``, best first, ties by ascending id (as
    :func:`by_score_then_id` would order them all): one C-level sort by score, then only the
    best ``n`` and those tied with the ``n``-th are ordered by id."""
    ranked = sorted(scores.items(), key=_SCORE, reverse=True)
    if len(ranked) > n:
        if n <= 0:
            return []
        cut = ranked[n - 1][1]
        end = n
        size = len(ranked)
        while end < size and ranked[end][1] == cut:
            end += 1
        del ranked[end:]
    ranked.sort(key=_ID)
    ranked.sort(key=_SCORE, reverse=True)
    return ranked[:n]


def by_score_then_id(ranked: list[tuple[str, float]]) -> None:
    """Sort ``ranked`` in place: descending score, ties by ascending id (two stable sorts on
    C-level keys: no Python call per element)."""
    ranked.sort(key=_ID)
    ranked.sort(key=_SCORE, reverse=True)


_ID = itemgetter(0)
_SCORE = itemgetter(1)
_SCORE_ID = itemgetter(1, 0)


def merge_buckets(tops: Iterable[tuple[Ranked, float]], n: int) -> Ranked:
    """The best ``n`` of several buckets' top lists, each scaled by its factor (its decay origin
    relative to a common one), best first; ties like Redis's (the greater member first)."""
    merged: Ranked = []
    for ranked, factor in tops:
        merged.extend((m, s * factor) for m, s in ranked)
    merged.sort(key=_SCORE_ID, reverse=True)  # redis_order, as a C-level key
    return merged[:n]


def redis_order(kv: tuple[str, float]) -> tuple[float, str]:
    """With ``reverse=True``, ``ZREVRANGE``'s order: descending score, then descending member
    (code point order is UTF-8 byte order, which Redis compares)."""
    return (kv[1], kv[0])
