"""Unit tests of sessions/diff.py: make_diff / apply_diff / checksum."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sessions.diff import DiffBody, apply_diff, checksum, ids_of, make_diff

# Payload values are str/int/float (no NaN, no bool), never None: None in a patch means "field
# removed" (documented rule of sessions/diff.py).
values = st.one_of(
    st.text(max_size=8),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False),
)
extra_fields = st.dictionaries(
    st.sampled_from(["title", "price", "category", "image", "score"]), values, max_size=4
)
# A small id alphabet so that old and new share many ids (kept, moved, patched items).
ID_POOL = [f"{c}{n}" for c in "abcde" for n in range(6)]
ids = st.sampled_from(ID_POOL)


@st.composite
def feeds(draw: st.DrawFn, item_ids: st.SearchStrategy[list[str]] | None = None) -> list[Any]:
    chosen = draw(item_ids if item_ids is not None else st.lists(ids, unique=True, max_size=15))
    return [{"id": i, **draw(extra_fields)} for i in chosen]


@st.composite
def related_feeds(draw: st.DrawFn) -> tuple[list[Any], list[Any]]:
    """An old feed and a new one derived from it by drops, inserts, moves and field edits."""
    old = draw(feeds())
    new: list[Any] = []
    for payload in old:
        action = draw(st.sampled_from(["keep", "keep", "drop", "edit"]))
        if action == "keep":
            new.append(dict(payload))
        elif action == "edit":
            new.append({"id": payload["id"], **draw(extra_fields)})
    fresh = draw(st.lists(ids, unique=True, max_size=4))
    taken = {p["id"] for p in new}
    for item_id in fresh:
        if item_id not in taken:
            at = draw(st.integers(min_value=0, max_value=len(new)))
            new.insert(at, {"id": item_id, **draw(extra_fields)})
    if draw(st.booleans()):
        new = draw(st.permutations(new))
    return old, list(new)


def _check_round_trip(old: list[Any], new: list[Any]) -> None:
    body = make_diff(old, new)
    if body is None:
        assert old == new
    else:
        assert apply_diff(old, body) == new


@settings(max_examples=300)
@given(feeds(), feeds())
def test_apply_make_diff_round_trips_for_any_two_feeds(old: list[Any], new: list[Any]) -> None:
    _check_round_trip(old, new)


@settings(max_examples=300)
@given(related_feeds())
def test_apply_make_diff_round_trips_for_related_feeds(pair: tuple[list[Any], list[Any]]) -> None:
    old, new = pair
    _check_round_trip(old, new)


@settings(max_examples=100)
@given(feeds())
def test_make_diff_of_equal_feeds_is_none(feed: list[Any]) -> None:
    assert make_diff(feed, feed) is None
    assert make_diff(feed, [dict(p) for p in feed]) is None


@settings(max_examples=100)
@given(feeds(), feeds())
def test_diff_does_not_mutate_inputs(old: list[Any], new: list[Any]) -> None:
    old_copy = [dict(p) for p in old]
    new_copy = [dict(p) for p in new]
    body = make_diff(old, new)
    if body is not None:
        out = apply_diff(old, body)
        for payload in out:
            payload["mutated"] = 1  # the output must not alias the base or the diff
    assert old == old_copy
    assert new == new_copy


@settings(max_examples=100)
@given(feeds(), feeds())
def test_diff_only_carries_payloads_of_new_items(old: list[Any], new: list[Any]) -> None:
    body = make_diff(old, new)
    assume(body is not None)
    assert body is not None
    old_ids = set(ids_of(old))
    new_ids = set(ids_of(new)) - old_ids
    assert set(body["items"]) == new_ids
    assert set(body["patch"]) <= old_ids
    assert [op for op in body["order"] if isinstance(op, str)] == [
        i for i in ids_of(new) if i in new_ids
    ]


def _feed(n: int) -> list[dict[str, Any]]:
    return [{"id": f"i{k}", "title": f"Item {k}", "price": float(k)} for k in range(n)]


def test_new_item_on_top_last_dropped_is_one_run_and_one_payload() -> None:
    old = _feed(12)
    top = {"id": "new", "title": "Fresh", "price": 1.5}
    new = [top, *old[:11]]
    body = make_diff(old, new)
    assert body is not None
    assert body["order"] == ["new", [0, 11]]
    assert body["items"] == {"new": top}
    assert body["patch"] == {}
    assert apply_diff(old, body) == new


def test_patch_carries_only_changed_and_removed_fields() -> None:
    old = [{"id": "a", "title": "A", "price": 1.0, "image": "a.png"}]
    new = [{"id": "a", "title": "A", "price": 2.0}]
    body = make_diff(old, new)
    assert body is not None
    assert body["order"] == [[0, 1]]
    assert body["items"] == {}
    assert body["patch"] == {"a": {"price": 2.0, "image": None}}
    assert apply_diff(old, body) == new


def test_emptying_a_feed_is_a_diff() -> None:
    body = make_diff(_feed(3), [])
    assert body == {"order": [], "items": {}, "patch": {}}
    assert apply_diff(_feed(3), body) == []
    assert make_diff([], []) is None


@pytest.mark.parametrize(
    "run",
    [[0, 13], [11, 2], [-1, 1], [0, 0], [12, 1]],
    ids=["too-long", "past-end", "negative-start", "empty-run", "start-at-end"],
)
def test_apply_diff_refuses_a_run_outside_the_base(run: list[int]) -> None:
    body = DiffBody(order=[run], items={}, patch={})
    with pytest.raises(ValueError, match="outside the base"):
        apply_diff(_feed(12), body)


def test_apply_diff_refuses_a_new_id_without_payload() -> None:
    body = DiffBody(order=["ghost", [0, 2]], items={}, patch={})
    with pytest.raises(ValueError, match="without its payload"):
        apply_diff(_feed(3), body)


def test_checksum_is_stable_and_order_sensitive() -> None:
    assert checksum(["a", "b", "c"]) == checksum(["a", "b", "c"])
    assert checksum(["a", "b", "c"]) != checksum(["c", "b", "a"])
    assert checksum(["ab", "c"]) != checksum(["a", "bc"])  # ids are separated, not concatenated
    assert checksum([]) == "00000000"
    value = checksum(["x"])
    assert len(value) == 8
    assert int(value, 16) >= 0


@settings(max_examples=100)
@given(st.lists(ids, unique=True, min_size=2, max_size=10))
def test_checksum_changes_when_two_items_swap(order: list[str]) -> None:
    swapped = [order[1], order[0], *order[2:]]
    assert checksum(order) != checksum(swapped)
