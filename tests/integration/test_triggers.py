"""Triggers on the real server and a real Redis (docs/RULES.md, "Triggers"): time-window offers
reaching a connected client in the ``offers`` feed, expiry, delayed triggers firing once after
their delay (not after a purchase), across a node restart, and two pollers racing for timers."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

import pytest
import redis

from push.redis_client import connect as redis_connect
from sessions.broker_memory import MemoryBroker
from sessions.feeds import FeedStore
from streams.catalog import Catalog, Item
from streams.events import Event
from streams.rules import parse_rules
from streams.triggers import CLAIMED_KEY, TIMERS_KEY, Offers, Triggers
from tests.integration.conftest import redis_database, start_server, stop_server
from tests.integration.harness import (
    SCALE,
    FeedClient,
    Server,
    api,
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
    client = redis.Redis.from_url(url)
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


async def post(srv: Server, user: str, *events: tuple[str, str]) -> None:
    """Post ``(type, item)`` events of ``user`` in order and wait until they are processed."""
    async with api(srv) as client:
        before = await processed_events(srv, client)
        body = [
            {"event_id": new_id("e"), "user_id": user, "type": t, "item_id": i} for t, i in events
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
        r = redis.Redis.from_url(redis_url)
        try:
            members = [m for m in _members(r, TIMERS_KEY) if user.encode() in m]
            claimed = [m for m in _members(r, CLAIMED_KEY) if user.encode() in m]
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
        r = redis.Redis.from_url(url)
        try:
            pending = [m for m in _members(r, TIMERS_KEY) if user.encode() in m]
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


async def _engine(url: str, clock: Any = time.time) -> tuple[Triggers, Any]:
    client = redis_connect(url)
    catalog = Catalog(client)
    await catalog.load()
    feeds = FeedStore(client, ttl_s=3600, history_len=50)
    rules = parse_rules(DELAYED)
    offers = Offers(client, feeds, MemoryBroker(), catalog, clock=clock)
    return Triggers(client, offers, lambda: rules, clock=clock), client


def test_two_pollers_racing_fire_each_timer_once() -> None:
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
                assert await c1.zcard(TIMERS_KEY) == 50
                done = await asyncio.gather(*(p.poll_once() for p in (first, second) * 4))
                handled = [m for d in done for m in d if m.startswith("o\n")]
                assert len(handled) == 50 and len(set(handled)) == 50
                assert await c1.zcard(CLAIMED_KEY) == 0
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
            engine, client = await _engine(url, clock=lambda: now[0])
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
                await client.zadd(CLAIMED_KEY, {offer_timer: int(now[0] * 1000) + 30_000})
                assert await engine.poll_once() == []  # its lease holds: nobody takes it
                now[0] += 31  # the lease runs out
                handled = await engine.poll_once()
                assert offer_timer in handled
                again = await store.read("lease", "offers")
                assert again == first  # same version: nothing written twice
                assert await client.zcard(CLAIMED_KEY) == 0
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
                members = await client.zrange(TIMERS_KEY, 0, -1)
                assert len(members) == 1
                assert json.dumps(members[0].decode().split("\n")[:4]) == json.dumps(
                    ["o", "later", "idem", "item-2"]
                )
            finally:
                await client.aclose()

        asyncio.run(main())
