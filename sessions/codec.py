"""Binary form of a :class:`~sessions.feeds.FeedUpdate` between nodes (msgpack).

One message is a msgpack array::

    [1, user, feed, epoch, n, base, diff, items]
    [2, user, feed, epoch, n, base, diff, items, tag]
    [3, user, feed, epoch, n, base, diff, items, tag, entered_ms]

``1``/``2``/``3`` is the format number (a node refuses formats it does not know), ``base`` is
``[epoch, n]`` or nil, ``diff`` is the diff body (``order``/``items``/``patch``, see
:mod:`sessions.diff`) or nil, ``items`` the full item payloads of the new state, ``tag`` the
state's label (:attr:`~sessions.feeds.FeedState.tag`, may be empty in format 3),
``entered_ms`` when the oldest event behind the version entered the pipeline
(:attr:`~sessions.feeds.FeedUpdate.entered_ms`, a positive integer). An update is sent in the
oldest format that carries it, so nodes of an older release still read every update that
carries nothing new to them; a rolling upgrade updates web nodes before workers (an older web
node refuses format 3, counted as a broker decode error). The update's ``frames`` cache is never
encoded.

Guarantee: :func:`decode_update` accepts only what :func:`encode_update` can produce for a well
formed update, and raises :class:`CodecError` — and nothing else — for any other input (bytes
from anyone who can publish on the channel are untrusted). Payload values must be JSON-like
(str, int, float, bool, nil, arrays, maps with string keys, at most :data:`MAX_DEPTH` deep);
msgpack extension types and binary strings are refused, so a decoded payload always encodes to
JSON.
"""

from __future__ import annotations

from typing import Any

import msgpack

from sessions.diff import DiffBody
from sessions.exceptions import CodecError as CodecError  # re-exported: catch it from here
from sessions.feeds import FeedState, FeedUpdate
from sessions.versions import Version

FORMAT = 1
TAGGED_FORMAT = 2
TIMED_FORMAT = 3
_LENGTHS = {FORMAT: 8, TAGGED_FORMAT: 9, TIMED_FORMAT: 10}
MAX_ENTERED_MS = 1 << 53
MAX_TAG_LEN = 1024
MAX_BYTES = 1 << 20
"""Messages larger than this are refused without being parsed (a feed update is a few KiB)."""
MAX_DEPTH = 16
"""How deeply payload values may nest."""


def encode_update(update: FeedUpdate) -> bytes:
    """The msgpack bytes of ``update`` (without its ``frames`` cache)."""
    state = update.state
    base = update.base.to_wire() if update.base is not None else None
    tail: list[object]
    if update.entered_ms > 0:
        fmt, tail = TIMED_FORMAT, [state.tag, update.entered_ms]
    elif state.tag:
        fmt, tail = TAGGED_FORMAT, [state.tag]
    else:
        fmt, tail = FORMAT, []
    body = [fmt, state.user, state.feed, *state.version.to_wire(), base, update.diff]
    packed: bytes = msgpack.packb([*body, list(state.items), *tail], use_bin_type=True)
    return packed


def decode_update(raw: bytes) -> FeedUpdate:
    """Parse bytes made by :func:`encode_update`. Raises :class:`CodecError` on anything else."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise CodecError(f"expected bytes, got {type(raw).__name__}")
    if len(raw) > MAX_BYTES:
        raise CodecError(f"message of {len(raw)} bytes exceeds {MAX_BYTES}")
    try:
        obj = msgpack.unpackb(raw, raw=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise CodecError(f"not msgpack: {exc!r}") from None
    if not isinstance(obj, list) or not obj:
        raise CodecError("not an array")
    fmt = obj[0]
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt not in _LENGTHS:
        raise CodecError(f"unknown format {fmt!r}")
    if len(obj) != _LENGTHS[fmt]:
        raise CodecError(f"format {fmt} is an array of {_LENGTHS[fmt]}")
    _, user, feed, epoch, n, base, diff, items = obj[:8]
    tag = obj[8] if fmt != FORMAT else ""
    if not isinstance(tag, str) or len(tag) > MAX_TAG_LEN or (fmt == TAGGED_FORMAT and not tag):
        raise CodecError("the tag must be a non-empty string of at most 1024 characters")
    entered = obj[9] if fmt == TIMED_FORMAT else 0
    if fmt == TIMED_FORMAT and (
        not isinstance(entered, int)
        or isinstance(entered, bool)
        or not 0 < entered < MAX_ENTERED_MS
    ):
        raise CodecError("entered_ms must be a positive integer")
    if not isinstance(user, str) or not user or not isinstance(feed, str) or not feed:
        raise CodecError("user and feed must be non-empty strings")
    version = Version.from_wire([epoch, n])
    if version is None:
        raise CodecError("malformed version")
    base_version = None if base is None else Version.from_wire(base)
    if base is not None and base_version is None:
        raise CodecError("malformed base version")
    if not isinstance(items, list) or not all(_is_payload(p) for p in items):
        raise CodecError("items must be an array of payloads with an id")
    state = FeedState(user, feed, version, tuple(items), tag)
    body = None if diff is None else _diff_body(diff)
    return FeedUpdate(state, base_version, body, entered_ms=entered)


def _diff_body(value: object) -> DiffBody:
    if not isinstance(value, dict) or set(value) != {"order", "items", "patch"}:
        raise CodecError("diff must be a map of order, items and patch")
    order, items, patch = value["order"], value["items"], value["patch"]
    if not isinstance(order, list) or not all(_is_op(op) for op in order):
        raise CodecError("diff order must hold ids and [start, length] runs")
    if not isinstance(items, dict) or not all(
        isinstance(k, str) and _is_payload(v) for k, v in items.items()
    ):
        raise CodecError("diff items must map ids to payloads")
    if not isinstance(patch, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) and _is_json(v, 1) for k, v in patch.items()
    ):
        raise CodecError("diff patch must map ids to changed fields")
    return DiffBody(order=order, items=items, patch=patch)


def _is_op(op: object) -> bool:
    if isinstance(op, str):
        return True
    return (
        isinstance(op, list)
        and len(op) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in op)
    )


def _is_payload(value: object) -> bool:
    return isinstance(value, dict) and "id" in value and _is_json(value, 1)


def _is_json(value: Any, depth: int) -> bool:
    """True when ``value`` is JSON-like and at most ``MAX_DEPTH`` deep."""
    if value is None or isinstance(value, str | int | float):  # bool is an int
        return True
    if depth > MAX_DEPTH:
        return False
    if isinstance(value, list):
        return all(_is_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v, depth + 1) for k, v in value.items())
    return False
