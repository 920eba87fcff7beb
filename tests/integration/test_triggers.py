"""Triggers on the real server and a real Redis (docs/RULES.md, "Triggers"): time-window offers
reaching a connected client in the ``offers`` feed, expiry, delayed triggers firing once after
their delay (not after a purchase), across a node restart, and two pollers racing for timers; a
purchase taking a shown offer back, and never racing an offer in; catalog changes reaching open
offers feeds; a visitor's event times and timers following it into the user it identifies as;
the trigger metrics."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, cast

import pytest
import redis

from sessions.broker_memory import MemoryBroker
from sessions.feeds import FeedState, FeedStore, shown_key
from sessions.keys import TIMER_BUCKETS, claimed_key, merged_key, timer_bucket, timers_key
from streams.catalog import Catalog, Item
from streams.events import Event
from streams.merge import merge_profiles
from streams.rules import parse_rules
from streams.triggers import (
    Offers,
    Triggers,
    events_key,
)
from tests.integration.conftest import (
    redis_client,
    redis_database,
    skip_on_cluster,
    start_server,
    stop_server,
    sync_redis,
)
from tests.integration.harness import (
    SCALE,
    FeedClient,
    Server,
    api,
    metric,
    new_id,
    processed_events,
    settle,
    ws_client,
)

RULES = textwrap.dedent(
    """
    triggers:
      - name: second-look
        on: view
        count: {event: view, at_least: 2, within: 10m}
        unless: {event: purchase, within: 10m}
        offer: {feed: offers, badge: "Still interested? -10%", ttl: 30m}
      - name: blink
        on: click
        count: {at_least: 1, within: 1m}
        offer: {feed: offers, badge: "Now or never", ttl: 2s}
      - name: cart-reminder
        after: {event: add_to_cart, delay: 2s}
        unless: {event: purchase}
        offer: {feed: offers, badge: "Your cart misses you", ttl: 1h}
    """
).lstrip()


def _members(client: redis.Redis, key: str) -> list[bytes]:
    return [bytes(m) for m in cast(list[bytes], client.zrange(key, 0, -1))]


def _clean(url: str) -> None:
    client = sync_redis(url)
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_database(1) as url:
        _clean(url)
        yield url


def _start(url: str) -> tuple[Any, Server]:
    proc, srv = start_server(
        {"PUSHREC_REDIS_URL": url, "PUSHREC_TIMERS_INTERVAL_S": "0.2"}, isolated=True
    )
    return proc, srv


async def put_rules(srv: Server, body: str) -> None:
    async with api(srv) as client:
        r = await client.put(
            "/v1/rules", content=body, headers={**srv.admin, "Content-Type": "application/yaml"}
        )
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def node(redis_url: str) -> Iterator[Server]:
    proc, srv = _start(redis_url)
    try:
        srv.load_catalog()
        asyncio.run(put_rules(srv, RULES))
        yield srv
    finally:
        stop_server(proc)


def offers_client(server: Server, user: str) -> AbstractAsyncContextManager[FeedClient]:
    """A WebSocket connection of ``user`` subscribed to the offers feed only."""
    return ws_client(server, user, feed="offers")


async def post(
    srv: Server, user: str, *events: tuple[str, str], ids: list[str] | None = None
) -> None:
    """Post ``(type, item)`` events of ``user`` in order and wait until they are processed
    (``ids``: their event ids, default fresh ones)."""
    async with api(srv) as client:
        before = await processed_events(srv, client)
        event_ids = ids or [new_id("e") for _ in events]
        body = [
            {"event_id": eid, "user_id": user, "type": t, "item_id": i}
            for eid, (t, i) in zip(event_ids, events, strict=True)
        ]
        r = await client.post("/v1/events", json=body, headers=srv.admin)
        assert r.status_code == 202, r.text
        await settle(srv, before, len(events), client)


async def stored_offers(srv: Server, user: str) -> dict[str, Any]:
    async with api(srv) as client:
        r = await client.get(f"/v1/users/{user}/feeds/offers", headers=srv.admin)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


def test_two_views_in_the_window_offer_the_item(node: Server) -> None:
    async def main() -> None:
        user = new_id("u")
        async with offers_client(node, user) as feed:
            assert feed.items == []  # nothing stored yet: an empty first version
            await post(node, user, ("view", "phones-3"))
            await post(node, user, ("view", "books-1"))
            assert feed.items == []  # one view of each: no offer
            await post(node, user, ("view", "phones-3"))
            await feed.wait(lambda s: s.ids == ["phones-3"])
            offer = feed.items[0]
            assert offer["badge"] == "Still interested? -10%"
            assert offer["trigger"] == "second-look"
            assert offer["title"] == "Phones 3"
            assert offer["expires_at"] > time.time() * 1000 + 25 * 60_000
        stored = await stored_offers(node, user)
        assert [p["id"] for p in stored["items"]] == ["phones-3"]

    asyncio.run(main())


def test_a_purchase_in_the_window_prevents_the_offer(node: Server) -> None:
    async def main() -> None:
        user = new_id("u")
        await post(node, user, ("purchase", "shoes-2"), ("view", "shoes-2"), ("view", "shoes-2"))
        assert (await stored_offers(node, user))["items"] == []

    asyncio.run(main())


def test_an_expired_offer_leaves_the_feed(node: Server) -> None:
    async def main() -> None:
        user = new_id("u")
        async with offers_client(node, user) as feed:
            await post(node, user, ("click", "books-4"))
            await feed.wait(lambda s: s.ids == ["books-4"])
            assert feed.items[0]["badge"] == "Now or never"
            started = time.monotonic()
            await feed.wait(lambda s: s.ids == [], within_s=6)
            assert time.monotonic() - started > 1.0  # not before its ttl (2 s)

    asyncio.run(main())


def test_a_delayed_trigger_fires_once_after_its_delay(node: Server, redis_url: str) -> None:
    async def main() -> None:
        user = new_id("u")
        async with offers_client(node, user) as feed:
            started = time.monotonic()
            await post(node, user, ("add_to_cart", "phones-7"))
            await feed.wait(lambda s: s.ids == ["phones-7"], within_s=8)
            assert time.monotonic() - started > 1.5  # the delay is 2 s
            assert feed.items[0]["badge"] == "Your cart misses you"
            frames = len(feed.frames)
            await asyncio.sleep(1.5 * SCALE)  # several more polls: nothing more happens
            assert len(feed.frames) == frames
        r = sync_redis(redis_url)
        try:
            bucket = timer_bucket(user)
            members = [m for m in _members(r, timers_key(bucket)) if user.encode() in m]
            claimed = [m for m in _members(r, claimed_key(bucket)) if user.encode() in m]
        finally:
            r.close()
        assert not [m for m in members if m.startswith(b"o\n")]
        assert not claimed

    asyncio.run(main())


def test_a_purchase_before_the_delay_cancels_the_delayed_offer(node: Server) -> None:
    async def main() -> None:
        user = new_id("u")
        async with offers_client(node, user) as feed:
            await post(node, user, ("add_to_cart", "shoes-5"), ("purchase", "shoes-5"))
            await asyncio.sleep(3.0 * SCALE)
            assert feed.items == []
            assert len(feed.frames) == 1  # the first (empty) snapshot only

    asyncio.run(main())


def test_a_purchase_takes_a_shown_offer_back(node: Server) -> None:
    """The offer of a purchased item leaves the open offers feed as a diff; the other offer
    stays; the same purchase again (a retried batch) writes nothing."""

    async def main() -> None:
        user = new_id("u")
        async with offers_client(node, user) as feed:
            await post(node, user, *[("view", "phones-4")] * 2, *[("view", "books-5")] * 2)
            await feed.wait(lambda s: s.ids == ["books-5", "phones-4"])
            held = feed.version
            assert held is not None
            purchase = [new_id("e")]
            await post(node, user, ("purchase", "phones-4"), ids=purchase)
            await feed.wait(lambda s: s.ids == ["books-5"])
            assert feed.version == [held[0], held[1] + 1]  # one new version of the same epoch
            stored = await stored_offers(node, user)
            assert stored["version"] == feed.version and stored["items"] == feed.items
            frames = len(feed.frames)
            await post(node, user, ("purchase", "phones-4"), ids=purchase)  # the same event
            await asyncio.sleep(0.3 * SCALE)
            assert len(feed.frames) == frames
            assert (await stored_offers(node, user))["version"] == stored["version"]

    asyncio.run(main())


def test_catalog_changes_reach_open_offers(node: Server, redis_url: str) -> None:
    """A price change arrives as a patch that keeps the offer's fields; out of stock, the offer
    leaves the open offers feed (streams/propagate.py over the offers feed's index)."""

    async def put_item(item: dict[str, Any]) -> None:
        async with api(node) as client:
            r = await client.put("/v1/items", json=[item], headers=node.admin)
            assert r.status_code == 200, r.text

    async def main() -> None:
        x = new_id("deal")
        deal: dict[str, Any] = {"item_id": x, "title": "Deal", "price": 50.0, "category": "deals"}
        await put_item(deal)
        user = new_id("u")
        r = sync_redis(redis_url)
        try:
            async with offers_client(node, user) as feed:
                await post(node, user, ("view", x), ("view", x))
                await feed.wait(lambda s: s.ids == [x])
                offer = dict(feed.items[0])
                assert r.zscore(shown_key("offers", x), user) is not None
                await put_item({**deal, "price": 35.0, "title": "Deal, cheaper"})
                await feed.wait(lambda s: s.items[0]["price"] == 35.0, within_s=2)
                frame = feed.frames[-1]
                assert frame["type"] == "diff"
                assert frame["patch"] == {x: {"price": 35.0, "title": "Deal, cheaper"}}
                # badge, expires_at and trigger are the offer's still
                assert feed.items == [{**offer, "price": 35.0, "title": "Deal, cheaper"}]
                assert (await stored_offers(node, user))["items"] == feed.items
                held = feed.version
                assert held is not None
                await put_item({**deal, "in_stock": False})
                await feed.wait(lambda s: s.ids == [], within_s=2)
                # The next version of the same epoch (an empty list goes as a snapshot: smaller).
                assert feed.version == [held[0], held[1] + 1]
                assert r.zscore(shown_key("offers", x), user) is None
                assert (await stored_offers(node, user))["items"] == []
        finally:
            r.close()

    asyncio.run(main())


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 3.0) -> None:
    """Wait until ``check`` holds (a counter counted right after the frame it waits for)."""
    async with asyncio.timeout(within_s * SCALE):
        # Polling: the counter lives in another process, there is no event to await here.
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def test_trigger_metrics(node: Server) -> None:
    async def main() -> None:
        offers = ("fired_immediate", "fired_delayed", "suppressed", "removed")
        timers = ("claimed", "handled")

        async def counts() -> dict[str, float]:
            out = {o: await metric(node, "pushrec_trigger_offers_total", outcome=o) for o in offers}
            for o in timers:
                out[o] = await metric(node, "pushrec_trigger_timers_total", outcome=o)
            return out

        before = await counts()
        user = new_id("u")
        async with offers_client(node, user) as feed:
            await post(node, user, ("view", "books-6"), ("view", "books-6"))
            await feed.wait(lambda s: s.ids == ["books-6"])
            await post(node, user, ("purchase", "books-6"))
            await feed.wait(lambda s: s.ids == [])
            await post(node, user, ("view", "books-6"))  # counts, but bought: held back
            await post(node, user, ("add_to_cart", "books-7"))
            await feed.wait(lambda s: s.ids == ["books-7"], within_s=8)

        async def delayed_counted() -> bool:
            return (await counts())["fired_delayed"] >= before["fired_delayed"] + 1

        await eventually(delayed_counted)
        after = await counts()
        assert after["fired_immediate"] - before["fired_immediate"] == 1
        assert after["fired_delayed"] - before["fired_delayed"] == 1
        assert after["suppressed"] - before["suppressed"] == 1
        assert after["removed"] - before["removed"] == 1
        assert after["claimed"] - before["claimed"] >= 1
        assert after["handled"] - before["handled"] >= 1

    asyncio.run(main())


