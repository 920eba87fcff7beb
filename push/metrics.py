"""Prometheus metrics of one server process, in a registry of its own (served at ``/metrics``).

Every refusal of bad input is counted here by reason, so an operator sees abuse and client bugs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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


class Metrics:
    """The process's metric families."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
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
            "pushrec_event_process_seconds",
            "Time to apply one event and store its new feed version",
            buckets=_LATENCY_BUCKETS,
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
        self.catalog_edits = Counter(
            "pushrec_catalog_edits",
            "Catalog propagation: feed versions edited, lost races (retried), stale index entries"
            " removed, edits given up; by outcome",
            ["outcome"],
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

    def observe_event(self, event_type: str, outcome: str, seconds: float) -> None:
        """The processor's observer: count the outcome, time the work."""
        self.events_processed.labels(event_type, outcome).inc()
        if outcome in {"ok", "unchanged"}:
            self.recompute_seconds.observe(seconds)
