"""Catalog changes reach open pages: streams/propagate.py and the shown-items index, on real Redis.

Two halves: the real server (a PUT reaches a connected client as a diff within a second, users
not showing the item get nothing, the index follows recomputes, events racing catalog changes,
stale entries of expired users, a second node on the same Redis never edits again, latency), and
the parts driven directly on Redis, where a race, a failure or a clock must be forced.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from sessions.broker_memory import MemoryBroker
from sessions.diff import apply_diff, checksum, ids_of
from sessions.feeds import FeedState, FeedStore, FeedUpdate, shown_key
from sessions.keys import feed_key, history_key
from sessions.versions import Version
from streams.catalog import Catalog, Item
from streams.propagate import PENDING_KEY, PropagationIncomplete, Propagator
from tests.integration.conftest import redis_client, redis_database, start_server, stop_server
from tests.integration.harness import (
    FeedClient,
    Server,
    api,
    metric,
    new_id,
    stored_feed,
    view_settled,
    ws_client,
)

HOME = "home"

# -- the real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """This module's server's Redis (database 8 of ``PUSHREC_TEST_REDIS_URL``, or a private one)."""
    with redis_database(8) as url:
        yield url


@pytest.fixture(scope="module")
def node(redis_url: str) -> Iterator[Server]:
    """A server on this module's Redis, with the test catalog and some global trending (so feeds
    are long enough for a removal to be sent as a diff)."""
    proc, srv = start_server({"PUSHREC_REDIS_URL": redis_url}, isolated=True)
    try:
        srv.load_catalog()
        warm = [f"{c}-{n}" for c in ("phones", "books") for n in range(8)]
        asyncio.run(view_settled(srv, new_id("crowd"), *warm))
        yield srv
    finally:
        stop_server(proc)


async def put(srv: Server, items: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
    """``PUT /v1/items``; its answer."""
    async with api(srv) as client:
        r = await client.put("/v1/items", json=items, headers=srv.admin)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


async def new_category(srv: Server, n: int = 4) -> list[dict[str, Any]]:
    """``n`` fresh items of a category of their own (``c…-0`` …), stored through the API."""
    cat = f"c{uuid.uuid4().hex[:8]}"
    items = [
        {"item_id": f"{cat}-{k}", "title": f"Item {k}", "price": 10.0 + k, "category": cat}
        for k in range(n)
    ]
    assert (await put(srv, items))["feeds_updated"] == 0  # nobody shows a new item
    return items


async def show(srv: Server, user: str, tab: FeedClient, x: str, y: str) -> dict[str, Any]:
    """Make ``user``'s feed show ``x`` (a view of x, then of y); wait until ``tab`` holds it."""
    feed = await view_settled(srv, user, x, y)
    assert x in ids_of(feed["items"]), feed
    await tab.wait(lambda s: s.version == feed["version"])
    return feed


def holds(version: list[Any]) -> Callable[[FeedClient], bool]:
    return lambda s: s.version == version


def moved_from(version: list[Any] | None) -> Callable[[FeedClient], bool]:
    return lambda s: s.version != version


async def edits(srv: Server, outcome: str) -> float:
    return await metric(srv, "pushrec_catalog_edits_total", outcome=outcome)