def test_a_timer_survives_a_restart() -> None:
    """The node stops before the timer is due; it fires once the node is back."""
    with redis_database(2) as url:
        _clean(url)
        proc, srv = _start(url)
        user = new_id("u")
        try:
            srv.load_catalog()
            asyncio.run(put_rules(srv, RULES))
            asyncio.run(post(srv, user, ("add_to_cart", "books-8")))
        finally:
            stop_server(proc)
        r = sync_redis(url)
        try:
            pending = [m for m in _members(r, timers_key(timer_bucket(user))) if user.encode() in m]
            assert len(pending) == 1 and pending[0].startswith(b"o\ncart-reminder\n")
        finally:
            r.close()
        time.sleep(2.5)  # due while no node runs
        proc, srv = _start(url)
        try:

            async def main() -> None:
                async with offers_client(srv, user) as feed:
                    await feed.wait(lambda s: s.ids == ["books-8"], within_s=8)
                    assert feed.items[0]["trigger"] == "cart-reminder"

            asyncio.run(main())
        finally:
            stop_server(proc)


# -- the poller on its own: two racing, and a lease running out -----------------------------


CATALOG = [Item(f"item-{n}", f"Item {n}", 1.0 + n, "things", "", True, {}) for n in range(50)]
DELAYED = textwrap.dedent(
    """
    triggers:
      - name: later
        after: {event: add_to_cart, delay: 1s}
        offer: {feed: offers, badge: "Later", ttl: 1h}
    """
).lstrip()


