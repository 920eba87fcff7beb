"""Catalog propagation: a catalog change reaches every open feed that shows the item.

An item going out of stock (or unknown to the catalog) leaves every stored feed that shows it; an
item whose feed payload changed (price, title, image, category) is replaced in place. That holds
for ``home``, the context feeds (``similar``, ``cart``) and the ``offers`` feeds
(:mod:`streams.triggers`), whose entries keep their offer fields (``badge``, ``expires_at``,
``trigger``) around the new payload. Each edited feed gets a normal new version — compare-and-set
on the version read, its diff (a removal: runs of the base list; a payload change: a ``patch``) in
the history stream — and is published like the processor publishes a recompute, so connected
clients receive a diff within milliseconds and resuming ones replay it. Nobody's feed is
recomputed: a removed item leaves the list one shorter until the user's next event recomputes it
(an offer does not come back).

Design:

- **Who shows what**: the index kept by every feed write (:mod:`sessions.feeds`,
  ``pr:{i:<item>}:shown:<feed>``, written around each compare-and-set, one item's slot per call;
  the offers writes go through the same store, so their index is kept too). It holds stale
  users (lists the item left: feed writes do not remove entries; a feed that expired or was
  deleted; a write that lost its race), so every indexed user's stored list is read and checked
  before it is edited: one that does not show the item is skipped, and its entry removed only if
  the feed is still as read (:meth:`FeedStore.unindex_many`). The items an edit drops (out of
  stock) leave the index the same way, at the version the edit wrote. So every stored feed that
  the index names and that shows a changed item is edited, and the index names every stored
  feed that shows an item (:mod:`sessions.feeds`).
  Each of the propagator's ``feed_names`` (default :data:`FEEDS`) is handled on its own: its
  index, edits, settle pass.
- **Which node**: the one that received ``PUT /v1/items`` (:meth:`Propagator.upsert`), once per
  change; the other nodes only refresh their catalog mirrors. The broker carries the updates to
  whichever nodes hold the sockets.
- **What changed**: the catalog write returns what Redis held before (``SET … GET``): an item
  propagates when it is new, or its ``in_stock`` or feed payload differs. A re-upload of an
  unchanged catalog costs nothing here. Each PUT's ids are marked in ``pr:catalog:pending``
  before the write and unmarked once propagated, so a PUT whose propagation failed (503) and is
  retried with the same items propagates again even though the catalog already holds them.
- **The edit** is computed against each stored list and the catalog mirror as it is now, so it is
  idempotent: a feed already right is not written.
- **Round trips** per PUT, whatever the number of users (in chunks of :data:`CHUNK` users): mark
  pending (1), catalog write (1), then per feed an index read (1) and per chunk: feed reads (1),
  writes with the stale-entry removals beside them (2, both concurrently: a write and the index
  work after it; the removals' check and the removals), the dropped items' removals when an
  item went out of stock (2), publish (1); unmark (1). Stale entries make the feed reads longer
  (each is read once: it is removed then). A lost
  compare-and-set (an event recomputed that user meanwhile) costs one re-read and one write for
  those users, up to :data:`_CAS_TRIES` times.
- **Settle pass**: a recompute computed from the catalog mirror *before* the change can be stored
  *after* the edit — either its write lost the race to the edit and was rebased, or the item
  entered that user's list after the index was read. So :data:`SETTLE_S` later the users edited
  or seen are checked again (versions only: one round trip per chunk), with any user the index
  gained since the start; those whose feed moved are edited again. Mirrors of other nodes follow
  the change within a round trip of the ``pr:catalog`` notice; a node cut off from it longer than
  that can still store the old state, corrected by that user's next event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis

from sessions.broker import Broker
from sessions.diff import Payload, ids_of
from sessions.exceptions import VersionConflict
from sessions.feeds import HOME, FeedState, FeedStore, FeedUpdate
from sessions.versions import Version
from streams.catalog import Catalog, Item
from streams.exceptions import StreamsError
from streams.profile import CONTEXT_FEEDS
from streams.rules import OFFER_FEEDS
from streams.triggers import OFFER_FIELDS

log = structlog.get_logger(__name__)

#: Set of item ids whose propagation was started and not finished (see the module docstring).
PENDING_KEY = "pr:catalog:pending"
#: Users per pipelined read/write/publish round.
CHUNK = 500
#: Delay of the settle pass (s); None turns it off.
SETTLE_S: float | None = 0.3
#: How far before the propagation's start an index entry counts as recent for the settle pass
#: (ms): writers' clocks may differ by that much.
SETTLE_MARGIN_MS = 2000
_CAS_TRIES = 3
#: A version no stored feed has: a user whose edit gave up is always checked again.
_UNKNOWN = Version("", -1)
#: The feeds propagated by default: ``home``, the offers feeds and the context feeds.
FEEDS: tuple[str, ...] = (HOME, *OFFER_FEEDS, *CONTEXT_FEEDS)
#: Per feed, the fields an entry has beyond the catalog payload, kept by an edit.
KEPT_FIELDS: dict[str, tuple[str, ...]] = dict.fromkeys(OFFER_FEEDS, OFFER_FIELDS)

#: Called with (outcome, count): ``edited`` feed versions written, ``conflict`` compare-and-set
#: races lost (retried), ``unindexed`` stale index entries removed, ``failed`` edits given up.
Observer = Callable[[str, int], None]


def _ignore(_outcome: str, _count: int) -> None:
    return None


class PropagationIncomplete(StreamsError):
    """The catalog was written but its change did not reach every feed; retry the same PUT."""


@dataclass(frozen=True, slots=True)
class Propagation:
    """What one propagation did."""

    #: Items whose change was propagated.
    items: int
    #: Feed versions written (each one published).
    edited: int
    #: Stale index entries removed (users whose feed no longer shows the item).
    unindexed: int


def shown_changed(old: Item | None, new: Item) -> bool:
    """Whether feeds showing ``old`` must change to show ``new`` (None: not known before)."""
    return old is None or old.in_stock != new.in_stock or old.payload != new.payload


def edit_feed(
    items: Sequence[Payload],
    targets: Collection[str],
    lookup: Callable[[str], Item | None],
    keep: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """``items`` with each item named in ``targets`` dropped or brought up to date.

    An item the catalog (``lookup``) does not know or has out of stock is dropped; any other
    target takes the catalog's payload, plus the fields named in ``keep`` from its entry (an
    offer's badge, expiry and trigger). Items not in ``targets`` are left as they are.
    """
    out: list[dict[str, Any]] = []
    for payload in items:
        item_id = str(payload["id"])
        if item_id not in targets:
            out.append(dict(payload))
            continue
        item = lookup(item_id)
        if item is None or not item.in_stock:
            continue
        kept = {k: payload[k] for k in keep if k in payload}
        out.append({**item.payload, **kept} if kept else item.payload)
    return out


class Propagator:
    """Stores catalog changes and edits the stored, open feeds that show the changed items."""

    def __init__(
        self,
        *,
        redis: Redis,
        catalog: Catalog,
        feeds: FeedStore,
        broker: Broker,
        feed_names: Sequence[str] = FEEDS,
        observe: Observer = _ignore,
        settle_s: float | None = SETTLE_S,
        chunk: int = CHUNK,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._catalog = catalog
        self._feeds = feeds
        self._broker = broker
        self._feed_names = tuple(feed_names)
        self._observe = observe
        self._settle_s = settle_s
        self._chunk = chunk
        self._clock = clock
        self._settling: set[asyncio.Task[None]] = set()

    async def upsert(self, items: Sequence[Item]) -> Propagation:
        """Store ``items`` in the catalog, then propagate the changed ones to the stored feeds.

        Redis errors before the catalog write raise as they are (nothing was written); after it,
        as :class:`PropagationIncomplete` (the items are stored; the same call again finishes).
        """
        ids = [item.item_id for item in items]
        pipe = self._redis.pipeline(transaction=False)
        for item_id in ids:
            pipe.sadd(PENDING_KEY, item_id)
        was_pending = [added == 0 for added in await pipe.execute()]
        previous = await self._catalog.upsert(items)
        changed = list(
            dict.fromkeys(
                item.item_id
                for item, old, pending in zip(items, previous, was_pending, strict=True)
                if pending or shown_changed(old, item)
            )
        )
        try:
            result = await self.propagate(changed)
            await self._redis.srem(PENDING_KEY, *ids)
        except Exception as exc:
            log.error("catalog_propagation_failed", items=len(changed), error=repr(exc)[:200])
            raise PropagationIncomplete(
                "the items are stored, but not every feed showing them was updated"
            ) from exc
        return result

    async def propagate(self, item_ids: Sequence[str]) -> Propagation:
        """Edit every stored feed the index says shows one of ``item_ids``; publish each edit.

        Returns after the first pass (every edit stored and published); the settle pass runs
        :data:`SETTLE_S` later in the background (see the module docstring).
        """
        if not item_ids:
            return Propagation(0, 0, 0)
        edited = unindexed = 0
        for feed in self._feed_names:
            started = time.perf_counter()
            since_ms = int(self._clock() * 1000) - SETTLE_MARGIN_MS
            targets = self._targets(item_ids, await self._feeds.shown(feed, item_ids))
            n_edited, n_unindexed, seen = await self._pass(feed, targets)
            edited += n_edited
            unindexed += n_unindexed
            log.info(
                "catalog_propagated",
                feed=feed,
                items=len(item_ids),
                users=len(targets),
                edited=n_edited,
                unindexed=n_unindexed,
                ms=round((time.perf_counter() - started) * 1000, 2),
            )
            if self._settle_s is not None:
                task = asyncio.create_task(self._settle(feed, item_ids, targets, seen, since_ms))
                self._settling.add(task)
                task.add_done_callback(self._settling.discard)
        return Propagation(len(item_ids), edited, unindexed)

    async def settled(self) -> None:
        """Wait for the settle passes under way (tests, orderly shutdown)."""
        while self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def stop(self) -> None:
        """Cancel the settle passes under way."""
        for task in list(self._settling):
            task.cancel()
        await asyncio.gather(*self._settling, return_exceptions=True)

    @staticmethod
    def _targets(item_ids: Sequence[str], shown: list[list[str]]) -> dict[str, set[str]]:
        targets: dict[str, set[str]] = {}
        for item_id, users in zip(item_ids, shown, strict=True):
            for user in users:
                targets.setdefault(user, set()).add(item_id)
        return targets

    async def _settle(
        self,
        feed: str,
        item_ids: Sequence[str],
        targets: dict[str, set[str]],
        seen: dict[str, Version | None],
        since_ms: int,
    ) -> None:
        assert self._settle_s is not None
        try:
            await asyncio.sleep(self._settle_s)
            again: dict[str, set[str]] = {}
            users = list(seen)
            for start in range(0, len(users), self._chunk):
                chunk = users[start : start + self._chunk]
                stored = await self._feeds.versions(chunk, feed)
                for user, now in zip(chunk, stored, strict=True):
                    if now is not None and now != seen[user]:
                        again[user] = set(targets[user])
            recent = await self._feeds.shown(feed, item_ids, since_ms=since_ms)
            for user, items in self._targets(item_ids, recent).items():
                if user not in seen:
                    again.setdefault(user, set()).update(items)
            if again:
                edited, unindexed, _ = await self._pass(feed, again)
                log.info(
                    "catalog_settled",
                    feed=feed,
                    users=len(again),
                    edited=edited,
                    unindexed=unindexed,
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("catalog_settle_failed", error=repr(exc)[:200])

    async def _pass(
        self, feed: str, targets: dict[str, set[str]]
    ) -> tuple[int, int, dict[str, Version | None]]:
        """Edit each user's ``feed`` for the items ``targets[user]``; (edited, unindexed, seen).

        ``seen``: per user, the version last read or written (None: no feed).
        """
        edited = unindexed = 0
        seen: dict[str, Version | None] = {}
        users = list(targets)
        for start in range(0, len(users), self._chunk):
            chunk = users[start : start + self._chunk]
            states = await self._feeds.read_many(chunk, feed)
            for attempt in range(_CAS_TRIES):
                updates, lost, removed = await self._edit(feed, chunk, states, targets, seen)
                await self._broker.publish_many(updates)
                edited += len(updates)
                unindexed += removed
                self._observe("edited", len(updates))
                self._observe("unindexed", removed)
                if not lost:
                    break
                self._observe("conflict", len(lost))
                if attempt == _CAS_TRIES - 1:
                    log.warning("catalog_edit_gave_up", users=len(lost))
                    self._observe("failed", len(lost))
                    seen.update(dict.fromkeys(lost, _UNKNOWN))
                    break
                chunk = lost
                states = await self._feeds.read_many(lost, feed)
        return edited, unindexed, seen

    async def _edit(
        self,
        feed: str,
        users: list[str],
        states: list[FeedState | None],
        targets: dict[str, set[str]],
        seen: dict[str, Version | None],
    ) -> tuple[list[FeedUpdate], list[str], int]:
        """One round of edits: (updates stored, users whose write lost a race, entries removed)."""
        writes: list[tuple[str, str, FeedState | None, list[dict[str, Any]]]] = []
        stale: list[tuple[str, Version | None, list[str]]] = []
        keep = KEPT_FIELDS.get(feed, ())
        for user, state in zip(users, states, strict=True):
            wanted = targets[user]
            if state is None:
                stale.append((user, None, sorted(wanted)))
                seen[user] = None
                continue
            shown = set(ids_of(state.items))
            if wanted - shown:
                stale.append((user, state.version, sorted(wanted - shown)))
            items = edit_feed(state.items, wanted & shown, self._catalog.get, keep)
            seen[user] = state.version
            if items != list(state.items):
                writes.append((user, feed, state, items))
        results, removed = await asyncio.gather(
            self._feeds.write_many(writes), self._feeds.unindex_many(feed, stale)
        )
        updates: list[FeedUpdate] = []
        lost: list[str] = []
        dropped: list[tuple[str, Version | None, list[str]]] = []
        for (user, _, state, items), result in zip(writes, results, strict=True):
            if isinstance(result, VersionConflict):
                lost.append(user)
            elif isinstance(result, Exception):
                log.error("catalog_edit_failed", feed=feed, error=str(result)[:200])
                self._observe("failed", 1)
                seen[user] = _UNKNOWN
            elif result is not None:
                updates.append(result)
                seen[user] = result.state.version
                left = set(ids_of(state.items if state else ())) - set(ids_of(items))
                if left:
                    dropped.append((user, result.state.version, sorted(left)))
        if dropped:
            # Feed writes leave the entries of items that left a list (sessions/feeds.py): the
            # items this edit dropped (out of stock) go from the index now, while the feed is
            # as written (not counted as stale: they were not).
            await self._feeds.unindex_many(feed, dropped)
        return updates, lost, removed
