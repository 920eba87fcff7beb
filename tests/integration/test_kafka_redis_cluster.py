"""Kafka scale-out on a real Redis Cluster (issue 13): many nodes, and a master killed under load.

Runs only in the suite's cluster pass (``PUSHREC_TEST_REDIS_CLUSTER=1``, see
tests/integration/conftest.py), on scripts/redis-cluster.sh's 3 masters + 3 replicas; skipped
in the single-Redis pass. Kafka and the cluster are required there (under CI a missing one fails,
tests/integration/kafka_cluster.py). The failover test kills a master with SIGKILL and starts it
again at the end (it rejoins as a replica), so later tests run on a healthy cluster.

What a master's death may lose, and what it may not, is stated in docs/ARCHITECTURE.md
("Redis Cluster: what a master's death loses"); the failover test counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import pytest

from sessions.keys import user_tag
from tests.integration.conftest import cluster_url
from tests.integration.failover import (
    FAILOVER_S,
    cluster_client,
    kill_master,
    restart_cluster,
    users_on_every_master,
    wait_promoted,
)
from tests.integration.harness import (
    SCALE,
    FeedClient,
    Server,
    new_id,
    processed_events,
    version_key,
    ws_client,
)
from tests.integration.kafka_cluster import (
    ITEMS,
    Cluster,
    applied,
    cluster,
    mixed_traffic,
    model,
    until,
)


@pytest.fixture(autouse=True)
def on_the_cluster() -> None:
    """Only in the cluster pass: in the single-Redis pass these tests have no cluster to run on."""
    if cluster_url() is None:
        pytest.skip("cluster pass only (PUSHREC_TEST_REDIS_CLUSTER=1)")


def holds_stored(stored: dict[str, Any]) -> Callable[[FeedClient], bool]:
    """A predicate: the client holds the stored feed's version with the stored items."""
    key = version_key(stored["version"])
    return lambda s: s.states.get(key) == stored["items"]


async def processed(nodes: list[Server]) -> float:
    return sum([await processed_events(n) for n in nodes])


async def until_processed(nodes: list[Server], n: float, within_s: float = 60.0) -> None:
    async with asyncio.timeout(within_s * SCALE):
        while await processed(nodes) < n:  # noqa: ASYNC110 - the count lives in other processes
            await asyncio.sleep(0.05)


async def healthy(*nodes: Server) -> bool:
    """Every node's liveness probe answers 200."""
    async with httpx.AsyncClient(timeout=5 * SCALE) as client:
        for node in nodes:
            if (await client.get(f"{node.http}/healthz")).status_code != 200:
                return False
    return True


async def ready(*nodes: Server) -> bool:
    async with httpx.AsyncClient(timeout=5 * SCALE) as client:
        for node in nodes:
            if (await client.get(f"{node.http}/readyz")).status_code != 200:
                return False
    return True


# --- the catalog reaches every node -------------------------------------------------------------


def test_a_worker_mirrors_every_item_a_web_node_stores() -> None:
    """A catalog stored through a web node reaches a separate worker whole: the worker's mirror
    gives every event its item's category (each view adds 1 to the user's affinity for it).
    The items' keys live on every master; the change announcement must not overtake them."""
    with cluster() as c:
        web = c.start("web", "serve", "--no-worker")
        worker = c.start("worker", "worker")
        web.load_catalog()
        user = new_id("u")
        start = int(time.time() * 1000)
        events = [
            {"event_id": new_id("e"), "user_id": user, "type": "view", "item_id": item, "ts": start}
            for item in ITEMS
        ]

        async def scenario() -> None:
            assert (await web.post(events)).status_code == 202
            await until_processed([worker], len(events))

        asyncio.run(scenario())
        scores = cast(
            list[tuple[bytes, float]],
            c.redis().zrange(f"{user_tag(user)}aff", 0, -1, withscores=True),
        )
        affinity = {m.decode(): round(s) for m, s in scores}
        assert affinity == {"phones": 10, "shoes": 10, "books": 10}


# --- many nodes come out as one -----------------------------------------------------------------


def _reference_events() -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """Users, the traffic, and one last view per user (posted one at a time, so every final
    feed is scored on the same item-side state whatever the number of workers)."""
    users, events = mixed_traffic("rc", 31)
    start = events[0]["ts"]
    finals = [
        {
            "event_id": f"rc-final-{n}",
            "user_id": user,
            "type": "view",
            "item_id": ITEMS[(7 * n) % len(ITEMS)],
            "ts": start + len(events) + n,
        }
        for n, user in enumerate(users)
    ]
    return users, events, finals


