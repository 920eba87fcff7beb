"""Kafka in, many nodes out — on a real broker, a real Redis and real pushrec processes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgpack
from aiokafka import AIOKafkaConsumer

from sessions.keys import trend_bucket, trend_key
from tests.integration.harness import (
    SCALE,
    FeedClient,
    new_id,
    processed_events,
    version_key,
    ws_client,
)
from tests.integration.kafka_cluster import ITEMS, Cluster, Record, cluster, mixed_traffic
from tests.integration.kafka_cluster import applied as _applied
from tests.integration.kafka_cluster import model as _model
from tests.integration.kafka_cluster import until as _until


def _recent(c: Cluster, user: str) -> list[str]:
    members = c.redis().zrevrange(f"pr:{{u:{user}}}:recent", 0, -1)
    return [m.decode() if isinstance(m, bytes) else str(m) for m in members]


def holds(key: str) -> Callable[[FeedClient], bool]:
    """A predicate: the client has held the version ``key`` at some point."""
    return lambda s: key in s.states


def test_collector_produces_to_kafka_and_sockets_get_diffs() -> None:
    with cluster() as c:
        node = c.start("a")
        node.load_catalog()

        async def scenario() -> None:
            user = new_id("u")
            await node.crowd("phones-1", "phones-2", "phones-3")
            async with ws_client(node, user) as tab:
                await node.view(user, "phones-1")
                await tab.wait(lambda s: len(s.frames) > 1 and s.ids[:1] == ["phones-2"], 15)

        asyncio.run(scenario())


def test_json_and_msgpack_records_from_other_producers_are_consumed() -> None:
    with cluster() as c:
        c.start("a").load_catalog()
        user = new_id("u")
        as_json = {"event_id": new_id("e"), "user_id": user, "type": "view", "item_id": "books-1"}
        as_msgpack = {
            "event_id": new_id("e"),
            "user_id": user,
            "type": "view",
            "item_id": "books-2",
            "ts": int(time.time() * 1000),
        }
        asyncio.run(
            c.produce(
                [
                    (user.encode(), json.dumps(as_json).encode(), []),  # no header, no ts
                    (
                        user.encode(),
                        msgpack.packb(as_msgpack),
                        [("content-type", b"application/msgpack")],
                    ),
                ]
            )
        )
        # Both applied (their order in `recent` follows ts, and the JSON one took the record's).
        asyncio.run(_until(lambda: sorted(_recent(c, user)) == ["books-1", "books-2"]))


def test_poison_records_are_dead_lettered_and_consumption_continues() -> None:
    with cluster() as c:
        node = c.start("a")
        node.load_catalog()
        user = new_id("u")
        good = {"event_id": new_id("e"), "user_id": user, "type": "view", "item_id": "shoes-1"}
        poison = [
            (b"k1", b"\x00\xff\xfe not anything", [("content-type", b"application/msgpack")]),
            (b"k2", json.dumps({"event_id": "x", "type": "view"}).encode(), []),
            (b"k3", b'{"event_id": "' + b"x" * 70_000 + b'"}', []),
            (b"k4", b"<xml/>", [("content-type", b"text/xml")]),
        ]
        asyncio.run(c.produce([*poison, (user.encode(), json.dumps(good).encode(), [])]))
        asyncio.run(_until(lambda: _recent(c, user) == ["shoes-1"]))

        async def dead_letters() -> list[Any]:
            consumer = AIOKafkaConsumer(
                f"{c.topic}.dlq", bootstrap_servers=c.bootstrap, auto_offset_reset="earliest"
            )
            await consumer.start()
            try:
                got: list[Any] = []
                async with asyncio.timeout(15 * SCALE):
                    while len(got) < len(poison):
                        for records in (await consumer.getmany(timeout_ms=500)).values():
                            got.extend(records)
                return got
            finally:
                await consumer.stop()

        letters = asyncio.run(dead_letters())
        by_key = {r.key: r for r in letters}
        reasons = {k: dict(r.headers)["x-pushrec-reason"].decode() for k, r in by_key.items()}
        assert reasons == {
            b"k1": "undecodable",
            b"k2": "missing_user_id",
            b"k3": "too_large",
            b"k4": "content_type",
        }
        for key, value, _ in poison:
            headers = dict(by_key[key].headers)
            assert by_key[key].value == value  # the original bytes
            assert headers["x-pushrec-topic"].decode() == c.topic
            assert int(headers["x-pushrec-offset"]) >= 0
            assert headers["x-pushrec-error"]
        text = httpx.get(f"{node.http}/metrics").text
        assert re.search(r'pushrec_dead_letters_total\{reason="too_large"\} 1\.0', text)


def test_replayed_events_change_a_profile_once() -> None:
    with cluster() as c:
        c.start("a").load_catalog()
        user = new_id("u")
        ts = int(time.time() * 1000)
        event = {
            "event_id": new_id("e"),
            "user_id": user,
            "type": "view",
            "item_id": "books-9",
            "ts": ts,
        }
        sentinel = {**event, "event_id": new_id("e"), "item_id": "books-8", "ts": ts + 1}
        raw: list[Record] = [
            (user.encode(), json.dumps(e).encode(), []) for e in (event, event, event, sentinel)
        ]
        asyncio.run(c.produce(raw))
        asyncio.run(_until(lambda: _recent(c, user) == ["books-8", "books-9"]))
        # The first event of a fresh database sets the decay origin: one view scores exactly 1.
        assert c.redis().zscore(trend_key(trend_bucket("books-9")), "books-9") == 1.0
        assert c.redis().zcard(f"pr:{{u:{user}}}:dedup") == 2


def _reference_recent(events: list[dict[str, Any]], user: str) -> list[str]:
    last: dict[str, int] = {}
    for e in events:
        if e["user_id"] == user:
            last[e["item_id"]] = max(last.get(e["item_id"], 0), e["ts"])
    return [i for i, _ in sorted(last.items(), key=lambda p: (-p[1], p[0]))][:50]


def test_three_nodes_share_the_work_and_survive_a_sigkill() -> None:
    """Sockets on a node that owns no partition get every diff, in order; a worker is SIGKILLed
    mid-stream; every event is applied exactly once and every client converges on the store."""
    with cluster() as c:
        web = c.start("web", "serve", "--no-worker")
        c.start("w1", "worker")
        c.start("w2", "worker")
        web.load_catalog()
        rng = random.Random(11)  # noqa: S311 - reproducible traffic, not secrets
        users = [new_id("u") for _ in range(6)]
        start = int(time.time() * 1000)
        events = [
            {
                "event_id": new_id("e"),
                "user_id": users[i % len(users)],
                "type": "view",
                "item_id": rng.choice(ITEMS),
                "ts": start + i,
            }
            for i in range(300)
        ]

        before_kill: dict[str, int] = {}

        async def scenario() -> dict[str, FeedClient]:
            clients: dict[str, FeedClient] = {}
            async with contextlib.AsyncExitStack() as stack:
                for user in users:
                    clients[user] = await stack.enter_async_context(ws_client(web, user))
                for n in range(0, len(events), 20):
                    if n == 160:
                        # Everything so far is processed before the kill, so what arrived up to
                        # here can be held to "every diff, in order".
                        await _until(lambda: _applied(c, users) == 160, 30)
                        before_kill.update({u: len(clients[u].frames) for u in users})
                        c.kill("w1")  # mid-stream: uncommitted work must be redone, once
                    assert (await web.post(events[n : n + 20])).status_code == 202
                await _until(lambda: _applied(c, users) == len(events), 60)
                for user in users:
                    stored = await web.feed(user)
                    key = version_key(stored["version"])
                    await clients[user].wait(holds(key), 15)
                    assert clients[user].states[key] == stored["items"]
            return clients

        clients = asyncio.run(scenario())
        for user in users:
            assert _reference_recent(events, user) == _recent(c, user)
            frames = clients[user].frames
            # Up to the kill: every update arrived as the next version, in order. After it, a
            # version that the killed worker stored but never published may be missing: the next
            # update then reaches the client as a snapshot (all or nothing), never as a diff.
            steps = list(itertools.pairwise(frames))
            settled = steps[: max(before_kill[user] - 1, 0)]
            assert all(b["version"][1] == a["version"][1] + 1 for a, b in settled)
            assert all(
                b["type"] == "snapshot"
                for a, b in steps
                if b["version"][1] != a["version"][1] + 1 or b["version"][0] != a["version"][0]
            )


def test_three_nodes_learn_exactly_what_one_node_learns() -> None:
    """The same events, through one node and through a web node with two workers: every
    user's profile and the learnt item model come out the same."""
    users, events = mixed_traffic("ref", 23)

    def run(*commands: tuple[str, ...]) -> dict[str, Any]:
        with cluster() as c:
            nodes = [c.start(f"n{i}", *cmd) for i, cmd in enumerate(commands)]
            web = nodes[0]
            web.load_catalog()

            async def post_all() -> None:
                for n in range(0, len(events), 20):
                    assert (await web.post(events[n : n + 20])).status_code == 202
                await _until(lambda: _applied(c, users) == len(events), 60)
                # The dedup sets are the user lanes' writes; the item side is written after
                # them, and counted as processed once the whole lane is done.
                async with asyncio.timeout(60 * SCALE):
                    while sum([await processed_events(n) for n in nodes]) < len(events):  # noqa: ASYNC110
                        await asyncio.sleep(0.05)

            asyncio.run(post_all())
            return _model(c, users)

    reference = run(("serve",))
    spread = run(("serve", "--no-worker"), ("worker",), ("worker",))
    assert spread == reference