def test_out_of_stock_leaves_every_open_feed_within_a_second(node: Server, redis_url: str) -> None:
    async def scenario() -> None:
        items = await new_category(node)
        x, y = items[0]["item_id"], items[1]["item_id"]
        user, stranger = new_id("u"), new_id("u")
        async with ws_client(node, stranger) as other, ws_client(node, user) as tab:
            # The stranger's feed is computed now, before x is trending anywhere.
            strange = await view_settled(node, stranger, "books-1", "books-2")
            assert x not in ids_of(strange["items"])
            await other.wait(lambda s: s.version == strange["version"])
            before = await show(node, user, tab, x, y)
            assert len(before["items"]) > 3
            seen_by_other = len(other.frames)

            started = time.perf_counter()
            answer = await put(node, {**items[0], "in_stock": False})
            await tab.wait(lambda s: x not in s.ids, within_s=1.0)
            assert time.perf_counter() - started < 1.0
            assert answer["feeds_updated"] == 1

            frame = tab.frames[-1]
            assert frame["type"] == "diff"
            assert frame["base"] == before["version"]
            assert frame["version"] == [before["version"][0], before["version"][1] + 1]
            assert frame["items"] == {} and frame["patch"] == {}  # a removal: runs only
            assert tab.ids == [i for i in ids_of(before["items"]) if i != x]  # nothing else moved
            after = await stored_feed(node, user)
            assert after["version"] == tab.version and after["items"] == tab.items

            redis = redis_client(redis_url)
            try:
                assert await redis.zscore(shown_key(HOME, x), user) is None
            finally:
                await redis.aclose()
            # The stranger's feed was not written, and its next frame is its own next update.
            assert (await stored_feed(node, stranger))["version"] == strange["version"]
            await node.view(stranger, "books-3")
            await other.wait(lambda s: len(s.frames) > seen_by_other)
            assert other.frames[seen_by_other]["base"] == strange["version"]

    asyncio.run(scenario())


def test_price_change_arrives_as_a_patch_and_an_unchanged_put_sends_nothing(
    node: Server,
) -> None:
    async def scenario() -> None:
        items = await new_category(node)
        x, y = items[0]["item_id"], items[1]["item_id"]
        user = new_id("u")
        async with ws_client(node, user) as tab:
            before = await show(node, user, tab, x, y)
            answer = await put(node, {**items[0], "price": 7.25, "title": "Item 0, on sale"})
            assert answer["feeds_updated"] == 1
            await tab.wait(lambda s: s.version != before["version"], within_s=1.0)
            frame = tab.frames[-1]
            assert frame["type"] == "diff"
            assert frame["patch"] == {x: {"price": 7.25, "title": "Item 0, on sale"}}
            assert frame["order"] == [[0, len(before["items"])]]  # same list, same order
            shown = next(p for p in tab.items if p["id"] == x)
            assert shown["price"] == 7.25
            assert (await stored_feed(node, user))["items"] == tab.items

            # The same item again (and a change of a field feeds do not show): no new version.
            frames = len(tab.frames)
            again = {**items[0], "price": 7.25, "title": "Item 0, on sale", "props": {"a": 1}}
            assert (await put(node, again))["feeds_updated"] == 0
            await asyncio.sleep(0.5)  # past the settle pass
            assert len(tab.frames) == frames
            assert (await stored_feed(node, user))["version"] == tab.version

    asyncio.run(scenario())


