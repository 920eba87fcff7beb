"""Integration tests on a real Redis Cluster (scripts/redis-cluster.sh: 3 masters, 3 replicas).

Needs ``PUSHREC_TEST_REDIS_CLUSTER_URL`` (``make integration-cluster`` starts the cluster through
``SERVICES_CLUSTER=1 scripts/services.sh``); skipped without it. The failover tests kill a master
with SIGKILL, wait until its replica is promoted, and start the killed node again through the
script (it rejoins as a replica), so the cluster has 3 masters with linked replicas after them.

- the broker's shared suite (tests/integration/test_broker.py) with the cluster broker;
- the cluster broker across every master, and through a master's death;
- Lua scripts (sessions/scripts.py): one slot per call or a loud error, NOSCRIPT recovery;
- control channels (classic pub/sub, broadcast by the cluster) through a master's death.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster

from push.redis_client import connect
from sessions.broker_cluster import RedisClusterBroker
from sessions.cluster import slot
from sessions.exceptions import CrossSlot
from sessions.feeds import FeedUpdate
from sessions.keys import channel_key, user_tag
from sessions.scripts import PipelinedScript, run_scripts
from streams.docstore import follow_channel
from tests.integration.failover import (
    FAILOVER_S,
    cluster_client,
    kill_master,
    restart_cluster,
    users_on_every_master,
    wait_promoted,
)
from tests.integration.harness import SCALE, new_id
from tests.integration.test_broker import (  # the shared suite, run here on the cluster
    test_duplicate_and_stale_versions_are_dropped,
    test_each_node_gets_only_its_users_updates,
    test_garbage_is_skipped_and_counted,
    test_order_is_preserved_for_200_updates,
    test_publish_to_watched_user_is_delivered,
    test_start_and_stop_are_idempotent,
    test_two_nodes_watching_one_user_both_get_it,
    test_unwatched_user_is_not_delivered,
    test_watch_twice_delivers_once,
    update,
)

__all__ = [
    "test_duplicate_and_stale_versions_are_dropped",
    "test_each_node_gets_only_its_users_updates",
    "test_garbage_is_skipped_and_counted",
    "test_order_is_preserved_for_200_updates",
    "test_publish_to_watched_user_is_delivered",
    "test_start_and_stop_are_idempotent",
    "test_two_nodes_watching_one_user_both_get_it",
    "test_unwatched_user_is_not_delivered",
    "test_watch_twice_delivers_once",
]

WAIT_S = 5.0 * SCALE


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """The test cluster's URL (any node)."""
    url = os.environ.get("PUSHREC_TEST_REDIS_CLUSTER_URL")
    if not url:
        pytest.skip("needs PUSHREC_TEST_REDIS_CLUSTER_URL (make integration-cluster)")
    yield url


@pytest.fixture
def kind() -> str:
    """The shared suite's implementation: the cluster broker."""
    return "redis-cluster"


@pytest.fixture
def redis_kind() -> str:
    return "redis-cluster"


async def shard_subscribers(client: RedisCluster, node: ClusterNode | None, user: str) -> int:
    """How many connections of ``node`` hold a sharded subscription to ``user``'s channel."""
    [(_, count)] = await client.pubsub_shardnumsub(channel_key(user), target_nodes=node)
    return int(count)


# --- the broker across masters ------------------------------------------------------------------


def test_users_on_every_master_are_delivered_with_one_connection_per_master(
    redis_url: str,
) -> None:
    """Users spread over the 3 masters: each SSUBSCRIBE is made on its slot's master, one
    publish_many reaches all of them, and each master holds exactly its users' subscriptions."""

    async def main() -> None:
        async with cluster_client(redis_url) as admin:
            spread = users_on_every_master(admin, per_master=2)
            received: asyncio.Queue[FeedUpdate] = asyncio.Queue()
            broker = RedisClusterBroker(connect(redis_url, cluster=True))  # type: ignore[arg-type]
            await broker.start(received.put_nowait)
            try:
                users = [u for us in spread.values() for u in us]
                for user in users:
                    await broker.watch(user)
                for name, mine in spread.items():
                    node = admin.get_node(node_name=name)
                    for user in mine:
                        assert await shard_subscribers(admin, node, user) == 1
                await broker.publish_many([update(u, 1) for u in users])
                got = [await asyncio.wait_for(received.get(), WAIT_S) for _ in users]
                assert sorted(u.user for u in got) == sorted(users)
            finally:
                await broker.stop()

    asyncio.run(main())


