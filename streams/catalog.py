"""The item catalog: Redis is the truth, each process keeps a mirror for the hot path.

An item is ``{"item_id", "title", "price", "category", "image", "in_stock", "props"}``. The mirror
lets the recommender filter and decorate candidates without a Redis round trip per event. It is
loaded at start and updated by every write made through this process; :meth:`Catalog.follow`
keeps it fresh with every other node's writes through the ``pr:catalog`` change channel (a node
that loses the channel reloads everything when it is back, so no change is missed for long).

Guarantees: :func:`parse_item` accepts a well-formed item or raises :class:`InvalidItem`; an
upsert batch is validated whole before anything is written.

**Redis lost the catalog** (restarted without persistence, flushed): a reload that finds no
catalog at all never empties a non-empty mirror. The node keeps serving its mirror and writes it
back (:meth:`Catalog.restore`: ``SET … NX`` per item, so an item written meanwhile by the shop is
never overwritten; idempotent, several nodes doing it at once end with the union of their
mirrors), then reloads. :meth:`Catalog.follow` also checks every ``check_s`` that the catalog is
still there (one ``EXISTS``), so a flush without a lost connection is repaired too. A catalog that
is present but different (items changed, some keys gone) is adopted as it is: only a catalog
vanished whole is taken for a loss. There is no way to empty the catalog on purpose while nodes
run: take items out of feeds with ``in_stock: false`` (which propagates), or stop every node
before flushing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessions.backoff import Backoff
from sessions.cluster import mget, refresh_topology
from sessions.keys import TREND_BUCKETS
from sessions.text import text
from streams.aggregates import read_trending
from streams.exceptions import StreamsError

ITEMS_KEY = "pr:items"  # sorted set of every item id (score 0: ordered by id)
CHANGES_CHANNEL = "pr:catalog"  # ids of items just written, for other nodes' mirrors
ITEM_FIELDS = frozenset({"item_id", "title", "price", "category", "image", "in_stock", "props"})
MAX_ITEM_BYTES = 8192
MAX_PRICE = 1e12


log = structlog.get_logger(__name__)


class InvalidItem(StreamsError):
    """A catalog item was malformed; the message names the field."""


def _stored_form(item: Item) -> str:
    """An item as stored in Redis (compact JSON)."""
    return json.dumps(item.to_dict(), separators=(",", ":"))


def item_key(item_id: str) -> str:
    """The Redis key holding one item (JSON)."""
    return f"pr:item:{item_id}"


@dataclass(frozen=True, slots=True)
class Item:
    """One catalog item. ``payload`` is what clients see in a feed (no None values)."""

    item_id: str
    title: str
    price: float | None
    category: str
    image: str
    in_stock: bool
    props: dict[str, Any]

    #: The feed payload: id, title, category, price and image (when set); no None values.
    #: Built once per item and shared by every feed that shows it: never mutate it.
    payload: dict[str, Any] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        out: dict[str, Any] = {"id": self.item_id, "title": self.title, "category": self.category}
        if self.price is not None:
            out["price"] = self.price
        if self.image:
            out["image"] = self.image
        object.__setattr__(self, "payload", out)

    def to_dict(self) -> dict[str, Any]:
        """The API and storage form."""
        return {
            "item_id": self.item_id,
            "title": self.title,
            "price": self.price,
            "category": self.category,
            "image": self.image,
            "in_stock": self.in_stock,
            "props": self.props,
        }


def _text(obj: dict[str, Any], name: str, *, limit: int, default: str = "") -> str:
    value = obj.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise InvalidItem(f"{name} must be a printable string of at most {limit} characters")
    return value


def parse_item(obj: object) -> Item:
    """Validate one item object."""
    if not isinstance(obj, dict):
        raise InvalidItem("an item must be a JSON object")
    unknown = set(obj) - ITEM_FIELDS
    if unknown:
        raise InvalidItem(f"unknown field(s): {', '.join(sorted(unknown))}")
    item_id = _text(obj, "item_id", limit=128)
    if not item_id:
        raise InvalidItem("item_id is required")
    price = obj.get("price")
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, int | float):
            raise InvalidItem("price must be a number or null")
        # Compare before converting: float() of a huge JSON integer raises OverflowError.
        if not (0 <= price < MAX_PRICE):  # also false for NaN
            raise InvalidItem(f"price must be a number from 0 to below {MAX_PRICE:.0e}")
        price = round(float(price), 2)
    in_stock = obj.get("in_stock", True)
    if not isinstance(in_stock, bool):
        raise InvalidItem("in_stock must be true or false")
    props = obj.get("props")
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise InvalidItem("props must be an object")
    item = Item(
        item_id=item_id,
        title=_text(obj, "title", limit=300, default=item_id) or item_id,
        price=price,
        category=_text(obj, "category", limit=200),
        image=_text(obj, "image", limit=1000),
        in_stock=in_stock,
        props=props,
    )
    if len(json.dumps(item.to_dict())) > MAX_ITEM_BYTES:
        raise InvalidItem(f"an item must encode to at most {MAX_ITEM_BYTES} bytes")
    return item


def load_items(path: Path) -> list[Item]:
    """Read and validate a JSONL catalog file; raises InvalidItem naming the bad line."""
    items: list[Item] = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                items.append(parse_item(json.loads(line)))
            except (ValueError, InvalidItem) as exc:
                raise InvalidItem(f"{path}:{n}: {exc}") from None
    return items


class Catalog:
    """Catalog reads from the in-process mirror; writes to Redis first, then the mirror."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._items: dict[str, Item] = {}
        self._sorted: list[str] | None = None
        self._words: dict[str, set[str]] | None = None
        #: Called with the number of items written back by each :meth:`restore` (metrics).
        self.restored: Callable[[int], None] | None = None
        #: Trending buckets and half-life (streams/aggregates.py): :meth:`trending_ids` merges.
        self.trend_buckets = TREND_BUCKETS
        self.trending_halflife_ms = 6 * 3_600_000

    async def load(self) -> int:
        """Fill the mirror from Redis; returns the item count.

        When Redis holds no catalog at all and the mirror is not empty, the mirror stays and is
        written back (:meth:`restore`) instead: a lost catalog must not empty every feed.
        """
        items: dict[str, Item] = {}
        ids = [text(i) for i in await self._redis.zrange(ITEMS_KEY, 0, -1)]
        if not ids and self._items:
            await self.restore()
            ids = [text(i) for i in await self._redis.zrange(ITEMS_KEY, 0, -1)]
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            for raw in await mget(self._redis, [item_key(i) for i in chunk]):
                if raw is not None:
                    item = parse_item(json.loads(raw))
                    items[item.item_id] = item
        self._items = items
        self._changed()
        return len(items)

    async def upsert(self, items: Sequence[Item]) -> list[Item | None]:
        """Store ``items`` (one pipeline round trip, then the announcement) and update the mirror.

        Returns what Redis held for each item just before (``SET … GET``, so the truth, not this
        mirror): None when the item was new (or its stored form unreadable). Catalog propagation
        (:mod:`streams.propagate`) uses it to tell which items changed.
        """
        replies = await self._storing(items, get=True).execute()
        # Other nodes refresh these ids from Redis (see follow()); ids only, the store is truth.
        # Announced once every write was acknowledged: on a cluster the items live on every
        # master, and a PUBLISH in the same pipeline would reach the followers while other
        # masters had not yet stored them (their re-read found nothing, the mirror missed them).
        await self._redis.publish(CHANGES_CHANNEL, json.dumps([i.item_id for i in items]))
        self._put(items)
        return [_parsed(raw) for raw in replies[: len(items)]]

    def _storing(self, items: Sequence[Item], *, get: bool = False, nx: bool = False) -> Any:
        """A pipeline that stores ``items`` (``SET`` with ``get`` / ``nx``, one reply per item,
        in order) and adds their ids to the id set; the caller may queue more, then executes."""
        pipe = self._redis.pipeline(transaction=False)
        for item in items:
            pipe.set(item_key(item.item_id), _stored_form(item), get=get, nx=nx)
        pipe.zadd(ITEMS_KEY, {item.item_id: 0 for item in items})
        return pipe

    async def restore(self) -> int:
        """Write the mirror back to Redis without overwriting anything stored; returns how many
        items were missing (and are now stored).

        Each item is ``SET … NX`` (a newer write by the shop wins) and its id added to the id set,
        in pipelined chunks; the ids are announced like an upsert's, so other nodes refresh
        them. Safe to run on several nodes at once.
        """
        restored = 0
        mirrored = list(self._items.values())
        for start in range(0, len(mirrored), 1000):
            chunk = mirrored[start : start + 1000]
            pipe = self._storing(chunk, nx=True)
            replies = await pipe.execute()
            written = [item.item_id for item, ok in zip(chunk, replies, strict=False) if ok]
            if written:
                await self._redis.publish(CHANGES_CHANNEL, json.dumps(written))
            restored += len(written)
        if self.restored is not None:
            self.restored(restored)
        log.warning("catalog_restored", items=restored, mirrored=len(mirrored))
        return restored

    async def check(self) -> None:
        """Write the mirror back when Redis lost the whole catalog (one ``EXISTS`` otherwise)."""
        if self._items and not await self._redis.exists(ITEMS_KEY):
            await self.load()

    def _put(self, items: Iterable[Item]) -> None:
        for item in items:
            self._items[item.item_id] = item
        self._changed()

    async def follow(self, *, check_s: float = 5.0) -> None:
        """Keep the mirror fresh with other nodes' writes until cancelled.

        Subscribes to the change channel, then reloads everything (so nothing written before the
        subscription is missed), then applies each change by re-reading the named items. After
        a lost connection it resubscribes and reloads again. Every ``check_s`` without a change
        it checks that Redis still holds the catalog (:meth:`check`); a reload or check that
        finds it gone writes the mirror back (see the module docstring).
        """
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANGES_CHANNEL)
                    await self.load()
                    backoff.reset()
                    while True:
                        message = await pubsub.get_message(timeout=check_s)
                        if message is None:
                            await self.check()
                        elif message.get("type") == "message":
                            await self._refresh(message.get("data"))
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.warning("catalog_follow_lost", error=type(exc).__name__)
                await refresh_topology(self._redis)  # a cluster: subscribe to a live master
                await asyncio.sleep(backoff.next())

    async def _refresh(self, data: object) -> None:
        try:
            ids = json.loads(data) if isinstance(data, bytes | str) else None
        except ValueError:
            ids = None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            log.warning("catalog_change_ignored")
            return
        raws = await mget(self._redis, [item_key(i) for i in ids]) if ids else []
        self._put(parse_item(json.loads(raw)) for raw in raws if raw is not None)

    def get(self, item_id: str) -> Item | None:
        """The mirrored item, or None when unknown."""
        return self._items.get(item_id)

    def __len__(self) -> int:
        return len(self._items)

    def page(
        self, *, offset: int, limit: int, category: str | None, first: Sequence[str] | None = None
    ) -> tuple[list[Item], int]:
        """A page of items (optionally of one category) and the matching total.

        Items named in ``first`` (e.g. trending ids) come first, in that order; the rest follow
        by id.
        """
        if self._sorted is None:
            self._sorted = sorted(self._items)
        ids: Iterable[str] = self._sorted
        if first:
            head = [i for i in dict.fromkeys(first) if i in self._items]
            chosen = set(head)
            ids = head + [i for i in self._sorted if i not in chosen]
        if category:
            ids = [i for i in ids if self._items[i].category == category]
        matching = list(ids)
        return [self._items[i] for i in matching[offset : offset + limit]], len(matching)

    async def trending_ids(self, limit: int = 1000) -> list[str]:
        """The most popular items right now (decayed trending counter), best first."""
        ranked = await read_trending(
            self._redis, limit, self.trend_buckets, self.trending_halflife_ms
        )
        return [item for item, _ in ranked]

    def categories(self) -> list[str]:
        """Every category in the catalog, sorted."""
        return sorted({item.category for item in self._items.values() if item.category})

    def categories_for_query(self, query: str) -> list[str]:
        """Categories whose name or item titles contain a word of ``query`` (search events)."""
        if self._words is None:
            words: dict[str, set[str]] = {}
            for item in self._items.values():
                text = f"{item.category.replace('.', ' ')} {item.title}".lower()
                for word in text.replace("_", " ").split():
                    if len(word) >= 3:
                        words.setdefault(word, set()).add(item.category)
            self._words = words
        found: set[str] = set()
        for word in query.lower().split():
            found |= self._words.get(word, set())
        return sorted(c for c in found if c)

    def _changed(self) -> None:
        self._sorted = None
        self._words = None


def _parsed(raw: object) -> Item | None:
    """A stored item, or None when absent or unreadable."""
    if not isinstance(raw, bytes | str):
        return None
    try:
        return parse_item(json.loads(raw))
    except (ValueError, InvalidItem):
        return None