def test_the_index_follows_recomputes(node: Server, redis_url: str) -> None:
    async def scenario() -> None:
        items = await new_category(node)
        x, y = items[0]["item_id"], items[1]["item_id"]
        user = new_id("u")
        redis = redis_client(redis_url)
        try:
            feed = await view_settled(node, user, x, y)
            assert x in ids_of(feed["items"])
            for item_id in ids_of(feed["items"]):  # every item shown is indexed
                assert await redis.zscore(shown_key(HOME, item_id), user) is not None
            # Viewing x makes it the current item, which the recompute leaves out.
            feed = await view_settled(node, user, x)
            assert x not in ids_of(feed["items"])
            # So a change of x now edits nothing: the entry the write left (stale) is checked
            # against the stored list, skipped and removed.
            assert (await put(node, {**items[0], "price": 1.0}))["feeds_updated"] == 0
            assert await redis.zscore(shown_key(HOME, x), user) is None
            feed = await view_settled(node, user, y)
            assert x in ids_of(feed["items"])
            assert await redis.zscore(shown_key(HOME, x), user) is not None
            assert (await put(node, {**items[0], "price": 2.0}))["feeds_updated"] == 1
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def test_events_racing_catalog_changes_end_consistent(node: Server) -> None:
    async def scenario() -> None:
        items = await new_category(node, 6)
        ids = [i["item_id"] for i in items]
        x = ids[0]
        users = [new_id("u") for _ in range(3)]
        async with (
            ws_client(node, users[0]) as t0,
            ws_client(node, users[1]) as t1,
            ws_client(node, users[2]) as t2,
        ):
            tabs = [t0, t1, t2]
            for user, tab in zip(users, tabs, strict=True):
                await show(node, user, tab, x, ids[1])
            # Price changes of x and events of its viewers, all at once, several rounds.
            for round_ in range(8):
                views = [
                    node.view(user, ids[1 + (round_ + k) % 5], ids[1 + (round_ + k + 1) % 5])
                    for k, user in enumerate(users)
                ]
                await asyncio.gather(put(node, {**items[0], "price": 20.0 + round_}), *views)
            # Then x goes out of stock while its viewers keep browsing.
            views = [node.view(user, ids[2], ids[3]) for user in users]
            await asyncio.gather(put(node, {**items[0], "in_stock": False}), *views)
            deadline = time.monotonic() + 3.0 * node.scale
            for user, tab in zip(users, tabs, strict=True):
                while True:  # the stored feed settles: no x, and the tab follows it
                    stored = await stored_feed(node, user)
                    if x not in ids_of(stored["items"]) or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.05)
                assert x not in ids_of(stored["items"])
                # Every frame applied with its checksum on the way (FeedClient), and the tab holds
                # exactly the stored state.
                await tab.wait(holds(stored["version"]))
                assert tab.items == stored["items"]
            # Every item still shown carries the catalog's current payload.
            async with api(node) as client:
                r = await client.get("/v1/items", params={"category": items[0]["category"]})
                catalog = {i["item_id"]: i for i in r.json()["items"]}
            for tab in tabs:
                for p in tab.items:
                    if p["id"] in catalog:
                        assert p["price"] == catalog[p["id"]]["price"]

    asyncio.run(scenario())


def test_an_expired_user_is_cleaned_from_the_index(node: Server, redis_url: str) -> None:
    async def scenario() -> None:
        items = await new_category(node)
        x, y = items[0]["item_id"], items[1]["item_id"]
        user = new_id("u")
        redis = redis_client(redis_url)
        try:
            await view_settled(node, user, x, y)
            assert await redis.zscore(shown_key(HOME, x), user) is not None
            # The feed's TTL runs out (same effect as EXPIRE passing): its index entries stay.
            await redis.delete(feed_key(user, HOME), history_key(user, HOME))
            unindexed = await edits(node, "unindexed")
            assert (await put(node, {**items[0], "price": 3.5}))["feeds_updated"] == 0
            assert await redis.zscore(shown_key(HOME, x), user) is None
            assert await edits(node, "unindexed") == unindexed + 1
            # Its other entries are no concern until their item changes (or they age out).
            assert await redis.zscore(shown_key(HOME, items[2]["item_id"]), user) is None
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def test_a_second_node_follows_the_catalog_but_never_edits(node: Server, redis_url: str) -> None:
    proc, second = start_server({"PUSHREC_REDIS_URL": redis_url}, isolated=True)

    async def scenario() -> None:
        items = await new_category(node)
        x, y = items[0]["item_id"], items[1]["item_id"]
        user = new_id("u")
        async with ws_client(node, user) as tab:
            before = await show(node, user, tab, x, y)
            await put(node, {**items[0], "price": 4.5})
            await tab.wait(lambda s: s.version != before["version"], within_s=1.0)
            await asyncio.sleep(0.6)  # past both nodes' settle passes, if any
            after = await stored_feed(node, user)
            assert after["version"] == [before["version"][0], before["version"][1] + 1]
            assert tab.version == after["version"]
            assert await edits(second, "edited") == 0
            async with api(second) as client:  # the second node's mirror has the change
                r = await client.get("/v1/items", params={"category": items[0]["category"]})
                assert {i["item_id"]: i["price"] for i in r.json()["items"]}[x] == 4.5

    try:
        asyncio.run(scenario())
    finally:
        stop_server(proc)