def test_three_workers_and_two_web_nodes_converge_to_the_single_node_result() -> None:
    """The same events through one ``serve`` node and through two web nodes (``serve
    --no-worker``, the events posted to both in turn) with three workers, each run on the
    flushed cluster: every user's profile, the learnt item model and every user's stored feed
    are identical, and WebSocket clients of every user on both web nodes end holding the
    stored feed."""
    users, events, finals = _reference_events()

    def run(webs: int, workers: int) -> tuple[dict[str, Any], dict[str, list[str]]]:
        with cluster() as c:
            if workers == 0:
                web_nodes = [c.start("node", "serve")]
                working = web_nodes
            else:
                web_nodes = [c.start(f"web{n}", "serve", "--no-worker") for n in range(webs)]
                working = [c.start(f"worker{n}", "worker") for n in range(workers)]
            web_nodes[0].load_catalog()

            async def scenario() -> dict[str, list[str]]:
                async with contextlib.AsyncExitStack() as stack:
                    clients = [
                        (web, user, await stack.enter_async_context(ws_client(web, user)))
                        for web in web_nodes
                        for user in users
                    ]
                    for n in range(0, len(events), 20):
                        web = web_nodes[(n // 20) % len(web_nodes)]
                        assert (await web.post(events[n : n + 20])).status_code == 202
                    await until(lambda: applied(c, users) == len(events), 60)
                    # The dedup sets are the user lanes' writes; the item side is written after
                    # them, and counted as processed once the whole lane is done.
                    await until_processed(working, len(events))
                    for n, final in enumerate(finals):
                        web = web_nodes[n % len(web_nodes)]
                        assert (await web.post([final])).status_code == 202
                        await until_processed(working, len(events) + n + 1)
                    feeds: dict[str, list[str]] = {}
                    for user in users:
                        answers = [await web.feed(user) for web in web_nodes]
                        assert all(a == answers[0] for a in answers), "web nodes disagree"
                        feeds[user] = [str(p["id"]) for p in answers[0]["items"]]
                    for web, user, client in clients:
                        stored = await web.feed(user)
                        await client.wait(holds_stored(stored), 15)
                    return feeds

            feeds = asyncio.run(scenario())
            return model(c, users), feeds

    reference_model, reference_feeds = run(1, 0)
    spread_model, spread_feeds = run(2, 3)
    assert all(reference_feeds.values()), "every user has a non-empty feed"
    assert spread_model == reference_model
    assert spread_feeds == reference_feeds


# --- a master dies under load -------------------------------------------------------------------


@dataclass
class Traffic:
    """Events posted through the web nodes in rounds (one view per user each round), each batch
    retried until the collector accepts it; what was accepted, and when."""

    users: list[str]
    webs: list[Server]
    accepted: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    refused: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    rng: random.Random = field(default_factory=lambda: random.Random(41))  # noqa: S311

    async def run(self, every_s: float = 0.1) -> None:
        turn = 0
        async with httpx.AsyncClient(timeout=10 * SCALE) as client:
            while not self.stop.is_set():
                batch = [
                    {
                        "event_id": new_id("e"),
                        "user_id": user,
                        "type": "view",
                        "item_id": self.rng.choice(ITEMS),
                        "ts": int(time.time() * 1000),
                    }
                    for user in self.users
                ]
                await self.post(client, self.webs[turn % len(self.webs)], batch)
                turn += 1
                await asyncio.sleep(every_s)

    async def post(
        self, client: httpx.AsyncClient, web: Server, batch: list[dict[str, Any]]
    ) -> None:
        async with asyncio.timeout(60 * SCALE):
            while True:
                try:
                    r = await client.post(f"{web.http}/v1/events", json=batch, headers=web.admin)
                    if r.status_code == 202:
                        now = time.monotonic()
                        self.accepted.extend((now, e) for e in batch)
                        return
                except httpx.HTTPError:
                    pass
                self.refused += 1
                await asyncio.sleep(0.2)


def _stored_ids(c: Cluster, user: str) -> set[str]:
    """The ids of the events ``user``'s profile holds (the dedup set)."""
    members = cast(list[bytes], c.redis().zrange(f"{user_tag(user)}dedup", 0, -1))
    return {m.decode() for m in members}


def _recent(c: Cluster, user: str) -> list[str]:
    members = cast(list[bytes], c.redis().zrevrange(f"{user_tag(user)}recent", 0, -1))
    return [m.decode() for m in members]


def _expected_recent(events: list[dict[str, Any]]) -> list[str]:
    """The recent list a user's events build: latest time per item, newest first (50 kept)."""
    last: dict[str, int] = {}
    for e in events:
        last[e["item_id"]] = max(last.get(e["item_id"], 0), e["ts"])
    return [i for i, _ in sorted(last.items(), key=lambda p: (-p[1], p[0]))][:50]


def test_a_master_killed_under_load_loses_at_most_its_unreplicated_writes() -> None:
    """Two web nodes and a worker; six users, two on each master, with a WebSocket client on
    each web node; events flow through Kafka (one view per user every 0.1 s). The master of two
    users' slots is SIGKILLed: its replica is promoted; the web nodes stay live and take new
    connections (a live master's user during the failover, the dead master's users after it);
    the worker keeps consuming; every client ends holding the stored feed (a broker gap makes
    the connections resync). Then what was lost is counted: events accepted by the collector
    that no profile holds. Users of the live masters lose nothing, no event accepted after the
    kill is lost, and every profile holds exactly the events it has ids for (see
    docs/ARCHITECTURE.md for the guarantee)."""
    with cluster() as c:
        webs = [c.start(f"web{n}", "serve", "--no-worker") for n in range(2)]
        worker = c.start("worker", "worker")
        webs[0].load_catalog()
        report: dict[str, Any] = {}

        async def scenario() -> None:
            async with cluster_client(c.redis_url) as admin:
                spread = users_on_every_master(admin, per_master=2)
                dead = next(iter(spread))
                victims = spread[dead]
                survivors = [u for name, us in spread.items() if name != dead for u in us]
                users = [*victims, *survivors]
                traffic = Traffic(users, webs)
                async with contextlib.AsyncExitStack() as stack:
                    clients = [
                        (web, user, await stack.enter_async_context(ws_client(web, user)))
                        for web in webs
                        for user in users
                    ]
                    flowing = asyncio.create_task(traffic.run())
                    try:
                        await until(lambda: applied(c, users) >= 10 * len(users), 30)
                        node = admin.get_node(node_name=dead)
                        assert node is not None
                        killed_at = time.monotonic()
                        await kill_master(admin, node)
                        # During the failover: the nodes are live and serve a new connection of
                        # a user whose master is alive.
                        assert await healthy(*webs, worker)
                        async with ws_client(webs[1], survivors[0]) as fresh:
                            stored = await webs[1].feed(survivors[0])
                            await fresh.wait(holds_stored(stored), 15)
                        # (a probe key of the victim's slot, none of the user's own keys)
                        probe = user_tag(victims[0]) + "failover-probe"
                        promoted = await wait_promoted(admin, probe, dead)
                        promoted_at = time.monotonic()
                        assert promoted.name != dead
                        # The worker writes to the new master: an event of each of its users
                        # accepted after the promotion is applied.
                        await until(
                            lambda: all(
                                any(
                                    t > promoted_at and e["event_id"] in _stored_ids(c, user)
                                    for t, e in traffic.accepted
                                    if e["user_id"] == user
                                )
                                for user in victims
                            ),
                            60,
                        )
                    finally:
                        traffic.stop.set()
                        await flowing
                    assert await healthy(*webs, worker)
                    async with asyncio.timeout(FAILOVER_S):
                        while not await ready(*webs, worker):  # noqa: ASYNC110
                            await asyncio.sleep(0.2)
                    # One last event per user: once a profile holds it, the worker is done with
                    # everything of that user before it (per-user order).
                    last = [
                        {
                            "event_id": new_id("last"),
                            "user_id": u,
                            "type": "view",
                            "item_id": ITEMS[0],
                            "ts": int(time.time() * 1000),
                        }
                        for u in users
                    ]
                    async with httpx.AsyncClient(timeout=10 * SCALE) as http:
                        await traffic.post(http, webs[0], last)
                    await until(
                        lambda: all(
                            e["event_id"] in _stored_ids(c, str(e["user_id"])) for e in last
                        ),
                        60,
                    )
                    # Every client, old and new, ends holding the stored feed.
                    for web, user, client in clients:
                        stored = await web.feed(user)
                        await client.wait(holds_stored(stored), 30)
                    for web in webs:
                        for user in victims:
                            async with ws_client(web, user) as fresh:
                                stored = await web.feed(user)
                                await fresh.wait(holds_stored(stored), 15)
                # What was lost: accepted events no profile holds.
                lost: dict[str, list[tuple[float, dict[str, Any]]]] = {}
                recent: dict[str, tuple[list[str], list[str]]] = {}
                extra: dict[str, set[str]] = {}
                for user in users:
                    have = _stored_ids(c, user)
                    sent = [(t, e) for t, e in traffic.accepted if e["user_id"] == user]
                    extra[user] = have - {e["event_id"] for _, e in sent}
                    lost[user] = [(t, e) for t, e in sent if e["event_id"] not in have]
                    kept = [e for _, e in sent if e["event_id"] in have]
                    recent[user] = (_recent(c, user), _expected_recent(kept))
                report.update(
                    accepted=len(traffic.accepted),
                    refused=traffic.refused,
                    lost={u[:8]: len(v) for u, v in lost.items()},
                    lost_before_kill_s=[
                        round(killed_at - t, 3) for v in lost.values() for t, _ in v
                    ],
                    failover_s=round(promoted_at - killed_at, 1),
                )
                print(f"master killed under load: {report}")
                assert all(not v for v in extra.values()), "only accepted events are held"
                for user in survivors:
                    assert lost[user] == [], "a live master's users lose nothing"
                for user in victims:
                    assert all(t <= killed_at for t, _ in lost[user]), "lost after the kill"
                for user, (held, expected) in recent.items():
                    assert held == expected, (
                        f"{user}: the profile is exactly the events it has ids for"
                    )

        try:
            asyncio.run(scenario())
        finally:
            restart_cluster(c.redis_url)
