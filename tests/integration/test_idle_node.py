"""A web node idle past the Redis health-check interval serves its next client (issue 12,
defect 1), and a connection whose setup fails is closed with 4004, never left open and silent.

Real parts only: ``pushrec serve`` subprocesses on the shared Kafka and the external Redis of
``PUSHREC_TEST_REDIS_URL``. The interval is cut to 1 s (``PUSHREC_REDIS_HEALTH_CHECK_S``) so the
idle stretch that used to take 30 s takes a few.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager

import pytest
import redis
from redis.asyncio import Redis

from sessions.broker_redis import RedisBroker
from tests.integration.conftest import start_server, sync_redis
from tests.integration.harness import SCALE, Peer, Server, api, metric, new_id, sse_peer, ws_peer
from tests.integration.kafka_cluster import Cluster, cluster

HEALTH_CHECK_S = 1.0
#: Idle this long: past the health-check interval (and past the broker's own PING after it).
IDLE_S = 2.5 * HEALTH_CHECK_S
#: The broker waits this long (sessions/broker_redis.py default) for Redis to confirm a
#: subscription before the connection's setup fails.
CONFIRM_S = 5.0


def _start(c: Cluster, name: str, **env: str) -> Server:
    """A web+worker node of ``c`` with the 1 s health-check interval (stopped with ``c``)."""
    proc, server = start_server(
        {**c.env, "PUSHREC_REDIS_HEALTH_CHECK_S": str(HEALTH_CHECK_S), **env}
    )
    c.nodes[name] = (proc, server)
    return server


def _peer(server: Server, transport: str, user: str) -> AbstractAsyncContextManager[Peer]:
    if transport == "websocket":
        return ws_peer(server, token=server.token(user))
    return sse_peer(server, server.token(user))


def _leads_with(item: str) -> Callable[[Peer], bool]:
    return lambda p: len(p.state.frames) > 1 and p.state.ids[:1] == [item]


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_an_idle_node_serves_its_next_client(transport: str) -> None:
    """Today's code: the subscribe of the first connection after the idle stretch ran redis-py's
    health-check PING, which read the pub/sub socket the broker's reader was reading (RuntimeError),
    and the connection got nothing at all: no hello, no frame, no close."""
    with cluster() as c:
        server = _start(c, "web")
        server.load_catalog()

        async def scenario() -> None:
            await server.crowd("phones-1", "phones-2", "phones-3")
            for _ in range(2):  # twice: the node must also survive its second idle stretch
                # The silence is the point: nothing to await, the node must sit idle.
                await asyncio.sleep(IDLE_S)
                user = new_id("u")
                async with _peer(server, transport, user) as peer:  # waits for hello
                    await peer.until(lambda p: p.state.version is not None)
                    await server.view(user, "phones-1")
                    await peer.until(_leads_with("phones-2"), 10)
                    assert peer.of_type("hello")[0] is peer.log[0]

        asyncio.run(scenario())


def _acl_setuser(admin: redis.Redis, name: str, *rules: str) -> None:
    """ACL SETUSER on ``admin``'s server, or on every node of the test cluster (ACLs are per
    node: a cluster client reaches any of them)."""
    if isinstance(admin, redis.RedisCluster):
        admin.execute_command(
            "ACL", "SETUSER", name, *rules, target_nodes=redis.RedisCluster.ALL_NODES
        )
    else:
        admin.execute_command("ACL", "SETUSER", name, *rules)  # type: ignore[no-untyped-call]


@contextmanager
def _acl_user(base_url: str) -> Iterator[tuple[str, redis.Redis]]:
    """A Redis ACL user with every permission (on every node of the test cluster in cluster
    mode); yields (its URL, an admin client)."""
    with redis.Redis.from_url(base_url) as node:
        if int(str(node.info("server")["redis_version"]).split(".")[0]) < 7:
            pytest.skip("needs Redis >= 7 (ACL channel permissions)")
    admin = sync_redis(base_url)
    name, password = f"node-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    _acl_setuser(admin, name, "on", f">{password}", "~*", "&*", "+@all")
    rest = base_url.split("://", 1)[1]
    try:
        yield f"redis://{name}:{password}@{rest}", admin
    finally:
        if isinstance(admin, redis.RedisCluster):
            admin.execute_command("ACL", "DELUSER", name, target_nodes=redis.RedisCluster.ALL_NODES)
        else:
            admin.acl_deluser(name)
        admin.close()


def test_a_connection_whose_subscription_fails_is_closed_with_4004() -> None:
    """The node's Redis user loses the right to SUBSCRIBE (real ACL): the feed store and PUBLISH
    still work, but no new subscription is confirmed. WebSocket and SSE get 4004 and a reason
    (counted); once the right is back, the node serves again without a restart.

    Today's code: hello after the 5 s wait, then a connection that never hears of its updates."""
    with cluster() as c, _acl_user(c.redis_url) as (url, admin):
        server = _start(c, "web", PUSHREC_REDIS_URL=url)
        server.load_catalog()
        name = url.split("://", 1)[1].split(":", 1)[0]

        async def refused(transport: str) -> tuple[int | None, str]:
            user = new_id("u")
            if transport == "websocket":
                async with ws_peer(server, token=server.token(user), wait_hello=False) as p:
                    return await p.closed(CONFIRM_S + 5)
            # sse_peer waits for hello: read the stream itself
            async with (
                api(server) as client,
                client.stream("GET", "/v1/sse", headers=server.bearer(user), timeout=None) as resp,
            ):
                assert resp.status_code == 200
                lines: list[str] = []
                async with asyncio.timeout((CONFIRM_S + 5) * SCALE):
                    async for line in resp.aiter_lines():
                        lines.append(line)
                events = [ln for ln in lines if ln.startswith("event: ")]
                assert events == ["event: close"], lines
                data = next(ln for ln in lines if ln.startswith("data: "))
                close = json.loads(data[6:])
                return close["code"], close["reason"]

        async def scenario() -> None:
            _acl_setuser(admin, name, "-subscribe", "-ssubscribe")
            before = await metric(server, "pushrec_connection_closes_total", reason="setup_failed")
            got = await asyncio.gather(refused("websocket"), refused("sse"))
            for code, reason in got:
                assert code == 4004
                assert "reconnect" in reason
            after = await metric(server, "pushrec_connection_closes_total", reason="setup_failed")
            assert after - before == 2
            # The right comes back: the broker's reconnects stop failing, a client is served.
            _acl_setuser(admin, name, "+subscribe", "+ssubscribe")
            user = new_id("u")
            async with ws_peer(server, token=server.token(user)) as peer:
                await peer.until(lambda p: p.state.version is not None)
                await server.crowd("books-1", "books-2")
                await server.view(user, "books-1")
                await peer.until(_leads_with("books-2"), 10)

        try:
            asyncio.run(scenario())
        finally:
            c.stop("web")  # before its Redis user goes


