"""Privacy on the real server and a real Redis: ``GET /v1/users/{id}/export`` returns what is
stored about a user, ``DELETE /v1/users/{id}`` erases all of it and closes the user's sockets
with 4504 — after which no key, member, field or value in Redis mentions the user."""

from __future__ import annotations

import asyncio
import json
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.integration.conftest import redis_database, start_server, stop_server, sync_redis
from tests.integration.harness import Server, api, metric, new_id, view_settled, ws_client

RULES = textwrap.dedent(
    """
    triggers:
      - name: second-look
        on: view
        count: {event: view, at_least: 2, within: 10m}
        offer: {feed: offers, badge: "Still interested?", ttl: 30m}
      - name: cart-reminder
        after: {event: add_to_cart, delay: 10m}
        unless: {event: purchase}
        offer: {feed: offers, badge: "Your cart misses you", ttl: 1h}
    """
)
EXPERIMENTS = textwrap.dedent(
    """
    experiments:
      - name: everyone
        variants: [{name: a}, {name: b}]
    """
)


@pytest.fixture(scope="module")
def node_url() -> Iterator[str]:
    """Database 16 of ``PUSHREC_TEST_REDIS_URL`` (scripts/redis.sh starts 32), or a private
    Redis: the test scans the whole database, so nothing else may write to it."""
    with redis_database(16) as url:  # emptied first
        yield url


@pytest.fixture(scope="module")
def node(node_url: str) -> Iterator[Server]:
    proc, srv = start_server({"PUSHREC_REDIS_URL": node_url, "PUSHREC_WORKER": "1"})
    try:
        srv.load_catalog()
        yield srv
    finally:
        stop_server(proc)


def mentions(url: str, needle: str) -> list[str]:
    """Every key of the database whose name or content holds ``needle``."""
    client = sync_redis(url)
    raw = needle.encode()
    found = []
    try:
        for key in client.scan_iter(count=1000):
            found_type = client.type(key)
            kind = found_type.decode() if isinstance(found_type, bytes) else str(found_type)
            if kind == "string":
                parts: list[Any] = [client.get(key)]
            elif kind == "hash":
                parts = [x for kv in client.hgetall(key).items() for x in kv]
            elif kind == "zset":
                parts = list(client.zrange(key, 0, -1))
            elif kind == "set":
                parts = list(client.smembers(key))
            elif kind == "list":
                parts = list(client.lrange(key, 0, -1))
            elif kind == "stream":
                entries: list[Any] = list(client.xrange(key) or [])
                parts = [x for _, f in entries for kv in f.items() for x in kv]
            else:
                parts = []
            if raw in key or any(isinstance(p, bytes) and raw in p for p in parts):
                found.append(key.decode())
    finally:
        client.close()
    return found


async def _put(srv: Server, path: str, body: str) -> None:
    async with api(srv) as client:
        r = await client.put(path, content=body, headers=srv.admin)
        assert r.status_code == 200, r.text


async def _activity(srv: Server, user: str) -> None:
    """Views (profile, neighbours, session index, trigger times, an offer), a cart (a timer),
    context feeds, and an impression of a tagged list (experiment marks)."""
    stored = await view_settled(srv, user, "phones-1", "phones-2", "phones-1")
    async with api(srv) as client:
        for feed in ("similar", "cart", "offers"):
            r = await client.get(f"/v1/users/{user}/feeds/{feed}", headers=srv.admin)
            assert r.status_code == 200, r.text
        events = [
            {"event_id": new_id("e"), "user_id": user, "type": "add_to_cart", "item_id": "books-1"},
            {
                "event_id": new_id("e"),
                "user_id": user,
                "type": "impression",
                "props": {"rec": stored["rec"]},
            },
        ]
        r = await client.post("/v1/events", json=events, headers=srv.admin)
        assert r.status_code == 202, r.text
    await view_settled(srv, user, "books-2")


def test_export_then_erase_leaves_no_trace_and_closes_the_users_sockets(
    node: Server, node_url: str
) -> None:
    user = f"erase-me-{uuid.uuid4().hex[:10]}"
    other = f"keep-me-{uuid.uuid4().hex[:10]}"

    async def scenario() -> None:
        await _put(node, "/v1/rules", RULES)
        await _put(node, "/v1/experiments", EXPERIMENTS)
        await _activity(node, user)
        await _activity(node, other)
        assert mentions(node_url, user)  # there is something to erase

        async with api(node) as client:
            assert (await client.get(f"/v1/users/{user}/export")).status_code == 401
            r = await client.get(f"/v1/users/{user}/export", headers=node.admin)
            assert r.status_code == 200
            data = r.json()
        assert data["user"] == user
        for key in ("recent", "dedup", "feed:home", "hist:home", "feed:similar", "cart", "xm"):
            assert key in data["keys"], sorted(data["keys"])
        home = data["keys"]["feed:home"]["value"]
        assert isinstance(home["b"], list) and home["b"]  # the feed body, decoded
        assert any(e.startswith("pr:{i:phones-") for e in data["indexes"]["is"])
        assert data["indexes"]["shown"] and any(k.startswith("pr:{tm:") for k in data["timers"])
        assert "books-1" in json.dumps(data["timers"])

        url = f"ws://{node.address}/v1/ws?token={node.token(user)}"
        async with ws_client(node, other) as kept, ws_connect(url) as ws:
            await ws.recv()  # hello: the socket is up
            async with api(node) as client:
                assert (await client.delete(f"/v1/users/{user}")).status_code == 401
                r = await client.delete(f"/v1/users/{user}", headers=node.admin)
                assert r.status_code == 200, r.text
                counts = r.json()["erased"]
            assert counts["keys"] > 5 and counts["index_entries"] > 0 and counts["timers"] >= 1
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(5 * node.scale):
                    while True:
                        await ws.recv()
            assert ws.close_code == 4504 and ws.close_reason == "user data erased"
            assert kept.version is not None  # the other user's socket stays open
            await asyncio.sleep(0.2 * node.scale)
            assert not kept.others or all(f["type"] != "close" for f in kept.others)

        assert mentions(node_url, user) == []
        assert mentions(node_url, other)  # nobody else's data went with it
        async with api(node) as client:
            again = await client.delete(f"/v1/users/{user}", headers=node.admin)
            assert again.json()["erased"] == {
                "keys": 0,
                "index_entries": 0,
                "timers": 0,
                "markers": 0,
            }
        assert await metric(node, "pushrec_privacy_requests_total", op="erase") == 2
        assert await metric(node, "pushrec_privacy_requests_total", op="export") == 1

    asyncio.run(scenario())