def test_a_killed_master_is_followed_to_its_replica_and_the_gap_reported(
    redis_url: str,
) -> None:
    """A subscriber listens to a user whose slot's master is killed (SIGKILL): once the replica
    is promoted the broker moves the subscription there, reports the user in a gap (so its
    connections resync by snapshot), and delivers what is published afterwards. Users on the
    other masters keep their subscriptions throughout."""

    async def main() -> None:
        async with cluster_client(redis_url) as admin:
            spread = users_on_every_master(admin)
            victim_node = next(iter(spread))
            victim = spread[victim_node][0]
            others = [us[0] for name, us in spread.items() if name != victim_node]
            received: asyncio.Queue[FeedUpdate] = asyncio.Queue()
            gaps: asyncio.Queue[frozenset[str]] = asyncio.Queue()
            broker = RedisClusterBroker(
                connect(redis_url, cluster=True),  # type: ignore[arg-type]
                on_gap=gaps.put_nowait,
                backoff_s=(0.05, 1.0),
            )
            publisher = RedisClusterBroker(connect(redis_url, cluster=True))  # type: ignore[arg-type]
            await broker.start(received.put_nowait)
            await publisher.start(lambda _u: None)
            try:
                for user in (victim, *others):
                    await broker.watch(user)
                node = admin.get_node(node_name=victim_node)
                assert node is not None
                await kill_master(admin, node)
                promoted = await wait_promoted(admin, user_tag(victim) + "probe", victim_node)
                assert promoted.name != victim_node
                gap: frozenset[str] = frozenset()
                async with asyncio.timeout(FAILOVER_S):
                    while victim not in gap:
                        gap |= await gaps.get()
                assert not (gap & set(others)), "users of live masters kept their subscriptions"
                await publisher.publish_many([update(u, 2) for u in (victim, *others)])
                got = [await asyncio.wait_for(received.get(), WAIT_S) for _ in range(3)]
                assert sorted(u.user for u in got) == sorted((victim, *others))
                assert await shard_subscribers(admin, promoted, victim) == 1
            finally:
                await broker.stop()
                await publisher.stop()
        restart_cluster(redis_url)

    asyncio.run(main())


# --- scripts ------------------------------------------------------------------------------------

_INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1]) + #KEYS"


def test_a_cross_slot_call_fails_loudly_and_sends_nothing(redis_url: str) -> None:
    async def main() -> None:
        async with cluster_client(redis_url) as client:
            script = PipelinedScript(client, _INCR, name="incr")  # type: ignore[arg-type]
            a, b = user_tag(new_id("a")) + "n", user_tag(new_id("b")) + "n"
            while slot(a) == slot(b):
                b = user_tag(new_id("b")) + "n"
            fine = user_tag(new_id("c")) + "n"
            with pytest.raises(CrossSlot, match=r"incr: keys of 2 hash slots .*KEYS\[2\] slot"):
                await script.run_many([([fine], [1]), ([a, b], [1])])
            assert await client.exists(a, b, fine) == 0  # nothing of the batch was sent

    asyncio.run(main())


def test_single_slot_calls_run_on_every_master_in_one_batch(redis_url: str) -> None:
    async def main() -> None:
        async with cluster_client(redis_url) as client:
            script = PipelinedScript(client, _INCR, name="incr")  # type: ignore[arg-type]
            spread = users_on_every_master(client, per_master=3)
            users = [u for us in spread.values() for u in us]
            calls = [([user_tag(u) + "n", user_tag(u) + "m"], [i]) for i, u in enumerate(users)]
            assert await script.run_many(calls) == [i + 2 for i in range(len(users))]
            for i, user in enumerate(users):
                assert await client.get(user_tag(user) + "n") == str(i).encode()

    asyncio.run(main())


def test_noscript_on_every_master_is_recovered_without_running_twice(redis_url: str) -> None:
    """SCRIPT FLUSH on every master (as after a restart or on a freshly promoted replica): the
    batch loads the scripts on the masters that answered NOSCRIPT and runs each call once."""

    async def main() -> None:
        async with cluster_client(redis_url) as client:
            incr = PipelinedScript(client, _INCR, name="incr")  # type: ignore[arg-type]
            other = PipelinedScript(client, _INCR + " -- 2", name="other")  # type: ignore[arg-type]
            users = [u for us in users_on_every_master(client, per_master=2).values() for u in us]
            await client.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.PRIMARIES)
            replies = await run_scripts(
                client,  # type: ignore[arg-type]
                [(incr if i % 2 else other, [user_tag(u) + "n"], [5]) for i, u in enumerate(users)],
            )
            assert replies == [6] * len(users)
            for user in users:
                assert await client.get(user_tag(user) + "n") == b"5"  # once, not twice

    asyncio.run(main())


# --- control channels ---------------------------------------------------------------------------


def test_a_control_channel_follower_survives_its_master_dying(redis_url: str) -> None:
    """Control channels stay classic pub/sub (a cluster broadcasts PUBLISH to every node). The
    follower's node is killed: it refreshes the slot map, subscribes on a live node, and gets
    what is published after."""

    async def main() -> None:
        channel = "pr:" + new_id("control")
        async with cluster_client(redis_url) as admin:
            follower = connect(redis_url, cluster=True)
            got: asyncio.Queue[object] = asyncio.Queue()
            subscribed: asyncio.Queue[None] = asyncio.Queue()

            async def on_message(data: object) -> None:
                got.put_nowait(data)

            async def on_subscribed() -> None:
                subscribed.put_nowait(None)

            task = asyncio.create_task(
                follow_channel(follower, channel, on_message, name="test", subscribed=on_subscribed)
            )
            try:
                await asyncio.wait_for(subscribed.get(), WAIT_S)
                await admin.publish(channel, b"before")
                assert await asyncio.wait_for(got.get(), WAIT_S) == b"before"
                # The follower subscribes on the master of the channel name's slot.
                node = admin.get_node_from_key(channel)
                assert node is not None
                await kill_master(admin, node)
                await wait_promoted(admin, channel, node.name)
                await asyncio.wait_for(subscribed.get(), FAILOVER_S)
                await admin.publish(channel, b"after")
                assert await asyncio.wait_for(got.get(), WAIT_S) == b"after"
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await follower.aclose()
        restart_cluster(redis_url)

    asyncio.run(main())
