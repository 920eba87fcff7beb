"""What scoring a lane reads: the :class:`~streams.itemcache.Want` lists of its two prefetches.

Scoring (:mod:`streams.scoring`) runs on a :class:`~streams.itemcache.Snapshot`, which serves
only what was prefetched; these functions name it, for the same sources and depths scoring
reads (a list read shorter than scoring asks for would raise ``KeyError`` there, never serve a
wrong answer). The lists every user of a lane shares (global trending, the model's version) are
named once per lane, not once per event: a lane of a hundred events would otherwise repeat
thirty-odd identical wants each.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from sessions.keys import (
    MODEL_KEY,
    category_trend_key,
    complements_key,
    encoded_user_tag,
    model_neighbours_key,
    neighbours_key,
    trend_key,
    trend_meta_key,
    visitors_key,
)
from streams import scoring
from streams.itemcache import Want, fields, index, seqs, top

if TYPE_CHECKING:
    from streams.tunings import ScoringTuning


def shared_reads(tunings: Iterable[ScoringTuning], buckets: int) -> list[Want]:
    """What every user of a lane reads alike: the model's version, and each trending bucket with
    its meta (at the deepest ``trending_fetched`` of ``tunings``)."""
    depth = max((t.trending_fetched for t in tunings), default=0)
    wants = [fields(MODEL_KEY, "nb")]
    for b in range(buckets):
        wants.append(top(trend_key(b), depth))
        wants.append(fields(trend_meta_key(b), "t0", "users"))
    return wants


def first_reads(user: scoring.UserInputs, t: ScoringTuning, wants: list[Want]) -> None:
    """Append to ``wants`` what scoring ``user`` reads of its own before the session neighbours
    are known (the shared lists: :func:`shared_reads`)."""
    nb_depth = 2 * t.neighbours_fetched  # the similar feed reads twice the home feed's
    add = wants.append
    for r in user.recent[: t.recent_fetched]:
        add(top(neighbours_key(r), nb_depth))
    trending = t.trending_fetched
    for c, _ in user.top_categories:
        add(top(category_trend_key(c), trending))
    if user.categories:
        add(top(category_trend_key(user.categories[0]), trending))
    if t.session_w > 0:
        sample = t.session_sample
        for it in scoring.mine(user, t):
            add(index(visitors_key(it), sample))
    latest = scoring.latest_item(user, t)
    if latest:
        add(top(neighbours_key(latest), nb_depth))
    for c in user.cart:
        add(top(complements_key(c), t.neighbours_fetched))
        add(top(neighbours_key(c), nb_depth))


def second_reads(
    user: scoring.UserInputs,
    t: ScoringTuning,
    neighbours: Sequence[tuple[str, float]],
    version: str | None,
    wants: list[Want],
) -> None:
    """Append to ``wants`` what scoring ``user`` reads once the session neighbours and the
    model version are known."""
    wants += seqs([encoded_user_tag(m) + "recent" for m, _ in neighbours], t.session_seq)
    if version is not None and t.model_w > 0:
        items = list(user.recent[: t.recent_fetched])
        latest = scoring.latest_item(user, t)
        if latest:
            items.append(latest)
        for it in items:
            wants.append(top(model_neighbours_key(version, it), t.model_fetched))