def test_propagation_latency(node: Server) -> None:
    """PUT → diff at a connected client, over several changes (p50 printed; run with -s)."""

    async def scenario() -> list[float]:
        items = await new_category(node)
        x, y = items[0]["item_id"], items[1]["item_id"]
        user = new_id("u")
        out: list[float] = []
        async with ws_client(node, user) as tab:
            await show(node, user, tab, x, y)
            for k in range(15):
                held = tab.version
                started = time.perf_counter()
                await put(node, {**items[0], "price": 100.0 + k})
                await tab.wait(moved_from(held), within_s=1.0)
                out.append(time.perf_counter() - started)
        return out

    latencies = asyncio.run(scenario())
    ms = sorted(s * 1000 for s in latencies)
    p50, worst = statistics.median(ms), ms[-1]
    print(f"\ncatalog propagation PUT → diff: p50 {p50:.1f} ms, max {worst:.1f} ms")
    assert ms[-1] < 1000


# -- directly on Redis ---------------------------------------------------------------------------

TTL_S = 600


@pytest.fixture
def direct_url() -> Iterator[str]:
    with redis_database(7) as url:
        yield url


@dataclass
class Rig:
    """Catalog, feed store, broker and propagator of one process, on a real Redis."""

    redis: Redis
    catalog: Catalog
    feeds: FeedStore
    broker: MemoryBroker
    propagator: Propagator
    published: list[FeedUpdate] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def item(item_id: str, price: float = 1.0, *, in_stock: bool = True) -> Item:
    return Item(item_id, f"T {item_id}", price, "cat", "", in_stock, {})


async def rig(url: str, *, feeds: FeedStore | None = None, settle_s: float | None = None) -> Rig:
    redis = redis_client(url)
    catalog = Catalog(redis)
    store = feeds or FeedStore(redis, ttl_s=TTL_S, history_len=20)
    broker = MemoryBroker()
    published: list[FeedUpdate] = []
    await broker.start(published.append)
    counts: dict[str, int] = {}

    def observe(outcome: str, n: int) -> None:
        counts[outcome] = counts.get(outcome, 0) + n

    propagator = Propagator(
        redis=redis,
        catalog=catalog,
        feeds=store,
        broker=broker,
        observe=observe,
        settle_s=settle_s,
    )
    return Rig(redis, catalog, store, broker, propagator, published, counts)


def uid(prefix: str = "p") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def seed(r: Rig, user: str, items: Sequence[Item]) -> FeedState:
    """A first version of ``user``'s feed showing ``items`` (stored in the catalog)."""
    await r.catalog.upsert(items)
    update = await r.feeds.write(user, HOME, None, [i.payload for i in items])
    assert update is not None
    await r.broker.watch(user)
    return update.state


async def indexed(redis: Redis, item_id: str) -> dict[str, float]:
    pairs: list[tuple[bytes, float]] = await redis.zrange(  # type: ignore[assignment]
        shown_key(HOME, item_id), 0, -1, withscores=True
    )
    return {u.decode(): s for u, s in pairs}


def run(url: str, body: Any) -> None:
    async def scenario() -> None:
        r = await rig(url)
        try:
            await body(r)
        finally:
            await r.redis.aclose()

    asyncio.run(scenario())


