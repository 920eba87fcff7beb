"""Unit tests of streams/recommender.py: ranked candidates meet the catalog.

Scoring happens in the event script (tests/integration/test_profile.py); here the candidates are
given, and the recommender only drops what the catalog cannot show, keeping their order.
"""

from __future__ import annotations

import pytest

from streams.catalog import Catalog, Item
from streams.profile import ProfileView, Scored
from streams.recommender import Recommender, RecommenderTuning


def _catalog(items: list[Item]) -> Catalog:
    """A catalog mirror holding ``items``, with no Redis behind it.

    Catalog has no public way to fill its mirror without Redis (load/upsert talk to it), so this
    one helper pokes the private mirror and invalidates its derived indexes like a write would.
    """
    catalog = Catalog(redis=None)  # type: ignore[arg-type]
    catalog._items = {item.item_id: item for item in items}
    catalog._changed()
    return catalog


def _item(item_id: str, *, in_stock: bool = True, category: str = "misc") -> Item:
    return Item(item_id, item_id.upper(), 10.0, category, "", in_stock, {})


IDS = [f"i{n:02d}" for n in range(30)]
CATALOG = _catalog([_item(i) for i in IDS] + [_item("gone", in_stock=False)])


def _view(candidates: Scored) -> ProfileView:
    return ProfileView(candidates=candidates, feed=None)


def _home(
    candidates: Scored, *, current: str | None = None, size: int = 12, repeat: bool = False
) -> list[str]:
    recommender = Recommender(CATALOG, RecommenderTuning(size=size, repeat=repeat))
    return [p["id"] for p in recommender.home(_view(candidates), current=current)]


def test_order_of_the_candidates_is_kept() -> None:
    # The script ranks; the recommender must not re-sort (not by score, not by id).
    candidates = [("i07", 3.0), ("i02", 5.0), ("i09", 0.5), ("i01", 0.5)]
    assert _home(candidates) == ["i07", "i02", "i09", "i01"]


def test_unknown_out_of_stock_and_current_items_are_dropped() -> None:
    candidates = [
        ("i01", 9.0),
        ("gone", 8.0),
        ("nope", 7.0),
        ("i02", 6.0),
        ("i03", 5.0),
    ]
    assert _home(candidates, current="i01") == ["i02", "i03"]
    assert _home(candidates, current="i03") == ["i01", "i02"]


def test_with_repeat_the_current_item_stays() -> None:
    # The script put it first (ScoringTuning.repeat_w > 0): the recommender keeps it there.
    candidates = [("i01", 9.0), ("i02", 6.0)]
    assert _home(candidates, current="i01", repeat=True) == ["i01", "i02"]


def test_current_none_or_unknown_drops_nothing_more() -> None:
    candidates = [("i01", 1.0), ("i02", 0.5)]
    assert _home(candidates, current=None) == ["i01", "i02"]
    assert _home(candidates, current="") == ["i01", "i02"]
    assert _home(candidates, current="nope") == ["i01", "i02"]


@pytest.mark.parametrize("size", [1, 3, 12, 30])
def test_size_cap(size: int) -> None:
    candidates = [(i, float(100 - n)) for n, i in enumerate(IDS)]
    assert _home(candidates, size=size) == IDS[:size]


def test_size_counts_only_kept_items() -> None:
    # Dropped candidates do not use up the feed's slots.
    candidates = [("gone", 9.0), ("nope", 8.0), ("i05", 7.0), ("i04", 6.0), ("i03", 5.0)]
    assert _home(candidates, current="i05", size=2) == ["i04", "i03"]


def test_fewer_candidates_than_size() -> None:
    assert _home([("i04", 1.0), ("i08", 0.5)], size=12) == ["i04", "i08"]


def test_empty_candidates_give_an_empty_feed() -> None:
    assert _home([]) == []
    assert _home([("gone", 1.0), ("nope", 1.0)]) == []
    assert _home([("i01", 1.0)], current="i01") == []


def test_payloads_are_the_catalogs_cached_payloads() -> None:
    recommender = Recommender(CATALOG, RecommenderTuning())
    view = _view([("i03", 2.0), ("i01", 1.0)])
    first = recommender.home(view, current=None)
    assert [p["id"] for p in first] == ["i03", "i01"]
    for payload in first:
        item = CATALOG.get(payload["id"])
        assert item is not None
        # The very object built once per Item, not a copy.
        assert payload is item.payload
        assert payload == {
            "id": item.item_id,
            "title": item.title,
            "category": "misc",
            "price": 10.0,
        }
    again = recommender.home(view, current=None)
    assert again == first
    assert all(a is b for a, b in zip(again, first, strict=True))


def test_payload_leaves_out_unset_fields() -> None:
    catalog = _catalog([Item("x1", "X one", None, "hats", "", True, {"k": 1})])
    recommender = Recommender(catalog, RecommenderTuning())
    out = recommender.home(_view([("x1", 1.0)]), current=None)
    assert out == [{"id": "x1", "title": "X one", "category": "hats"}]


def _mixed_catalog() -> Catalog:
    return _catalog(
        [Item(f"{c}{n}", f"{c} {n}", 1.0, c, "", True, {}) for c in ("a", "b") for n in range(4)]
    )


def test_category_cap_lets_other_categories_in_then_backfills() -> None:
    view = _view([(i, 1.0) for i in ("a0", "a1", "a2", "b0", "a3", "b1")])
    capped = Recommender(_mixed_catalog(), RecommenderTuning(size=5, max_per_category=2))
    ids = [p["id"] for p in capped.home(view, current=None)]
    # Two of a, then b's in rank order; the waiting a's fill what is left, best first.
    assert ids == ["a0", "a1", "b0", "b1", "a2"]
    plain = Recommender(_mixed_catalog(), RecommenderTuning(size=5))
    assert [p["id"] for p in plain.home(view, current=None)] == ["a0", "a1", "a2", "b0", "a3"]


def test_never_the_same_item_twice() -> None:
    view = _view([("a0", 3.0), ("a0", 2.0), ("b0", 1.0)])
    recommender = Recommender(_mixed_catalog(), RecommenderTuning(size=5, max_per_category=1))
    assert [p["id"] for p in recommender.home(view, current=None)] == ["a0", "b0"]
