"""Wiring: builds every component from :class:`Settings` and owns their lifecycle.

Start order: Redis (embedded or external) → catalog mirror → broker → event source. Stop runs in
reverse, draining the in-process bus so accepted events are handled before Redis goes away.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from dataclasses import dataclass, field
from typing import TypeVar

import structlog
from redis.asyncio import Redis

from push.config import Settings
from push.metrics import Metrics
from push.redis_server import EmbeddedRedis
from sessions.broker_memory import MemoryBroker
from sessions.feeds import FeedStore
from sessions.hub import Hub
from sessions.tokens import TokenVerifier
from streams.catalog import Catalog, load_items
from streams.processor import Processor
from streams.profile import ProfileStore, ProfileTuning
from streams.recommender import Recommender, RecommenderTuning
from streams.source_memory import MemoryBus

log = structlog.get_logger(__name__)


@dataclass
class Credentials:
    """The secret and admin key in force, and whether they were generated for this run."""

    secret: str
    admin_key: str
    generated: list[str] = field(default_factory=list)


def resolve_credentials(settings: Settings) -> Credentials:
    """Use the configured secret and admin key, generating the missing ones (embedded mode)."""
    creds = Credentials(
        secret=settings.secret or secrets.token_urlsafe(32),
        admin_key=settings.admin_key or secrets.token_urlsafe(24),
    )
    if settings.secret is None:
        creds.generated.append("secret")
    if settings.admin_key is None:
        creds.generated.append("admin_key")
    return creds


T = TypeVar("T")


def _started(component: T | None) -> T:
    if component is None:
        raise RuntimeError("runtime not started: call start() first")
    return component


class Runtime:
    """Every long-lived component of one node."""

    def __init__(self, settings: Settings, credentials: Credentials) -> None:
        self.settings = settings
        self.credentials = credentials
        self.node = f"{socket.gethostname()}-{secrets.token_hex(3)}"
        self.metrics = Metrics()
        self.verifier = TokenVerifier(credentials.secret, leeway_s=settings.token_leeway_s)
        self.embedded: EmbeddedRedis | None = None
        self.broker = MemoryBroker()
        self.hub = Hub(self.broker)
        self.bus = MemoryBus(partitions=settings.bus_partitions, capacity=settings.bus_capacity)
        self._redis: Redis | None = None
        self._processor: Processor | None = None
        self._feeds: FeedStore | None = None
        self._catalog: Catalog | None = None

    @property
    def redis(self) -> Redis:
        """The Redis client (after :meth:`start`)."""
        return _started(self._redis)

    @property
    def processor(self) -> Processor:
        """The event processor (after :meth:`start`)."""
        return _started(self._processor)

    @property
    def feeds(self) -> FeedStore:
        """The feed store (after :meth:`start`)."""
        return _started(self._feeds)

    @property
    def catalog(self) -> Catalog:
        """The catalog mirror (after :meth:`start`)."""
        return _started(self._catalog)

    async def start(self) -> None:
        """Connect or start Redis, load the catalog, start the broker and the consumers.

        On failure everything started so far is stopped again (no stray Redis process).
        """
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        url = s.redis_url
        if url is None:
            # Started on the loop's own thread, on purpose: Linux ties the child's death signal
            # to the thread that forked it, and a pool thread may exit before the process does.
            # It blocks start-up for the few ms redis-server takes to answer; nothing runs yet.
            self.embedded = EmbeddedRedis(s.data_dir).start()
            url = self.embedded.url
        self._redis = Redis.from_url(url, health_check_interval=30)
        await self._redis.ping()
        self._catalog = Catalog(self._redis)
        if not await self._catalog.load() and s.catalog_file is not None:
            await self._catalog.upsert(load_items(s.catalog_file))
        self._feeds = FeedStore(self._redis, ttl_s=s.profile_ttl_s, history_len=s.history_len)
        profiles = ProfileStore(self._redis, ProfileTuning(ttl_s=s.profile_ttl_s))
        recommender = Recommender(self._catalog, RecommenderTuning(size=s.feed_size))
        self._processor = Processor(
            profiles=profiles,
            recommender=recommender,
            feeds=self._feeds,
            broker=self.broker,
            catalog=self._catalog,
            observe=self.metrics.observe_event,
        )
        await self.broker.start(self.hub.deliver)
        await self.bus.start(self._processor.handle_batch)
        log.info(
            "runtime_started",
            node=self.node,
            items=len(self._catalog),
            embedded=self.embedded is not None,
        )

    async def stop(self) -> None:
        """Drain and stop consumers, then the broker, then Redis (safe after a failed start)."""
        await self.bus.stop()
        await self.broker.stop()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
            self.embedded = None
        log.info("runtime_stopped", node=self.node)
