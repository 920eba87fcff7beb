"""Diffs between two versions of a feed.

A feed is an ordered list of item payloads (JSON-like mappings, each with a string ``"id"``). A diff
carries only what changed:

- ``order``: the new order. Each element is either an item id (a string: the item is new to the list
  and its payload is in ``items``) or ``[start, length]``: copy that run of the base list.
- ``items``: full payloads of the items new to the list.
- ``patch``: for items kept from the base list whose payload changed, the changed fields (a removed
  field is sent as ``None``).

Guarantee (checked by a property test): ``apply_diff(old, make_diff(old, new)) == new`` for any two
lists of payloads with unique ids.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

Payload = Mapping[str, Any]
OrderOp = str | list[int]


class DiffBody(TypedDict):
    """The changing part of a diff (versions are carried beside it)."""

    order: list[OrderOp]
    items: dict[str, dict[str, Any]]
    patch: dict[str, dict[str, Any]]


def ids_of(items: Sequence[Payload]) -> list[str]:
    """The ids of a feed's items, in order."""
    return [str(p["id"]) for p in items]


def checksum(ids: Sequence[str]) -> str:
    """A short checksum of an id order, so a client can detect a broken chain of diffs."""
    return format(zlib.crc32("\x1f".join(ids).encode()), "08x")


def make_diff(old: Sequence[Payload], new: Sequence[Payload]) -> DiffBody | None:
    """The diff that turns ``old`` into ``new``; None when they are equal."""
    index = {str(p["id"]): i for i, p in enumerate(old)}
    order: list[OrderOp] = []
    items: dict[str, dict[str, Any]] = {}
    patch: dict[str, dict[str, Any]] = {}
    for payload in new:
        item_id = str(payload["id"])
        at = index.get(item_id)
        if at is None:
            order.append(item_id)
            items[item_id] = dict(payload)
            continue
        last = order[-1] if order else None
        if isinstance(last, list) and last[0] + last[1] == at:
            last[1] += 1
        else:
            order.append([at, 1])
        before = old[at]
        if before != payload:
            changed = {k: v for k, v in payload.items() if before.get(k, _MISSING) != v}
            changed.update({k: None for k in before if k not in payload})
            patch[item_id] = changed
    if not items and not patch and order == ([[0, len(old)]] if old else []):
        return None
    return DiffBody(order=order, items=items, patch=patch)


def apply_diff(old: Sequence[Payload], body: DiffBody) -> list[dict[str, Any]]:
    """Apply ``body`` to ``old``. Raises ValueError when the diff does not fit ``old``."""
    out: list[dict[str, Any]] = []
    for op in body["order"]:
        if isinstance(op, str):
            try:
                out.append(dict(body["items"][op]))
            except KeyError:
                raise ValueError(f"diff names new item {op!r} without its payload") from None
        else:
            start, length = op
            if start < 0 or length < 1 or start + length > len(old):
                raise ValueError(f"diff run {op!r} is outside the base list of {len(old)}")
            out.extend(dict(p) for p in old[start : start + length])
    for payload in out:
        changed = body["patch"].get(str(payload["id"]))
        if changed:
            for key, value in changed.items():
                if value is None:
                    payload.pop(key, None)
                else:
                    payload[key] = value
    return out


_MISSING = object()