GUARDED = textwrap.dedent(
    """
    triggers:
      - name: second-look
        on: view
        count: {event: view, at_least: 2, within: 10m}
        unless: {event: purchase, within: 10m}
        offer: {feed: offers, badge: "Again?", ttl: 30m}
      - name: cart-reminder
        after: {event: add_to_cart, delay: 1s}
        unless: {event: purchase}
        offer: {feed: offers, badge: "Your cart", ttl: 1h}
    """
).lstrip()


class Counts(dict[tuple[str, str], int]):
    """A trigger observer counting (kind, outcome)."""

    def __call__(self, kind: str, outcome: str, n: int) -> None:
        self[(kind, outcome)] = self.get((kind, outcome), 0) + n


async def _engine(
    url: str,
    clock: Any = time.time,
    *,
    rules: str = DELAYED,
    feeds: type[FeedStore] = FeedStore,
    observe: Counts | None = None,
) -> tuple[Triggers, Any]:
    client = redis_client(url)
    catalog = Catalog(client)
    await catalog.load()
    store = feeds(client, ttl_s=3600, history_len=50)
    parsed = parse_rules(rules)
    offers = Offers(client, store, MemoryBroker(), catalog, clock=clock)
    return Triggers(client, offers, lambda: parsed, clock=clock, observe=observe), client


