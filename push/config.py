"""Typed configuration, read once from ``PUSHREC_*`` environment variables (and CLI flags).

Every setting has a default that makes ``pushrec serve`` work with no configuration at all (the
embedded default: in-process bus, private Redis). Nothing else in the code reads the environment.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from push.exceptions import ConfigError
from sessions.tokens import (
    LEEWAY_S,
    PUBLIC_KEY_ALGORITHMS,
    SUPPORTED_ALGORITHMS,
    TokenVerifier,
    load_public_key,
)
from streams.consent import POLICIES

PREFIX = "PUSHREC_"
#: Log level names (``PUSHREC_LOG_LEVEL_LIBS``).
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: ``scheme://host[:port]`` as browsers send it in ``Origin`` (host: name, IPv4 or [IPv6]).
_ORIGIN = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://"
    r"(?P<host>[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Settings:
    """All settings. Field ``name`` is read from ``PUSHREC_NAME``."""

    host: str = "127.0.0.1"
    port: int = 8080
    #: External Redis (``redis://…``, ``unix://…``); unset = start a private embedded Redis.
    redis_url: str | None = None
    #: ``redis_url`` names any node of a Redis Cluster: discover the others, route each command
    #: by its key's slot, use sharded pub/sub for user channels (see push/redis_client.py).
    redis_cluster: bool = False
    #: A Redis connection idle this long is checked with a PING before its next use; the broker's
    #: pub/sub connection sends its own PING after this long without traffic (see
    #: sessions/broker_redis.py), so a dead connection is found and its subscriptions remade.
    redis_health_check_s: float = 30.0
    #: Where the embedded Redis keeps its data; unset = a temporary directory removed at exit.
    data_dir: Path | None = None
    #: HS256 secret that signs visitor tokens (≥ 32 chars); embedded mode generates one if unset.
    secret: str | None = None
    #: API key of the shop backend and of every admin operation; embedded mode generates one.
    admin_key: str | None = None
    log_level: str = "info"
    #: Level of third-party libraries' log lines (aiokafka, redis, websockets, uvicorn…); unset =
    #: ``log_level`` but never below info: their debug lines carry user ids and events.
    log_level_libs: str | None = None
    #: ``json``, ``console`` or ``auto`` (console on a terminal, JSON otherwise).
    log_format: str = "auto"
    bus_partitions: int = 4
    bus_capacity: int = 10_000
    max_body_bytes: int = 1_048_576
    max_batch: int = 500
    feed_size: int = 12
    #: Weight of session kNN among the candidate sources (0 = off), see streams/profile.py.
    session_weight: float = 1.0
    #: > 0: the item being looked at leads the home feed (repeat views); 0: never in it.
    repeat_weight: float = 1.0
    #: Weight of the offline model's neighbours (``pushrec train``) when one is loaded (0 = off).
    model_weight: float = 1.0
    #: Diversity: at most this many items of one category in a feed while others remain (0: off).
    max_per_category: int = 0
    profile_ttl_s: int = 30 * 86_400
    #: Resume history per feed (sessions/feeds.py): at most this many diffs, ...
    history_len: int = 32
    #: ... none older than this (s): the history only bridges a short disconnect ...
    history_ttl_s: float = 300.0
    #: ... and no diff larger than this (bytes): a resume across one gets a snapshot.
    history_max_diff_bytes: int = 1024
    #: Clock skew allowed on a visitor token's ``exp`` (and ``nbf``/``iat``), seconds.
    token_leeway_s: float = LEEWAY_S
    #: Accepted visitor-token algorithms, comma separated: HS256 (signed with ``secret``), RS256,
    #: RS384, ES256, ES384 (verified with ``token_public_key_file``). Anonymous tokens, which the
    #: server signs itself (HS256), are accepted in any case.
    token_algorithms: str = "HS256"  # noqa: S105 - algorithm names, not a password
    #: PEM public key of the shop's token issuer; required when an RS*/ES* algorithm is accepted.
    token_public_key_file: Path | None = None
    #: Lifetime of the anonymous visitor tokens of ``POST /v1/anonymous`` (30 days).
    anon_token_ttl_s: int = 30 * 86_400
    #: Browser origins allowed to open push connections, comma separated ``scheme://host[:port]``;
    #: empty or ``*`` = any origin. Requests without an ``Origin`` header always pass.
    allowed_origins: str = ""
    #: How long a WebSocket may take to send its auth message when no ``?token=`` was given.
    auth_timeout_s: float = 5.0
    #: Server pings every this many seconds; a client silent for two intervals is closed.
    ping_interval_s: float = 25.0
    #: A frame not written within this long marks the client as stuck: closed with "slow".
    send_timeout_s: float = 10.0
    #: A REST request body (events, catalog, rules…) must arrive whole within this long after
    #: the headers; a slower one is answered 408 (push/http.py). Bounds what a slow sender holds.
    body_timeout_s: float = 10.0
    #: Kernel send buffer (``SO_SNDBUF``) of each push socket, in bytes (Linux doubles it for its
    #: bookkeeping); 0 = the kernel's autotuning (up to ``net.ipv4.tcp_wmem`` max, MiBs). Fixed,
    #: a client that stops reading fills it quickly, so the server sees the backlog (conflation,
    #: then 4001) instead of the kernel queueing MiBs per socket (docs/ARCHITECTURE.md).
    socket_sndbuf_bytes: int = 32_768
    #: Diffs that may wait per feed and connection before they collapse into one snapshot.
    max_pending_diffs: int = 8
    #: Largest client→server WebSocket message, in bytes.
    max_message_bytes: int = 16_384
    #: Accept WebSocket permessage-deflate (RFC 7692) when a client offers it, always without
    #: context takeover (no zlib state kept per connection). Off: frames are small and each
    #: compressed one costs CPU (docs/PROTOCOL.md, Handshake).
    ws_deflate: bool = False
    #: With ``ws_deflate``, server frames shorter than this are sent uncompressed.
    ws_deflate_min_bytes: int = 256
    #: Sustained client→server messages per second per connection (token bucket refill rate).
    max_messages_per_s: float = 20.0
    #: Client→server messages a connection may send at once before the rate applies (bucket size).
    message_burst: int = 40
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
    #: Business rules (YAML, docs/RULES.md) loaded at start and re-read when the file changes.
    rules_file: Path | None = None
    #: A/B experiments (YAML, docs/EXPERIMENTS.md) loaded at start and re-read when it changes.
    experiments_file: Path | None = None
    #: How often (s) a worker claims due timers of delayed triggers (docs/RULES.md).
    timers_interval_s: float = 1.0
    #: On SIGTERM: how long (s) to keep serving with readiness false before closing push
    #: connections, so a load balancer stops sending new ones (0: close at once).
    drain_delay_s: float = 0.0
    #: On SIGTERM: the 4000 closes are spread evenly over this many seconds, so the fleet's
    #: clients do not all reconnect in the same instant (0: all at once).
    shutdown_window_s: float = 5.0
    #: Personalization consent policy (streams/consent.py): ``implied`` personalizes everyone
    #: who did not deny; ``required`` only users with a recorded grant.
    consent: str = "implied"
    #: Worker cache of item-side lists for scoring (streams/itemcache.py): an entry is served at
    #: most this long (s) after it was read; 0 = read every lane. Own writes show at once.
    item_cache_s: float = 1.0
    #: ... and at most this many lists are kept (least recently used go first).
    item_cache_entries: int = 100_000
    #: Global trending is kept in this many buckets (``pr:{t:<b>}:trend``), so no single key is
    #: written on every event; changing it makes the existing trending unreachable (rebuilt).
    trend_buckets: int = 16

    def algorithms(self) -> tuple[str, ...]:
        """The accepted token algorithms of ``token_algorithms``, upper-cased, without duplicates.

        Raises :class:`ConfigError` for an unsupported one.
        """
        names: list[str] = []
        for entry in self.token_algorithms.split(","):
            name = entry.strip().upper()
            if not name:
                continue
            if name not in SUPPORTED_ALGORITHMS:
                raise ConfigError(
                    f"PUSHREC_TOKEN_ALGORITHMS: {entry.strip()[:20]!r} is not supported; "
                    f"choose from {', '.join(sorted(SUPPORTED_ALGORITHMS))}"
                )
            if name not in names:
                names.append(name)
        if not names:
            raise ConfigError("PUSHREC_TOKEN_ALGORITHMS must list at least one algorithm")
        return tuple(names)

    def origins(self) -> frozenset[str] | None:
        """The allowed browser origins, normalized as browsers send them (lower case, no default
        port); ``None`` when any origin is allowed. Raises :class:`ConfigError` for a bad entry.
        Parsed once per distinct value (it is asked on every WebSocket upgrade).
        """
        return _parse_origins(self.allowed_origins)

    def public_key_pem(self) -> str | None:
        """The text of ``token_public_key_file`` (unchecked); ``None`` when unset."""
        path = self.token_public_key_file
        if path is None:
            return None
        var = "PUSHREC_TOKEN_PUBLIC_KEY_FILE"
        try:
            return path.read_text(encoding="ascii")
        except FileNotFoundError:
            raise ConfigError(f"{var}: {str(path)!r} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"{var}: {str(path)!r} is a directory, not a PEM file") from None
        except PermissionError:
            raise ConfigError(f"{var}: {str(path)!r} is not readable (permissions)") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{var}: {str(path)!r} is not a PEM text file") from None
        except OSError as exc:
            raise ConfigError(f"{var}: cannot read {str(path)!r}: {exc.strerror}") from None

    def build_verifier(self, secret: str) -> TokenVerifier:
        """The visitor-token verifier these settings describe, signing with ``secret``.

        Reads ``token_public_key_file``; raises :class:`ConfigError` when it cannot work.
        """
        try:
            return TokenVerifier(
                secret,
                leeway_s=self.token_leeway_s,
                algorithms=self.algorithms(),
                public_key=self.public_key_pem(),
            )
        except ValueError as exc:
            raise ConfigError(f"visitor tokens: {exc}") from None

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
        if self.log_level_libs is not None and self.log_level_libs.lower() not in LOG_LEVELS:
            raise ConfigError(f"PUSHREC_LOG_LEVEL_LIBS must be {', '.join(LOG_LEVELS)}")
        if self.consent not in POLICIES:
            raise ConfigError(
                f"PUSHREC_CONSENT must be {' or '.join(POLICIES)}, got {self.consent[:20]!r}"
            )
        if self.kafka_bootstrap is None and not (self.web and self.worker):
            raise ConfigError(
                "separate web and worker processes need Kafka (PUSHREC_KAFKA_BOOTSTRAP); "
                "without it one `pushrec serve` process does both"
            )
        if not (self.web or self.worker):
            raise ConfigError("a node must serve (web), consume (worker), or both")
        if not (math.isfinite(self.item_cache_s) and self.item_cache_s >= 0):
            raise ConfigError("PUSHREC_ITEM_CACHE_S must be a finite number >= 0")
        if self.item_cache_entries < 1 or not 1 <= self.trend_buckets <= 1024:
            raise ConfigError(
                "PUSHREC_ITEM_CACHE_ENTRIES must be >= 1 and PUSHREC_TREND_BUCKETS 1 to 1024"
            )
        if self.redis_cluster and not (self.redis_url or "").startswith(("redis://", "rediss://")):
            raise ConfigError(
                "PUSHREC_REDIS_CLUSTER=1 needs PUSHREC_REDIS_URL naming a node of the cluster "
                "(redis://host:port or rediss://…; the embedded Redis is a single server)"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError("PUSHREC_PORT must be between 0 and 65535")
        counts = (
            "bus_partitions",
            "bus_capacity",
            "max_batch",
            "feed_size",
            "history_len",
            "history_max_diff_bytes",
            "max_pending_diffs",
            "max_body_bytes",
            "max_message_bytes",
            "profile_ttl_s",
            "anon_token_ttl_s",
            "message_burst",
        )
        for name in counts:
            if getattr(self, name) < 1:
                raise ConfigError(f"PUSHREC_{name.upper()} must be at least 1")
        durations = (
            "token_leeway_s",
            "auth_timeout_s",
            "ping_interval_s",
            "send_timeout_s",
            "body_timeout_s",
            "timers_interval_s",
            "redis_health_check_s",
            "history_ttl_s",
        )
        for name in durations:
            value = getattr(self, name)
            if not value >= 0 or (name != "token_leeway_s" and value == 0):  # `not >=` catches NaN
                raise ConfigError(f"PUSHREC_{name.upper()} must be a positive number of seconds")
        for name in ("drain_delay_s", "shutdown_window_s"):
            value = getattr(self, name)
            if not 0 <= value <= 600:  # also refuses NaN
                raise ConfigError(f"PUSHREC_{name.upper()} must be between 0 and 600 seconds")
        for name in ("ws_deflate_min_bytes", "max_per_category", "socket_sndbuf_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"PUSHREC_{name.upper()} must be at least 0")
        if not (self.max_messages_per_s > 0 and math.isfinite(self.max_messages_per_s)):
            raise ConfigError("PUSHREC_MAX_MESSAGES_PER_S must be a positive, finite number")
        for name in ("session_weight", "repeat_weight", "model_weight"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"PUSHREC_{name.upper()} must be a finite number >= 0")
        self.origins()
        self._validate_token_keys()

    def _validate_token_keys(self) -> None:
        algorithms = self.algorithms()
        asymmetric = [name for name in algorithms if name in PUBLIC_KEY_ALGORITHMS]
        var = "PUSHREC_TOKEN_PUBLIC_KEY_FILE"
        if asymmetric and self.token_public_key_file is None:
            raise ConfigError(
                f"{var} must name the issuer's PEM public key: PUSHREC_TOKEN_ALGORITHMS "
                f"accepts {', '.join(asymmetric)}"
            )
        if not asymmetric and self.token_public_key_file is not None:
            raise ConfigError(
                f"{var} is set but PUSHREC_TOKEN_ALGORITHMS accepts no RS256/RS384/ES256/ES384 "
                "algorithm that would use it"
            )
        pem = self.public_key_pem()
        if pem is not None:
            try:
                load_public_key(pem, asymmetric)
            except ValueError as exc:
                raise ConfigError(f"{var}: {exc}") from None


@functools.lru_cache(maxsize=8)
def _parse_origins(allowed_origins: str) -> frozenset[str] | None:
    raw = allowed_origins.strip()
    if raw in {"", "*"}:
        return None
    origins: set[str] = set()
    for entry in raw.split(","):
        entry = entry.strip()
        if not entry:
            continue
        if entry == "*":
            raise ConfigError(
                "PUSHREC_ALLOWED_ORIGINS: '*' allows any origin and cannot be combined with a list"
            )
        origins.add(_normalize_origin(entry))
    if not origins:
        return None
    return frozenset(origins)


def _normalize_origin(entry: str) -> str:
    """``entry`` as a browser sends it in ``Origin``; raises :class:`ConfigError` if malformed."""
    match = _ORIGIN.fullmatch(entry.lower())
    if match is None or (match["port"] is not None and not 1 <= int(match["port"]) <= 65535):
        raise ConfigError(
            f"PUSHREC_ALLOWED_ORIGINS: {entry[:100]!r} is not scheme://host[:port] "
            "(e.g. https://shop.example or http://localhost:3000; no path, not even '/')"
        )
    scheme, host = match["scheme"], match["host"]
    port = None if match["port"] is None else int(match["port"])
    if port is None or _DEFAULT_PORTS.get(scheme) == port:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


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
