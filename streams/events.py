"""The event schema and its validator.

An event is ``{"event_id", "user_id", "type", "item_id", "ts", "props"}``; see docs/PROTOCOL.md.
:func:`parse_event` either returns a well-formed :class:`Event` or raises :class:`InvalidEvent`
with a stable reason code and a message naming the offending field; it never partially accepts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from sessions.feeds import parse_rec_id
from streams.exceptions import InvalidEvent

#: A user's decision about personalization (``props.personalization``), see streams/consent.py.
CONSENT = "consent"
EVENT_TYPES = frozenset(
    {
        "view",
        "click",
        "add_to_cart",
        "remove_from_cart",
        "purchase",
        "search",
        "impression",
        CONSENT,
    }
)
#: Types that are about one item and so must name it.
ITEM_TYPES = frozenset({"view", "click", "add_to_cart", "remove_from_cart", "purchase"})
#: Types whose ``props.rec`` names the pushed list they are about (experiment statistics).
REC_TYPES = frozenset({"impression", "click"})
FIELDS = frozenset({"event_id", "user_id", "type", "item_id", "ts", "props"})
MAX_ID_LEN = 128
#: ``props`` bounds, the same on every path (collector and Kafka): encoded size, and nesting
#: depth (the event object counts as level 0, ``props`` as 1). The depth is checked first and
#: without recursion, so a small record nested a thousand deep is refused, never a stack overflow.
MAX_PROPS_BYTES = 4096
MAX_PROPS_DEPTH = 8
#: Events stamped more than this far in the future are refused (clock bugs, not traffic).
MAX_FUTURE_MS = 24 * 3600 * 1000
MIN_TS_MS = 946_684_800_000  # 2000-01-01


@dataclass(frozen=True, slots=True)
class Event:
    """A validated user-activity event. ``ts`` is epoch milliseconds.

    ``entered_ms`` is when the event entered pushrec's pipeline (epoch milliseconds): the
    collector's accept time, or the Kafka record's timestamp. It is not part of the wire form
    (the record carries it) and 0 means unknown; the event→push latency is measured from it,
    not from ``ts``, which the client sets and may be hours old (a replay) or skewed.
    """

    event_id: str
    user_id: str
    type: str
    item_id: str | None
    ts: int
    props: dict[str, Any] = field(default_factory=dict)
    entered_ms: int = field(default=0, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The wire form (JSON/msgpack)."""
        return {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "type": self.type,
            "item_id": self.item_id,
            "ts": self.ts,
            "props": self.props,
        }

    def pack(self) -> bytes:
        """The msgpack bytes carried on the event bus."""
        data: bytes = msgpack.packb(self.to_dict())
        return data


def _check_id(obj: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise InvalidEvent(f"missing_{name}", f"{name} is required")
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"bad_{name}", f"{name} must be a string, not {type(value).__name__}")
    if not value or len(value) > MAX_ID_LEN:
        raise InvalidEvent(f"bad_{name}", f"{name} must be 1 to {MAX_ID_LEN} characters")
    if not value.isprintable():
        raise InvalidEvent(f"bad_{name}", f"{name} must not contain control characters")
    return value


def _props_depth(props: dict[str, Any]) -> int:
    """How deep ``props`` nests (1 for a flat object), walked iteratively; stops counting past
    :data:`MAX_PROPS_DEPTH` + 1 (so the walk is bounded by the bound, not by the input)."""
    deepest = 1
    stack: list[tuple[object, int]] = [(props, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_PROPS_DEPTH:
            break
        children: Iterable[object] = ()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list | tuple):
            children = value
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list | tuple))
    return deepest


def parse_event(
    obj: object, *, auth_user: str | None, now_ms: int, entered_ms: int | None = None
) -> Event:
    """Validate one decoded JSON value as an event.

    ``auth_user`` is the verified subject of the poster's token (None for an API-key poster, who
    may post for any user). A token holder may omit ``user_id``; naming another user is refused.
    ``ts`` defaults to ``now_ms``; so does the event's ``entered_ms`` unless given.
    """
    if not isinstance(obj, dict):
        raise InvalidEvent("not_object", "an event must be a JSON object")
    if any(not isinstance(k, str) for k in obj):
        raise InvalidEvent("unknown_field", "field names must be strings")
    unknown = set(obj) - FIELDS
    if unknown:
        raise InvalidEvent("unknown_field", f"unknown field(s): {', '.join(sorted(unknown))}")
    event_id = _check_id(obj, "event_id", required=True)
    user_id = _check_id(obj, "user_id", required=auth_user is None)
    if auth_user is not None:
        if user_id is not None and user_id != auth_user:
            raise InvalidEvent("forbidden_user", "a visitor token may only post its own events")
        user_id = auth_user
    etype = obj.get("type")
    if not isinstance(etype, str) or etype not in EVENT_TYPES:
        raise InvalidEvent(
            "bad_type", f"type must be one of {', '.join(sorted(EVENT_TYPES))}, got {etype!r}"[:300]
        )
    item_id = _check_id(obj, "item_id", required=etype in ITEM_TYPES)
    ts = obj.get("ts", now_ms)
    if ts is None:
        ts = now_ms
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise InvalidEvent("bad_ts", "ts must be an integer (epoch milliseconds)")
    if ts < MIN_TS_MS or ts > now_ms + MAX_FUTURE_MS:
        raise InvalidEvent("bad_ts", "ts must be epoch milliseconds between 2000 and tomorrow")
    props = obj.get("props")
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise InvalidEvent("bad_props", "props must be an object")
    if _props_depth(props) > MAX_PROPS_DEPTH:
        raise InvalidEvent("bad_props", f"props must nest at most {MAX_PROPS_DEPTH} levels deep")
    try:
        size = len(json.dumps(props, separators=(",", ":"), ensure_ascii=False).encode())
    except (
        TypeError,
        ValueError,
        RecursionError,
    ):  # bytes or other non-JSON values arriving over msgpack,
        # or a lone surrogate ("\ud800" in JSON) that no UTF-8 record could carry
        raise InvalidEvent("bad_props", "props must hold JSON values only") from None
    if size > MAX_PROPS_BYTES:
        raise InvalidEvent("bad_props", f"props must encode to at most {MAX_PROPS_BYTES} bytes")
    rec = props.get("rec")
    if (
        etype in REC_TYPES
        and rec is not None
        and (not isinstance(rec, str) or parse_rec_id(rec) is None)
    ):
        raise InvalidEvent(
            "bad_rec", "props.rec must be the rec of a pushed list (<epoch>.<n>~<tag>)"
        )
    if etype == CONSENT and (
        item_id is not None
        or set(props) != {"personalization"}
        or not isinstance(props["personalization"], bool)
    ):
        raise InvalidEvent(
            "bad_consent",
            'a consent event names no item and has exactly props {"personalization": true|false}',
        )
    if event_id is None or user_id is None:  # unreachable: both were required above
        raise InvalidEvent("missing_user_id", "user_id is required")
    entered = now_ms if entered_ms is None else entered_ms
    return Event(event_id, user_id, str(etype), item_id, ts, props, entered)
