"""Real Kafka + real Redis + several real pushrec processes, for the scale-out tests.

Needs ``PUSHREC_TEST_KAFKA_BOOTSTRAP`` and ``PUSHREC_TEST_REDIS_URL`` (``make test`` starts both
with scripts/services.sh). Without them the Kafka tests are skipped locally and fail under CI.
Each cluster gets its own topic, consumer group and Redis database, so tests never share state.

Cluster mode (``PUSHREC_TEST_REDIS_CLUSTER=1``, tests/integration/conftest.py): the nodes run with
``PUSHREC_REDIS_CLUSTER=1`` on the test Redis Cluster, flushed whole when a :func:`cluster` starts
(a cluster has one database), and :meth:`Cluster.redis` is a cluster client; a test that points
:attr:`Cluster.redis_url` at a Redis of its own (tests/integration/test_faults.py) gets that
single Redis for its nodes and its client.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from sessions.keys import TREND_BUCKETS, neighbours_key, trend_key
from tests.integration.conftest import (
    cluster_env,
    redis_database,
    start_server,
    stop_server,
    sync_redis,
)
from tests.integration.harness import SCALE, Server

PARTITIONS = 4
#: The catalog of :meth:`Server.load_catalog`.
ITEMS = [f"{cat}-{n}" for cat in ("phones", "shoes", "books") for n in range(10)]


def mixed_traffic(
    prefix: str, seed: int, events: int = 240, users: int = 6
) -> tuple[list[str], list[dict[str, Any]]]:
    """Reproducible traffic of ``users`` users (``<prefix>-<n>``): mostly views, some carts and
    purchases of :data:`ITEMS`, one event per millisecond from now, ids ``<prefix>-<i>``."""
    rng = random.Random(seed)  # noqa: S311 - reproducible traffic, not secrets
    names = [f"{prefix}-{n}" for n in range(users)]
    start = int(time.time() * 1000)
    kinds = ["view"] * 6 + ["add_to_cart", "purchase"]
    return names, [
        {
            "event_id": f"{prefix}-{i}",
            "user_id": names[i % len(names)],
            "type": rng.choice(kinds),
            "item_id": rng.choice(ITEMS),
            "ts": start + i,
        }
        for i in range(events)
    ]


#: A raw record: (key, value, headers).
Record = tuple[bytes | None, bytes, Sequence[tuple[str, bytes]]]
_DB = itertools.count(1)


def services() -> tuple[str, str]:
    """(Kafka bootstrap, Redis base URL), or skip/fail when they are not running."""
    kafka = os.environ.get("PUSHREC_TEST_KAFKA_BOOTSTRAP")
    redis_url = os.environ.get("PUSHREC_TEST_REDIS_URL")
    if not kafka or not redis_url:
        message = "needs PUSHREC_TEST_KAFKA_BOOTSTRAP and PUSHREC_TEST_REDIS_URL (make test)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return kafka, redis_url


@dataclass
class Cluster:
    """Nodes sharing one topic, group and Redis database (or the whole test Redis Cluster)."""

    bootstrap: str
    redis_url: str
    topic: str
    group: str
    nodes: dict[str, tuple[subprocess.Popen[bytes], Server]] = field(default_factory=dict)
    #: One client per URL, kept: a cluster client learns the slot map when it is made, and the
    #: tests poll Redis in tight loops.
    clients: dict[str, redis.Redis] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {
            "PUSHREC_KAFKA_BOOTSTRAP": self.bootstrap,
            "PUSHREC_KAFKA_TOPIC": self.topic,
            "PUSHREC_KAFKA_GROUP": self.group,
            "PUSHREC_REDIS_URL": self.redis_url,
            **cluster_env(self.redis_url),  # on the test cluster: PUSHREC_REDIS_CLUSTER=1
        }

    def start(self, name: str, *command: str) -> Server:
        """Start a node: ``serve`` (both roles), ``serve --no-worker`` or ``worker``."""
        proc, server = start_server(self.env, command=command or ("serve",))
        self.nodes[name] = (proc, server)
        return server

    def kill(self, name: str) -> None:
        """SIGKILL a node: no commit, no goodbye to the group."""
        proc, _ = self.nodes.pop(name)
        proc.kill()
        proc.wait()

    def stop(self, name: str) -> int:
        proc, _ = self.nodes.pop(name)
        return stop_server(proc)

    def redis(self) -> redis.Redis:
        """A blocking client of the nodes' Redis (a cluster client on the test cluster)."""
        if self.redis_url not in self.clients:
            self.clients[self.redis_url] = sync_redis(self.redis_url)
        return self.clients[self.redis_url]

    async def produce(self, records: Sequence[Record]) -> None:
        """Produce raw ``(key, value, headers)`` records straight to the topic."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=True)
        await producer.start()
        try:
            for key, value, headers in records:
                await producer.send_and_wait(self.topic, value=value, key=key, headers=headers)
        finally:
            await producer.stop()


async def _create_topics(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1),
                NewTopic(f"{topic}.dlq", num_partitions=1, replication_factor=1),
            ]
        )
    finally:
        await admin.close()


@contextmanager
def cluster() -> Iterator[Cluster]:
    """A fresh topic, group and Redis database (in cluster mode: the test cluster, flushed);
    every node started is stopped after."""
    bootstrap, _ = services()
    with redis_database(next(_DB) % 16 or 1) as redis_url:
        name = f"t{uuid.uuid4().hex[:8]}"
        asyncio.run(_create_topics(bootstrap, name))
        c = Cluster(bootstrap, redis_url, topic=name, group=f"g-{name}")
        try:
            yield c
        finally:
            for proc, _ in list(c.nodes.values()):
                stop_server(proc)
            for client in c.clients.values():
                client.close()


async def until(predicate: Callable[[], bool], within_s: float = 20.0) -> None:
    """Poll a condition on state held in other processes (no event to await across them)."""
    async with asyncio.timeout(within_s * SCALE):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def applied(c: Cluster, users: Sequence[str]) -> int:
    """How many distinct events of ``users`` Redis has applied (their dedup sets)."""
    store = c.redis()
    counts: list[int] = [store.zcard(f"pr:{{u:{u}}}:dedup") for u in users]
    return sum(counts)


def model(c: Cluster, users: Sequence[str]) -> dict[str, Any]:
    """Everything the events built in Redis: each user's profile and the learnt item model.

    Decayed scores share one origin per run (the first event it applied), so sums that differ
    only by that constant factor are made comparable by dividing by the largest.
    """
    store = c.redis()

    def scored(key: str, normalise: bool = False) -> dict[str, float]:
        raw = cast(list[tuple[bytes, float]], store.zrange(key, 0, -1, withscores=True))
        pairs = {m.decode(): float(s) for m, s in raw}
        top = max(pairs.values(), default=1.0) if normalise else 1.0
        return {m: round(s / top, 9) for m, s in pairs.items()}

    learnt: dict[str, Any] = {
        f"trend:{b}": scored(trend_key(b), normalise=True) for b in range(TREND_BUCKETS)
    }
    for item in ITEMS:
        learnt[f"nb:{item}"] = scored(neighbours_key(item))
    for user in users:
        tag = f"pr:{{u:{user}}}:"
        learnt[user] = {
            "recent": scored(tag + "recent"),
            "aff": scored(tag + "aff"),
            "cart": sorted(m.decode() for m in cast(set[bytes], store.smembers(tag + "cart"))),
            "bought": scored(tag + "bought"),
            "events": store.zcard(tag + "dedup"),
        }
    return learnt
