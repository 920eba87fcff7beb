"""Configuration documents shared by every node: stored in Redis, announced on a channel, fed by a
file. Business rules (:mod:`streams.rules_store`) and experiments
(:mod:`streams.experiments_store`) are two kinds of document kept this way.

Redis is the truth: the document's key is a hash ``{v: version, body: normalized JSON}``. A write
is one Lua script that compares the new body with the stored one and, only when they differ,
bumps the version, stores the body and publishes the version on the document's channel (so ten
nodes writing the same file make one version, not ten). Every node applies what Redis holds: at
start, on every announcement, and after a lost subscription (like the catalog mirror,
:meth:`streams.catalog.Catalog.follow`).

The optional file is read at start and polled every second (mtime, size, inode); a valid new
content is written to Redis as above, an invalid one is logged with its line and reason and
changes nothing. Precedence is last write wins: a ``PUT`` through the API holds until the file
next changes (or a node with the file starts with a different content).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessions.backoff import Backoff
from sessions.cluster import refresh_topology
from sessions.text import text as as_text
from streams.yamldoc import InvalidDocument

#: KEYS[1] the document hash; ARGV[1] the normalized body, ARGV[2] the channel.
#: Returns {1 when written else 0, the version now stored}.
_SAVE_LUA = resources.files("streams").joinpath("lua/doc_save.lua").read_text()

#: Called with (source, outcome): source ``api`` / ``file`` / ``redis``; outcome ``ok``,
#: ``unchanged``, ``invalid`` or ``error``.
Observer = Callable[[str, str], None]

log = structlog.get_logger(__name__)


class Document(Protocol):
    """What a stored document must offer: its version and its normalized body."""

    @property
    def version(self) -> int: ...

    def body(self) -> str: ...


D = TypeVar("D", bound=Document)


@dataclass(frozen=True, slots=True)
class DocumentKind(Generic[D]):
    """One kind of document: where it lives, how it is read, and what "none" is."""

    #: The name in log events (``rules_applied``) and errors.
    name: str
    key: str
    channel: str
    #: (text, source) → the document at version 0; raises :class:`InvalidDocument`.
    parse: Callable[[str, str], D]
    #: The same document at another version.
    with_version: Callable[[D, int], D]
    empty: D


def _ignore(_source: str, _outcome: str) -> None:
    return None


class DocumentStore(Generic[D]):
    """The document in force on this node, kept equal to Redis's; ``apply`` gets every new one."""

    def __init__(
        self,
        redis: Redis,
        kind: DocumentKind[D],
        apply: Callable[[D], None],
        *,
        observe: Observer = _ignore,
    ) -> None:
        self._redis = redis
        self.kind = kind
        self._apply = apply
        self._observe = observe
        self._save = redis.register_script(_SAVE_LUA)
        self._lock = asyncio.Lock()
        self.current: D = kind.empty
        self._body = kind.empty.body()

    async def save(self, document: D, *, source: str) -> D:
        """Store ``document`` (a new version only when it differs from the stored one), then
        apply what Redis holds; returns the document now in force on this node."""
        written, _ = await self._save(
            keys=[self.kind.key], args=[document.body(), self.kind.channel]
        )
        self._observe(source, "ok" if written else "unchanged")
        return await self.refresh()

    async def refresh(self) -> D:
        """Read the stored document and apply it when it differs from the current one.

        Serialized, so an older read never replaces a newer one. When Redis holds none (never
        written, or flushed) the current one stays. A stored document that no longer validates
        is logged and skipped (the current one stays).
        """
        name = self.kind.name
        async with self._lock:
            raw_v, raw_body = await self._redis.hmget(self.kind.key, ["v", "body"])
            if raw_v is None or raw_body is None:
                return self.current
            version = int(raw_v)
            body = as_text(raw_body)
            if version == self.current.version and body == self._body:
                return self.current
            try:
                document = self.kind.with_version(self.kind.parse(body, self.kind.key), version)
            except InvalidDocument as exc:
                log.error(f"{name}_stored_invalid", version=version, error=str(exc))
                self._observe("redis", "invalid")
                return self.current
            self.current, self._body = document, body
            self._apply(document)
            log.info(f"{name}_applied", version=version)
            return document

    async def follow(self) -> None:
        """Apply every other node's writes until cancelled (subscribe, reload, then one reload per
        announcement; after a lost connection, again)."""

        async def reload(_data: bytes | str | None) -> None:
            await self.refresh()

        await follow_channel(
            self._redis, self.kind.channel, reload, name=self.kind.name, subscribed=self.refresh
        )