async def _count(client: Any, key: Callable[[int], str]) -> int:
    """Members of every timers bucket (``key``: :func:`timers_key` or :func:`claimed_key`)."""
    return sum([await client.zcard(key(b)) for b in range(TIMER_BUCKETS)])


def _store(client: Any) -> FeedStore:
    return FeedStore(client, ttl_s=3600, history_len=50)


async def _offered(client: Any, user: str) -> list[str] | None:
    """The ids in ``user``'s stored offers feed (None: never written)."""
    state = await _store(client).read(user, "offers")
    return None if state is None else [str(p["id"]) for p in state.items]


class RacingStore(FeedStore):
    """A feed store that runs the next queued action right before it reads an offers feed:
    what lands between a handler's decision and its write."""

    queued: ClassVar[list[Callable[[], Awaitable[Any]]]] = []

    async def read(self, user: str, feed: str) -> FeedState | None:
        if feed == "offers" and self.queued:
            await self.queued.pop(0)()
        return await super().read(user, feed)


def test_two_pollers_racing_fire_each_timer_once() -> None:
    # On a cluster there is one database: the module's shared server polls the same timer
    # buckets every second and may claim the racers' timers first (its claims are right, but
    # this test counts what its own two pollers handled).
    skip_on_cluster("the shared server's poller would race on the one cluster database")
    with redis_database(3) as url:
        _clean(url)

        async def main() -> None:
            first, c1 = await _engine(url)
            second, c2 = await _engine(url)
            try:
                await Catalog(c1).upsert(CATALOG)
                await first.offers._catalog.load()
                await second.offers._catalog.load()
                now = int(time.time() * 1000)
                events = [
                    Event(new_id("e"), f"racer-{n}", "add_to_cart", f"item-{n}", now - 5000)
                    for n in range(50)
                ]
                assert await first.record(events) == 0  # delayed: nothing fires now
                assert await _count(c1, timers_key) == 50
                done = await asyncio.gather(*(p.poll_once() for p in (first, second) * 4))
                handled = [m for d in done for m in d if m.startswith("o\n")]
                assert len(handled) == 50 and len(set(handled)) == 50
                assert await _count(c1, claimed_key) == 0
                store = FeedStore(c1, ttl_s=3600, history_len=50)
                for n in range(50):
                    state = await store.read(f"racer-{n}", "offers")
                    assert state is not None
                    assert [p["id"] for p in state.items] == [f"item-{n}"]
                    assert state.version.n == 1  # one write: fired once
            finally:
                await c1.aclose()
                await c2.aclose()

        asyncio.run(main())