def test_a_silent_pubsub_connection_is_found_by_the_broker_ping() -> None:
    """Redis stops answering (real ``CLIENT PAUSE``) without closing the socket: the broker's
    PING goes unanswered for an interval, the connection counts as lost, and once Redis answers
    again every watched user is subscribed again and reported in the gap.

    Today's code: redis-py's health check only runs before a command of the subscribing task, so
    the reader waits on the silent socket and no gap is ever reported."""
    url = os.environ.get("PUSHREC_TEST_REDIS_URL")
    if not url:
        pytest.skip("needs PUSHREC_TEST_REDIS_URL")

    async def scenario() -> None:
        client, admin = Redis.from_url(url, health_check_interval=0.3), Redis.from_url(url)
        gaps: asyncio.Queue[frozenset[str]] = asyncio.Queue()
        broker = RedisBroker(
            client, on_gap=gaps.put_nowait, backoff_s=(0.01, 0.2), ping_interval_s=0.3
        )
        await broker.start(lambda _update: None)
        try:
            user = new_id("u")
            await broker.watch(user)
            await admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # type: ignore[no-untyped-call]
            assert await asyncio.wait_for(gaps.get(), 10 * SCALE) == {user}
        finally:
            await broker.stop()
            await client.aclose()
            await admin.aclose()

    asyncio.run(scenario())
