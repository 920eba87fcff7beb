"""Business rules shared by every node: stored in Redis, announced on a channel, fed by a file.

Redis is the truth: ``pr:rules`` is a hash ``{v: version, body: normalized JSON}``. A write is one
Lua script that compares the new body with the stored one and, only when they differ, bumps the
version, stores the body and publishes the version on ``pr:rules`` (so ten nodes writing the same
file make one version, not ten). Every node applies what Redis holds: at start, on every
announcement, and after a lost subscription (like the catalog mirror, :meth:`Catalog.follow`).

The optional rules file (``PUSHREC_RULES_FILE``) is read at start and polled every second
(mtime, size, inode); a valid new content is written to Redis as above, an invalid one is logged
with its line and reason and changes nothing. Precedence is last write wins: a ``PUT /v1/rules``
holds until the file next changes (or a node with the file starts with a different content).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streams.rules import EMPTY, InvalidRules, RuleSet, parse_rules

RULES_KEY = "pr:rules"
RULES_CHANNEL = "pr:rules"

#: KEYS[1] the rules hash; ARGV[1] the normalized body, ARGV[2] the channel.
#: Returns {1 when written else 0, the version now stored}.
_SAVE_LUA = """
local body = redis.call('HGET', KEYS[1], 'body')
if body == ARGV[1] then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'v') or '0')}
end
local v = redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('HSET', KEYS[1], 'body', ARGV[1])
redis.call('PUBLISH', ARGV[2], tostring(v))
return {1, v}
"""

#: Called with (source, outcome): source ``api`` / ``file`` / ``redis``; outcome ``ok``,
#: ``unchanged``, ``invalid`` or ``error``.
Observer = Callable[[str, str], None]

log = structlog.get_logger(__name__)


def _ignore(_source: str, _outcome: str) -> None:
    return None


class RulesStore:
    """The rules in force on this node, kept equal to Redis's; ``apply`` gets every new set."""

    def __init__(
        self,
        redis: Redis,
        apply: Callable[[RuleSet], None],
        *,
        observe: Observer = _ignore,
    ) -> None:
        self._redis = redis
        self._apply = apply
        self._observe = observe
        self._save = redis.register_script(_SAVE_LUA)
        self._lock = asyncio.Lock()
        self.current: RuleSet = EMPTY
        self._body = EMPTY.body()

    async def save(self, rules: RuleSet, *, source: str) -> RuleSet:
        """Store ``rules`` (a new version only when they differ from the stored ones), then apply
        what Redis holds; returns the rule set now in force on this node."""
        written, _ = await self._save(keys=[RULES_KEY], args=[rules.body(), RULES_CHANNEL])
        self._observe(source, "ok" if written else "unchanged")
        return await self.refresh()

    async def refresh(self) -> RuleSet:
        """Read the stored rules and apply them when they differ from the current ones.

        Serialized, so an older read never replaces a newer one. When Redis holds no rules (never
        written, or flushed) the current ones stay. Stored rules that no longer validate are
        logged and skipped (the current ones stay).
        """
        async with self._lock:
            raw_v, raw_body = await self._redis.hmget(RULES_KEY, ["v", "body"])
            if raw_v is None or raw_body is None:
                return self.current
            version = int(raw_v)
            body = raw_body.decode() if isinstance(raw_body, bytes) else str(raw_body)
            if version == self.current.version and body == self._body:
                return self.current
            try:
                rules = parse_rules(body, source=RULES_KEY).with_version(version)
            except InvalidRules as exc:
                log.error("rules_stored_invalid", version=version, error=str(exc))
                self._observe("redis", "invalid")
                return self.current
            self.current, self._body = rules, body
            self._apply(rules)
            log.info("rules_applied", version=version, rules=len(rules))
            return rules

    async def follow(self) -> None:
        """Apply every other node's writes until cancelled (subscribe, reload, then one reload per
        announcement; after a lost connection, again)."""
        delay = 0.5
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(RULES_CHANNEL)
                    await self.refresh()
                    delay = 0.5
                    async for _message in pubsub.listen():
                        await self.refresh()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                log.warning("rules_follow_lost", error=type(exc).__name__)
            except Exception:  # a bug or an unexpected reply: keep following, loudly
                log.exception("rules_follow_failed")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


class RulesFile:
    """Polls one rules file and saves each new valid content through a :class:`RulesStore`."""

    def __init__(
        self,
        path: Path,
        store: RulesStore,
        *,
        known_item: Callable[[str], bool] | None = None,
        interval_s: float = 1.0,
        observe: Observer = _ignore,
    ) -> None:
        self.path = path
        self._store = store
        self._known_item = known_item
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
        rules were saved. A missing or unreadable file changes nothing."""
        stamp = self._stamp()
        if stamp is None:
            if self._seen is not None or self.error is None:
                self.error = f"{self.path}: cannot read the rules file"
                log.warning("rules_file_missing", path=str(self.path))
            self._seen = None
            return False
        if stamp == self._seen:
            return False
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.error = f"{self.path}: {type(exc).__name__}"
            log.error("rules_file_unreadable", path=str(self.path), error=type(exc).__name__)
            self._observe("file", "error")
            return False
        try:
            rules = parse_rules(text, source=self.path.name, known_item=self._known_item)
        except InvalidRules as exc:
            self._seen = stamp  # refused once; read again when the file changes
            self.error = str(exc)
            log.error("rules_file_invalid", path=str(self.path), error=str(exc), line=exc.line)
            self._observe("file", "invalid")
            return False
        await self._store.save(rules, source="file")  # raises on Redis errors: retried
        self._seen, self.error = stamp, None
        return True

    async def watch(self) -> None:
        """Poll until cancelled; Redis failures are logged and retried on the next tick."""
        while True:
            try:
                await self.check()
            except (RedisError, OSError) as exc:
                log.warning("rules_file_save_failed", error=type(exc).__name__)
                self._observe("file", "error")
            await asyncio.sleep(self._interval_s)