def test_writes_keep_the_index_bounded_and_confirmed(direct_url: str) -> None:
    async def scenario() -> None:
        redis = redis_client(direct_url)
        now = [1_000_000.0]
        store = FeedStore(
            redis, ttl_s=TTL_S, history_len=5, index_refresh_s=60, clock=lambda: now[0]
        )
        a, b, c, d = (uid("i") for _ in range(4))
        alice, bob = uid("u"), uid("u")

        def payloads(*ids: str) -> list[dict[str, Any]]:
            return [{"id": i, "title": i} for i in ids]

        try:
            s1 = await store.write(alice, HOME, None, payloads(a, b, c))
            assert s1 is not None
            for i in (a, b, c):
                assert await indexed(redis, i) == {alice: 1_000_000_000.0}
                assert 0 < await redis.ttl(shown_key(HOME, i)) <= TTL_S + 2 * 60
            now[0] += 10  # within the refresh interval: only the entering item is confirmed
            s2 = await store.write(alice, HOME, s1.state, payloads(b, c, d))
            assert s2 is not None
            assert await indexed(redis, a) == {alice: 1_000_000_000.0}  # left: stale, kept
            assert await indexed(redis, b) == {alice: 1_000_000_000.0}
            assert await indexed(redis, d) == {alice: 1_000_010_000.0}
            now[0] += 60  # past it: every item of the list is confirmed again
            s3 = await store.write(alice, HOME, s2.state, payloads(c, b, d))
            assert s3 is not None
            for i in (b, c, d):
                assert await indexed(redis, i) == {alice: 1_000_070_000.0}
            # Alice's feed vanishes (TTL); once her entries are older than TTL + refresh, the
            # next user entering the set trims them.
            await redis.delete(feed_key(alice, HOME))
            now[0] += TTL_S + 61
            assert await store.write(bob, HOME, None, payloads(b)) is not None
            assert await indexed(redis, b) == {bob: (1_000_070 + TTL_S + 61) * 1000.0}
            assert await indexed(redis, c) == {alice: 1_000_070_000.0}  # untouched: expires
            # The version and history are as before: the index is beside them.
            assert (await store.read(alice, HOME)) is None
            state = await store.read(bob, HOME)
            assert state is not None and ids_of(state.items) == [b]
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def test_stale_entries_go_only_while_the_feed_is_as_read(direct_url: str) -> None:
    async def body(r: Rig) -> None:
        x = item(uid("x"))
        gone, moved, kept = uid("u"), uid("u"), uid("u")
        for user in (gone, moved, kept):
            await seed(r, user, [x])
        state = await r.feeds.read(moved, HOME)
        assert state is not None
        await r.redis.delete(feed_key(gone, HOME))
        # As read: gone has no feed, moved was at its version; but moved writes meanwhile.
        newer = await r.feeds.write(moved, HOME, state, [x.payload, item(uid("y")).payload])
        assert newer is not None
        removed = await r.feeds.unindex_many(HOME, [(gone, None, [x.item_id])])
        removed += await r.feeds.unindex_many(HOME, [(moved, state.version, [x.item_id])])
        assert removed == 1
        assert set(await indexed(r.redis, x.item_id)) == {moved, kept}

    run(direct_url, body)


def test_one_change_of_several_items_is_one_version_that_resumes(direct_url: str) -> None:
    async def body(r: Rig) -> None:
        x, y, z = item(uid("x")), item(uid("y")), item(uid("z"))
        user, other = uid("u"), uid("u")
        first = await seed(r, user, [x, y, z])
        await seed(r, other, [z])
        result = await r.propagator.upsert(
            [item(x.item_id, in_stock=False), item(y.item_id, 2.5), item(z.item_id)]
        )
        assert (result.items, result.edited, result.unindexed) == (2, 1, 0)  # z is unchanged
        [update] = r.published
        assert update.user == user and update.base == first.version
        assert update.diff is not None and update.diff["patch"] == {y.item_id: {"price": 2.5}}
        assert ids_of(update.state.items) == [y.item_id, z.item_id]
        assert await r.redis.sismember(PENDING_KEY, x.item_id) == 0
        # A client resuming from the first version replays exactly this change.
        resume = await r.feeds.read_since(user, HOME, first.version)
        assert resume.updates is not None and len(resume.updates) == 1
        replayed = apply_diff(first.items, resume.updates[0].diff)
        assert replayed == list(update.state.items)
        assert checksum(ids_of(replayed)) == resume.updates[0].sum

    run(direct_url, body)


class RacingStore(FeedStore):
    """A feed store under which, just before the edit's write, an "event" stores a recompute."""

    racer: tuple[str, list[dict[str, Any]]] | None = None

    async def write_many(
        self,
        writes: Sequence[tuple[str, str, FeedState | None, list[dict[str, Any]]]],
        *,
        tags: Sequence[str | None] | None = None,
        extras: Sequence[tuple[Sequence[str], Sequence[Any]]] | None = None,
        unindexed: Collection[str] = (),
    ) -> list[FeedUpdate | Exception | None]:
        if self.racer is not None and writes:
            user, items = self.racer
            self.racer = None
            await super().write(user, HOME, await self.read(user, HOME), items)
        return await super().write_many(writes, tags=tags, extras=extras, unindexed=unindexed)


