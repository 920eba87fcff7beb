"""One authenticated push connection, whatever its transport: the protocol's behaviour.

A :class:`Session` is driven by callbacks, never by a task of its own: the hub offers updates,
the transport hands in client messages and flow-control signals, and the node's sweep ticks it.
Work that must wait for Redis (a snapshot, a replay, tracked events) runs as short tasks.

Guarantees:

- Registered with the hub *before* a feed's stored state is read; updates that arrive while the
  read is in flight are held (up to ``max_pending_diffs``, then the read is repeated) and applied
  after it, so nothing falls between the snapshot and the first diff.
- A feed is resumed all or nothing: every missed diff from the user's history, in order, or one
  snapshot (see :meth:`sessions.feeds.FeedStore.read_since`).
- While the transport cannot take more bytes, only the latest update of each feed is kept
  (conflation); when it drains the client gets one frame per feed that moved. A connection
  behind for ``send_timeout_s`` is closed with 4001.
- Only updates of :attr:`user` ever reach the connection (the hub files it under that user).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from push import protocol
from push.collector import collect
from push.exceptions import PushError
from push.protocol import Action, ClientMessage, ClientState, Codec, ItemTable, ProtocolError
from push.runtime import Runtime
from sessions.backoff import Backoff
from sessions.exceptions import InvalidToken
from sessions.feeds import FeedState, FeedUpdate
from sessions.tokens import Claims
from sessions.versions import Version
from streams.exceptions import SourceUnavailable
from streams.merge import merge_profiles

log = structlog.get_logger(__name__)

#: How long a connection waits for the feed store to come back before giving up on it.
STORE_PATIENCE_S = 15.0
MAX_REFUSED = 10
CloseCode = protocol.CloseCode


class Sink(Protocol):
    """The transport side of a session."""

    transport: str  # "websocket" | "sse" (metrics label)
    codec: Codec

    def write(self, data: bytes, kind: str, resume: str | None) -> None:
        """Queue one encoded message; never blocks (flow control comes back as pause/resume)."""

    def end(self, code: int, reason: str) -> None:
        """Close the connection with ``code`` and ``reason``."""


class Unavailable(PushError):
    """The feed store stayed unreachable: the client should reconnect (maybe elsewhere)."""


class Session:
    """Serves one connection of one user."""

    __slots__ = (
        "_attached",
        "_bucket",
        "_conflated",
        "_deferred",
        "_last_ping",
        "_loading",
        "_paused_since",
        "_refused",
        "_resume_ids",
        "_shown",
        "anonymous",
        "client",
        "closed",
        "conn",
        "exp",
        "items",
        "last_seen",
        "opened",
        "runtime",
        "sink",
        "user",
    )

    def __init__(
        self, runtime: Runtime, sink: Sink, claims: Claims, *, item_table: bool, resume_ids: bool
    ) -> None:
        now = time.monotonic()
        self.runtime = runtime
        self.sink = sink
        self.user = claims.sub
        self.exp = claims.exp
        self.anonymous = claims.anonymous
        self.conn = secrets.token_hex(6)
        self.client = ClientState()
        self.items = ItemTable() if item_table else None
        self._resume_ids = resume_ids
        #: feed -> updates held while its state is read; None: too many, read again afterwards
        self._loading: dict[str, list[FeedUpdate] | None] | None = None
        #: feed -> latest update while the transport is paused
        self._conflated: dict[str, FeedUpdate] | None = None
        self._paused_since = 0.0
        #: feed -> the list the client holds (the stored state's items, shared, not copied): kept
        #: only to restore a feed whose stored version Redis lost (see _read_and_send).
        self._shown: dict[str, Any] | None = None
        self.last_seen = now
        self._last_ping = now
        s = runtime.settings
        self._bucket = protocol.RateLimit(s.message_burst, now)
        self._refused = 0
        self.closed = False
        self._attached = False
        #: True once hello went out and the first subscriptions exist; client messages that
        #: arrive earlier wait in ``_deferred`` so they are answered after hello, in order.
        self.opened = False
        self._deferred: list[Callable[[], None]] | None = None

    @property
    def log(self) -> Any:
        """This connection's logger: ``conn`` and ``transport`` bound in one place (never the
        user: the connection id ties a line to the hello the client saw, without naming them).
        Built on use: log lines are rare, sessions many (an idle socket's memory counts)."""
        return log.bind(conn=self.conn, transport=self.sink.transport)

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self, feeds: tuple[str, ...], have: Mapping[str, Version]) -> None:
        """Register with the hub, send hello, and subscribe to ``feeds`` (resuming ``have``).

        Never raises: when the setup fails (e.g. the broker could not subscribe the user's
        updates) the connection is closed with 4004 and a reason, counted in the closes metric,
        rather than left open without hello.
        """
        try:
            await self._open(feeds, have)
        except Exception as exc:
            self.log.warning("connection_setup_failed", error=type(exc).__name__)
            self.close(CloseCode.SETUP_FAILED, "could not subscribe to updates; reconnect")

    async def _open(self, feeds: tuple[str, ...], have: Mapping[str, Version]) -> None:
        rt = self.runtime
        await rt.hub.attach(self.user, self)
        self._attached = True
        if self.closed:  # the peer left while we registered
            self._detach()
            return
        rt.connections.add(self)
        rt.metrics.connections.labels(self.sink.transport).inc()
        hello = protocol.hello(self.user, self.conn, rt.settings.ping_interval_s, self.exp)
        self._write(hello, "hello")
        for feed in feeds:
            self._subscribe(feed, have.get(feed))
        self.opened = True
        deferred, self._deferred = self._deferred, None
        for run in deferred or ():
            if self.closed:
                break
            run()

    def defer(self, run: Callable[[], None]) -> None:
        """Handle a client message once the session is open (bounded by the message burst)."""
        if self._deferred is None:
            self._deferred = []
        if len(self._deferred) >= self.runtime.settings.message_burst:
            self.close(CloseCode.BAD_REQUEST, "too many messages before hello")
            return
        self._deferred.append(run)

    def close(self, code: int, reason: str) -> None:
        """End the connection with ``code`` (docs/PROTOCOL.md) and ``reason``."""
        if self.closed:
            return
        self.runtime.metrics.closes.labels(protocol.close_name(code)).inc()
        self.log.debug("connection_closed", code=code)
        self.sink.end(code, reason)
        self.lost()

    def lost(self) -> None:
        """The connection is gone: stop everything it holds."""
        if self.closed:
            return
        self.closed = True
        self._loading = self._conflated = None
        rt = self.runtime
        rt.connections.discard(self)
        if self._attached:
            rt.metrics.connections.labels(self.sink.transport).dec()
            self._detach()

    def _detach(self) -> None:
        self._attached = False
        self.runtime.connections.spawn(self.runtime.hub.detach(self.user, self))

    def tick(self, now: float, wall: float) -> None:
        """Called by the sweep about once a second: heartbeat, slowness and expiry deadlines."""
        s = self.runtime.settings
        if self._paused_since and now - self._paused_since > s.send_timeout_s:
            self.close(CloseCode.SLOW, "client too slow; reconnect")
        elif now - self.last_seen > 2 * s.ping_interval_s:
            self.close(CloseCode.HEARTBEAT, "no message from the client for two ping intervals")
        elif wall > self.exp + s.token_leeway_s:
            self.close(CloseCode.UNAUTHORIZED, "token expired")
        elif now - self._last_ping >= s.ping_interval_s:
            self._last_ping = now
            self._write(protocol.PING, "ping")

    # -- flow control -----------------------------------------------------------------------

    def pause(self) -> None:
        """The transport holds too many unsent bytes: conflate from now on."""
        if not self._paused_since:
            self._paused_since = time.monotonic()

    def resume(self) -> None:
        """The transport drained: send what moved meanwhile, one frame per feed."""
        self._paused_since = 0.0
        conflated, self._conflated = self._conflated, None
        for update in (conflated or {}).values():
            if self.closed or self._paused_since:
                self._keep_latest(update)
            else:
                self._deliver(update, conflated=True)

    # -- updates from the hub ---------------------------------------------------------------

    def offer(self, update: FeedUpdate) -> None:
        """Take one update of this user (called by the hub; never blocks)."""
        if self.closed or not self.client.subscribed(update.feed):
            return
        loading = self._loading
        if loading is not None and update.feed in loading:
            held = loading[update.feed]
            if held is not None:
                if len(held) >= self.runtime.settings.max_pending_diffs:
                    loading[update.feed] = None
                    self.runtime.metrics.conflations.inc()
                else:
                    held.append(update)
            return
        if self._paused_since:
            self._keep_latest(update)
            return
        self._deliver(update)

    def resync(self) -> None:
        """Updates may have been missed (broker gap): resume every feed from what it holds."""
        for feed in self.client.feeds:
            if self._loading is None or feed not in self._loading:
                self._load(feed, self.client.held(feed))

    def _keep_latest(self, update: FeedUpdate) -> None:
        if self._conflated is None:
            self._conflated = {}
        if update.feed in self._conflated:
            self.runtime.metrics.conflations.inc()
        self._conflated[update.feed] = update

    def _deliver(self, update: FeedUpdate, *, conflated: bool = False) -> None:
        action = self.client.on_update(update)
        if action is Action.SEND:
            self._send_diff(update)
        elif action is Action.SNAPSHOT:
            held = self.client.held(update.feed)
            if not conflated and held is not None and held.epoch == update.state.version.epoch:
                # A gap in the chain (a version stored but never published, e.g. by a worker
                # killed in between): replay it from history rather than jump by snapshot.
                self._load(update.feed, held)
                return
            self._snapshot(update.state, protocol.cached_snapshot(update, self.sink.codec))
        else:
            return
        if update.entered_ms and not self.closed:
            latency = time.time() - update.entered_ms / 1000
            self.runtime.metrics.push_latency.labels(self.sink.transport).observe(max(0.0, latency))

    def _send_diff(self, update: FeedUpdate) -> None:
        assert update.diff is not None and update.base is not None
        codec = self.sink.codec
        table = self.items
        new_items = update.diff["items"]
        if table is None:
            data, sent = protocol.cached_diff(update, codec), list(new_items.values())
        else:
            unknown = {i: p for i, p in new_items.items() if not table.holds(i, p)}
            if len(unknown) == len(new_items):
                data = protocol.cached_diff(update, codec)
            else:
                state = update.state
                message = protocol.diff(
                    state.feed,
                    update.base,
                    state.version,
                    update.diff,
                    state.sum,
                    unknown,
                    tag=state.tag,
                )
                data = protocol.encode(message, codec)
            sent = list(unknown.values())
        # A snapshot can only be the smaller frame when the diff carries most of the payloads:
        # only then is it encoded (once per update and codec) to compare.
        if 2 * len(new_items) >= len(update.state.items):
            full = protocol.cached_snapshot(update, codec)
            if len(full) <= len(data):  # a diff that replaces (almost) everything
                self._mark_sent(update.state.items)
                self._holds(update.state)
                self._write_data(full, "snapshot")
                return
        patched = update.diff["patch"]
        if patched:
            sent.extend(p for p in update.state.items if str(p["id"]) in patched)
        self._mark_sent(sent)
        self._holds(update.state)
        self._write_data(data, "diff")

    def _snapshot(self, state: FeedState, data: bytes | None = None) -> None:
        if not self.client.wants(state):
            return
        self.client.now_holds(state.feed, state.version)
        self._mark_sent(state.items)
        self._holds(state)
        self._write_data(
            data or protocol.encode(protocol.snapshot(state), self.sink.codec), "snapshot"
        )

    def _holds(self, state: FeedState) -> None:
        """Remember the list the client now holds of ``state.feed`` (a reference)."""
        if self._shown is None:
            self._shown = {}
        self._shown[state.feed] = state.items

    def _mark_sent(self, payloads: Any) -> None:
        if self.items is not None:
            self.items.sent(payloads)

    # -- subscriptions and stored state -----------------------------------------------------

    def _subscribe(self, feed: str, have: Version | None, ref: int | str | None = None) -> bool:
        """Start serving ``feed``; False when it was refused (an error went out)."""
        if feed not in self.runtime.served_feeds:
            self.refuse(ProtocolError("unknown_feed", f"no feed named {feed[:32]!r}", ref))
            return False
        if have is not None:  # the client says what it holds: trust that over our record
            self.client.unsubscribe(feed)
        self.client.subscribe(feed)
        self._load(feed, have if have is not None else self.client.held(feed))
        return True

    def _load(self, feed: str, have: Version | None) -> None:
        if self._loading is None:
            self._loading = {}
        self._loading[feed] = []
        self.runtime.connections.spawn(self._read_and_send(feed, have))

    async def _read_and_send(self, feed: str, have: Version | None) -> None:
        try:
            resume = await self._patiently(
                lambda: self.runtime.feeds.read_since(self.user, feed, have)
            )
            state = resume.state
            if state is None:
                # Redis lost the stored feed (restart, flush) while the client holds a version:
                # a list recomputed from the emptied profile must not replace the one it holds.
                shown = self._shown.get(feed) if self._shown and have is not None else None
                state = await self._patiently(
                    lambda: self.runtime.processor.ensure_feed(self.user, feed, shown)
                )
        except Unavailable:
            self.close(CloseCode.UNAVAILABLE, "feed store unreachable; reconnect")
            return
        except Exception as exc:  # a bug must not leave the feed loading forever
            self.log.error("feed_load_failed", error=type(exc).__name__)
            self.close(CloseCode.UNAVAILABLE, "feed could not be loaded; reconnect")
            return
        if self.closed or not self.client.subscribed(feed):
            return
        if resume.updates is not None and have is not None:
            for replayed in resume.updates:
                message = protocol.diff(
                    feed,
                    replayed.base,
                    replayed.version,
                    replayed.diff,
                    replayed.sum,
                    tag=replayed.tag,
                )
                self.client.now_holds(feed, replayed.version)
                self._mark_sent(replayed.diff["items"].values())
                self._write(message, "diff")
            if not resume.updates:
                self.client.now_holds(feed, have)
            self._holds(state)
            if self.items is not None:  # patched payloads of replayed diffs: start from the list
                self.items.sent(state.items)
        else:
            self._snapshot(state)
        self._after_load(feed)

    def _after_load(self, feed: str) -> None:
        loading = self._loading
        if loading is None or feed not in loading:
            return
        held = loading.pop(feed)
        if not loading:
            self._loading = None
        if held is None:  # too many updates raced the read: read again from what we hold now
            self._load(feed, self.client.held(feed))
            return
        for update in held:
            self.offer(update)

    async def _patiently(self, read: Callable[[], Awaitable[Any]]) -> Any:
        """Run a Redis read, riding out a short outage; :class:`Unavailable` after the patience."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(0.1, 2.0)
        deadline = loop.time() + STORE_PATIENCE_S
        while True:
            try:
                return await read()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                delay = backoff.next()
                if loop.time() + delay > deadline or self.closed:
                    raise Unavailable("feed store unreachable") from exc
                await asyncio.sleep(delay)

    # -- client messages --------------------------------------------------------------------

    def received(self) -> bool:
        """Note a sign of life; False when the message must be dropped (rate limit)."""
        now = time.monotonic()
        self.last_seen = now
        s = self.runtime.settings
        if self._bucket.allow(now, s.max_messages_per_s, s.message_burst):
            return True
        self.refuse(ProtocolError("rate_limited", f"more than {s.max_messages_per_s:g} messages/s"))
        return False

    def refuse(self, exc: ProtocolError) -> None:
        """Answer a refused message with an error; close with 4500 after too many in a row."""
        self.runtime.metrics.bad_frames.labels(exc.code).inc()
        self._refused += 1
        if self._refused >= MAX_REFUSED:
            self.close(CloseCode.BAD_REQUEST, "too many refused messages")
            return
        self._write(protocol.error(exc.code, exc.message, exc.ref), "error")

    def handle(self, msg: ClientMessage) -> None:
        """Act on one valid client message."""
        if self.closed:
            return
        self._refused = 0
        kind = msg.type
        if kind == "ping":
            pong = protocol.PONG if msg.id is None else {**protocol.PONG, "ref": msg.id}
            self._write(pong, "pong")
        elif kind == "pong":
            pass
        elif kind == "auth":
            self._reauth(msg)
        elif kind == "subscribe":
            # A message is answered with an ack *or* an error (docs/PROTOCOL.md): when a feed
            # was refused (unknown_feed, already answered with its error), no ack follows; the
            # known feeds of the message are subscribed all the same.
            subscribed = [self._subscribe(feed, msg.have.get(feed), msg.id) for feed in msg.feeds]
            if all(subscribed):
                self._ack(msg)
        elif kind == "unsubscribe":
            for feed in msg.feeds:
                self.client.unsubscribe(feed)
                if self._conflated is not None:
                    self._conflated.pop(feed, None)
                if self._shown is not None:
                    self._shown.pop(feed, None)
            self._ack(msg)
        elif kind == "resync":
            assert msg.feed is not None
            if not self.client.subscribed(msg.feed):
                self.refuse(
                    ProtocolError("unknown_feed", "resync of a feed not subscribed", msg.id)
                )
                return
            self.client.unsubscribe(msg.feed)  # forget the held version: a snapshot follows
            self.client.subscribe(msg.feed)
            self._load(msg.feed, None)
            self._ack(msg)
        elif kind == "track":
            self.runtime.connections.spawn(self._track(msg))
        elif kind == "identify":
            self._identify(msg)

    def _ack(self, msg: ClientMessage, **extra: Any) -> None:
        if msg.id is not None:
            self._write(protocol.ack(msg.type, msg.id, **extra), "ack")

    def _reauth(self, msg: ClientMessage) -> None:
        rt = self.runtime
        try:
            claims = rt.verifier.verify_claims(msg.token or "")
        except InvalidToken as exc:
            rt.metrics.auth_failures.labels(self.sink.transport, exc.reason).inc()
            self.close(CloseCode.UNAUTHORIZED, str(exc))
            return
        if claims.sub != self.user:
            rt.metrics.auth_failures.labels(self.sink.transport, "other_user").inc()
            self.close(CloseCode.FORBIDDEN, "a connection cannot change its user")
            return
        self.exp = claims.exp
        self._ack(msg, exp=claims.exp)

    def _identify(self, msg: ClientMessage) -> None:
        rt = self.runtime
        if not self.anonymous:
            message = "identify needs an anonymous connection"
            self.refuse(ProtocolError("forbidden", message, msg.id))
            return
        try:
            claims = rt.verifier.verify_claims(msg.token or "")
        except InvalidToken as exc:
            rt.metrics.auth_failures.labels(self.sink.transport, exc.reason).inc()
            self.refuse(ProtocolError("unauthorized", str(exc), msg.id))
            return
        if claims.anonymous:
            self.refuse(
                ProtocolError(
                    "forbidden",
                    "identify needs the token of a logged-in user, not an anonymous one",
                    msg.id,
                )
            )
            return
        self.anonymous = False  # one identify at a time; a failure below closes the connection
        rt.connections.spawn(self._become(claims, msg))

    async def _become(self, claims: Claims, msg: ClientMessage) -> None:
        """Merge the anonymous profile into ``claims.sub`` and rebind this connection to it.

        Detached from the anonymous id before attaching to the user, so no update of either
        can reach the connection in between; then every feed restarts with a snapshot.
        """
        rt = self.runtime
        anon = self.user
        try:
            merged = await self._patiently(
                lambda: merge_profiles(
                    rt.redis, anon, claims.sub, tuning=rt.profile_tuning, feeds=rt.served_feeds
                )
            )
            await self._patiently(lambda: rt.processor.refresh_feed(claims.sub))
        except Unavailable:
            self.close(CloseCode.UNAVAILABLE, "feed store unreachable; reconnect")
            return
        except Exception as exc:  # e.g. a lost race on the feed: the client must hear of it
            self.log.error("identify_failed", error=type(exc).__name__)
            self.close(CloseCode.UNAVAILABLE, "identify failed; reconnect and try again")
            return
        self.log.info("identified", merged=merged.merged)
        if self.closed:
            return
        await rt.hub.detach(anon, self)
        self.user, self.exp = claims.sub, claims.exp
        self._shown = None  # the anonymous id's lists are not the user's
        await rt.hub.attach(self.user, self)
        if self.closed:
            await rt.hub.detach(self.user, self)
            return
        self._ack(msg, user=self.user)
        for feed in self.client.feeds:
            self.client.unsubscribe(feed)
            self.client.subscribe(feed)
            self._load(feed, None)

    async def _track(self, msg: ClientMessage) -> None:
        try:
            accepted, rejected = await collect(self.runtime, msg.events, user=self.user)
        except SourceUnavailable as exc:
            self._write(protocol.error("unavailable", str(exc), msg.id), "error")
            return
        if not self.closed:
            self._ack(msg, accepted=accepted, rejected=rejected)

    # -- writing ----------------------------------------------------------------------------

    def _write(self, message: Mapping[str, Any], kind: str) -> None:
        self._write_data(protocol.encode(message, self.sink.codec), kind)

    def _write_data(self, data: bytes, kind: str) -> None:
        if self.closed:
            return
        resume = None
        if self._resume_ids and kind in ("snapshot", "diff"):
            resume = protocol.resume_id(self.client.holding())
        self.sink.write(data, kind, resume)
        m = self.runtime.metrics
        m.frames_sent.labels(self.sink.transport, kind).inc()
        m.bytes_sent.labels(self.sink.transport).inc(len(data))
