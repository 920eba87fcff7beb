"""Unit tests of streams/catalog.py: parse_item and Item.payload (no Redis)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from streams.catalog import MAX_ITEM_BYTES, InvalidItem, Item, item_key, parse_item


def _item(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "item_id": "sku-1",
        "title": "Red shoes",
        "price": 59.9,
        "category": "shoes.running",
        "image": "https://example.test/sku-1.jpg",
        "in_stock": True,
        "props": {"brand": "acme"},
    }
    obj.update(changes)
    return obj


def _refused(obj: object) -> str:
    with pytest.raises(InvalidItem) as info:
        parse_item(obj)
    return str(info.value)


def test_valid_item() -> None:
    item = parse_item(_item())
    assert item == Item(
        item_id="sku-1",
        title="Red shoes",
        price=59.9,
        category="shoes.running",
        image="https://example.test/sku-1.jpg",
        in_stock=True,
        props={"brand": "acme"},
    )
    assert item.to_dict() == _item()


def test_minimal_item_gets_defaults() -> None:
    item = parse_item({"item_id": "sku-2"})
    assert item == Item("sku-2", "sku-2", None, "", "", True, {})


def test_nulls_take_defaults() -> None:
    item = parse_item(_item(title=None, price=None, category=None, image=None, props=None))
    assert item.title == "sku-1"
    assert item.price is None
    assert item.category == ""
    assert item.image == ""
    assert item.props == {}


def test_empty_title_falls_back_to_the_id() -> None:
    assert parse_item(_item(title="")).title == "sku-1"


def test_price_is_rounded_to_cents_and_float() -> None:
    assert parse_item(_item(price=10)).price == 10.0
    assert isinstance(parse_item(_item(price=10)).price, float)
    assert parse_item(_item(price=1.005001)).price == 1.01
    assert parse_item(_item(price=0)).price == 0.0


def test_out_of_stock_item() -> None:
    assert parse_item(_item(in_stock=False)).in_stock is False


@pytest.mark.parametrize("item_id", [None, ""], ids=["null", "empty"])
def test_missing_item_id(item_id: object) -> None:
    assert "item_id" in _refused(_item(item_id=item_id))
    obj = _item()
    del obj["item_id"]
    assert "item_id" in _refused(obj)


@pytest.mark.parametrize(
    "item_id", [7, ["x"], "a\nb", "x" * 129], ids=["int", "list", "control", "too-long"]
)
def test_bad_item_id(item_id: object) -> None:
    assert "item_id" in _refused(_item(item_id=item_id))


@pytest.mark.parametrize(
    "price",
    [-0.01, -5, math.nan, math.inf, -math.inf, True, False, "9.99", [1]],
    ids=["negative", "negative-int", "nan", "inf", "-inf", "true", "false", "string", "list"],
)
def test_bad_price(price: object) -> None:
    assert "price" in _refused(_item(price=price))


@pytest.mark.parametrize("in_stock", [1, 0, "yes", None], ids=["one", "zero", "string", "null"])
def test_bad_in_stock(in_stock: object) -> None:
    assert "in_stock" in _refused(_item(in_stock=in_stock))


@pytest.mark.parametrize("props", [["a"], "tags", 3, True])
def test_bad_props(props: object) -> None:
    assert "props" in _refused(_item(props=props))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("title", 3),
        ("title", "x" * 301),
        ("title", "a\tb"),
        ("category", "c" * 201),
        ("category", ["shoes"]),
        ("image", "i" * 1001),
        ("image", "bad\x00url"),
    ],
)
def test_bad_text_fields(name: str, value: object) -> None:
    assert name in _refused(_item(**{name: value}))


def test_unknown_field_is_refused_and_named() -> None:
    assert "colour" in _refused(_item(colour="red"))


@pytest.mark.parametrize("obj", [None, [], "sku-1", 3])
def test_non_object_is_refused(obj: object) -> None:
    _refused(obj)


def test_item_too_big_is_refused() -> None:
    message = _refused(_item(props={"blob": "x" * MAX_ITEM_BYTES}))
    assert str(MAX_ITEM_BYTES) in message


def test_payload_of_a_full_item() -> None:
    assert parse_item(_item()).payload == {
        "id": "sku-1",
        "title": "Red shoes",
        "category": "shoes.running",
        "price": 59.9,
        "image": "https://example.test/sku-1.jpg",
    }


@pytest.mark.parametrize(
    "obj",
    [
        {"item_id": "sku-2"},
        {"item_id": "sku-3", "price": None, "image": None, "category": None, "title": None},
        {"item_id": "sku-4", "price": 0, "image": ""},
    ],
)
def test_payload_has_no_none_values(obj: dict[str, Any]) -> None:
    payload = parse_item(obj).payload
    assert payload["id"] == obj["item_id"]
    assert None not in payload.values()
    assert all(
        isinstance(v, str | int | float) and not isinstance(v, bool) for v in payload.values()
    )


def test_payload_keeps_a_zero_price_and_omits_unset_image() -> None:
    payload = parse_item({"item_id": "sku-4", "price": 0}).payload
    assert payload["price"] == 0.0
    assert "image" not in payload


def test_item_key() -> None:
    assert item_key("sku-1") == "pr:item:sku-1"


@pytest.mark.parametrize("props", [[], "", 0, False], ids=["list", "str", "zero", "false"])
def test_falsy_non_object_props_are_refused(props: object) -> None:
    # props must be an object; a falsy value of another type must not silently become {}.
    assert "props" in _refused(_item(props=props))


def test_huge_integer_price_is_refused_cleanly() -> None:
    # json.loads gives an int for "1000…000"; it must be refused as InvalidItem, not crash.
    assert "price" in _refused(_item(price=10**400))
