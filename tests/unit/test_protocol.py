"""The sans-I/O protocol: client message validation, frames, per-connection state."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from push import protocol
from push.protocol import (
    Action,
    ClientState,
    CloseCode,
    Codec,
    ItemTable,
    ProtocolError,
    RateLimit,
    decode_client,
    parse_feeds,
    parse_have,
)
from sessions.diff import make_diff
from sessions.feeds import FeedState, FeedUpdate
from sessions.versions import Version


def item(i: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"i{i}", "title": f"Item {i}", "category": "c", **extra}


def state(n: int, ids: range, epoch: str = "E1", feed: str = "home") -> FeedState:
    return FeedState("u1", feed, Version(epoch, n), tuple(item(i) for i in ids))


def update(old: FeedState, new: FeedState) -> FeedUpdate:
    return FeedUpdate(new, old.version, make_diff(old.items, new.items))


def as_json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def refused(data: bytes, codec: Codec = Codec.JSON, text: bool = True) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_client(data, codec, text=text)
    return info.value


# -- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"{", b"[1,", b"\xff\xfe", b"nope"])
def test_bad_json(data: bytes) -> None:
    assert refused(data).code == "bad_json"


@pytest.mark.parametrize("data", [b"\xc1", b"\x92\x01", b"\xd9"])
def test_bad_msgpack(data: bytes) -> None:
    assert refused(data, Codec.MSGPACK, text=False).code == "bad_msgpack"


def test_msgpack_refuses_binary_strings_and_extensions() -> None:
    for value in (b"\x00\x01", msgpack.ExtType(1, b"x")):
        data = msgpack.packb({"type": "ping", "x": value}, use_bin_type=True)
        assert refused(data, Codec.MSGPACK, text=False).code == "bad_msgpack"


def test_msgpack_refuses_deep_nesting() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    data = msgpack.packb({"type": "ping", "x": deep})
    assert refused(data, Codec.MSGPACK, text=False).code == "bad_msgpack"


def test_wrong_encoding_for_the_connection() -> None:
    assert refused(b'{"type":"ping"}', Codec.JSON, text=False).code == "wrong_encoding"
    assert refused(msgpack.packb({"type": "ping"}), Codec.MSGPACK, text=True).code == (
        "wrong_encoding"
    )


@pytest.mark.parametrize("obj", [[], 1, "x", None, {"type": 1}, {"no": "type"}])
def test_not_a_message(obj: Any) -> None:
    assert refused(as_json(obj)).code == "bad_message"


def test_unknown_type_keeps_the_ref() -> None:
    err = refused(as_json({"type": "hack", "id": 7}))
    assert (err.code, err.ref) == ("unknown_type", 7)


@pytest.mark.parametrize("ref", [-1, 2**31, True, 1.5, "x" * 65, [1]])
def test_bad_ids(ref: Any) -> None:
    assert refused(as_json({"type": "ping", "id": ref})).code == "bad_message"


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "auth"},
        {"type": "auth", "token": ""},
        {"type": "identify", "token": 5},
        {"type": "subscribe"},
        {"type": "subscribe", "feeds": []},
        {"type": "subscribe", "feeds": ["a b"]},
        {"type": "subscribe", "feeds": ["x"] * 9},
        {"type": "subscribe", "feeds": ["home"], "have": []},
        {"type": "unsubscribe", "feeds": "home"},
        {"type": "resync"},
        {"type": "resync", "feed": 3},
        {"type": "track"},
        {"type": "track", "events": []},
        {"type": "track", "events": [{}] * 51},
    ],
)
def test_fields_are_checked(obj: dict[str, Any]) -> None:
    assert refused(as_json({**obj, "id": "r1"})).ref == "r1"


@pytest.mark.parametrize("have", [{"home": ["E", -1]}, {"home": [1, 2]}, {"home": ["E"]}])
def test_bad_held_versions(have: Any) -> None:
    err = refused(as_json({"type": "subscribe", "feeds": ["home"], "have": have}))
    assert err.code == "bad_version"


@pytest.mark.parametrize("codec", list(Codec))
def test_valid_messages_in_both_codecs(codec: Codec) -> None:
    obj = {"type": "subscribe", "id": 3, "feeds": ["home", "home"], "have": {"home": ["E1", 4]}}
    data = as_json(obj) if codec is Codec.JSON else msgpack.packb(obj)
    msg = decode_client(data, codec, text=codec is Codec.JSON)
    assert (msg.type, msg.id, msg.feeds) == ("subscribe", 3, ("home",))
    assert msg.have == {"home": Version("E1", 4)}


def test_track_and_auth_fields() -> None:
    track = decode_client(as_json({"type": "track", "events": [{"a": 1}]}), Codec.JSON, text=True)
    assert track.events == ({"a": 1},)
    auth = decode_client(as_json({"type": "auth", "token": "t"}), Codec.JSON, text=True)
    assert auth.token == "t"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(list(Codec)))
def test_any_bytes_decode_or_raise_protocol_error(data: bytes, codec: Codec) -> None:
    with contextlib.suppress(ProtocolError):
        decode_client(data, codec, text=codec is Codec.JSON)


def test_parse_have_and_feeds() -> None:
    assert parse_have("") == {}
    assert parse_have("home:E1:4,similar:a_-b:0") == {
        "home": Version("E1", 4),
        "similar": Version("a_-b", 0),
    }
    bad_ones = ("home", "home:E1:x", "home:E1:-1", "home:a:b:0", ",".join(["f:e:1"] * 9))
    for bad in bad_ones:
        with pytest.raises(ProtocolError):
            parse_have(bad)
    assert parse_feeds(None, ("home",)) == ("home",)
    assert parse_feeds("home, offers", ("home",)) == ("home", "offers")
    with pytest.raises(ProtocolError):
        parse_feeds("", ("home",))


def test_resume_id_round_trips() -> None:
    held = {"home": Version("E1", 4), "offers": Version("x", 0)}
    assert parse_have(protocol.resume_id(held)) == held


# -- encoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", list(Codec))
def test_snapshot_and_diff_frames(codec: Codec) -> None:
    old, new = state(4, range(5)), state(5, range(1, 7))
    upd = update(old, new)

    def decode(data: bytes) -> Any:
        return json.loads(data) if codec is Codec.JSON else msgpack.unpackb(data)

    snap = decode(protocol.cached_snapshot(upd, codec))
    assert snap["version"] == ["E1", 5] and snap["sum"] == new.sum
    assert [p["id"] for p in snap["items"]] == [f"i{i}" for i in range(1, 7)]
    diff = decode(protocol.cached_diff(upd, codec))
    assert (diff["base"], diff["version"]) == (["E1", 4], ["E1", 5])
    assert list(diff["items"]) == ["i5", "i6"]
    assert protocol.cached_diff(upd, codec) is protocol.cached_diff(upd, codec)


def test_diff_of_a_new_epoch_is_refused() -> None:
    with pytest.raises(ValueError):
        protocol.cached_diff(FeedUpdate(state(1, range(3)), None, None), Codec.JSON)


def test_json_keeps_non_ascii() -> None:
    assert "é".encode() in protocol.encode({"t": "é"}, Codec.JSON)


def test_subprotocol_choice() -> None:
    assert Codec.for_subprotocols([]) == (Codec.JSON, None)
    assert Codec.for_subprotocols(["x", "pushrec.v1.msgpack"]) == (
        Codec.MSGPACK,
        "pushrec.v1.msgpack",
    )
    assert Codec.for_subprotocols(["pushrec.v1.json", "pushrec.v1.msgpack"])[0] is Codec.JSON


@pytest.mark.parametrize("code", list(CloseCode))
def test_close_code_ranges(code: CloseCode) -> None:
    assert code.reconnect == (4000 <= code < 4500)


# -- per-connection state ---------------------------------------------------------------------


def test_client_state_decisions() -> None:
    client = ClientState()
    s4, s5, s6 = state(4, range(5)), state(5, range(1, 6)), state(6, range(2, 7))
    assert client.on_update(update(s4, s5)) is Action.SKIP  # not subscribed
    client.subscribe("home")
    assert client.on_update(update(s4, s5)) is Action.SKIP  # no snapshot yet
    assert client.wants(s4)
    client.now_holds("home", s4.version)
    assert not client.wants(s4)
    assert client.on_update(update(s4, s5)) is Action.SEND
    assert client.held("home") == Version("E1", 5)
    assert client.on_update(update(s4, s5)) is Action.SKIP  # replayed
    assert client.on_update(update(state(7, range(3)), state(8, range(4)))) is Action.SNAPSHOT
    other = state(1, range(3), epoch="E2")
    assert client.on_update(FeedUpdate(other, None, None)) is Action.SNAPSHOT
    assert client.holding() == {"home": Version("E1", 5)}
    assert s6.feed in client.feeds
    client.unsubscribe("home")
    assert not client.subscribed("home") and client.on_update(update(s5, s6)) is Action.SKIP


def test_item_table_remembers_exact_payloads() -> None:
    table = ItemTable()
    assert not table.holds("i1", item(1))
    table.sent([item(1), item(2)])
    assert table.holds("i1", item(1))
    assert not table.holds("i1", item(1, price=3.0))  # changed payload: send it again
    table.sent([item(1, price=3.0)])
    assert table.holds("i1", item(1, price=3.0)) and len(table) == 2


def test_item_table_is_bounded_and_forgets_the_oldest() -> None:
    table = ItemTable()
    table.sent(item(i) for i in range(protocol.ITEM_TABLE_SIZE + 10))
    assert len(table) == protocol.ITEM_TABLE_SIZE
    assert not table.holds("i0", item(0)) and not table.holds("i9", item(9))
    assert table.holds("i10", item(10))
    table.sent([item(10)])  # sending again refreshes it
    table.sent(item(i) for i in range(1000, 1000 + protocol.ITEM_TABLE_SIZE - 1))
    assert table.holds("i10", item(10)) and not table.holds("i11", item(11))


def test_rate_limit_bucket() -> None:
    bucket = RateLimit(burst=3, now=0.0)
    assert [bucket.allow(0.0, 1.0, 3) for _ in range(4)] == [True, True, True, False]
    assert bucket.allow(1.0, 1.0, 3)  # one token back after a second
    assert not bucket.allow(1.0, 1.0, 3)
