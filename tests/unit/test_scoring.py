"""Unit tests of streams/scoring.py: the scoring math, on plain data (no Redis)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import pytest

from streams.profile import ScoringTuning
from streams.scoring import (
    Ranked,
    UserInputs,
    best,
    cart,
    home,
    merge_buckets,
    session_neighbours,
    similar,
)


@dataclass
class Source:
    """An ItemSource over dicts (lists best first, as ZREVRANGE gives them)."""

    nb: dict[str, Ranked] = field(default_factory=dict)
    cb: dict[str, Ranked] = field(default_factory=dict)
    nbm: dict[str, Ranked] = field(default_factory=dict)
    cats: dict[str, Ranked] = field(default_factory=dict)
    trend: Ranked = field(default_factory=list)
    index: dict[str, list[str]] = field(default_factory=dict)
    cards: dict[str, int] = field(default_factory=dict)
    seen: int = 1
    seqs: dict[str, list[str]] = field(default_factory=dict)
    reads: list[str] = field(default_factory=list)

    def neighbours(self, item: str, n: int) -> Ranked:
        self.reads.append(f"nb:{item}:{n}")
        return self.nb.get(item, [])[:n]

    def complements(self, item: str, n: int) -> Ranked:
        return self.cb.get(item, [])[:n]

    def model(self, item: str, n: int) -> Ranked:
        return self.nbm.get(item, [])[:n]

    def category_trend(self, category: str, n: int) -> Ranked:
        return self.cats.get(category, [])[:n]

    def global_trend(self, n: int) -> Ranked:
        return self.trend[:n]

    def visitors(self, item: str, n: int) -> tuple[list[str], int]:
        members = self.index.get(item, [])
        return members[:n], self.cards.get(item, len(members))

    def users(self) -> int:
        return self.seen

    def sequence(self, member: str, n: int) -> list[str]:
        return self.seqs.get(member, [])[-n:]


CLASSIC = ScoringTuning(session_w=0.0, repeat_w=0.0, model_w=0.0)


def scores(ranked: Ranked) -> dict[str, float]:
    return dict(ranked)


def test_each_source_is_normalised_by_its_best_then_weighted() -> None:
    src = Source(nb={"x": [("n1", 2.0), ("n2", 1.0)]}, trend=[("t", 5.0), ("n1", 2.0)])
    user = UserInputs(me="u", item="x", recent=("x",))
    ranked = home(user, src, CLASSIC)
    assert ranked == [("n1", 1.04), ("n2", 0.5), ("t", 0.1)]


def test_older_recent_items_weigh_recency_decay_less() -> None:
    src = Source(nb={"b": [("from-b", 1.0)], "a": [("from-a", 1.0)]})
    user = UserInputs(me="u", item="b", recent=("b", "a"))
    assert scores(home(user, src, CLASSIC)) == {"from-b": 1.0, "from-a": 0.6}


def test_category_share_and_ties_by_id() -> None:
    src = Source(cats={"shoes": [("s", 1.0)], "hats": [("g", 3.0)]})
    user = UserInputs(me="u", top_categories=(("shoes", 4.0), ("hats", 2.0)))
    ranked = home(user, src, CLASSIC)
    assert [i for i, _ in ranked] == ["s", "g"]
    assert [s for _, s in ranked] == pytest.approx([0.35 * 4 / 6, 0.35 * 2 / 6])
    tied = best({"b": 1.0, "a": 1.0, "c": 2.0}, 2)
    assert tied == [("c", 2.0), ("a", 1.0)]


def test_bought_and_the_current_item_are_excluded_without_repeat() -> None:
    src = Source(nb={"x": [("y", 1.0), ("z", 1.0)]}, trend=[("x", 1.0)])
    user = UserInputs(me="u", item="x", recent=("x",), bought=frozenset({"y"}))
    assert [i for i, _ in home(user, src, CLASSIC)] == ["z"]


def test_repeat_slot_leads_with_the_current_item() -> None:
    src = Source(nb={"x": [("y", 1.0)]})
    user = UserInputs(me="u", item="x", recent=("x",))
    ranked = home(user, src, replace(CLASSIC, repeat_w=1.0))
    assert ranked[0] == ("x", 1.0)  # repeat_w * max(best, 1)
    assert ranked[1] == ("y", 1.0)
    # Without an event item, the user's newest item is the one looked at.
    refresh = UserInputs(me="u", recent=("x",))
    assert home(refresh, src, replace(CLASSIC, repeat_w=1.0))[0][0] == "x"


def test_best_keeps_fourteen_significant_digits_and_cuts_at_n() -> None:
    ranked = best({f"i{n}": 1 / 3 + n for n in range(30)}, 24)
    assert len(ranked) == 24
    assert ranked[0] == ("i29", float(f"{29 + 1 / 3:.14g}"))
    assert [i for i, _ in ranked] == [f"i{n}" for n in range(29, 5, -1)]


def test_session_neighbours_weigh_position_and_idf_and_skip_me() -> None:
    tuning = ScoringTuning(session_position_decay=1.5)
    src = Source(
        index={"a": ["me", "o1", "o2"], "b": ["o2", "me"]},
        cards={"a": 3, "b": 2},
        seen=10,
    )
    user = UserInputs(me="me", recent=("b", "a"))  # newest first: a older, b newer
    got = dict(session_neighbours(user, src, tuning))
    wa = math.exp((1 - 2) / 1.5) * math.log(10 / 3)
    wb = math.exp(0) * math.log(10 / 2)
    assert got == {"o1": pytest.approx(wa), "o2": pytest.approx(wa + wb)}
    assert session_neighbours(user, src, replace(tuning, session_w=0.0)) == []


def test_session_votes_decay_with_distance_to_the_shared_item() -> None:
    tuning = replace(CLASSIC, session_w=1.0, session_item_decay=2.0)
    src = Source(seqs={"o": ["a", "b", "c"]})
    user = UserInputs(me="u", recent=("a",))
    got = scores(home(user, src, tuning, [("o", 2.0)]))
    # last shared position 1: a 2*e^0, b 2*e^-1/2, c 2*e^-1, normalised by the best (a).
    assert got == {
        "a": 1.0,
        "b": pytest.approx(math.exp(-0.5), rel=1e-12),
        "c": pytest.approx(math.exp(-1), rel=1e-12),
    }


def test_similar_and_cart_context_feeds() -> None:
    src = Source(
        nb={"x": [("y", 2.0)], "c1": [("n", 1.0)]},
        cb={"c1": [("k", 4.0)]},
        cats={"hats": [("h", 1.0)]},
        trend=[("t", 1.0)],
    )
    user = UserInputs(me="u", item="x", categories=("hats",), cart=("c1",), recent=("x",))
    assert scores(similar(user, src, CLASSIC)) == {"y": 1.0, "h": 0.3, "t": 0.05}
    assert scores(cart(user, src, CLASSIC)) == {"k": 1.0, "n": 0.25}
    src.reads.clear()
    similar(user, src, CLASSIC)
    assert src.reads == [f"nb:x:{2 * CLASSIC.neighbours_fetched}"]


def test_buckets_merge_on_one_origin_with_redis_tie_order() -> None:
    one: Ranked = [("a", 4.0), ("b", 1.0)]
    two: Ranked = [("c", 8.0), ("d", 2.0)]
    assert merge_buckets([(one, 1.0), (two, 0.5)], 3) == [("c", 4.0), ("a", 4.0), ("d", 1.0)]