def test_a_lost_race_is_edited_again_on_the_new_version(direct_url: str) -> None:
    async def scenario() -> None:
        redis = redis_client(direct_url)
        store = RacingStore(redis, ttl_s=TTL_S, history_len=20)
        r = await rig(direct_url, feeds=store)
        try:
            x, y, w = item(uid("x")), item(uid("y")), item(uid("w"))
            user = uid("u")
            first = await seed(r, user, [x, y])
            # The recompute still shows x at its old price (computed before the change).
            store.racer = (user, [w.payload, x.payload, y.payload])
            result = await r.propagator.upsert([item(x.item_id, 9.0)])
            assert result.edited == 1 and r.counts.get("conflict") == 1
            state = await store.read(user, HOME)
            assert state is not None and state.version.n == first.version.n + 2
            assert [p.get("price") for p in state.items] == [1.0, 9.0, 1.0]
            [update] = r.published  # the racer's own write is published by its own writer
            assert update.base == Version(first.version.epoch, first.version.n + 1)
            assert update.diff is not None and update.diff["patch"] == {x.item_id: {"price": 9.0}}
        finally:
            await redis.aclose()
            await r.redis.aclose()

    asyncio.run(scenario())


def test_the_settle_pass_repairs_a_write_from_the_old_catalog(direct_url: str) -> None:
    async def scenario() -> None:
        r = await rig(direct_url, settle_s=0.2)
        try:
            x, y, z = item(uid("x")), item(uid("y")), item(uid("z"))
            kept, late = uid("u"), uid("u")
            await seed(r, kept, [x, y])
            await seed(r, late, [y])
            old_x = x.payload
            await r.propagator.upsert([item(x.item_id, 5.0)])
            # Writes computed from the catalog before the change land after the first pass: one
            # puts the old payload back (x stays in that list), one brings x into a new list.
            edited = await r.feeds.read(kept, HOME)
            assert edited is not None and edited.items[0]["price"] == 5.0
            await r.feeds.write(kept, HOME, edited, [old_x, y.payload])
            base = await r.feeds.read(late, HOME)
            await r.feeds.write(late, HOME, base, [z.payload, old_x, y.payload])
            await r.propagator.settled()
            for user in (kept, late):
                state = await r.feeds.read(user, HOME)
                assert state is not None
                assert [p["price"] for p in state.items if p["id"] == x.item_id] == [5.0]
        finally:
            await r.redis.aclose()

    asyncio.run(scenario())


def test_a_failed_propagation_is_finished_by_the_same_put_again(direct_url: str) -> None:
    class Flaky(FeedStore):
        fail = True

        async def shown(
            self, feed: str, items: Sequence[str], *, since_ms: int | None = None
        ) -> list[list[str]]:
            if self.fail:
                self.fail = False
                raise RedisConnectionError("lost")
            return await super().shown(feed, items, since_ms=since_ms)

    async def scenario() -> None:
        redis = redis_client(direct_url)
        store = Flaky(redis, ttl_s=TTL_S, history_len=20)
        r = await rig(direct_url, feeds=store)
        try:
            x = item(uid("x"))
            user = uid("u")
            await seed(r, user, [x, item(uid("y"))])
            change = [item(x.item_id, in_stock=False)]
            with pytest.raises(PropagationIncomplete):
                await r.propagator.upsert(change)
            assert r.catalog.get(x.item_id) == change[0]  # stored all the same
            assert await redis.sismember(PENDING_KEY, x.item_id) == 1
            result = await r.propagator.upsert(change)  # unchanged in the catalog, yet pending
            assert result.edited == 1
            state = await store.read(user, HOME)
            assert state is not None and x.item_id not in ids_of(state.items)
            assert await redis.sismember(PENDING_KEY, x.item_id) == 0
            assert (await r.propagator.upsert(change)).items == 0  # now truly nothing to do
        finally:
            await redis.aclose()
            await r.redis.aclose()

    asyncio.run(scenario())
