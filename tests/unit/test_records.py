"""Unit tests of streams/records.py: the rules every consumed Kafka record must pass.

A record that cannot become an event raises :class:`InvalidEvent` with a stable reason (and so is
dead-lettered by the source); no input makes :func:`decode_record` raise anything else.
"""

from __future__ import annotations

import json
import time

import msgpack
import pytest

from streams.events import MAX_PROPS_DEPTH, parse_event
from streams.exceptions import InvalidEvent
from streams.records import MSGPACK, check_key, decode_record

NOW = int(time.time() * 1000)
HOUR = 3_600_000
YEAR_2100 = 4_102_444_800_000


def _event(**fields: object) -> dict[str, object]:
    return {
        "event_id": "e1",
        "user_id": "u1",
        "type": "view",
        "item_id": "i1",
        "ts": NOW,
        **fields,
    }


def _nested(depth: int) -> dict[str, object]:
    props: dict[str, object] = {}
    for _ in range(depth - 1):
        props = {"a": props}
    return props


def _reason(value: bytes, *, record_ts_ms: int = NOW, msgpack_header: bool = True) -> str:
    headers = [("content-type", MSGPACK.encode())] if msgpack_header else None
    with pytest.raises(InvalidEvent) as caught:
        decode_record(value, headers, record_ts_ms=record_ts_ms)
    return caught.value.reason


def test_deeply_nested_props_over_msgpack_are_refused_not_crashing() -> None:
    # 1,000 levels: msgpack decodes it (its own limit is deeper), json.dumps overflowed the stack.
    value = msgpack.packb(_event(props=_nested(1000)))
    assert len(value) < 4096
    assert _reason(value) == "bad_props"


def test_props_deeper_than_the_bound_are_refused_on_every_path() -> None:
    ok = _event(props=_nested(MAX_PROPS_DEPTH))
    assert parse_event(ok, auth_user=None, now_ms=NOW).props == ok["props"]
    deep = _event(props=_nested(MAX_PROPS_DEPTH + 1))
    with pytest.raises(InvalidEvent) as caught:  # the collector's path (HTTP, WebSocket track)
        parse_event(deep, auth_user=None, now_ms=NOW)
    assert caught.value.reason == "bad_props"
    assert _reason(json.dumps(deep).encode(), msgpack_header=False) == "bad_props"
    nested_list: list[object] = []
    for _ in range(MAX_PROPS_DEPTH + 5):
        nested_list = [nested_list]
    with pytest.raises(InvalidEvent):
        parse_event(_event(props={"l": nested_list}), auth_user=None, now_ms=NOW)


def test_a_far_future_ts_is_refused_whatever_the_record_says() -> None:
    assert _reason(msgpack.packb(_event(ts=YEAR_2100))) == "bad_ts"
    # The record's own timestamp is the producer's word too: it does not vouch for the event.
    assert _reason(msgpack.packb(_event(ts=YEAR_2100)), record_ts_ms=YEAR_2100) == "bad_ts"
    assert _reason(msgpack.packb(_event(ts=None)), record_ts_ms=YEAR_2100) == "bad_ts"
    # The collector's rule: up to a day ahead is clock skew, not an attack.
    event = decode_record(msgpack.packb(_event(ts=NOW + HOUR)), None, record_ts_ms=NOW, now_ms=NOW)
    assert event.ts == NOW + HOUR


def test_old_records_replayed_keep_their_time() -> None:
    old = NOW - 400 * 24 * HOUR
    event = decode_record(msgpack.packb(_event(ts=None)), None, record_ts_ms=old)
    assert (event.ts, event.entered_ms) == (old, old)


def test_the_record_key_must_be_the_user_id() -> None:
    event = decode_record(msgpack.packb(_event()), None, record_ts_ms=NOW)
    check_key(b"u1", event)
    with pytest.raises(InvalidEvent) as caught:
        check_key(None, event)
    assert caught.value.reason == "no_key"
    with pytest.raises(InvalidEvent) as caught:
        check_key(b"", event)
    assert caught.value.reason == "no_key"
    with pytest.raises(InvalidEvent) as caught:
        check_key(b"u2", event)
    assert caught.value.reason == "key_mismatch"
    with pytest.raises(InvalidEvent) as caught:
        check_key(b"\xff\xfe", event)
    assert caught.value.reason == "key_mismatch"


def test_any_error_while_validating_becomes_invalid_event(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kw: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr("streams.records.parse_event", broken)
    assert _reason(msgpack.packb(_event())) == "invalid"
