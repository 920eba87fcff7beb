"""Unit tests of push/protocol.py: client messages, frames and ClientState."""

from __future__ import annotations

import json
from typing import Any

import pytest

from push.protocol import (
    PING_FRAME,
    PONG_FRAME,
    PROTOCOL_VERSION,
    Action,
    ClientMessage,
    ClientState,
    CloseCode,
    ProtocolError,
    diff_frame,
    error_frame,
    hello_frame,
    parse_client_message,
    snapshot_frame,
    update_frame,
)
from sessions.diff import make_diff
from sessions.feeds import FeedState, FeedUpdate
from sessions.versions import Version

USER = "u-1"
FEED = "home"


def _items(*ids: str) -> tuple[dict[str, Any], ...]:
    return tuple({"id": i, "title": i.upper()} for i in ids)


def _state(version: Version, *ids: str, feed: str = FEED) -> FeedState:
    return FeedState(USER, feed, version, _items(*ids))


def _update(base: FeedState | None, version: Version, *ids: str) -> FeedUpdate:
    """The update from ``base`` to a new state ``version`` holding ``ids``."""
    state = _state(version, *ids, feed=base.feed if base else FEED)
    if base is None:
        return FeedUpdate(state, None, None)
    diff = make_diff(base.items, state.items)
    assert diff is not None
    return FeedUpdate(state, base.version, diff)


def _code(text: str) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(text)
    assert info.value.message == str(info.value)
    return info.value.code


# --- parse_client_message -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "{", "not json", "{'type': 'ping'}", "[" * 100_000],
    ids=["empty", "open-brace", "words", "single-quotes", "deep-nesting"],
)
def test_bad_json(text: str) -> None:
    assert _code(text) == "bad_json"


@pytest.mark.parametrize("text", ["[]", '"ping"', "7", "null", "true", '[{"type":"ping"}]'])
def test_non_object_is_a_bad_message(text: str) -> None:
    assert _code(text) == "bad_message"


@pytest.mark.parametrize("text", ["{}", '{"type": 3}', '{"type": null}', '{"type": ["ping"]}'])
def test_missing_or_non_string_type_is_a_bad_message(text: str) -> None:
    assert _code(text) == "bad_message"