def test_a_lost_lease_is_handled_again_without_a_second_offer() -> None:
    """A poller claims a timer and dies before acknowledging it: after the lease another poller
    handles it again, and the offers feed does not change (the write is idempotent)."""
    with redis_database(3) as url:
        _clean(url)

        async def main() -> None:
            now = [time.time()]
            counts = Counts()
            engine, client = await _engine(url, clock=lambda: now[0], observe=counts)
            try:
                await Catalog(client).upsert(CATALOG)
                await engine.offers._catalog.load()
                ts = int(now[0] * 1000) - 5000
                await engine.record([Event(new_id("e"), "lease", "add_to_cart", "item-1", ts)])
                assert len(await engine.poll_once()) == 1
                store = FeedStore(client, ttl_s=3600, history_len=50)
                first = await store.read("lease", "offers")
                assert first is not None and [p["id"] for p in first.items] == ["item-1"]
                # The crash window: the member claimed again and never acknowledged.
                offer_timer = f"o\nlater\nlease\nitem-1\n{ts}\n{ts + 1000}"
                lease = claimed_key(timer_bucket("lease"))
                await client.zadd(lease, {offer_timer: int(now[0] * 1000) + 30_000})
                assert await engine.poll_once() == []  # its lease holds: nobody takes it
                now[0] += 31  # the lease runs out
                handled = await engine.poll_once()
                assert offer_timer in handled
                again = await store.read("lease", "offers")
                assert again == first  # same version: nothing written twice
                assert await client.zcard(lease) == 0
                assert counts[("timers", "retried")] == 1
                assert counts[("timers", "claimed")] == counts[("timers", "handled")] == 2
                assert counts[("offers", "fired_delayed")] == 1  # the second run wrote nothing
            finally:
                await client.aclose()

        asyncio.run(main())


def test_recording_is_idempotent_per_event() -> None:
    with redis_database(3) as url:
        _clean(url)

        async def main() -> None:
            engine, client = await _engine(url)
            try:
                ts = int(time.time() * 1000)
                event = Event("same-id", "idem", "add_to_cart", "item-2", ts)
                await engine.record([event])
                await engine.record([event])
                raw = await client.hget("pr:{u:idem}:ev:add_to_cart", "item-2")
                assert raw is not None and raw.decode().count("/") == 1
                members = await client.zrange(timers_key(timer_bucket("idem")), 0, -1)
                assert len(members) == 1
                assert json.dumps(members[0].decode().split("\n")[:4]) == json.dumps(
                    ["o", "later", "idem", "item-2"]
                )
            finally:
                await client.aclose()

        asyncio.run(main())


# -- a purchase never racing an offer in -------------------------------------------------------


def test_a_purchase_landing_before_the_delayed_offer_write_keeps_it_out() -> None:
    """The timer is due and nothing held it back when the handler started; the purchase is
    recorded right before the offers write. The guard in the write refuses it: no version."""
    with redis_database(3) as url:
        _clean(url)

        async def main() -> None:
            now = [time.time()]
            counts = Counts()
            engine, client = await _engine(
                url, clock=lambda: now[0], rules=GUARDED, feeds=RacingStore, observe=counts
            )
            try:
                await Catalog(client).upsert(CATALOG)
                await engine.offers._catalog.load()
                ts = int(now[0] * 1000) - 5000
                await engine.record([Event(new_id("e"), "racer", "add_to_cart", "item-3", ts)])
                purchase = Event(new_id("e"), "racer", "purchase", "item-3", ts + 500)
                RacingStore.queued.append(lambda: engine.record([purchase]))
                assert len(await engine.poll_once()) == 1
                assert not RacingStore.queued  # the purchase did land in between
                assert await _offered(client, "racer") is None  # never written, not even once
                assert counts[("offers", "suppressed")] == 1
                assert counts.get(("offers", "fired_delayed"), 0) == 0
            finally:
                RacingStore.queued.clear()
                await client.aclose()

        asyncio.run(main())


def test_an_offer_and_the_purchase_after_it_in_one_batch_write_nothing() -> None:
    """The second view fires (the purchase is not recorded yet when it is evaluated); the
    purchase later in the same batch is recorded before the offers write, which refuses it."""
    with redis_database(3) as url:
        _clean(url)

        async def main() -> None:
            now = time.time()
            counts = Counts()
            engine, client = await _engine(url, clock=lambda: now, rules=GUARDED, observe=counts)
            try:
                await Catalog(client).upsert(CATALOG)
                await engine.offers._catalog.load()
                ts = int(now * 1000)
                batch = [
                    Event(new_id("e"), "batch", "view", "item-4", ts),
                    Event(new_id("e"), "batch", "view", "item-4", ts + 1),
                    Event(new_id("e"), "batch", "view", "item-8", ts + 2),
                    Event(new_id("e"), "batch", "view", "item-8", ts + 3),
                    Event(new_id("e"), "batch", "purchase", "item-4", ts + 4),
                ]
                assert await engine.record(batch) == 1
                assert await _offered(client, "batch") == ["item-8"]
                state = await _store(client).read("batch", "offers")
                assert state is not None and state.version.n == 1  # one write, item-4 never in
                assert counts[("offers", "suppressed")] == 1
            finally:
                await client.aclose()

        asyncio.run(main())


