"""Failover helpers for tests on a real Redis Cluster (scripts/redis-cluster.sh): pick users by
master, SIGKILL a master, wait until its replica is promoted, start the killed node again.

Shared by tests/integration/test_cluster.py and tests/integration/test_kafka_redis_cluster.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio.cluster import ClusterNode, RedisCluster

from push.redis_client import connect
from sessions.keys import channel_key
from tests.integration.conftest import ROOT
from tests.integration.harness import SCALE, new_id

#: Failover: cluster-node-timeout (2 s in scripts/redis-cluster.sh) + election + our backoff.
FAILOVER_S = 30.0 * SCALE


@asynccontextmanager
async def cluster_client(url: str) -> AsyncIterator[RedisCluster]:
    client = connect(url, cluster=True)
    assert isinstance(client, RedisCluster)
    try:
        await client.initialize()
        yield client
    finally:
        await client.aclose()


def users_on_every_master(client: RedisCluster, per_master: int = 1) -> dict[str, list[str]]:
    """Fresh user ids, ``per_master`` on each master (node name → users)."""
    wanted: dict[str, list[str]] = {n.name: [] for n in client.get_primaries()}
    while any(len(v) < per_master for v in wanted.values()):
        user = new_id("u")
        node = client.get_node_from_key(channel_key(user))
        assert node is not None
        if len(wanted[node.name]) < per_master:
            wanted[node.name].append(user)
    return wanted


async def kill_master(client: RedisCluster, node: ClusterNode) -> None:
    """SIGKILL the master ``node`` (its pid from INFO): no goodbye to the cluster or clients."""
    info = await client.info("server", target_nodes=node)
    os.kill(int(info["process_id"]), signal.SIGKILL)


async def wait_promoted(client: RedisCluster, key: str, dead: str) -> ClusterNode:
    """The new master of ``key``'s slot once another node than ``dead`` serves it."""
    async with asyncio.timeout(FAILOVER_S):
        while True:
            with contextlib.suppress(Exception):  # no node answered yet: poll again
                await client.nodes_manager.initialize()
            node = client.get_node_from_key(key)
            if node is not None and node.name != dead:
                try:
                    await client.set(key, "ok")  # writable: the promotion is complete
                    return node
                except Exception:  # noqa: S110 - not yet
                    pass
            await asyncio.sleep(0.2)


def restart_cluster(url: str) -> None:
    """Start the killed node again (scripts/redis-cluster.sh rejoins it from its nodes.conf and
    waits until every replica is linked)."""
    port = urllib.parse.urlparse(url).port
    env = {**os.environ, "REDIS_CLUSTER_PORT": str(port)}
    if os.environ.get("PUSHREC_TEST_REDIS_CLUSTER_DIR"):
        env["REDIS_CLUSTER_DIR"] = os.environ["PUSHREC_TEST_REDIS_CLUSTER_DIR"]
    subprocess.run(
        [str(ROOT / "scripts" / "redis-cluster.sh"), "start"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120 * SCALE,
    )
