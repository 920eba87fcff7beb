"""Context feeds on a real Redis: ``similar`` (neighbours of the item being looked at) and
``cart`` (complements of the cart), computed in the event's own round trips, only for users who
have them, and pushed like ``home``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis

from sessions.broker_memory import MemoryBroker
from sessions.feeds import FeedStore
from sessions.keys import feed_key
from streams.catalog import Catalog, Item
from streams.events import Event
from streams.processor import Processor
from streams.propagate import Propagator
from tests.integration.conftest import redis_client, redis_database, start_server, stop_server
from tests.integration.harness import Server, api, new_id, view_settled, ws_client
from tests.integration.rig import plain_items, processor_rig


@pytest.fixture
def direct_url() -> Iterator[str]:
    with redis_database(11) as url:  # test_processor's database: every user of it flushes it
        yield url


def _event(user: str, etype: str, item: str, ts: int) -> Event:
    return Event(new_id("e"), user, etype, item, ts)


async def _rig(url: str) -> tuple[Processor, FeedStore, Redis, Catalog]:
    items = [
        *plain_items([f"p{n}" for n in range(6)], "p"),
        *plain_items([f"q{n}" for n in range(6)], "q"),
    ]
    rig = await processor_rig(url, items)
    return rig.processor, rig.feeds, rig.redis, rig.catalog


def ids(state: object) -> list[str]:
    assert state is not None
    return [str(p["id"]) for p in state.items]  # type: ignore[attr-defined]


def test_similar_follows_the_item_being_looked_at(direct_url: str) -> None:
    async def scenario() -> None:
        processor, feeds, r, catalog = await _rig(direct_url)
        now = int(time.time() * 1000)
        # Others teach neighbours: p0 goes with p1, q0 with q1.
        await processor.handle_batch(
            [_event("o1", "view", "p0", now), _event("o1", "view", "p1", now + 1)]
        )
        await processor.handle_batch(
            [_event("o2", "view", "q0", now + 2), _event("o2", "view", "q1", now + 3)]
        )
        # A user without the feed never gets one: nobody pays for feeds nobody shows.
        await processor.handle_batch([_event("plain", "view", "p0", now + 4)])
        redis = redis_client(direct_url)
        assert not await redis.exists(feed_key("plain", "similar"), feed_key("plain", "cart"))
        await redis.aclose()

        first = await processor.ensure_feed("u", "similar")  # the subscription opts in
        assert first.version.n == 1
        await processor.handle_batch([_event("u", "view", "p0", now + 10)])
        on_p0 = await feeds.read("u", "similar")
        assert ids(on_p0)[0] == "p1" and "p0" not in ids(on_p0)
        await processor.handle_batch([_event("u", "view", "q0", now + 11)])
        on_q0 = await feeds.read("u", "similar")
        assert ids(on_q0)[0] == "q1" and "q0" not in ids(on_q0)
        assert on_q0 is not None and on_p0 is not None and on_q0.version.n > on_p0.version.n
        # The home feed is computed as before, beside it.
        home = await feeds.read("u", "home")
        assert home is not None and "q0" not in ids(home)
        # Catalog propagation reaches context feeds like home: out of stock, out of the list.
        propagator = Propagator(redis=r, catalog=catalog, feeds=feeds, broker=MemoryBroker())
        await propagator.upsert([Item("q1", "q1", 1.0, "q", "", False, {})])
        edited = await feeds.read("u", "similar")
        assert "q1" not in ids(edited) and edited is not None
        assert edited.version.n == on_q0.version.n + 1

    asyncio.run(scenario())


def test_cart_shows_what_goes_with_the_cart_and_never_its_items(direct_url: str) -> None:
    async def scenario() -> None:
        processor, feeds, _, _ = await _rig(direct_url)
        now = int(time.time() * 1000)
        # Others cart p0 with q3 (complements), and view p0 then p1 (alternatives).
        for n, other in enumerate(("o1", "o2")):
            t = now + 10 * n
            await processor.handle_batch(
                [
                    _event(other, "add_to_cart", "p0", t),
                    _event(other, "add_to_cart", "q3", t + 1),
                    _event(other, "view", "p1", t + 2),
                ]
            )
        empty = await processor.ensure_feed("u", "cart")
        assert ids(empty) == []  # an empty cart has no complements
        await processor.handle_batch([_event("u", "add_to_cart", "p0", now + 100)])
        cart = await feeds.read("u", "cart")
        assert ids(cart)[0] == "q3" and "p0" not in ids(cart)
        # Carting the complement too: it leaves the list (already in the cart).
        await processor.handle_batch([_event("u", "add_to_cart", "q3", now + 101)])
        assert "q3" not in ids(await feeds.read("u", "cart"))
        await processor.handle_batch(
            [
                _event("u", "remove_from_cart", "p0", now + 102),
                _event("u", "remove_from_cart", "q3", now + 103),
            ]
        )
        assert ids(await feeds.read("u", "cart")) == []

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def node() -> Iterator[Server]:
    """A server on its own Redis (its traffic must not move other modules' trending)."""
    proc, srv = start_server(embedded=True)
    try:
        srv.load_catalog()
        yield srv
    finally:
        stop_server(proc)


def test_a_socket_subscribed_to_similar_gets_its_diffs(node: Server) -> None:
    async def scenario() -> None:
        await view_settled(node, new_id("crowd"), "books-1", "books-2")
        await view_settled(node, new_id("crowd"), "shoes-1", "shoes-2")
        user = new_id("u")
        async with ws_client(node, user, feed="similar") as feed:
            assert feed.frames[0]["feed"] == "similar"
            await view_settled(node, user, "books-1")
            await feed.wait(lambda s: bool(s.ids) and s.ids[0] == "books-2")
            await view_settled(node, user, "shoes-1")
            await feed.wait(lambda s: bool(s.ids) and s.ids[0] == "shoes-2")
            assert all(f["feed"] == "similar" for f in feed.frames)
        async with api(node) as client:
            r = await client.get(f"/v1/users/{user}/feeds/cart", headers=node.bearer(user))
            assert r.status_code == 200 and r.json()["items"] == []
            r = await client.get(f"/v1/users/{user}/feeds/nope", headers=node.bearer(user))
            assert r.status_code == 404

    asyncio.run(scenario())
