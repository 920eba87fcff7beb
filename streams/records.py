"""Decoding of event records from the bus: JSON or msgpack, chosen by header or by content.

A record's ``content-type`` header (``application/json`` or ``application/msgpack``) decides;
without one, a value starting with ``{`` is JSON and anything else is tried as msgpack. Records
from outside producers may omit ``ts``: the record's own timestamp stands in.

Guarantee: :func:`decode_record` returns a validated :class:`~streams.events.Event` or raises
:class:`~streams.exceptions.InvalidEvent` with a stable reason; never anything else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import msgpack

from streams.events import Event, parse_event
from streams.exceptions import InvalidEvent

JSON = "application/json"
MSGPACK = "application/msgpack"
#: Larger records are refused before decoding (an event is a few hundred bytes).
MAX_RECORD_BYTES = 65_536


def content_type(headers: Sequence[tuple[str, bytes]] | None) -> str | None:
    """The record's declared content type, if any."""
    for name, value in headers or ():
        if name.lower() == "content-type":
            return value.decode("latin-1").split(";")[0].strip().lower()
    return None


def decode_record(
    value: bytes | None, headers: Sequence[tuple[str, bytes]] | None, *, record_ts_ms: int
) -> Event:
    """Decode and validate one record's value."""
    if not value:
        raise InvalidEvent("empty", "record has no value")
    if len(value) > MAX_RECORD_BYTES:
        raise InvalidEvent("too_large", f"record exceeds {MAX_RECORD_BYTES} bytes")
    kind = content_type(headers) or (JSON if value[:1] in (b"{", b" ") else MSGPACK)
    obj: Any
    try:
        if kind == JSON:
            obj = json.loads(value)
        elif kind == MSGPACK:
            obj = msgpack.unpackb(value, raw=False, strict_map_key=True)
        else:
            raise InvalidEvent("content_type", f"unsupported content-type {kind[:60]!r}")
    except InvalidEvent:
        raise
    except Exception as exc:  # json/msgpack raise several unrelated types on bad input
        raise InvalidEvent(
            "undecodable", f"record is not valid {kind}: {type(exc).__name__}"
        ) from None
    if isinstance(obj, dict) and obj.get("ts") is None:
        obj = {**obj, "ts": record_ts_ms}
    ts = obj.get("ts") if isinstance(obj, dict) else None
    # Validate "ts not in the future" against the later of the record's clock and the event's.
    now_ms = (
        max(record_ts_ms, ts) if isinstance(ts, int) and not isinstance(ts, bool) else record_ts_ms
    )
    return parse_event(obj, auth_user=None, now_ms=now_ms, entered_ms=record_ts_ms)


def unpack_event(data: bytes) -> Event:
    """Decode an event packed by :meth:`Event.pack` (msgpack) and validate it again."""
    return decode_record(data, [("content-type", MSGPACK.encode())], record_ts_ms=0)
