"""Wiring: builds every component from :class:`Settings` and owns their lifecycle.

Start order: Redis (embedded or external) → catalog mirror → broker → producer → event source.
Stop runs in reverse: the source finishes (and commits, or drains the in-process bus) before
Redis goes away, so accepted events are handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from dataclasses import dataclass, field
from typing import TypeVar

import structlog
from redis.asyncio import Redis

from push.config import Settings
from push.connections import Connections
from push.logs import set_node
from push.metrics import Metrics
from push.protocol import CloseCode
from push.redis_client import connect
from push.redis_server import EmbeddedRedis
from sessions.broker import Broker
from sessions.broker_cluster import RedisClusterBroker
from sessions.broker_memory import MemoryBroker
from sessions.broker_redis import RedisBroker
from sessions.cluster import is_cluster
from sessions.feeds import FeedStore
from sessions.hub import Hub
from sessions.text import text
from streams.catalog import Catalog, load_items
from streams.consent import REQUIRED
from streams.docstore import DocumentFile, DocumentStore, follow_channel
from streams.experiment_stats import ExperimentStats
from streams.experiments import ExperimentSet
from streams.experiments_store import EXPERIMENTS
from streams.itemcache import ItemCache
from streams.processor import Processor
from streams.producer_kafka import KafkaProducer
from streams.profile import CONTEXT_FEEDS, ProfileStore, ProfileTuning, ScoringTuning
from streams.propagate import Propagator
from streams.recommender import Recommender, RecommenderTuning
from streams.rules import RuleSet
from streams.rules_store import RulesFile, RulesStore
from streams.source import EventProducer, EventSource
from streams.source_kafka import KafkaSource
from streams.source_memory import MemoryBus
from streams.triggers import Offers, Triggers

log = structlog.get_logger(__name__)
#: Announces erased users to every node (``DELETE /v1/users/{id}``), so each closes their sockets.
ERASE_CHANNEL = "pr:erase"


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


def engine_tunings(
    settings: Settings, *, size: int | None = None
) -> tuple[ProfileTuning, ScoringTuning, RecommenderTuning]:
    """The profile, scoring and feed tunings a node uses (``size`` overrides the feed size)."""
    size = settings.feed_size if size is None else size
    scoring = ScoringTuning(
        candidates=2 * size,
        session_w=settings.session_weight,
        repeat_w=settings.repeat_weight,
        model_w=settings.model_weight,
    )
    return (
        ProfileTuning(ttl_s=settings.profile_ttl_s, consent_required=settings.consent == REQUIRED),
        scoring,
        RecommenderTuning(
            size=size, repeat=scoring.repeat_w > 0, max_per_category=settings.max_per_category
        ),
    )


T = TypeVar("T")


def _started(component: T | None) -> T:
    if component is None:
        raise RuntimeError("runtime not started: call start() first")
    return component


class Runtime:
    """Every long-lived component of one node, for the roles it plays.

    Embedded default: one process, in-process bus, both roles. With Kafka: the web role produces
    the collector's events to Kafka, the worker role consumes them in the consumer group, and
    the Redis broker carries updates from whichever worker computed them to whichever web node
    holds the sockets.
    """

    def __init__(self, settings: Settings, credentials: Credentials) -> None:
        self.settings = settings
        self.credentials = credentials
        self.node = f"{socket.gethostname()}-{secrets.token_hex(3)}"
        set_node(self.node)
        self.metrics = Metrics()
        self.verifier = settings.build_verifier(credentials.secret)
        self.embedded: EmbeddedRedis | None = None
        self.bus: MemoryBus | None = None
        self.producer: EventProducer | None = None
        self.source: EventSource | None = None
        self.kafka_producer: KafkaProducer | None = None
        kafka = settings.kafka_bootstrap
        if kafka is None:
            self.bus = MemoryBus(partitions=settings.bus_partitions, capacity=settings.bus_capacity)
            self.producer, self.source = self.bus, self.bus
        else:
            if settings.web:
                self.kafka_producer = KafkaProducer(
                    bootstrap=kafka, topic=settings.kafka_topic, client_id=self.node
                )
                self.producer = self.kafka_producer
            if settings.worker:
                self.source = KafkaSource(
                    bootstrap=kafka,
                    topic=settings.kafka_topic,
                    group=settings.kafka_group,
                    client_id=self.node,
                    max_batch=settings.kafka_max_batch,
                    on_dead=self.metrics.dead_lettered,
                    on_lag=self.metrics.kafka_lag_observed,
                    on_restart=lambda error: self.metrics.consumer_restarts.labels(error).inc(),
                )
        self.broker: Broker = MemoryBroker()
        self.hub = Hub(self.broker)
        self.connections = Connections()
        #: Set on SIGTERM (push/server.py): readiness turns false before connections close.
        self.draining = False
        self.profile_tuning, self._scoring, self._feed_tuning = engine_tunings(settings)
        #: The feeds a connection may subscribe to.
        self.served_feeds: tuple[str, ...] = ("home", "offers", *CONTEXT_FEEDS)
        #: The feeds of a connection that names none (``?feeds=`` absent).
        self.default_feeds: tuple[str, ...] = ("home",)
        self._redis: Redis | None = None
        self._processor: Processor | None = None
        self._feeds: FeedStore | None = None
        self._propagator: Propagator | None = None
        self._catalog: Catalog | None = None
        self._following: asyncio.Task[None] | None = None
        self._recommender: Recommender | None = None
        self._rules: RulesStore | None = None
        #: The rules file's poller (``PUSHREC_RULES_FILE``), when configured.
        self.rules_file: RulesFile | None = None
        self._rule_tasks: list[asyncio.Task[None]] = []
        self._experiments: DocumentStore[ExperimentSet] | None = None
        self._experiment_stats: ExperimentStats | None = None
        #: The experiments file's poller (``PUSHREC_EXPERIMENTS_FILE``), when configured.
        self.experiments_file: DocumentFile[ExperimentSet] | None = None
        self._triggers: Triggers | None = None
        #: The durable-timer poller (worker role).
        self._timers: asyncio.Task[None] | None = None

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
    def propagator(self) -> Propagator:
        """Catalog writes with their propagation to stored feeds (after :meth:`start`)."""
        return _started(self._propagator)

    @property
    def rules(self) -> RulesStore:
        """The business rules in force and their store (after :meth:`start`)."""
        return _started(self._rules)

    @property
    def experiments(self) -> DocumentStore[ExperimentSet]:
        """The experiments in force and their store (after :meth:`start`)."""
        return _started(self._experiments)

    @property
    def experiment_stats(self) -> ExperimentStats:
        """Impressions and clicks per experiment variant (after :meth:`start`)."""
        return _started(self._experiment_stats)

    @property
    def catalog(self) -> Catalog:
        """The catalog mirror (after :meth:`start`)."""
        return _started(self._catalog)

    def readiness(self) -> dict[str, bool]:
        """The non-Redis readiness checks of this node's roles (``accepting``: false once the
        node is shutting down, see push/server.py)."""
        checks: dict[str, bool] = {"accepting": not self.draining}
        if self.source is not None:
            checks["consumer"] = self.source.running
        if self.kafka_producer is not None:
            checks["producer"] = self.kafka_producer.ready
        return checks

    def liveness(self) -> dict[str, bool]:
        """What ``/healthz`` checks beyond the event loop answering: the Kafka consumer loop is
        not stuck failing (a broker outage is readiness's business, not liveness's)."""
        if isinstance(self.source, KafkaSource):
            return {"consumer": self.source.healthy}
        return {}

    async def start(self) -> None:
        """Connect or start Redis, load the catalog, start the broker, producer and consumers.

        On failure everything started so far is stopped again (no stray Redis process).
        """
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    def _broker(self, ping_interval_s: float) -> Broker:
        """The broker between nodes: sharded pub/sub with one connection per master on a
        cluster (sessions/broker_cluster.py), plain pub/sub on one Redis."""
        redis, resync = self.redis, lambda users: self.hub.resync(users)
        if is_cluster(redis):
            return RedisClusterBroker(
                redis,  # type: ignore[arg-type]  # what connect(cluster=True) built
                on_gap=resync,
                ping_interval_s=ping_interval_s,
            )
        return RedisBroker(redis, on_gap=resync, ping_interval_s=ping_interval_s)

    async def _start(self) -> None:
        s = self.settings
        url = s.redis_url
        if url is None:
            # Started on the loop's own thread, on purpose: Linux ties the child's death signal
            # to the thread that forked it, and a pool thread may exit before the process does.
            # It blocks start-up for the few ms redis-server takes to answer; nothing runs yet.
            self.embedded = EmbeddedRedis(s.data_dir).start()
            url = self.embedded.url
        # The health check PINGs a pooled connection idle for that long before using it; the
        # broker's pub/sub connection has none (sessions/broker_redis.py) and PINGs on its own.
        hc_s = s.redis_health_check_s
        self._redis = connect(
            url,
            observe=self.metrics.redis_observed,
            cluster=s.redis_cluster,
            health_check_interval=hc_s,
        )
        await self._redis.ping()
        if s.kafka_bootstrap is not None:
            self.broker = self._broker(hc_s)
            self.hub = Hub(self.broker)
        self._catalog = Catalog(self._redis)
        self._catalog.restored = self.metrics.catalog_restored.inc
        if not await self._catalog.load() and s.catalog_file is not None:
            await self._catalog.upsert(load_items(s.catalog_file))
        if s.redis_url is not None:  # other nodes may write the catalog: follow their changes
            self._following = asyncio.create_task(self._catalog.follow(), name="catalog-follow")
        self._feeds = FeedStore(
            self._redis,
            ttl_s=s.profile_ttl_s,
            history_len=s.history_len,
            history_ttl_s=s.history_ttl_s,
            history_max_diff_bytes=s.history_max_diff_bytes,
        )
        cache = ItemCache(
            self._redis,
            max_age_s=s.item_cache_s,
            max_entries=s.item_cache_entries,
            buckets=s.trend_buckets,
            trending_halflife_ms=self.profile_tuning.trending_halflife_ms,
            observe=lambda result, n: self.metrics.item_cache.labels(result).inc(n),
        )
        self._catalog.trend_buckets = s.trend_buckets
        profiles = ProfileStore(
            self._redis, self.profile_tuning, self._scoring, cache=cache, buckets=s.trend_buckets
        )
        recommender = Recommender(self._catalog, self._feed_tuning)
        recommender.observe_rule = lambda action: self.metrics.rule_hits.labels(action).inc()
        self._recommender = recommender
        await self._start_rules()
        self._experiment_stats = ExperimentStats(
            self._redis,
            exposure_ttl_s=s.profile_ttl_s,
            observe=lambda etype, outcome: self.metrics.experiment_events.labels(
                etype, outcome
            ).inc(),
        )
        self._triggers = Triggers(
            self._redis,
            Offers(self._redis, self._feeds, self.broker, self._catalog),
            lambda: recommender.rules,
            interval_s=s.timers_interval_s,
            observe=lambda kind, outcome, n: self.metrics.triggers[kind].labels(outcome).inc(n),
        )
        self._processor = Processor(
            profiles=profiles,
            recommender=recommender,
            feeds=self._feeds,
            broker=self.broker,
            catalog=self._catalog,
            observe=self.metrics.observe_event,
            observe_lane=self.metrics.observe_lane,
            triggers=self._triggers,
            stats=self._experiment_stats,
        )
        self._processor.kept_on_loss = lambda feed: self.metrics.feeds_kept.labels(feed).inc()
        await self._start_experiments()
        # Catalog changes made through this node's API reach the stored feeds showing the items
        # (streams/propagate.py); publishing through the broker reaches every node's sockets.
        self._propagator = Propagator(
            redis=self._redis,
            catalog=self._catalog,
            feeds=self._feeds,
            broker=self.broker,
            observe=lambda outcome, n: self.metrics.catalog_edits.labels(outcome).inc(n),
        )
        await self.broker.start(self.hub.deliver)
        if self.kafka_producer is not None:
            await self.kafka_producer.start()
        if self.source is not None:
            await self.source.start(self._processor.handle_batch)
        if s.worker:  # delayed triggers: durable timers in Redis, claimed by any worker
            self._timers = asyncio.create_task(self._triggers.run(), name="timers")
        log.info(
            "runtime_started",
            node=self.node,
            items=len(self._catalog),
            embedded=self.embedded is not None,
            kafka=s.kafka_bootstrap is not None,
            web=s.web,
            worker=s.worker,
        )

    async def _start_rules(self) -> None:
        """Business rules: what Redis holds, then the rules file (when configured, and when it
        differs), before any event is consumed; then follow other nodes' writes and the file."""
        s, redis = self.settings, self.redis
        self._rules = RulesStore(redis, self._apply_rules, observe=self._observe_rules)
        await self._rules.refresh()
        if s.rules_file is not None:
            # Pins of the file are not checked against the catalog (it may be loaded later);
            # an unknown or out-of-stock pinned item is simply not shown.
            self.rules_file = RulesFile(s.rules_file, self._rules, observe=self._observe_rules)
            await self.rules_file.check()
            self._rule_tasks.append(asyncio.create_task(self.rules_file.watch(), name="rules-file"))
        if s.redis_url is not None:  # other nodes may write the rules: follow their changes
            self._rule_tasks.append(asyncio.create_task(self._rules.follow(), name="rules-follow"))
            # and erase users: their connections here close too (close_user_everywhere).
            self._rule_tasks.append(
                asyncio.create_task(self._follow_erasures(), name="erasures-follow")
            )

    async def _start_experiments(self) -> None:
        """Experiments, like the rules: what Redis holds, then the file, before any event is
        consumed; then follow other nodes' writes and the file."""
        s, redis = self.settings, self.redis
        observe = self._observe_experiments
        self._experiments = DocumentStore(
            redis, EXPERIMENTS, self._apply_experiments, observe=observe
        )
        await self._experiments.refresh()
        if s.experiments_file is not None:
            self.experiments_file = DocumentFile(
                s.experiments_file, self._experiments, observe=observe
            )
            await self.experiments_file.check()
            self._rule_tasks.append(
                asyncio.create_task(self.experiments_file.watch(), name="experiments-file")
            )
        if s.redis_url is not None:
            self._rule_tasks.append(
                asyncio.create_task(self._experiments.follow(), name="experiments-follow")
            )

    def _apply_experiments(self, experiments: ExperimentSet) -> None:
        self.processor.experiments = experiments  # one assignment: each lane uses a whole set
        self.metrics.experiments_version.set(experiments.version)

    def _observe_experiments(self, source: str, outcome: str) -> None:
        self.metrics.experiments_reloads.labels(source, outcome).inc()

    async def close_user_everywhere(self, user: str) -> None:
        """Close every connection of an erased ``user`` with 4504: here at once, and on the
        other nodes through the ``pr:erase`` channel (shared Redis only)."""
        self.hub.close_user(user, CloseCode.ERASED, "user data erased")
        if self.settings.redis_url is not None:
            await self.redis.publish(ERASE_CHANNEL, user)

    async def _follow_erasures(self) -> None:
        """Close the connections of users erased through another node, until cancelled."""

        async def erased(data: bytes | str | None) -> None:
            user = text(data)
            self.hub.close_user(user, CloseCode.ERASED, "user data erased")

        await follow_channel(self.redis, ERASE_CHANNEL, erased, name="erasures")

    def _apply_rules(self, rules: RuleSet) -> None:
        if self._recommender is not None:
            self._recommender.rules = rules  # one assignment: the next feed uses the whole set
        self.metrics.rules_version.set(rules.version)

    def _observe_rules(self, source: str, outcome: str) -> None:
        self.metrics.rules_reloads.labels(source, outcome).inc()

    async def stop(self) -> None:
        """Stop consuming (committing what was done), then the producer, broker and Redis.

        Safe after a failed start.
        """
        if self.source is not None:
            await self.source.stop()
        if self._timers is not None:
            self._timers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timers
            self._timers = None
        for task in self._rule_tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._rule_tasks.clear()
        if self.kafka_producer is not None:
            await self.kafka_producer.stop()
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following
            self._following = None
        if self._propagator is not None:
            await self._propagator.stop()
        await self.broker.stop()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
            self.embedded = None
        log.info("runtime_stopped", node=self.node)
