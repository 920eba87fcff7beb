"""Unit tests of sessions/codec.py: FeedUpdate <-> msgpack bytes between nodes."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessions.codec import MAX_BYTES, CodecError, decode_update, encode_update
from sessions.diff import make_diff
from sessions.feeds import FeedState, FeedUpdate
from sessions.versions import Version

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def _payload(item_id: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {**extra, "id": item_id}


def _id(payload: dict[str, Any]) -> Any:
    return payload["id"]


payloads = st.builds(
    _payload,
    st.text(min_size=1, max_size=4),
    st.dictionaries(st.sampled_from(["title", "price", "tags"]), json_values, max_size=3),
)
versions = st.builds(
    Version, st.text(min_size=1, max_size=32), st.integers(min_value=0, max_value=2**63)
)


@st.composite
def updates(draw: st.DrawFn) -> FeedUpdate:
    old: list[dict[str, Any]] = draw(st.lists(payloads, max_size=6, unique_by=_id))
    new: list[dict[str, Any]] = draw(st.lists(payloads, max_size=6, unique_by=_id))
    user = draw(st.text(min_size=1, max_size=12))
    feed = draw(st.sampled_from(["home", "cart", "similar"]))
    with_base = draw(st.booleans())
    diff = make_diff(old, new) if with_base else None
    tag = draw(st.one_of(st.just(""), st.text(min_size=1, max_size=24)))
    state = FeedState(user, feed, draw(versions), tuple(new), tag)
    entered = draw(st.one_of(st.just(0), st.integers(1, 2**53 - 1)))
    return FeedUpdate(state, draw(versions) if with_base else None, diff, entered_ms=entered)


def _update(n: int = 2) -> FeedUpdate:
    old: list[dict[str, Any]] = [{"id": "a", "price": 1}, {"id": "b"}]
    new: list[dict[str, Any]] = [{"id": "c", "title": "new"}, {"id": "a", "price": 2}]
    state = FeedState("u-1", "home", Version("ep", n), tuple(new))
    return FeedUpdate(state, Version("ep", n - 1), make_diff(old, new))


def _fields(update: FeedUpdate) -> list[Any]:
    """The decoded msgpack array of an encoded update, to build malformed variants of."""
    fields: list[Any] = msgpack.unpackb(encode_update(update))
    return fields


@given(updates())
def test_round_trip(update: FeedUpdate) -> None:
    back = decode_update(encode_update(update))
    assert back == update
    assert back.entered_ms == update.entered_ms  # not part of ==: compared here


def test_round_trip_keeps_every_part() -> None:
    update = _update()
    update.frames["json"] = b"cached"
    back = decode_update(encode_update(update))
    assert back.state == update.state
    assert back.base == update.base and back.diff == update.diff
    assert back.frames == {}


def test_an_untagged_update_keeps_the_first_format_and_a_tagged_one_carries_its_tag() -> None:
    plain = _update()
    assert _fields(plain)[0] == 1 and len(_fields(plain)) == 8  # older nodes read it
    tagged = FeedUpdate(
        FeedState("u-1", "home", Version("ep", 2), plain.state.items, "ab:0a1b2c3d:b"),
        plain.base,
        plain.diff,
    )
    fields = _fields(tagged)
    assert fields[0] == 2 and fields[8] == "ab:0a1b2c3d:b"
    assert decode_update(encode_update(tagged)).state.tag == "ab:0a1b2c3d:b"


def test_a_timed_update_goes_in_format_3_with_or_without_a_tag() -> None:
    timed = _update()
    timed.entered_ms = 1_763_700_000_123
    fields = _fields(timed)
    assert fields[0] == 3 and fields[8] == "" and fields[9] == 1_763_700_000_123
    back = decode_update(encode_update(timed))
    assert back.entered_ms == 1_763_700_000_123 and back.state.tag == ""


@pytest.mark.parametrize(
    "entered",
    [0, -5, 2**53, 1.5, "1763700000123", True, None],
)
def test_malformed_entry_times_are_refused(entered: object) -> None:
    raw = msgpack.packb([3, *_fields(_update())[1:], "", entered])
    with pytest.raises(CodecError):
        decode_update(raw)


@pytest.mark.parametrize(
    "change",
    [
        lambda f: [*f, ""],  # format 1 with a ninth element
        lambda f: [3, *f[1:], ""],  # format 3 without its entry time
        lambda f: [2, *f],  # format 2 with ten
        lambda f: [2, *f[1:], ""],  # format 2 with an empty tag
        lambda f: [2, *f[1:], 7],  # format 2 with a tag that is not text
        lambda f: [2, *f[1:], "x" * 5000],  # an oversized tag
    ],
)
def test_malformed_tags_are_refused(change: Any) -> None:
    raw = msgpack.packb(change(_fields(_update())))
    with pytest.raises(CodecError):
        decode_update(raw)


def test_frames_are_not_encoded() -> None:
    update = _update()
    plain = encode_update(update)
    update.frames["json"] = b"x" * 1000
    assert encode_update(update) == plain


def test_new_epoch_update_has_no_base_nor_diff() -> None:
    state = FeedState("u-1", "home", Version("ep2", 1), ({"id": "a"},))
    back = decode_update(encode_update(FeedUpdate(state, None, None)))
    assert back.base is None and back.diff is None and back.state == state


@given(st.binary(max_size=200))
def test_garbage_bytes_raise_codec_error_only(raw: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode_update(raw)


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_corrupted_encodings_raise_codec_error_only(at: int, byte: int) -> None:
    raw = bytearray(encode_update(_update()))
    raw[at % len(raw)] = byte
    with contextlib.suppress(CodecError):
        decode_update(bytes(raw))


@given(st.integers(min_value=0))
def test_truncated_encodings_raise_codec_error(cut: int) -> None:
    raw = encode_update(_update())
    with pytest.raises(CodecError):
        decode_update(raw[: cut % len(raw)])


@given(json_values)
def test_any_other_msgpack_value_raises_codec_error(value: object) -> None:
    with pytest.raises(CodecError):
        decode_update(msgpack.packb(value))


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (0, 2),  # unknown format
        (0, True),
        (1, ""),  # empty user
        (1, 7),
        (2, None),  # feed
        (3, ""),  # epoch
        (4, -1),  # n
        (4, False),
        (5, ["ep"]),  # base
        (5, "ep"),
        (6, {"order": [], "items": {}}),  # diff without patch
        (6, {"order": [[0]], "items": {}, "patch": {}}),
        (6, {"order": [["a", 1]], "items": {}, "patch": {}}),
        (6, {"order": [], "items": {"c": {"title": "no id"}}, "patch": {}}),
        (6, {"order": [], "items": {}, "patch": {"a": 1}}),
        (6, []),
        (7, {"id": "a"}),  # items not a list
        (7, [{"title": "no id"}]),
        (7, [["id", "a"]]),
    ],
)
def test_malformed_fields_raise_codec_error(index: int, value: object) -> None:
    fields = _fields(_update())
    fields[index] = value
    with pytest.raises(CodecError):
        decode_update(msgpack.packb(fields))


def test_wrong_length_raises_codec_error() -> None:
    fields = _fields(_update())
    for variant in (fields[:-1], [*fields, None]):
        with pytest.raises(CodecError):
            decode_update(msgpack.packb(variant))


@pytest.mark.parametrize(
    "payload",
    [
        {"id": "a", "img": b"\x00binary"},
        {"id": "a", "when": msgpack.Timestamp(1, 0)},
        {"id": "a", "ext": msgpack.ExtType(5, b"x")},
        {"id": "a", "nested": {1: "int key"}},
    ],
)
def test_non_json_payload_values_raise_codec_error(payload: dict[str, Any]) -> None:
    fields = _fields(_update())
    fields[7] = [payload]
    with pytest.raises(CodecError):
        decode_update(msgpack.packb(fields, use_bin_type=True, strict_types=False))


def test_deep_nesting_raises_codec_error() -> None:
    deep: Any = "leaf"
    for _ in range(500):
        deep = [deep]
    fields = _fields(_update())
    fields[7] = [{"id": "a", "deep": deep}]
    with pytest.raises(CodecError):
        decode_update(msgpack.packb(fields))
    with pytest.raises(CodecError):
        decode_update(b"\x91" * 5000)


def test_oversized_message_is_refused_unparsed() -> None:
    with pytest.raises(CodecError, match="exceeds"):
        decode_update(b"\x00" * (MAX_BYTES + 1))


def test_invalid_utf8_and_trailing_bytes_raise_codec_error() -> None:
    raw = encode_update(_update())
    with pytest.raises(CodecError):
        decode_update(raw + b"\x00")
    with pytest.raises(CodecError):
        decode_update(raw.replace(b"u-1", b"u\xff1"))


def test_non_bytes_input_raises_codec_error() -> None:
    with pytest.raises(CodecError):
        decode_update("not bytes")  # type: ignore[arg-type]