@pytest.mark.parametrize("mtype", ["subscribe", "PING", "", "hello", "x" * 1000])
def test_unknown_type(mtype: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(json.dumps({"type": mtype}))
    assert info.value.code == "unknown_type"
    assert len(info.value.message) < 100  # the echoed type is truncated


@pytest.mark.parametrize("token", [None, 42, ["t"], {"t": 1}])
def test_auth_without_a_string_token(token: object) -> None:
    assert _code(json.dumps({"type": "auth", "token": token})) == "bad_message"
    assert _code('{"type": "auth"}') == "bad_message"


def test_auth_with_token() -> None:
    msg = parse_client_message('{"type": "auth", "token": "abc.def.ghi"}')
    assert msg == ClientMessage("auth", "abc.def.ghi")


@pytest.mark.parametrize("mtype", ["ping", "pong"])
def test_ping_and_pong(mtype: str) -> None:
    assert parse_client_message(json.dumps({"type": mtype})) == ClientMessage(mtype, None)


def test_ping_ignores_a_non_string_token_and_extra_fields() -> None:
    assert parse_client_message('{"type": "ping", "token": 5, "x": 1}') == ClientMessage("ping")


# --- frames ---------------------------------------------------------------------------------


def test_fixed_frames() -> None:
    assert json.loads(PING_FRAME) == {"type": "ping"}
    assert json.loads(PONG_FRAME) == {"type": "pong"}
    assert json.loads(hello_frame("u-1", "c-9")) == {
        "type": "hello",
        "user": "u-1",
        "conn": "c-9",
        "protocol": PROTOCOL_VERSION,
    }
    assert json.loads(error_frame("bad_json", "nope")) == {
        "type": "error",
        "code": "bad_json",
        "message": "nope",
    }


def test_snapshot_frame() -> None:
    state = _state(Version("ep", 3), "a", "b")
    assert json.loads(snapshot_frame(state)) == {
        "type": "snapshot",
        "feed": FEED,
        "version": ["ep", 3],
        "items": [{"id": "a", "title": "A"}, {"id": "b", "title": "B"}],
        "sum": state.sum,
    }


def test_diff_frame_content() -> None:
    base = _state(Version("ep", 3), "a", "b", "c")
    update = _update(base, Version("ep", 4), "new", "a", "b")
    frame = json.loads(diff_frame(update))
    assert frame == {
        "type": "diff",
        "feed": FEED,
        "base": ["ep", 3],
        "version": ["ep", 4],
        "order": ["new", [0, 2]],
        "items": {"new": {"id": "new", "title": "NEW"}},
        "patch": {},
        "sum": update.state.sum,
    }


def test_diff_frame_is_encoded_once() -> None:
    base = _state(Version("ep", 1), "a", "b")
    update = _update(base, Version("ep", 2), "b", "a")
    first = diff_frame(update)
    second = diff_frame(update)
    assert second is first
    assert update.frames["json"] is first


def test_diff_frame_keeps_non_ascii_text() -> None:
    base = _state(Version("ep", 1), "a")
    state = FeedState(USER, FEED, Version("ep", 2), ({"id": "a", "title": "Café"},))
    diff = make_diff(base.items, state.items)
    assert diff is not None
    assert "Café" in diff_frame(FeedUpdate(state, base.version, diff))


def test_diff_frame_of_a_new_epoch_is_refused() -> None:
    update = _update(None, Version("ep", 1), "a")
    with pytest.raises(ValueError):
        diff_frame(update)


# --- ClientState.on_update -------------------------------------------------------------------


def test_skip_before_a_snapshot() -> None:
    client = ClientState()
    base = _state(Version("ep", 1), "a")
    assert client.on_update(_update(base, Version("ep", 2), "b", "a")) is Action.SKIP
    assert client.held(FEED) is None


def test_send_when_base_is_held_and_held_advances() -> None:
    client = ClientState()
    v1 = _state(Version("ep", 1), "a")
    client.sent_snapshot(v1)
    assert client.held(FEED) == Version("ep", 1)
    u2 = _update(v1, Version("ep", 2), "b", "a")
    assert client.on_update(u2) is Action.SEND
    assert client.held(FEED) == Version("ep", 2)
    u3 = _update(u2.state, Version("ep", 3), "c", "b")
    assert client.on_update(u3) is Action.SEND
    assert client.held(FEED) == Version("ep", 3)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_skip_old_or_equal_versions(n: int) -> None:
    client = ClientState()
    client.sent_snapshot(_state(Version("ep", 5), "a"))
    base = _state(Version("ep", n - 1), "z")
    assert client.on_update(_update(base, Version("ep", n), "a", "z")) is Action.SKIP
    assert client.held(FEED) == Version("ep", 5)


def test_skip_a_replayed_update() -> None:
    client = ClientState()
    v1 = _state(Version("ep", 1), "a")
    client.sent_snapshot(v1)
    u2 = _update(v1, Version("ep", 2), "b", "a")
    assert client.on_update(u2) is Action.SEND
    assert client.on_update(u2) is Action.SKIP


def test_snapshot_when_base_is_not_held() -> None:
    client = ClientState()
    client.sent_snapshot(_state(Version("ep", 1), "a"))
    v2 = _state(Version("ep", 2), "b", "a")
    u3 = _update(v2, Version("ep", 3), "c", "b", "a")  # the client missed v2
    assert client.on_update(u3) is Action.SNAPSHOT
    assert client.held(FEED) == Version("ep", 1)  # unchanged until the snapshot is sent


def test_snapshot_for_a_new_epoch() -> None:
    client = ClientState()
    client.sent_snapshot(_state(Version("old", 7), "a"))
    update = _update(None, Version("new", 1), "x")
    assert client.on_update(update) is Action.SNAPSHOT
    client.sent_snapshot(update.state)
    assert client.held(FEED) == Version("new", 1)


def test_snapshot_for_an_other_epoch_even_with_lower_n() -> None:
    client = ClientState()
    client.sent_snapshot(_state(Version("old", 7), "a"))
    base = _state(Version("new", 1), "a")
    assert client.on_update(_update(base, Version("new", 2), "b")) is Action.SNAPSHOT


def test_snapshot_for_same_epoch_without_diff() -> None:
    client = ClientState()
    client.sent_snapshot(_state(Version("ep", 1), "a"))
    state = _state(Version("ep", 2), "b")
    assert client.on_update(FeedUpdate(state, Version("ep", 1), None)) is Action.SNAPSHOT


def test_feeds_are_tracked_separately() -> None:
    client = ClientState()
    home = _state(Version("ep", 1), "a")
    client.sent_snapshot(home)
    other = _state(Version("ep", 1), "a", feed="other")
    assert client.on_update(_update(other, Version("ep", 2), "b")) is Action.SKIP
    assert client.on_update(_update(home, Version("ep", 2), "b")) is Action.SEND


# --- CloseCode --------------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(CloseCode), ids=lambda c: c.name)
def test_close_code_reconnect(code: CloseCode) -> None:
    assert 4000 <= code < 5000
    assert code.reconnect is (code < 4500)


def test_close_code_reconnect_examples() -> None:
    assert CloseCode.SHUTDOWN.reconnect
    assert CloseCode.SLOW.reconnect
    assert CloseCode.HEARTBEAT.reconnect
    assert not CloseCode.BAD_REQUEST.reconnect
    assert not CloseCode.UNAUTHORIZED.reconnect
    assert not CloseCode.TOO_BIG.reconnect


def test_update_frame_prefers_a_smaller_snapshot() -> None:
    old = tuple({"id": f"o{i}", "title": "t"} for i in range(12))
    new = tuple({"id": f"n{i}", "title": "t"} for i in range(12))
    base = FeedState("u", "home", Version("ep", 1), old)
    state = FeedState("u", "home", Version("ep", 2), new)
    body = make_diff(old, new)
    assert body is not None
    kind, frame = update_frame(FeedUpdate(state, base.version, body))
    assert kind == "snapshot"  # every item replaced: the diff would be larger
    assert json.loads(frame)["version"] == ["ep", 2]


def test_update_frame_keeps_a_small_diff() -> None:
    old = tuple({"id": f"o{i}", "title": "t" * 50} for i in range(12))
    new = ({"id": "x", "title": "t" * 50}, *old[:11])
    body = make_diff(old, new)
    assert body is not None
    update = FeedUpdate(FeedState("u", "home", Version("ep", 2), new), Version("ep", 1), body)
    kind, frame = update_frame(update)
    assert kind == "diff"
    assert update_frame(update)[1] is frame  # encoded once
