"""Integration tests of the brokers (sessions/broker_memory.py, sessions/broker_redis.py).

One suite runs against every implementation where the behaviour is shared; the rest checks what
only the Redis broker does (several nodes, duplicates, garbage, reconnect). Redis is real: the one
named by ``PUSHREC_TEST_REDIS_URL``, else a private embedded server. The sharded variant
(SPUBLISH/SSUBSCRIBE) runs when that server is Redis >= 7. Absence of a delivery is proven with a
barrier: an update published after it on the same connection must arrive, so the earlier one
would have arrived first.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from push.redis_client import connect
from push.redis_server import EmbeddedRedis, redis_binary
from sessions.broker import Broker
from sessions.broker_cluster import RedisClusterBroker
from sessions.broker_memory import MemoryBroker
from sessions.broker_redis import RedisBroker
from sessions.codec import encode_update
from sessions.feeds import FeedState, FeedUpdate
from sessions.keys import channel_key
from sessions.versions import Version
from tests.integration.harness import SCALE, new_id

WAIT_S = 5.0 * SCALE


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A real Redis: ``PUSHREC_TEST_REDIS_URL`` or a private embedded server."""
    url = os.environ.get("PUSHREC_TEST_REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture(scope="module")
def redis_major(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(str(client.info("server")["redis_version"]).split(".")[0])
    finally:
        client.close()


@pytest.fixture(params=["memory", "redis", "redis-sharded"])
def kind(request: pytest.FixtureRequest, redis_major: int) -> str:
    """Every implementation (the shared suite)."""
    return _check(request.param, redis_major)


@pytest.fixture(params=["redis", "redis-sharded"])
def redis_kind(request: pytest.FixtureRequest, redis_major: int) -> str:
    """The Redis broker, with plain and with sharded pub/sub."""
    return _check(request.param, redis_major)


def _check(kind: str, major: int) -> str:
    if kind == "redis-sharded" and major < 7:
        pytest.skip(f"sharded pub/sub needs Redis >= 7 (server is {major})")
    return kind


@dataclass
class Node:
    """One broker as a node sees it: what was delivered, gaps reported, bad bytes seen."""

    broker: Broker
    received: asyncio.Queue[FeedUpdate] = field(default_factory=asyncio.Queue)
    gaps: asyncio.Queue[frozenset[str]] = field(default_factory=asyncio.Queue)
    bad: list[bytes] = field(default_factory=list)
    name: str = field(default_factory=lambda: new_id("node"))
    """The Redis client name of the node's connections (to find its pub/sub connection)."""

    async def next(self) -> FeedUpdate:
        return await asyncio.wait_for(self.received.get(), WAIT_S)

    async def take(self, count: int) -> list[FeedUpdate]:
        return [await self.next() for _ in range(count)]


class Cluster:
    """Nodes of one kind sharing one Redis; stopped (and their clients closed) on exit."""

    def __init__(self, kind: str, url: str, stack: AsyncExitStack) -> None:
        self.kind, self.url, self._stack = kind, url, stack

    async def client(self, **kw: Any) -> Redis:
        if self.kind == "redis-cluster":  # run by tests/integration/test_cluster.py
            client = connect(self.url, cluster=True, **kw)
        else:
            client = Redis.from_url(self.url, **kw)
        self._stack.push_async_callback(client.aclose)
        return client

    async def node(self, **kw: Any) -> Node:
        if self.kind == "memory":
            node = Node(MemoryBroker())
        else:
            node = Node(MemoryBroker())
            retry = kw.pop("retry", Retry(NoBackoff(), 3))
            client = await self.client(
                retry=retry,
                client_name=node.name,
                health_check_interval=30,  # as in runtime
            )
            if self.kind == "redis-cluster":
                node.broker = RedisClusterBroker(
                    client,  # type: ignore[arg-type]  # connect() types it as Redis
                    on_gap=node.gaps.put_nowait,
                    on_bad_message=node.bad.append,
                    backoff_s=(0.01, 0.2),
                    **kw,
                )
                await node.broker.start(node.received.put_nowait)
                self._stack.push_async_callback(node.broker.stop)
                return node
            node.broker = RedisBroker(
                client,
                sharded=self.kind == "redis-sharded",
                on_gap=node.gaps.put_nowait,
                on_bad_message=node.bad.append,
                backoff_s=(0.01, 0.2),
                **kw,
            )
        await node.broker.start(node.received.put_nowait)
        self._stack.push_async_callback(node.broker.stop)
        return node


@asynccontextmanager
async def cluster(kind: str, url: str) -> AsyncIterator[Cluster]:
    async with AsyncExitStack() as stack:
        yield Cluster(kind, url, stack)


def run(kind: str, url: str, scenario: Callable[[Cluster], Any]) -> None:
    async def main() -> None:
        async with cluster(kind, url) as c:
            await asyncio.wait_for(scenario(c), 30 * SCALE)

    asyncio.run(main())


def update(user: str, n: int, *, epoch: str = "ep1", feed: str = "home") -> FeedUpdate:
    items = ({"id": f"i{n}", "title": f"item {n}"},)
    diff = {"order": [f"i{n}"], "items": {f"i{n}": dict(items[0])}, "patch": {}} if n else None
    base = Version(epoch, n - 1) if n else None
    return FeedUpdate(FeedState(user, feed, Version(epoch, n), items), base, diff)  # type: ignore[arg-type]


def versions(updates: list[FeedUpdate]) -> list[tuple[str, str, int]]:
    return [(u.feed, u.state.version.epoch, u.state.version.n) for u in updates]


# --- shared suite -------------------------------------------------------------------------------


def test_publish_to_watched_user_is_delivered(kind: str, redis_url: str) -> None:
    async def scenario(c: Cluster) -> None:
        node, user = await c.node(), new_id("u")
        await node.broker.watch(user)
        sent = update(user, 1)
        await node.broker.publish(sent)
        got = await node.next()
        assert got == sent and got.frames == {}

    run(kind, redis_url, scenario)


def test_unwatched_user_is_not_delivered(kind: str, redis_url: str) -> None:
    async def scenario(c: Cluster) -> None:
        node, watched, other = await c.node(), new_id("u"), new_id("u")
        await node.broker.watch(watched)
        await node.broker.publish(update(other, 1))
        await node.broker.publish(update(watched, 1))
        assert (await node.next()).user == watched
        await node.broker.unwatch(watched)
        await node.broker.publish(update(watched, 2))
        await node.broker.watch(other)
        await node.broker.publish(update(other, 2))
        assert (await node.next()).user == other
        assert node.received.empty()

    run(kind, redis_url, scenario)


def test_order_is_preserved_for_200_updates(kind: str, redis_url: str) -> None:
    async def scenario(c: Cluster) -> None:
        node, user = await c.node(), new_id("u")
        await node.broker.watch(user)
        for n in range(1, 201):
            await node.broker.publish(update(user, n))
        got = await node.take(200)
        assert [u.state.version.n for u in got] == list(range(1, 201))

    run(kind, redis_url, scenario)


def test_watch_twice_delivers_once(kind: str, redis_url: str) -> None:
    async def scenario(c: Cluster) -> None:
        node, user = await c.node(), new_id("u")
        await node.broker.watch(user)
        await node.broker.watch(user)
        await node.broker.publish(update(user, 1))
        await node.broker.publish(update(user, 2))
        assert [u.state.version.n for u in await node.take(2)] == [1, 2]
        assert node.received.empty()

    run(kind, redis_url, scenario)


def test_start_and_stop_are_idempotent(kind: str, redis_url: str) -> None:
    async def scenario(c: Cluster) -> None:
        node, user = await c.node(), new_id("u")
        await node.broker.start(node.received.put_nowait)
        await node.broker.watch(user)
        await node.broker.publish(update(user, 1))
        assert (await node.next()).user == user
        await node.broker.stop()
        await node.broker.stop()

    run(kind, redis_url, scenario)


# --- Redis broker: several nodes ----------------------------------------------------------------


def test_each_node_gets_only_its_users_updates(redis_kind: str, redis_url: str) -> None:
    async def scenario(c: Cluster) -> None:
        a, b, publisher = await c.node(), await c.node(), await c.node()
        user_a, user_b = new_id("a"), new_id("b")
        await a.broker.watch(user_a)
        await b.broker.watch(user_b)
        for n in range(1, 4):
            await publisher.broker.publish(update(user_a, n))
            await publisher.broker.publish(update(user_b, n))
        assert {u.user for u in await a.take(3)} == {user_a}
        assert {u.user for u in await b.take(3)} == {user_b}
        await publisher.broker.publish(update(user_a, 4))
        await publisher.broker.publish(update(user_b, 4))
        assert (await a.next()).state.version.n == 4
        assert (await b.next()).state.version.n == 4
        assert a.received.empty() and b.received.empty() and publisher.received.empty()

    run(redis_kind, redis_url, scenario)


def test_two_nodes_watching_one_user_both_get_it(redis_kind: str, redis_url: str) -> None:
    async def scenario(c: Cluster) -> None:
        a, b, user = await c.node(), await c.node(), new_id("u")
        await a.broker.watch(user)
        await b.broker.watch(user)
        sent = update(user, 1)
        await a.broker.publish(sent)
        assert await a.next() == sent
        assert await b.next() == sent

    run(redis_kind, redis_url, scenario)


def test_subscriptions_use_the_configured_kind(
    redis_kind: str, redis_url: str, redis_major: int
) -> None:
    """Sharded mode holds shard channels (SSUBSCRIBE), plain mode plain channels, never both."""

    async def scenario(c: Cluster) -> None:
        node, admin, user = await c.node(), await c.client(), new_id("u")
        channel = channel_key(user)

        async def counts() -> tuple[int, int]:
            plain = await admin.pubsub_numsub(channel)
            shard = await admin.pubsub_shardnumsub(channel) if redis_major >= 7 else [(b"", 0)]
            return int(plain[0][1]), int(shard[0][1])

        await node.broker.watch(user)
        assert await counts() == ((0, 1) if redis_kind == "redis-sharded" else (1, 0))
        await node.broker.unwatch(user)
        await node.broker.watch(new_id("barrier"))  # confirmed after the unsubscribe
        assert await counts() == (0, 0)

    run(redis_kind, redis_url, scenario)


# --- Redis broker: ordering, garbage ------------------------------------------------------------


def test_duplicate_and_stale_versions_are_dropped(redis_kind: str, redis_url: str) -> None:
    async def scenario(c: Cluster) -> None:
        node, user = await c.node(), new_id("u")
        await node.broker.watch(user)
        sent = [
            update(user, 1),
            update(user, 2),
            update(user, 2),  # duplicate
            update(user, 1),  # out of order
            update(user, 1, feed="cart"),  # another feed has its own versions
            update(user, 3),
            update(user, 1, epoch="ep2"),  # a new epoch always passes
            update(user, 3, epoch="ep2"),
            update(user, 2, epoch="ep2"),  # stale within the new epoch
            update(user, 4, epoch="ep2"),
        ]
        for u in sent:
            await node.broker.publish(u)
        expected = [sent[i] for i in (0, 1, 4, 5, 6, 7, 9)]
        assert versions(await node.take(len(expected))) == versions(expected)
        # Unwatch forgets the versions: the same version is delivered again after re-watching.
        await node.broker.unwatch(user)
        await node.broker.watch(user)
        await node.broker.publish(update(user, 4, epoch="ep2"))
        assert (await node.next()).state.version == Version("ep2", 4)
        assert node.received.empty()

    run(redis_kind, redis_url, scenario)


def test_garbage_is_skipped_and_counted(redis_kind: str, redis_url: str) -> None:
    async def scenario(c: Cluster) -> None:
        node, user = await c.node(), new_id("u")
        raw = await c.client()
        await node.broker.watch(user)
        send = raw.publish if redis_kind == "redis" else raw.spublish
        misrouted = encode_update(update(new_id("other"), 1))
        for garbage in (b"not msgpack \xc1", b"\x93\x01\x02\x03", misrouted):
            await send(channel_key(user), garbage)
        good = update(user, 1)
        await node.broker.publish(good)
        assert await node.next() == good
        assert isinstance(node.broker, RedisBroker | RedisClusterBroker)
        assert node.broker.bad_messages == 3
        assert node.bad == [b"not msgpack \xc1", b"\x93\x01\x02\x03", misrouted]

    run(redis_kind, redis_url, scenario)


def test_a_failing_deliver_does_not_stop_the_reader(redis_kind: str, redis_url: str) -> None:
    async def scenario(c: Cluster) -> None:
        node, user = await c.node(), new_id("u")
        received: asyncio.Queue[FeedUpdate] = asyncio.Queue()

        def deliver(u: FeedUpdate) -> None:
            received.put_nowait(u)
            if u.state.version.n == 1:
                raise RuntimeError("a bad subscriber")

        broker = RedisBroker(await c.client(), sharded=redis_kind == "redis-sharded")
        await broker.start(deliver)
        try:
            await broker.watch(user)
            await node.broker.publish(update(user, 1))
            await node.broker.publish(update(user, 2))
            got = [await asyncio.wait_for(received.get(), WAIT_S) for _ in range(2)]
            assert [u.state.version.n for u in got] == [1, 2]
        finally:
            await broker.stop()

    run(redis_kind, redis_url, scenario)


def test_a_decoding_client_is_refused(redis_url: str) -> None:
    async def scenario() -> None:
        client = Redis.from_url(redis_url, decode_responses=True)
        try:
            with pytest.raises(ValueError, match="decode_responses"):
                RedisBroker(client)
        finally:
            await client.aclose()

    asyncio.run(scenario())


# --- Redis broker: reconnect --------------------------------------------------------------------


@pytest.mark.parametrize("retries", [0, 3], ids=["error-reaches-reader", "retried-in-client"])
def test_reconnect_resubscribes_and_reports_the_gap(
    redis_kind: str, redis_url: str, retries: int
) -> None:
    """0 retries: the read error reaches the broker's reader; 3: redis-py retries the read."""

    async def scenario(c: Cluster) -> None:
        node = await c.node(retry=Retry(NoBackoff(), retries))
        publisher, admin = await c.node(), await c.client()
        users = {new_id("u"), new_id("u")}
        for user in users:
            await node.broker.watch(user)
        gone = new_id("gone")
        await node.broker.watch(gone)
        await node.broker.unwatch(gone)
        pubsubs = await admin.client_list(_type="pubsub")
        ids = [c["id"] for c in pubsubs if c["name"] == node.name]
        assert len(ids) == 1
        assert await admin.client_kill_filter(_id=ids[0]) == 1
        gap = await asyncio.wait_for(node.gaps.get(), WAIT_S)
        assert gap == users
        for user in users:
            await publisher.broker.publish(update(user, 7))
        assert {u.user for u in await node.take(2)} == users
        assert node.received.empty() and node.gaps.empty()

    run(redis_kind, redis_url, scenario)


def test_redis_restart_resubscribes_and_reports_the_gap() -> None:
    """A private server goes away and comes back: publish raises meanwhile, a watch made during
    the outage waits for the reconnect, and every watched user is reported in the gap."""
    sock = Path(tempfile.mkdtemp(prefix="pushrec-bt-")) / "redis.sock"
    binary = shutil.which("redis-server") or redis_binary()

    async def server() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            binary,
            *("--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no"),
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(WAIT_S):
                while b"ready to accept connections" not in (await proc.stdout.readline()).lower():
                    assert proc.returncode is None
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        return proc

    async def scenario(c: Cluster) -> None:
        proc = await server()
        try:
            node = await c.node(confirm_timeout_s=WAIT_S)
            publisher = await c.node()
            first, second = new_id("u"), new_id("u")
            await node.broker.watch(first)
            proc.terminate()
            await proc.wait()
            with pytest.raises(redis.ConnectionError):
                await publisher.broker.publish(update(first, 1))
            watching = asyncio.create_task(node.broker.watch(second))
            proc = await server()
            await watching
            assert await asyncio.wait_for(node.gaps.get(), WAIT_S) == {first, second}
            await publisher.broker.publish(update(first, 1))
            await publisher.broker.publish(update(second, 1))
            assert {u.user for u in await node.take(2)} == {first, second}
        finally:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()

    try:
        run("redis", f"unix://{sock}", scenario)
    finally:
        shutil.rmtree(sock.parent, ignore_errors=True)
