"""The profile model's and the scoring's settings: typed, frozen, numbers only.

:class:`ProfileTuning` sizes the user lane's keys and the item-side aggregates (its numbers are
filled into ``lua/user_event.lua``, :func:`streams.user_lane.script_source`);
:class:`ScoringTuning` weighs the sources of a user's candidates (:mod:`streams.scoring`; an
experiment arm may carry its own, :mod:`streams.experiments`); :data:`WEIGHTS` is what each event
type counts for. Built once from configuration (:mod:`push.config`) and passed down.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.events import CONSENT

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
    #: Latest users kept per item in the session-kNN index (``pr:{i:<item>}:is``, members are ids
    #: encoded as in key names, :func:`sessions.keys.encode_user`).
    session_index_max: int = 200
    #: Consent policy (``PUSHREC_CONSENT``, streams/consent.py): personalize only users with a
    #: recorded grant (True, ``required``), or everyone who did not deny (False, ``implied``).
    consent_required: bool = False


@dataclass(frozen=True, slots=True)
class ScoringTuning:
    """How candidates are scored (in the worker, streams/scoring.py).

    Sources, each normalised to [0, 1] by its best score: co-visitation neighbours of the user's
    latest ``recent_fetched`` items (``neighbour_w``, times ``recency_decay`` per step back),
    trending items of the user's top ``categories_fetched`` categories (``category_w`` times the
    category's share of the user's affinity), global trending (``global_w``), and session kNN
    (``session_w``: users with overlapping recent items vote for theirs, streams/scoring.py).
    With ``repeat_w`` > 0 the item being looked at leads the list. The best ``candidates`` (bought
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
    #: 100, not 200: the neighbour pool (up to items times sample users) is ranked per event, the
    #: worker's largest cost when many visitors share items (10,000 visitors at 1,000 events/s:
    #: 780 -> 709 µs/event); HR@20/MRR@20 .6962/.3796 -> .6955/.3797 on YOOCHOOSE, REES46
    #: .6793/.4771 -> .6793/.4772.
    session_sample: int = 100
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


__all__ = ["WEIGHTS", "ProfileTuning", "ScoringTuning"]
