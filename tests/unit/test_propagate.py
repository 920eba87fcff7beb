"""Unit tests of streams/propagate.py: which changes matter, and the edit of one list (no Redis)."""

from __future__ import annotations

from dataclasses import replace

from sessions.diff import apply_diff, make_diff
from streams.catalog import Item
from streams.propagate import edit_feed, shown_changed


def _item(item_id: str, **changes: object) -> Item:
    base = Item(item_id, f"T {item_id}", 10.0, "cat", "", True, {})
    return replace(base, **changes)  # type: ignore[arg-type]


def test_only_changes_feeds_show_matter() -> None:
    x = _item("x")
    assert shown_changed(None, x)  # new (or unreadable before): checked
    assert not shown_changed(x, _item("x"))
    assert not shown_changed(x, _item("x", props={"brand": "acme"}))  # not in the payload
    assert shown_changed(x, _item("x", price=9.5))
    assert shown_changed(x, _item("x", title="New"))
    assert shown_changed(x, _item("x", image="/x.png"))
    assert shown_changed(x, _item("x", in_stock=False))


def test_edit_drops_out_of_stock_and_unknown_items_and_updates_payloads() -> None:
    a, b, c, d = (_item(i) for i in "abcd")
    feed = [a.payload, b.payload, c.payload, d.payload]
    catalog = {
        "a": _item("a", in_stock=False),
        "b": _item("b", price=1.0),
        "d": _item("d", price=99.0),  # changed too, but not a target of this edit
    }
    out = edit_feed(feed, {"a", "b", "c"}, catalog.get)
    assert [p["id"] for p in out] == ["b", "d"]  # a out of stock, c unknown
    assert out[0]["price"] == 1.0 and out[1]["price"] == 10.0
    diff = make_diff(feed, out)
    assert diff is not None and diff["items"] == {}
    assert diff["patch"] == {"b": {"price": 1.0}}
    assert apply_diff(feed, diff) == out


def test_an_edit_with_nothing_to_change_is_the_same_list() -> None:
    a, b = _item("a"), _item("b")
    feed = [a.payload, b.payload]
    assert edit_feed(feed, {"a"}, {"a": a}.get) == feed
    assert make_diff(feed, edit_feed(feed, {"a"}, {"a": a}.get)) is None
