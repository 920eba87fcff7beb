"""Unit tests of streams/recommender.py: scoring, filtering and ordering of the home feed."""

from __future__ import annotations

from typing import Any

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


def _view(
    *,
    neighbours: list[Scored] | None = None,
    categories: Scored | None = None,
    category_trending: list[Scored] | None = None,
    global_trending: Scored | None = None,
    bought: frozenset[str] = frozenset(),
) -> ProfileView:
    return ProfileView(
        recent=[],
        categories=categories or [],
        neighbours=neighbours or [],
        category_trending=category_trending or [],
        global_trending=global_trending or [],
        cart=frozenset(),
        bought=bought,
        feed=None,
    )


def _home(view: ProfileView, *, current: str | None = None, size: int = 12) -> list[str]:
    recommender = Recommender(CATALOG, RecommenderTuning(size=size))
    return [p["id"] for p in recommender.home(view, current=current)]


def test_neighbours_of_recent_items_rank_first() -> None:
    view = _view(
        neighbours=[[("i05", 4.0), ("i06", 2.0)]],
        global_trending=[("i01", 900.0), ("i02", 800.0), ("i06", 1.0)],
    )
    assert _home(view) == ["i05", "i06", "i01", "i02"]


def test_newest_items_neighbours_count_most() -> None:
    view = _view(neighbours=[[("i03", 1.0)], [("i02", 1.0)], [("i01", 1.0)]])
    assert _home(view) == ["i03", "i02", "i01"]


def test_scores_add_up_across_sources() -> None:
    # i02 is a weaker neighbour but also trending: 0.5 + 0.1 > i01's 0.55 from one source.
    view = _view(
        neighbours=[[("i01", 0.55), ("i02", 0.5), ("i09", 1.0)]],
        global_trending=[("i02", 3.0)],
    )
    assert _home(view) == ["i09", "i02", "i01"]


def test_preferred_categories_trending_ranks_above_global_trending() -> None:
    view = _view(
        categories=[("shoes", 2.0), ("hats", 1.0)],
        category_trending=[[("i11", 5.0)], [("i10", 5.0)]],
        global_trending=[("i12", 5.0)],
    )
    # shoes: 0.35 * 2/3, hats: 0.35 * 1/3, global: 0.1.
    assert _home(view) == ["i11", "i10", "i12"]


def test_bought_out_of_stock_unknown_and_current_items_are_excluded() -> None:
    view = _view(
        neighbours=[[("i01", 9.0), ("gone", 8.0), ("nope", 7.0), ("i02", 6.0), ("i03", 5.0)]],
        global_trending=[("i04", 1.0)],
        bought=frozenset({"i02"}),
    )
    assert _home(view, current="i01") == ["i03", "i04"]


def test_current_none_or_empty_excludes_nothing() -> None:
    view = _view(global_trending=[("i01", 1.0)])
    assert _home(view, current=None) == ["i01"]
    assert _home(view, current="") == ["i01"]


def test_cold_user_gets_global_trending() -> None:
    trending = [("i07", 50.0), ("i03", 40.0), ("i09", 30.0), ("gone", 20.0), ("i01", 10.0)]
    assert _home(_view(global_trending=trending)) == ["i07", "i03", "i09", "i01"]


def test_no_signal_at_all_is_an_empty_feed() -> None:
    assert _home(_view()) == []


def test_non_positive_scores_are_ignored() -> None:
    view = _view(global_trending=[("i01", 2.0), ("i02", 0.0), ("i03", -1.0)])
    assert _home(view) == ["i01"]
    assert _home(_view(global_trending=[("i01", 0.0)])) == []


@pytest.mark.parametrize("size", [1, 3, 12])
def test_size_cap(size: int) -> None:
    view = _view(global_trending=[(i, float(100 - n)) for n, i in enumerate(IDS)])
    assert _home(view, size=size) == IDS[:size]


def test_ties_break_by_id() -> None:
    tied = [("i09", 1.0), ("i03", 1.0), ("i07", 1.0), ("i01", 1.0)]
    assert _home(_view(global_trending=tied)) == ["i01", "i03", "i07", "i09"]
    assert _home(_view(global_trending=list(reversed(tied)))) == ["i01", "i03", "i07", "i09"]


def test_output_is_deterministic_and_made_of_catalog_payloads() -> None:
    view = _view(
        neighbours=[[("i01", 2.0), ("i02", 2.0)], [("i03", 1.0)]],
        categories=[("misc", 1.0)],
        category_trending=[[("i04", 1.0), ("i05", 1.0)]],
        global_trending=[("i06", 1.0), ("i01", 1.0)],
    )
    recommender = Recommender(CATALOG, RecommenderTuning())
    first: list[dict[str, Any]] = recommender.home(view, current=None)
    assert first == recommender.home(view, current=None)
    ids = [p["id"] for p in first]
    assert len(ids) == len(set(ids))
    for payload in first:
        item = CATALOG.get(payload["id"])
        assert item is not None
        assert payload == item.payload
