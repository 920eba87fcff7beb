"""Unit tests of streams/events.py (parse_event, Event.pack) and streams/records.unpack_event."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import (
    CONSENT,
    EVENT_TYPES,
    ITEM_TYPES,
    MAX_FUTURE_MS,
    MAX_ID_LEN,
    MAX_PROPS_BYTES,
    MIN_TS_MS,
    Event,
    parse_event,
)
from streams.exceptions import InvalidEvent
from streams.records import unpack_event

NOW = 1_750_000_000_000


def _event(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "event_id": "e-1",
        "user_id": "u-1",
        "type": "view",
        "item_id": "sku-1",
        "ts": NOW - 1000,
        "props": {"source": "home"},
    }
    obj.update(changes)
    return {k: v for k, v in obj.items() if v is not _DROP}


_DROP = object()


def _reason(obj: object, *, auth_user: str | None = None, now_ms: int = NOW) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse_event(obj, auth_user=auth_user, now_ms=now_ms)
    return info.value.reason


# Consent events have rules of their own (no item, exactly one prop): tests/unit/test_consent.py.
@pytest.mark.parametrize("etype", sorted(EVENT_TYPES - {CONSENT}))
def test_valid_event_of_every_type(etype: str) -> None:
    event = parse_event(_event(type=etype), auth_user=None, now_ms=NOW)
    assert event == Event("e-1", "u-1", etype, "sku-1", NOW - 1000, {"source": "home"})


@pytest.mark.parametrize("etype", sorted(EVENT_TYPES - ITEM_TYPES - {CONSENT}))
def test_non_item_types_need_no_item(etype: str) -> None:
    event = parse_event(_event(type=etype, item_id=_DROP), auth_user=None, now_ms=NOW)
    assert event.item_id is None
    event = parse_event(_event(type=etype, item_id=None), auth_user=None, now_ms=NOW)
    assert event.item_id is None


@pytest.mark.parametrize("etype", sorted(ITEM_TYPES))
def test_item_types_need_an_item(etype: str) -> None:
    assert _reason(_event(type=etype, item_id=_DROP)) == "missing_item_id"
    assert _reason(_event(type=etype, item_id=None)) == "missing_item_id"


def test_ts_defaults_to_now() -> None:
    assert parse_event(_event(ts=_DROP), auth_user=None, now_ms=NOW).ts == NOW
    assert parse_event(_event(ts=None), auth_user=None, now_ms=NOW).ts == NOW


def test_props_default_to_empty() -> None:
    assert parse_event(_event(props=_DROP), auth_user=None, now_ms=NOW).props == {}
    assert parse_event(_event(props=None), auth_user=None, now_ms=NOW).props == {}


def test_token_user_fills_a_missing_user_id() -> None:
    event = parse_event(_event(user_id=_DROP), auth_user="visitor-7", now_ms=NOW)
    assert event.user_id == "visitor-7"


def test_token_user_may_name_itself() -> None:
    event = parse_event(_event(user_id="visitor-7"), auth_user="visitor-7", now_ms=NOW)
    assert event.user_id == "visitor-7"


def test_token_user_may_not_post_for_another_user() -> None:
    assert _reason(_event(user_id="someone-else"), auth_user="visitor-7") == "forbidden_user"


@pytest.mark.parametrize("name", ["event_id", "user_id"])
def test_missing_required_ids(name: str) -> None:
    assert _reason(_event(**{name: _DROP})) == f"missing_{name}"
    assert _reason(_event(**{name: None})) == f"missing_{name}"


@pytest.mark.parametrize("name", ["event_id", "user_id", "item_id"])
@pytest.mark.parametrize("value", [7, 1.5, True, ["x"], {"a": 1}, b"x"])
def test_non_string_ids_are_bad(name: str, value: object) -> None:
    assert _reason(_event(**{name: value})) == f"bad_{name}"


@pytest.mark.parametrize("name", ["event_id", "user_id", "item_id"])
@pytest.mark.parametrize(
    "value",
    ["", "x" * (MAX_ID_LEN + 1), "a\nb", "a\x00b", "tab\there", "\x1b[31m", "del\x7f"],
    ids=["empty", "too-long", "newline", "nul", "tab", "escape", "del"],
)
def test_empty_long_or_control_char_ids_are_bad(name: str, value: str) -> None:
    assert _reason(_event(**{name: value})) == f"bad_{name}"


def test_id_of_max_length_is_accepted() -> None:
    long_id = "x" * MAX_ID_LEN
    event = parse_event(_event(event_id=long_id), auth_user=None, now_ms=NOW)
    assert event.event_id == long_id


def test_unicode_ids_are_accepted() -> None:
    event = parse_event(_event(item_id="café-日本"), auth_user=None, now_ms=NOW)
    assert event.item_id == "café-日本"


@pytest.mark.parametrize(
    "etype",
    ["VIEW", "refresh", "", 3, None, True, ["view"], {"t": "view"}],
    ids=["upper", "refresh", "empty", "int", "null", "bool", "list", "object"],
)
def test_unknown_or_non_string_type_is_bad(etype: object) -> None:
    assert _reason(_event(type=etype)) == "bad_type"


def test_bad_type_message_is_bounded() -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(_event(type="x" * 10_000), auth_user=None, now_ms=NOW)
    assert len(str(info.value)) <= 300


def test_unknown_field_is_refused_and_named() -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(_event(price=3), auth_user=None, now_ms=NOW)
    assert info.value.reason == "unknown_field"
    assert "price" in str(info.value)


@pytest.mark.parametrize("obj", [None, [], ["view"], "event", 7, 1.5, True])
def test_non_object_is_refused(obj: object) -> None:
    assert _reason(obj) == "not_object"


@pytest.mark.parametrize(
    "ts",
    [True, False, 1.7e12, float(NOW), "1750000000000", [NOW], {"ms": NOW}],
    ids=["true", "false", "float", "integral-float", "string", "list", "object"],
)
def test_non_integer_ts_is_bad(ts: object) -> None:
    assert _reason(_event(ts=ts)) == "bad_ts"


@pytest.mark.parametrize(
    "ts",
    [0, -1, MIN_TS_MS - 1, NOW + MAX_FUTURE_MS + 1, 10**20],
    ids=["zero", "negative", "before-2000", "past-tomorrow", "huge"],
)
def test_ts_out_of_range_is_bad(ts: int) -> None:
    assert _reason(_event(ts=ts)) == "bad_ts"


@pytest.mark.parametrize("ts", [MIN_TS_MS, NOW + MAX_FUTURE_MS])
def test_ts_range_bounds_are_inclusive(ts: int) -> None:
    assert parse_event(_event(ts=ts), auth_user=None, now_ms=NOW).ts == ts


def test_props_too_big_are_bad() -> None:
    assert _reason(_event(props={"blob": "x" * MAX_PROPS_BYTES})) == "bad_props"


def test_props_just_under_the_limit_are_accepted() -> None:
    # {"blob":"..."} is 11 bytes of framing.
    props = {"blob": "x" * (MAX_PROPS_BYTES - 11)}
    assert parse_event(_event(props=props), auth_user=None, now_ms=NOW).props == props


@pytest.mark.parametrize("props", [["a"], "tags", 3, True])
def test_truthy_non_object_props_are_bad(props: object) -> None:
    assert _reason(_event(props=props)) == "bad_props"


@pytest.mark.parametrize("props", [[], "", 0, False], ids=["list", "str", "zero", "false"])
def test_falsy_non_object_props_are_bad(props: object) -> None:
    # props must be an object; a falsy value of another type must not be silently taken as {}.
    assert _reason(_event(props=props)) == "bad_props"


def test_pack_unpack_round_trip() -> None:
    event = parse_event(_event(type="purchase"), auth_user=None, now_ms=NOW)
    data = event.pack()
    assert isinstance(data, bytes)
    assert unpack_event(data) == event


def test_pack_unpack_round_trip_without_item() -> None:
    event = parse_event(
        _event(type="search", item_id=_DROP, props={"q": "shoes"}), auth_user=None, now_ms=NOW
    )
    assert unpack_event(event.pack()) == event


def test_to_dict_has_every_field() -> None:
    event = parse_event(_event(), auth_user=None, now_ms=NOW)
    assert event.to_dict() == {
        "event_id": "e-1",
        "user_id": "u-1",
        "type": "view",
        "item_id": "sku-1",
        "ts": NOW - 1000,
        "props": {"source": "home"},
    }


@pytest.mark.parametrize(
    "data",
    [b"\xc1", b"\x92\x01", b"\xa5abc", b"\x81\xa1a\x01extra-trailing-bytes"],
    ids=["reserved-byte", "truncated-array", "truncated-str", "trailing-data"],
)
def test_unpack_of_garbage_is_undecodable(data: bytes) -> None:
    with pytest.raises(InvalidEvent) as info:
        unpack_event(data)
    assert info.value.reason == "undecodable"


@pytest.mark.parametrize(
    "obj",
    [[1, 2], "event", 7, None, {"event_id": "e", "type": "view"}, {"user_id": 3}],
    ids=["array", "string", "int", "nil", "no-user", "int-user"],
)
def test_unpack_of_a_non_event_is_refused(obj: object) -> None:
    with pytest.raises(InvalidEvent):
        unpack_event(msgpack.packb(obj))


def test_unpack_validates_again() -> None:
    bad = _event(type="teleport")
    with pytest.raises(InvalidEvent) as info:
        unpack_event(msgpack.packb(bad))
    assert info.value.reason == "bad_type"


@pytest.mark.parametrize(
    "extra",
    [{b"raw": 1}, {1: "x"}, {b"raw": 1, "also": 2}],
    ids=["bytes-key", "int-key", "mixed-keys"],
)
def test_unpack_with_non_string_keys_is_refused_cleanly(extra: dict[Any, Any]) -> None:
    # The bus is a trust boundary: any decodable-but-wrong record must give InvalidEvent.
    obj = {**_event(), **extra}
    with pytest.raises(InvalidEvent) as info:
        unpack_event(msgpack.packb(obj))
    assert info.value.reason in {"unknown_field", "undecodable"}


def test_unpack_with_binary_props_is_refused_cleanly() -> None:
    # msgpack can carry bytes, which JSON cannot: must be InvalidEvent, not a TypeError.
    obj = _event(props={"raw": b"\x00\x01"})
    with pytest.raises(InvalidEvent) as info:
        unpack_event(msgpack.packb(obj))
    assert info.value.reason == "bad_props"


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=10),
    st.sampled_from(sorted(EVENT_TYPES)),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
field_names = st.sampled_from(["event_id", "user_id", "type", "item_id", "ts", "props"])


@settings(max_examples=300)
@given(
    st.dictionaries(field_names, json_values, max_size=6),
    st.one_of(st.none(), st.text(min_size=1, max_size=5)),
)
def test_parse_event_only_ever_raises_invalid_event(obj: dict[str, Any], auth: str | None) -> None:
    # Any decoded JSON must give an Event or InvalidEvent, never another exception (a 500).
    try:
        event = parse_event(obj, auth_user=auth, now_ms=NOW)
    except InvalidEvent as exc:
        assert exc.reason
    else:
        assert event.type in EVENT_TYPES
        assert event.user_id == (auth if auth is not None else obj["user_id"])


msgpack_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # what msgpack can carry
    st.floats(allow_nan=False),
    st.text(max_size=10),
    st.sampled_from(sorted(EVENT_TYPES)),
    st.binary(max_size=4),
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5) | st.binary(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300)
@given(st.dictionaries(field_names | st.binary(max_size=3), msgpack_values, max_size=6))
def test_unpack_event_only_ever_raises_invalid_event(obj: dict[Any, Any]) -> None:
    # The bus is a trust boundary: any msgpack record gives an Event or InvalidEvent.
    try:
        unpack_event(msgpack.packb(obj))
    except InvalidEvent as exc:
        assert exc.reason


@pytest.mark.parametrize("etype", ["impression", "click"])
def test_a_rec_must_be_a_pushed_lists_id(etype: str) -> None:
    good = parse_event(
        _event(type=etype, props={"rec": "Zx_9-a.17~ab:0a1b2c3d:b"}), auth_user=None, now_ms=NOW
    )
    assert good.props["rec"] == "Zx_9-a.17~ab:0a1b2c3d:b"
    for bad in ["", "Zx.17", "Zx~ab:1:b", "Zx.x~ab", 17, ["Zx.1~a"], "Zx.1~" + "a" * 3000]:
        with pytest.raises(InvalidEvent) as info:
            parse_event(_event(type=etype, props={"rec": bad}), auth_user=None, now_ms=NOW)
        assert info.value.reason == "bad_rec"


def test_other_types_may_carry_any_rec_prop() -> None:
    event = parse_event(_event(type="view", props={"rec": 5}), auth_user=None, now_ms=NOW)
    assert event.props == {"rec": 5}
