"""Decoding of event records from the bus: JSON or msgpack, chosen by header or by content.

A record's ``content-type`` header (``application/json`` or ``application/msgpack``) decides;
without one, a value starting with ``{`` is JSON and anything else is tried as msgpack. Records
from outside producers may omit ``ts``: the record's own timestamp stands in.

The collector's rules hold on this path too: ``ts`` may be at most a day ahead of the consumer's
clock (the record's timestamp is set by the producer, so it vouches for nothing), and ``props``
is bounded in size and depth. A record must be keyed by its event's ``user_id``
(:func:`check_key`): that key is what keeps one user's events on one partition, in order.

Guarantee: :func:`decode_record` and :func:`check_key` return a validated
:class:`~streams.events.Event` or raise :class:`~streams.exceptions.InvalidEvent` with a stable
reason; never anything else, whatever the bytes.
"""

from __future__ import annotations

import json
import time
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
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]] | None,
    *,
    record_ts_ms: int,
    now_ms: int | None = None,
) -> Event:
    """Decode and validate one record's value; ``now_ms`` (default: the wall clock) is what
    "not in the future" is measured against."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
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
    try:
        # Entered the pipeline no later than now (a producer's clock may run ahead).
        return parse_event(obj, auth_user=None, now_ms=now, entered_ms=min(record_ts_ms, now))
    except InvalidEvent:
        raise
    except Exception as exc:  # a validator bug must cost one record, not the partition
        raise InvalidEvent(
            "invalid", f"record could not be validated: {type(exc).__name__}"
        ) from None


def check_key(key: bytes | None, event: Event) -> None:
    """Refuse a record not keyed by its event's user id (``no_key``, ``key_mismatch``): another
    key may put the user's events on several partitions, and their order would be lost."""
    if not key:
        raise InvalidEvent("no_key", "a record must be keyed by its event's user_id")
    if key != event.user_id.encode():
        raise InvalidEvent("key_mismatch", "the record's key is not its event's user_id")


def unpack_event(data: bytes) -> Event:
    """Decode an event packed by :meth:`Event.pack` (msgpack) and validate it again."""
    return decode_record(data, [("content-type", MSGPACK.encode())], record_ts_ms=0)
