"""Real Kafka + real Redis + several real pushrec processes, for the scale-out tests.

Needs ``PUSHREC_TEST_KAFKA_BOOTSTRAP`` and ``PUSHREC_TEST_REDIS_URL`` (``make test`` starts both
with scripts/services.sh). Without them the Kafka tests are skipped locally and fail under CI.
Each cluster gets its own topic, consumer group and Redis database, so tests never share state.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import redis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.conftest import start_server, stop_server
from tests.integration.harness import Server

PARTITIONS = 4
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
    """Nodes sharing one topic, group and Redis database."""

    bootstrap: str
    redis_url: str
    topic: str
    group: str
    nodes: dict[str, tuple[subprocess.Popen[bytes], Server]] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {
            "PUSHREC_KAFKA_BOOTSTRAP": self.bootstrap,
            "PUSHREC_KAFKA_TOPIC": self.topic,
            "PUSHREC_KAFKA_GROUP": self.group,
            "PUSHREC_REDIS_URL": self.redis_url,
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
        return redis.Redis.from_url(self.redis_url)

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
    """A fresh topic, group and Redis database; every node started is stopped after."""
    bootstrap, base = services()
    db = next(_DB) % 16 or 1
    redis_url = f"{base.rsplit('/', 1)[0]}/{db}"
    redis.Redis.from_url(redis_url).flushdb()
    name = f"t{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_topics(bootstrap, name))
    c = Cluster(bootstrap, redis_url, topic=name, group=f"g-{name}")
    try:
        yield c
    finally:
        for proc, _ in list(c.nodes.values()):
            stop_server(proc)
