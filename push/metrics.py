"""Prometheus metrics of one server process, in a registry of its own (served at ``/metrics``).

Every refusal of bad input is counted here by reason, so an operator sees abuse and client bugs.
"""

from __future__ import annotations

import contextlib

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)

from streams.events import CONSENT

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
#: Event→push spans a Kafka hop and queues: the tail matters up to seconds (lag, a rebalance).
_PUSH_BUCKETS = (*_LATENCY_BUCKETS, 2.5, 5.0, 10.0, 30.0)
_REDIS_BUCKETS = (0.0001, 0.00025, *_LATENCY_BUCKETS)
_LANE_EVENTS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class Metrics:
    """The process's metric families."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # CPU, memory, descriptors, GC: the registry is private (one per app in tests), so the
        # default collectors are registered on it rather than on prometheus-client's global one.
        ProcessCollector(registry=r)
        r.register(PLATFORM_COLLECTOR)
        r.register(GC_COLLECTOR)
        self.events_accepted = Counter(
            "pushrec_collector_accepted", "Events accepted by POST /v1/events", registry=r
        )
        self.events_rejected = Counter(
            "pushrec_collector_rejected",
            "Events or requests refused by the collector, by reason",
            ["reason"],
            registry=r,
        )
        self.events_processed = Counter(
            "pushrec_events_processed",
            "Events handled by the processor, by type and outcome",
            ["type", "outcome"],
            registry=r,
        )
        self.recompute_seconds = Histogram(
            "pushrec_recompute_seconds",
            "Time for one processor lane to apply its events, recompute, store and publish its"
            " users' feeds (one observation per lane; a batch runs up to 4 lanes at once)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.recompute_events = Histogram(
            "pushrec_recompute_lane_events",
            "Events per processor lane (what one recompute observation covered)",
            buckets=_LANE_EVENTS,
            registry=r,
        )
        self.push_latency = Histogram(
            "pushrec_event_to_push_seconds",
            "From an event entering the pipeline (collector accept / Kafka record time) to the"
            " update frame written to a client connection, by transport; one observation per"
            " frame (an update carries the oldest of the events it includes)",
            ["transport"],
            buckets=_PUSH_BUCKETS,
            registry=r,
        )
        self.redis_seconds = Histogram(
            "pushrec_redis_seconds",
            "Redis round trips of this process (command, or pipeline), send to reply",
            ["command"],
            buckets=_REDIS_BUCKETS,
            registry=r,
        )
        self.kafka_lag = Gauge(
            "pushrec_kafka_consumer_lag",
            "Records on the partition not yet consumed by this node (high watermark - position),"
            " for the partitions it owns; refreshed after every poll",
            ["topic", "partition"],
            registry=r,
        )
        self.connections = Gauge(
            "pushrec_connections", "Open push connections", ["transport"], registry=r
        )
        self.frames_sent = Counter(
            "pushrec_frames_sent",
            "Frames sent to clients, by transport and type",
            ["transport", "type"],
            registry=r,
        )
        self.bytes_sent = Counter(
            "pushrec_bytes_sent", "Payload bytes sent to clients", ["transport"], registry=r
        )
        self.conflations = Counter(
            "pushrec_conflations", "Pending diffs collapsed into a snapshot", registry=r
        )
        self.closes = Counter(
            "pushrec_connection_closes",
            "Connections closed by the server, by code name",
            ["reason"],
            registry=r,
        )
        self.auth_failures = Counter(
            "pushrec_auth_failures",
            "Refused credentials, by surface and reason",
            ["surface", "reason"],
            registry=r,
        )
        self.bad_frames = Counter(
            "pushrec_bad_frames", "Client messages refused, by error code", ["code"], registry=r
        )
        self.http_errors = Counter(
            "pushrec_http_errors",
            "API requests refused, by status and code",
            ["status", "code"],
            registry=r,
        )

        self.dead_letters = Counter(
            "pushrec_dead_letters",
            "Records sent to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.consumer_restarts = Counter(
            "pushrec_kafka_consumer_restarts",
            "Restarts of the Kafka consumer loop after an unexpected error, by error type"
            " (crashes in a row with no poll completed fail /healthz)",
            ["error"],
            registry=r,
        )
        self.catalog_edits = Counter(
            "pushrec_catalog_edits",
            "Catalog propagation: feed versions edited, lost races (retried), stale index entries"
            " removed, edits given up; by outcome",
            ["outcome"],
            registry=r,
        )
        self.catalog_restored = Counter(
            "pushrec_catalog_restored_items",
            "Catalog items this node wrote back from its mirror after Redis lost the catalog",
            registry=r,
        )
        self.item_cache = Counter(
            "pushrec_item_cache",
            "Worker item-side cache lookups for scoring (streams/itemcache.py), by hit or miss",
            ["result"],
            registry=r,
        )
        self.feeds_kept = Counter(
            "pushrec_feeds_kept_on_loss",
            "Feeds whose stored version Redis lost, stored again as the list the client held"
            " (a recompute from the emptied profile was shorter), by feed",
            ["feed"],
            registry=r,
        )
        self.rules_reloads = Counter(
            "pushrec_rules_reloads",
            "Business rules offered to this node, by source (api, file, redis) and outcome (ok,"
            " unchanged, invalid, error)",
            ["source", "outcome"],
            registry=r,
        )
        self.rules_version = Gauge(
            "pushrec_rules_version", "Version of the business rules in force", registry=r
        )
        self.privacy_requests = Counter(
            "pushrec_privacy_requests",
            "Privacy requests served: erase (DELETE /v1/users/{id}) and export",
            ["op"],
            registry=r,
        )
        # Events skipped for lack of consent: pushrec_events_processed{outcome="no_consent"}.
        self.consent_changes = Counter(
            "pushrec_consent_changes",
            "Personalization decisions recorded, by outcome (granted, denied, withdrawn: denied"
            " with personal data to erase, unchanged, stale: older than the recorded one,"
            " failed) and source (event, api)",
            ["outcome", "source"],
            registry=r,
        )
        self.experiments_reloads = Counter(
            "pushrec_experiments_reloads",
            "Experiment documents offered to this node, by source (api, file, redis) and outcome"
            " (ok, unchanged, invalid, error)",
            ["source", "outcome"],
            registry=r,
        )
        self.experiments_version = Gauge(
            "pushrec_experiments_version", "Version of the experiments in force", registry=r
        )
        self.experiment_events = Counter(
            "pushrec_experiment_events",
            "Impression and click events quoting a list's rec, by type and outcome (counted,"
            " repeat: that list was counted before, stale: no running variant of the user)",
            ["type", "outcome"],
            registry=r,
        )
        self.rule_hits = Counter(
            "pushrec_rule_hits",
            "Computed feeds that a business rule changed, by action",
            ["action"],
            registry=r,
        )
        # -- triggers (streams/triggers.py): begin -------------------------------------------
        # Keyed by the kind the triggers' observer reports, (kind, outcome, n) -> .labels(outcome)
        self.triggers = {
            "offers": Counter(
                "pushrec_trigger_offers",
                "Trigger offers by outcome: fired_immediate, fired_delayed (entries written),"
                " suppressed (held back by unless), removed (taken back by an unless event)",
                ["outcome"],
                registry=r,
            ),
            "timers": Counter(
                "pushrec_trigger_timers",
                "Durable trigger timers by outcome: claimed, handled (acknowledged), retried"
                " (lease ran out, put back), dropped (trigger removed), retargeted (visitor"
                " merged into a user), failed",
                ["outcome"],
                registry=r,
            ),
        }
        # -- triggers: end -------------------------------------------------------------------
        self.bus_backlog = Gauge(
            "pushrec_bus_backlog",
            "Events accepted but not yet processed (in-process bus)",
            registry=r,
        )

    def observe_event(self, event_type: str, outcome: str) -> None:
        """The processor's per-event observer: count the outcome."""
        self.events_processed.labels(event_type, outcome).inc()
        if event_type == CONSENT:  # its outcome is what recording the decision did
            self.consent_changes.labels(outcome, "event").inc()

    def observe_lane(self, seconds: float, events: int) -> None:
        """The processor's per-lane observer: time the recompute."""
        self.recompute_seconds.observe(seconds)
        self.recompute_events.observe(events)

    def redis_observed(self, command: str, seconds: float) -> None:
        """The Redis client's observer: one round trip."""
        self.redis_seconds.labels(command).observe(seconds)

    def kafka_lag_observed(self, topic: str, partition: int, lag: int | None) -> None:
        """The Kafka source's lag observer; None drops a partition this node no longer owns."""
        if lag is None:
            with contextlib.suppress(KeyError):  # never reported: nothing to drop
                self.kafka_lag.remove(topic, str(partition))
        else:
            self.kafka_lag.labels(topic, str(partition)).set(lag)

    def dead_lettered(self, reason: str) -> None:
        """A record went to the dead-letter topic (its type is unknown: it did not parse)."""
        self.dead_letters.labels(reason).inc()
        self.events_processed.labels("unparsed", "dead_lettered").inc()
