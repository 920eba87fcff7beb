"""Typed configuration, read once from ``PUSHREC_*`` environment variables (and CLI flags).

Every setting has a default that makes ``pushrec serve`` work with no configuration at all (the
embedded default: in-process bus, private Redis). Nothing else in the code reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from push.exceptions import ConfigError

PREFIX = "PUSHREC_"


@dataclass(frozen=True, slots=True)
class Settings:
    """All settings. Field ``name`` is read from ``PUSHREC_NAME``."""

    host: str = "127.0.0.1"
    port: int = 8080
    #: External Redis (``redis://…``, ``unix://…``); unset = start a private embedded Redis.
    redis_url: str | None = None
    #: Where the embedded Redis keeps its data; unset = a temporary directory removed at exit.
    data_dir: Path | None = None
    #: HS256 secret that signs visitor tokens (≥ 16 chars); embedded mode generates one if unset.
    secret: str | None = None
    #: API key of the shop backend and of every admin operation; embedded mode generates one.
    admin_key: str | None = None
    log_level: str = "info"
    #: ``json``, ``console`` or ``auto`` (console on a terminal, JSON otherwise).
    log_format: str = "auto"
    bus_partitions: int = 4
    bus_capacity: int = 10_000
    max_body_bytes: int = 1_048_576
    max_batch: int = 500
    feed_size: int = 12
    profile_ttl_s: int = 30 * 86_400
    history_len: int = 100
    token_leeway_s: float = 30.0
    #: How long a WebSocket may take to send its auth message when no ``?token=`` was given.
    auth_timeout_s: float = 5.0
    #: Server pings every this many seconds; a client silent for two intervals is closed.
    ping_interval_s: float = 25.0
    #: A frame not written within this long marks the client as stuck: closed with "slow".
    send_timeout_s: float = 10.0
    #: Diffs that may wait per feed and connection before they collapse into one snapshot.
    max_pending_diffs: int = 8
    #: Largest client→server WebSocket message, in bytes.
    max_message_bytes: int = 16_384
    #: Kafka bootstrap servers; unset = the in-process event bus (one process does everything).
    kafka_bootstrap: str | None = None
    kafka_topic: str = "events"
    kafka_group: str = "pushrec"
    #: Most records taken from Kafka per poll (one poll is processed, then committed, at a time).
    kafka_max_batch: int = 500
    #: This node serves sockets and the API (``pushrec serve --no-worker`` keeps only this).
    web: bool = True
    #: This node consumes events (``pushrec worker`` keeps only this).
    worker: bool = True
    #: Serve the demo shop page and its visitor-token endpoint (``pushrec demo``).
    demo: bool = False
    #: A JSONL catalog loaded at start when the catalog is empty (``pushrec demo`` sets it).
    catalog_file: Path | None = None
    #: A JSONL event log replayed once at start, shifted to end now (demo warm-up traffic).
    warmup_file: Path | None = None

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (CLI flags override the environment)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every ``PUSHREC_*`` variable; raises :class:`ConfigError` on a malformed one."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _cast(f.name, str(f.type), raw)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values that cannot work."""
        if self.secret is not None and len(self.secret) < 32:
            raise ConfigError("PUSHREC_SECRET must be at least 32 characters long (HS256 key)")
        if self.admin_key is not None and len(self.admin_key) < 16:
            raise ConfigError("PUSHREC_ADMIN_KEY must be at least 16 characters long")
        if self.log_format not in {"json", "console", "auto"}:
            raise ConfigError("PUSHREC_LOG_FORMAT must be json, console or auto")
        if self.kafka_bootstrap is None and not (self.web and self.worker):
            raise ConfigError(
                "separate web and worker processes need Kafka (PUSHREC_KAFKA_BOOTSTRAP); "
                "without it one `pushrec serve` process does both"
            )
        if not (self.web or self.worker):
            raise ConfigError("a node must serve (web), consume (worker), or both")
        if not 0 <= self.port <= 65535:
            raise ConfigError("PUSHREC_PORT must be between 0 and 65535")
        counts = (
            "bus_partitions",
            "bus_capacity",
            "max_batch",
            "feed_size",
            "history_len",
            "max_pending_diffs",
            "max_body_bytes",
            "max_message_bytes",
            "profile_ttl_s",
        )
        for name in counts:
            if getattr(self, name) < 1:
                raise ConfigError(f"PUSHREC_{name.upper()} must be at least 1")
        durations = ("token_leeway_s", "auth_timeout_s", "ping_interval_s", "send_timeout_s")
        for name in durations:
            value = getattr(self, name)
            if not value >= 0 or (name != "token_leeway_s" and value == 0):  # `not >=` catches NaN
                raise ConfigError(f"PUSHREC_{name.upper()} must be a positive number of seconds")


def _cast(name: str, type_name: str, raw: str) -> Any:
    var = PREFIX + name.upper()
    try:
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
        if type_name.startswith("bool"):
            if raw.lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if type_name.startswith("Path"):
            return Path(raw)
    except ValueError:
        raise ConfigError(f"{var} must be a {type_name.split(' ')[0]}, got {raw!r}") from None
    return raw
