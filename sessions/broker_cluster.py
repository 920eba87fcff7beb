"""Sharded pub/sub broker for Redis Cluster: one subscriber connection per master.

A user's channel ``pr:{u:<id>}:ch`` lives in the user's hash slot. On a cluster an update is sent
with SPUBLISH, which Redis delivers only inside the shard owning that slot, and a node receives
it only through an SSUBSCRIBE made on that shard. So this broker keeps one
:class:`~sessions.broker_redis.RedisBroker` (sharded, one pub/sub connection and one reader task)
per master that owns a watched user's slot, and routes each watched user to the master owning its
channel, as the cluster client's slot map says. Publishing goes through the cluster client's
pipeline, which routes each SPUBLISH by slot and follows MOVED.

Why not redis-py's ``ClusterPubSub``: its sharded reader polls every node in turn with a split
timeout (a message waits while another node's poll runs) and re-subscribes moved channels
silently, so a node would not learn that updates were lost. Here each master has a blocking
reader, and every change of owner is reported as a gap.

Guarantees, beyond those of :mod:`sessions.broker` and :mod:`sessions.broker_redis` (each
per-master broker keeps its own, including ``on_gap`` after a reconnect):

- :meth:`RedisClusterBroker.watch` returns once the owning master confirmed the subscription, or
  raises :class:`~sessions.exceptions.SubscribeFailed` after ``confirm_timeout_s``. A user moved to
  another master while its watch waits is waited for on the new master (same deadline).
- Following moves: when a master's connection is lost (its process died: a failover is coming)
  or it pushes ``sunsubscribe`` for a watched channel (its slot migrated, or it became a
  replica), the slot map is refreshed (at most every ``refresh_interval_s``) and every user whose
  slot is now owned by another master is unwatched on the old one and watched on the new one.
  Once the new master confirmed, ``on_gap(users)`` reports them: updates published between the
  loss and the new subscription are not delivered, so their connections take snapshots.
  A dead master is retried by its reader with backoff, and each failed attempt asks for a
  refresh again, so the users move as soon as the cluster promoted the replica (with the default
  ``cluster-node-timeout`` of 15 s that takes 15 to 20 s; the test cluster uses 2 s).
- A per-master broker that serves no watched user and whose node is no longer a master is
  stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from sessions.broker import Deliver
from sessions.broker_redis import RedisBroker
from sessions.codec import encode_update
from sessions.exceptions import SubscribeFailed
from sessions.feeds import FeedUpdate
from sessions.keys import channel_key

log = structlog.get_logger(__name__)

#: Cluster-client settings that are not connection settings (a node's pool is built from the rest).
_NOT_FOR_CONNECTIONS = ("max_connections", "response_callbacks")
#: How many moves of one user's slot a watch follows before giving up.
_MOVES_FOLLOWED = 3


class RedisClusterBroker:
    """Publish/subscribe of feed updates over a Redis Cluster's sharded pub/sub."""

    def __init__(
        self,
        cluster: RedisCluster,
        *,
        on_gap: Callable[[frozenset[str]], None] | None = None,
        on_bad_message: Callable[[bytes], None] | None = None,
        confirm_timeout_s: float = 5.0,
        backoff_s: tuple[float, float] = (0.05, 5.0),
        ping_interval_s: float = 30.0,
        refresh_interval_s: float = 0.5,
    ) -> None:
        if cluster.get_connection_kwargs().get("decode_responses"):
            raise ValueError("RedisClusterBroker needs a client with decode_responses=False")
        self._cluster = cluster
        self._on_gap = on_gap
        self._on_bad_message = on_bad_message
        self._confirm_timeout_s = confirm_timeout_s
        self._backoff_s = backoff_s
        self._ping_interval_s = ping_interval_s
        self._refresh_interval_s = refresh_interval_s
        self._deliver: Deliver | None = None
        self._shards: dict[str, RedisBroker] = {}  # node name → its broker
        self._clients: dict[str, Redis] = {}  # node name → the client its broker was made from
        self._owner: dict[str, str] = {}  # watched user → node name of its shard
        self._repair: asyncio.Task[None] | None = None
        self._repair_again = False
        self._stopped_bad = 0  # bad messages counted by shards already stopped

    @property
    def bad_messages(self) -> int:
        """How many received messages were skipped as malformed (all masters)."""
        return self._stopped_bad + sum(s.bad_messages for s in self._shards.values())

    async def start(self, deliver: Deliver) -> None:
        """Learn the cluster's slot map and subscribe watched users (idempotent).

        Raises the client's ``redis`` errors when no node of the cluster can be reached.
        """
        if self._deliver is not None:
            return
        await self._cluster.initialize()
        self._deliver = deliver
        users = list(self._owner)
        self._owner.clear()
        for user in users:  # watched before start: subscribed now, as RedisBroker does
            name, shard = await self._shard_for(user)
            self._owner[user] = name
            await shard.watch(user)

    async def stop(self) -> None:
        """Stop every per-master broker and the repair task (idempotent)."""
        repair, self._repair, self._deliver = self._repair, None, None
        if repair is not None:
            repair.cancel()
            await asyncio.gather(repair, return_exceptions=True)
        for name in list(self._shards):
            await self._close(name)
        self._owner.clear()

    async def publish(self, update: FeedUpdate) -> None:
        """Send ``update`` on its user's channel (raises ``redis`` errors)."""
        await self.publish_many([update])

    async def publish_many(self, updates: Sequence[FeedUpdate]) -> None:
        """Send ``updates`` in order: one pipelined round trip per master, masters in parallel
        (the order between users of different masters is not kept; per user it is)."""
        if not updates:
            return
        pipe = self._cluster.pipeline(transaction=False)
        for update in updates:
            pipe.spublish(channel_key(update.user), encode_update(update))
        await pipe.execute()

    async def watch(self, user: str) -> None:
        """Subscribe ``user`` on the master owning its channel; see the module docstring."""
        if user in self._owner:
            return
        if self._deliver is None:
            self._owner[user] = ""  # subscribed by start()
            return
        name, shard = await self._shard_for(user)
        self._owner[user] = name
        # Each wait is the per-master broker's own (confirm_timeout_s); a move fails it at once
        # (unwatch on the old master), and the user is waited for on its new master.
        for _ in range(_MOVES_FOLLOWED):
            try:
                await shard.watch(user)
                return
            except SubscribeFailed:
                owner = self._owner.get(user)
                if owner is None or owner == name or owner not in self._shards:
                    raise
                name, shard = owner, self._shards[owner]
        raise SubscribeFailed("the user's slot kept moving while subscribing")

    async def unwatch(self, user: str) -> None:
        """Unsubscribe ``user`` (never raises)."""
        name = self._owner.pop(user, None)
        if name and name in self._shards:
            await self._shards[name].unwatch(user)

    # --- routing ---------------------------------------------------------------------------

    async def _shard_for(self, user: str) -> tuple[str, RedisBroker]:
        """The per-master broker of ``user``'s slot; raises :class:`SubscribeFailed` when that
        master cannot be reached (a repair is asked for: the slot may be failing over)."""
        node = self._cluster.get_node_from_key(channel_key(user))
        if node is None:
            self._schedule_repair()
            raise SubscribeFailed("no master owns the user's slot right now")
        return node.name, await self._shard(node)

    async def _shard(self, node: ClusterNode) -> RedisBroker:
        """The broker of ``node``, started when new; raises :class:`SubscribeFailed` when the
        node cannot be reached (nothing is kept: the next call tries again)."""
        shard = self._shards.get(node.name)
        if shard is not None:
            return shard
        assert self._deliver is not None
        kwargs: dict[str, Any] = {
            k: v for k, v in node.connection_kwargs.items() if k not in _NOT_FOR_CONNECTIONS
        }
        client = Redis.from_pool(ConnectionPool(connection_class=node.connection_class, **kwargs))
        shard = RedisBroker(
            client,
            sharded=True,
            on_gap=self._gap,
            on_bad_message=self._on_bad_message,
            on_lost=self._schedule_repair,
            on_moved=lambda _users: self._schedule_repair(),
            confirm_timeout_s=self._confirm_timeout_s,
            backoff_s=self._backoff_s,
            ping_interval_s=self._ping_interval_s,
        )
        try:
            await shard.start(self._deliver)
        except Exception as exc:
            await client.aclose()
            log.warning("broker.master_unreachable", node=node.name, error=type(exc).__name__)
            self._schedule_repair()
            raise SubscribeFailed(f"cannot reach the master {node.name}") from None
        self._shards[node.name], self._clients[node.name] = shard, client
        return shard

    def _gap(self, users: frozenset[str]) -> None:
        if self._on_gap is not None:
            self._on_gap(users)

    def _schedule_repair(self) -> None:
        if self._deliver is None:
            return
        if self._repair is None or self._repair.done():
            self._repair = asyncio.create_task(self._repairing(), name="redis-broker-repair")
        else:
            self._repair_again = True

    async def _repairing(self) -> None:
        """Refresh the slot map and move users to their slots' masters, until a pass finds
        nothing more asked for; then stop brokers of former masters that serve no user."""
        while True:
            self._repair_again = False
            try:
                await self._cluster.nodes_manager.initialize()
            except Exception as exc:  # nothing reachable yet: the next loss asks again
                log.warning("broker.refresh_failed", error=type(exc).__name__)
            await self._move()
            await self._retire()
            await asyncio.sleep(self._refresh_interval_s)
            if not self._repair_again:
                return

    async def _move(self) -> None:
        moved: dict[str, list[str]] = {}
        for user, name in list(self._owner.items()):
            node = self._cluster.get_node_from_key(channel_key(user))
            if node is not None and node.name != name:
                moved.setdefault(node.name, []).append(user)
        if not moved:
            return
        log.warning("broker.users_moved", users=sum(map(len, moved.values())), masters=len(moved))
        confirmations = []
        for name, users in list(moved.items()):
            node = self._cluster.get_node(node_name=name)
            try:
                assert node is not None
                shard = await self._shard(node)
            except (AssertionError, SubscribeFailed):
                del moved[name]  # not reachable yet: these users stay where they are for now
                self._repair_again = True
                continue
            for user in users:
                old = self._shards.get(self._owner[user])
                self._owner[user] = name
                if old is not None:
                    await old.unwatch(user)  # fails the old watch's wait: watch() follows
                confirmations.append(shard.watch(user))
        results = await asyncio.gather(*confirmations, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, SubscribeFailed):
                log.warning("broker.move_failed", error=type(result).__name__)
        gap = frozenset(u for users in moved.values() for u in users) & self._owner.keys()
        # Confirmed or not: a subscription not confirmed yet is made by that master's reader on
        # reconnect, which reports its own gap; reporting these now makes no client wait longer.
        if gap:
            self._gap(gap)

    async def _retire(self) -> None:
        masters = {n.name for n in self._cluster.get_primaries()}
        used = set(self._owner.values())
        for name in [n for n in self._shards if n not in masters and n not in used]:
            await self._close(name)

    async def _close(self, name: str) -> None:
        shard, client = self._shards.pop(name), self._clients.pop(name)
        self._stopped_bad += shard.bad_messages
        await shard.stop()
        await client.aclose()