async def follow_channel(
    redis: Redis,
    channel: str,
    on_message: Callable[[bytes | str | None], Awaitable[object]],
    *,
    name: str,
    subscribed: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Call ``on_message`` with each message's data on ``channel`` until cancelled; after each
    (re)subscription ``subscribed`` first (what was missed while unsubscribed). A lost connection
    or an unexpected error is logged (``<name>_follow_lost`` / ``_failed``) and the subscription
    is made again, backing off from 0.5 s to 10 s."""
    backoff = Backoff(0.5, 10.0)
    while True:
        try:
            async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(channel)
                if subscribed is not None:
                    await subscribed()
                backoff.reset()
                async for message in pubsub.listen():
                    await on_message(message.get("data"))
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning(f"{name}_follow_lost", error=type(exc).__name__)
            await refresh_topology(redis)  # a cluster: subscribe to a live master next time
        except Exception:  # a bug or an unexpected reply: keep following, loudly
            log.exception(f"{name}_follow_failed")
        await asyncio.sleep(backoff.next())


class DocumentFile(Generic[D]):
    """Polls one file and saves each new valid content through a :class:`DocumentStore`."""

    def __init__(
        self,
        path: Path,
        store: DocumentStore[D],
        *,
        parse: Callable[[str, str], D] | None = None,
        interval_s: float = 1.0,
        observe: Observer = _ignore,
    ) -> None:
        self.path = path
        self._store = store
        #: (text, source) → document; the kind's parser unless the caller checks more.
        self._parse = parse or store.kind.parse
        self._interval_s = interval_s
        self._observe = observe
        self._seen: tuple[int, int, int] | None = None
        #: The last error (``rules.yaml:12: …``), None after a good read.
        self.error: str | None = None

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    async def check(self) -> bool:
        """Read the file when it changed since the last good (or refused) read; True when its
        document was saved. A missing or unreadable file changes nothing."""
        name = self._store.kind.name
        stamp = self._stamp()
        if stamp is None:
            if self._seen is not None or self.error is None:
                self.error = f"{self.path}: cannot read the {name} file"
                log.warning(f"{name}_file_missing", path=str(self.path))
            self._seen = None
            return False
        if stamp == self._seen:
            return False
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.error = f"{self.path}: {type(exc).__name__}"
            log.error(f"{name}_file_unreadable", path=str(self.path), error=type(exc).__name__)
            self._observe("file", "error")
            return False
        try:
            document = self._parse(text, self.path.name)
        except InvalidDocument as exc:
            self._seen = stamp  # refused once; read again when the file changes
            self.error = str(exc)
            log.error(f"{name}_file_invalid", path=str(self.path), error=str(exc), line=exc.line)
            self._observe("file", "invalid")
            return False
        await self._store.save(document, source="file")  # raises on Redis errors: retried
        self._seen, self.error = stamp, None
        return True

    async def watch(self) -> None:
        """Poll until cancelled; Redis failures are logged and retried on the next tick."""
        while True:
            try:
                await self.check()
            except (RedisError, OSError) as exc:
                log.warning(f"{self._store.kind.name}_file_save_failed", error=type(exc).__name__)
                self._observe("file", "error")
            await asyncio.sleep(self._interval_s)