def test_clients_of_a_killed_web_node_reconnect_elsewhere_and_converge() -> None:
    """A web node is SIGKILLed: its client reconnects to another web node, gets the stored
    state as a snapshot, and follows every later change there."""
    with cluster() as c:
        web_a = c.start("web-a", "serve", "--no-worker")
        web_b = c.start("web-b", "serve", "--no-worker")
        c.start("worker", "worker")
        web_a.load_catalog()

        async def scenario() -> None:
            user = new_id("u")
            await web_a.crowd("phones-1", "phones-2", "phones-3")
            await web_a.crowd("books-1", "books-2", "books-3")
            async with ws_client(web_a, user) as tab:
                await web_a.view(user, "phones-1")
                await tab.wait(lambda s: len(s.frames) > 1 and s.ids[:1] == ["phones-2"], 15)
                c.kill("web-a")
            # The client comes back on another node (as the SDK does after a drop).
            await web_b.view(user, "books-1")  # a change while it was away
            async with ws_client(web_b, user) as again:
                stored = await web_b.feed(user)
                assert again.frames[0]["type"] == "snapshot"
                await again.wait(holds(version_key(stored["version"])), 15)
                assert again.states[version_key(stored["version"])] == stored["items"]
                await web_b.view(user, "phones-1")
                await again.wait(lambda s: len(s.frames) > 1, 15)  # the next change arrives
                latest = await web_b.feed(user)
                await again.wait(holds(version_key(latest["version"])), 15)
                assert again.states[version_key(latest["version"])] == latest["items"]

        asyncio.run(scenario())