# -- identify: the visitor's event times and timers follow it ----------------------------------


def _anon() -> str:
    return f"anon:{uuid.uuid4().hex}"


def test_identify_carries_event_times_and_retargets_the_visitors_timers() -> None:
    with redis_database(3) as url:
        _clean(url)

        async def main() -> None:
            now = [time.time()]
            counts = Counts()
            engine, client = await _engine(url, clock=lambda: now[0], rules=GUARDED, observe=counts)
            try:
                await Catalog(client).upsert(CATALOG)
                await engine.offers._catalog.load()
                anon, user = _anon(), new_id("u")
                ts = int(now[0] * 1000) - 5000
                seen, carted = new_id("e"), new_id("e")
                await engine.record(
                    [
                        Event(seen, anon, "view", "item-5", ts),
                        Event(carted, anon, "add_to_cart", "item-6", ts),
                    ]
                )
                result = await merge_profiles(client, anon, user, feeds=("home", "offers"))
                assert result.events == 2 and result.merged
                raw = await client.hget(events_key(user, "view"), "item-5")
                assert raw is not None and raw.decode() == f"{ts}/{seen}"
                for etype in ("view", "add_to_cart"):
                    assert not await client.exists(events_key(anon, etype))
                    assert 0 < await client.ttl(events_key(user, etype)) <= 600 + 3600
                assert await client.get(merged_key(anon)) == user.encode()
                # One view after logging in is the second look (the first was the visitor's).
                await engine.record([Event(new_id("e"), user, "view", "item-5", ts + 100)])
                assert await _offered(client, user) == ["item-5"]
                # The visitor's cart reminder falls due: it is the user's now.
                handled = await engine.poll_once()
                assert len([m for m in handled if m.startswith("o\n")]) == 1
                assert await _offered(client, user) == ["item-6", "item-5"]
                assert await _offered(client, anon) is None
                assert counts[("timers", "retargeted")] == 1
            finally:
                await client.aclose()

        asyncio.run(main())


def test_a_purchase_after_identify_cancels_the_visitors_delayed_offer() -> None:
    with redis_database(3) as url:
        _clean(url)

        async def main() -> None:
            now = [time.time()]
            engine, client = await _engine(url, clock=lambda: now[0], rules=GUARDED)
            try:
                await Catalog(client).upsert(CATALOG)
                await engine.offers._catalog.load()
                anon, user = _anon(), new_id("u")
                ts = int(now[0] * 1000) - 5000
                await engine.record([Event(new_id("e"), anon, "add_to_cart", "item-7", ts)])
                await merge_profiles(client, anon, user, feeds=("home", "offers"))
                await engine.record([Event(new_id("e"), user, "purchase", "item-7", ts + 200)])
                assert len(await engine.poll_once()) == 1
                assert await _offered(client, user) is None
                assert await _offered(client, anon) is None
            finally:
                await client.aclose()

        asyncio.run(main())


def test_an_identify_racing_the_timer_write_still_retargets() -> None:
    """The visitor is merged after the handler looked for the marker, before its write: the
    marker refuses the write to the visitor's feed, and the timer goes to the user."""
    with redis_database(3) as url:
        _clean(url)

        async def main() -> None:
            now = [time.time()]
            engine, client = await _engine(
                url, clock=lambda: now[0], rules=GUARDED, feeds=RacingStore
            )
            try:
                await Catalog(client).upsert(CATALOG)
                await engine.offers._catalog.load()
                anon, user = _anon(), new_id("u")
                ts = int(now[0] * 1000) - 5000
                await engine.record([Event(new_id("e"), anon, "add_to_cart", "item-9", ts)])
                RacingStore.queued.append(
                    lambda: merge_profiles(client, anon, user, feeds=("home", "offers"))
                )
                assert len(await engine.poll_once()) == 1
                assert not RacingStore.queued
                assert await _offered(client, user) == ["item-9"]
                assert await _offered(client, anon) is None
            finally:
                RacingStore.queued.clear()
                await client.aclose()

        asyncio.run(main())
