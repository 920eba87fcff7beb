"""What the code must know about Redis Cluster: which client it holds, slots, and the masters.

redis-py's cluster client (:class:`~redis.asyncio.cluster.RedisCluster`, built by
``push.redis_client.connect(..., cluster=True)``) routes every keyed command and pipelined
command by its key's slot, follows MOVED/ASK redirections and failovers, and sends keyless
administrative commands (``SCRIPT LOAD``, ``SCAN``, ``FLUSHDB``) to every master. What it cannot
do for us lives here and in :mod:`sessions.scripts` (a script call's keys must share one slot)
and :mod:`sessions.broker_cluster` (sharded pub/sub, one connection per master).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from sessions.exceptions import CrossSlot

log = structlog.get_logger(__name__)


def is_cluster(redis: Redis | RedisCluster) -> bool:
    """True when ``redis`` is a cluster client (``PUSHREC_REDIS_CLUSTER=1``)."""
    return isinstance(redis, RedisCluster)


def slot(key: str | bytes) -> int:
    """The hash slot (0..16383) of ``key``: CRC16 of its hash tag, or of the whole key."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


def check_one_slot(keys: Sequence[str | bytes], what: str) -> int | None:
    """The one slot of ``keys`` (None for no key); raises :class:`CrossSlot` naming ``what``
    (e.g. a script's name) and each key's position and slot when they span several."""
    if not keys:
        return None
    slots = [slot(k) for k in keys]
    if any(s != slots[0] for s in slots):
        where = ", ".join(f"KEYS[{i}] slot {s}" for i, s in enumerate(slots, 1))
        raise CrossSlot(f"{what}: keys of {len(set(slots))} hash slots in one call ({where})")
    return slots[0]


def masters(redis: RedisCluster) -> list[ClusterNode]:
    """The masters of the client's current view of the cluster (refreshed on MOVED and errors)."""
    return list(redis.get_primaries())


async def mget(redis: Redis, keys: Sequence[str]) -> list[Any]:
    """``MGET keys`` on a single Redis; on a cluster, one ``MGET`` per slot, pipelined to each
    master (not atomic across slots: what a mirror refresh needs, not a transaction)."""
    if is_cluster(redis):
        return list(await cast(RedisCluster, redis).mget_nonatomic(list(keys)))
    return list(await redis.mget(list(keys)))


async def dbsize(redis: Redis) -> int:
    """How many keys the database holds: on a cluster, summed over every master (redis-py's
    ``dbsize()`` asks only its default node, which may hold none of them)."""
    if is_cluster(redis):
        return int(await cast(RedisCluster, redis).dbsize(target_nodes=RedisCluster.PRIMARIES))
    return int(await redis.dbsize())


async def refresh_topology(redis: Redis) -> None:
    """Re-read the cluster's slot map now (a no-op on a single Redis; never raises).

    Called after a lost pub/sub connection: redis-py refreshes the map after a failed command,
    but a subscriber sends none, so without this it would keep reconnecting to a dead master.
    """
    if not is_cluster(redis):
        return
    try:
        await cast(RedisCluster, redis).nodes_manager.initialize()
    except Exception as exc:  # no node reachable yet: the caller retries with backoff
        log.warning("redis.cluster_refresh_failed", error=type(exc).__name__)
