"""Redis pub/sub broker: carries a user's feed updates to every node holding that user's sockets.

Each user has one channel, ``pr:{u:<id>}:ch``. Its hash tag puts it in the user's slot, so with
``sharded=True`` the broker uses SPUBLISH/SSUBSCRIBE (sharded pub/sub, Redis >= 7) instead of
PUBLISH/SUBSCRIBE. A node keeps one pub/sub connection and one reader task.

Guarantees, beyond those of :mod:`sessions.broker`:

- When :meth:`RedisBroker.watch` returns, Redis has confirmed the subscription. When it is not
  confirmed within ``confirm_timeout_s`` (Redis unreachable, or refusing the SUBSCRIBE), ``watch``
  raises :class:`~sessions.exceptions.SubscribeFailed`; the user stays watched (a reconnect may
  still subscribe it) until the caller gives up with :meth:`RedisBroker.unwatch`.
- Per ``(user, feed)`` a version of the same epoch that is not newer than the last one delivered is
  dropped (duplicate or out of order); a version of another epoch always passes.
- A message that does not decode, or whose user does not own the channel it came on, is logged,
  counted in ``bad_messages``, passed to ``on_bad_message`` and skipped; an exception raised by
  ``deliver`` is logged and swallowed. Neither stops the reader.
- The pub/sub connection runs no redis-py health check: that check sends a PING and reads its
  reply from whichever task sends a command, here while the reader task is reading the same
  socket (``RuntimeError: read() called while another coroutine is already waiting``, redis-py
  #1720). It has a pool of its own for that reason, whatever the client's settings, and no
  retries either: only the reader ever (re)connects it. Liveness comes from the reader instead: it
  sends PING after ``ping_interval_s`` without traffic, and a connection that stays silent for
  another interval is lost.
- Anything that goes wrong in the reader (a lost connection, an error reply such as a refused
  SUBSCRIBE, a bug) counts as a lost connection: it is dropped, and the reader reconnects with
  capped, fully jittered backoff, subscribes every watched user again and, once Redis confirmed
  all of them, calls ``on_gap(users)``: updates of those users may have been missed, so their
  connections should take a snapshot.
- :meth:`RedisBroker.publish` is one round trip and raises the client's ``redis`` errors: the
  version is already stored, so the caller may retry, and clients recover by snapshot anyway.
  ``unwatch`` never raises: the reconnect repairs subscriptions.

On Redis Cluster a sharded subscription must be made on the node owning the slot; this class
holds a single connection, so it serves a standalone Redis or one master of a cluster:
:class:`sessions.broker_cluster.RedisClusterBroker` runs one per master, routes each user to the
master owning its channel's slot, and is told through two hooks when that may have changed:
``on_lost`` (each time the connection is found lost, before the backoff) and ``on_moved(users)``
(the server ended subscriptions it was not asked to end: Redis sends ``sunsubscribe`` for the
channels of a slot the node no longer serves, after a migration or when it became a replica).
A user given up with :meth:`RedisBroker.unwatch` while its :meth:`~RedisBroker.watch` still waits
for confirmation makes that ``watch`` raise :class:`~sessions.exceptions.SubscribeFailed` at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessions.backoff import Backoff
from sessions.broker import Deliver
from sessions.codec import CodecError, decode_update, encode_update
from sessions.exceptions import SubscribeFailed
from sessions.feeds import FeedUpdate
from sessions.keys import channel_key
from sessions.versions import Version

log = structlog.get_logger(__name__)

_LOST = (RedisConnectionError, RedisTimeoutError, OSError)


class RedisBroker:
    """Publish/subscribe of feed updates over Redis, one channel per user."""

    bad_messages: int
    """How many received messages were skipped as malformed."""

    def __init__(
        self,
        redis: Redis,
        *,
        sharded: bool = False,
        on_gap: Callable[[frozenset[str]], None] | None = None,
        on_bad_message: Callable[[bytes], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        on_moved: Callable[[frozenset[str]], None] | None = None,
        confirm_timeout_s: float = 5.0,
        backoff_s: tuple[float, float] = (0.05, 5.0),
        ping_interval_s: float = 30.0,
    ) -> None:
        if redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisBroker needs a client with decode_responses=False")
        self._redis = redis
        self._sharded = sharded
        self._on_gap = on_gap
        self._on_bad_message = on_bad_message
        self._on_lost = on_lost
        self._on_moved = on_moved
        self._confirm_timeout_s = confirm_timeout_s
        self._ping_interval_s = ping_interval_s
        self._backoff = Backoff(*backoff_s)
        self._deliver: Deliver | None = None
        self._pubsub: Any = None  # redis-py's PubSub is untyped
        self._subscriber: Redis | None = None  # owns the pub/sub connection's own pool
        self._reader: asyncio.Task[None] | None = None
        self._watched: set[str] = set()
        self._last: dict[str, dict[str, Version]] = {}
        self._waiters: dict[bytes, asyncio.Future[None]] = {}
        self._gap: frozenset[str] = frozenset()
        self._unconfirmed: set[bytes] = set()
        self.bad_messages = 0

    async def start(self, deliver: Deliver) -> None:
        """Connect the pub/sub connection, subscribe watched users, start the reader (idempotent).

        Raises the client's ``redis`` errors when Redis cannot be reached.
        """
        if self._reader is not None:
            return
        pool = self._redis.connection_pool
        # The client's connection settings (address, credentials, name, timeouts), minus the
        # health check and the retries: see the module's docstring.
        kwargs = {
            **pool.connection_kwargs,
            "health_check_interval": 0,
            "retry": Retry(NoBackoff(), 0),
        }
        subscriber = Redis.from_pool(
            ConnectionPool(connection_class=pool.connection_class, **kwargs)
        )
        pubsub: Any = subscriber.pubsub()
        try:
            await pubsub.connect()
            self._deliver, self._pubsub, self._subscriber = deliver, pubsub, subscriber
            pubsub.connection.register_connect_callback(self._reconnected)
            if self._watched:
                await self._subscribe(*(channel_key(u) for u in self._watched))
        except BaseException:
            self._deliver = self._pubsub = self._subscriber = None
            await pubsub.aclose()
            await subscriber.aclose()
            raise
        self._reader = asyncio.create_task(self._read(pubsub), name="redis-broker-reader")

    async def stop(self) -> None:
        """Cancel the reader and close the pub/sub connection (idempotent)."""
        reader, pubsub, subscriber = self._reader, self._pubsub, self._subscriber
        self._reader = self._pubsub = self._deliver = self._subscriber = None
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if pubsub is not None:
            await pubsub.aclose()
        if subscriber is not None:
            await subscriber.aclose()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        self._watched.clear()
        self._last.clear()
        self._gap, self._unconfirmed = frozenset(), set()

    async def publish(self, update: FeedUpdate) -> None:
        """Send ``update`` on its user's channel (one round trip; raises ``redis`` errors)."""
        await self.publish_many([update])

    async def publish_many(self, updates: Sequence[FeedUpdate]) -> None:
        """Send ``updates`` in order, in one pipelined round trip (raises ``redis`` errors)."""
        if not updates:
            return
        pipe = self._redis.pipeline(transaction=False)
        for update in updates:
            data = encode_update(update)
            if self._sharded:
                pipe.spublish(channel_key(update.user), data)
            else:
                pipe.publish(channel_key(update.user), data)
        await pipe.execute()

    async def watch(self, user: str) -> None:
        """Subscribe to ``user``'s channel once and wait for Redis to confirm it.

        Raises :class:`SubscribeFailed` when no confirmation came within ``confirm_timeout_s``
        (a lost connection meanwhile is no failure by itself: the reconnect subscribes again).
        """
        if user in self._watched:
            return
        self._watched.add(user)
        if self._pubsub is None:
            return
        channel = channel_key(user).encode()
        waiter = self._waiters[channel] = asyncio.get_running_loop().create_future()
        # While the connection is down the reconnect subscribes every watched user; sending from
        # here too would race the reader's reconnect on the same connection.
        pubsub = self._pubsub
        if pubsub.connection.is_connected:
            try:
                await self._subscribe(channel.decode())
            except _LOST as exc:
                log.warning("broker.subscribe_failed", error=repr(exc))
            except Exception as exc:  # the connection is in a state we do not know: drop it
                log.warning("broker.subscribe_failed", error=type(exc).__name__)
                await self._drop(pubsub)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self._confirm_timeout_s)
        except TimeoutError:
            log.warning("broker.subscribe_unconfirmed", timeout_s=self._confirm_timeout_s)
            raise SubscribeFailed(
                f"Redis did not confirm the subscription within {self._confirm_timeout_s:g} s"
            ) from None
        finally:
            if self._waiters.get(channel) is waiter:
                del self._waiters[channel]

    async def unwatch(self, user: str) -> None:
        """Unsubscribe from ``user``'s channel, forget its versions; nothing more is delivered."""
        if user not in self._watched:
            return
        self._watched.discard(user)
        self._last.pop(user, None)
        channel = channel_key(user)
        self._unconfirmed.discard(channel.encode())
        waiter = self._waiters.pop(channel.encode(), None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(SubscribeFailed("the user was unwatched before Redis confirmed"))
        self._report_gap()
        if self._pubsub is None or not self._pubsub.connection.is_connected:
            return  # the reconnect drops subscriptions of users no longer watched
        pubsub = self._pubsub
        try:
            if self._sharded:
                await pubsub.sunsubscribe(channel)
            else:
                await pubsub.unsubscribe(channel)
        except _LOST as exc:
            log.warning("broker.unsubscribe_failed", error=repr(exc))
        except Exception as exc:  # the connection is in a state we do not know: drop it
            log.warning("broker.unsubscribe_failed", error=type(exc).__name__)
            await self._drop(pubsub)

    async def _subscribe(self, *channels: str) -> None:
        assert self._pubsub is not None
        if self._sharded:
            await self._pubsub.ssubscribe(*channels)
        else:
            await self._pubsub.subscribe(*channels)

    async def _reconnected(self, _connection: Any) -> None:
        """Runs inside redis-py after every reconnect, after it re-sent its known subscriptions."""
        pubsub = self._pubsub
        if pubsub is None:
            return
        wanted = {channel_key(u).encode() for u in self._watched}
        held = set(pubsub.shard_channels if self._sharded else pubsub.channels)
        if held - wanted:
            await (pubsub.sunsubscribe if self._sharded else pubsub.unsubscribe)(*(held - wanted))
        if wanted - held:
            await self._subscribe(*(c.decode() for c in wanted - held))
        if wanted:
            log.warning("broker.resubscribed", users=len(wanted))
            self._gap |= frozenset(self._watched)
            self._unconfirmed |= wanted

    async def _read(self, pubsub: Any) -> None:
        """The reader task: the only one that reads the pub/sub connection or (re)connects it."""
        pinged = False  # a PING went out and nothing came back since
        while True:
            try:
                message = await pubsub.get_message(timeout=self._ping_interval_s)
                if message is None:
                    if pinged:
                        raise RedisTimeoutError(
                            f"no reply to PING within {self._ping_interval_s:g} s"
                        )
                    pinged = True
                    await pubsub.ping()
                    continue
                pinged = False
                self._backoff.reset()  # read something: the connection works
                self._handle(message)
            except Exception as exc:  # whatever it was, the connection's state is unknown
                pinged = False
                await self._lost(pubsub, exc)

    async def _lost(self, pubsub: Any, exc: Exception) -> None:
        """Drop the connection and wait out the backoff; the next read reconnects."""
        delay = self._backoff.next()
        # A lost connection's error names the address; any other may quote what it choked on
        # (a channel holds a user id), so only its type is logged.
        error = repr(exc) if isinstance(exc, _LOST) else type(exc).__name__
        log.warning("broker.pubsub_lost", error=error, retry_in_s=round(delay, 3))
        await self._drop(pubsub)
        if self._on_lost is not None:
            try:
                self._on_lost()
            except Exception:
                log.exception("broker.callback_failed", callback="on_lost")
        await asyncio.sleep(delay)

    async def _drop(self, pubsub: Any) -> None:
        """Close the pub/sub connection and forget what redis-py would subscribe again: after
        the reconnect :meth:`_reconnected` subscribes exactly the watched users (a channel that
        Redis refused and that nobody watches any more must not be sent again)."""
        connection = pubsub.connection
        if connection is not None:
            await connection.disconnect(nowait=True)
        pubsub.channels.clear()
        pubsub.shard_channels.clear()
        pubsub.pending_unsubscribe_channels.clear()
        pubsub.pending_unsubscribe_shard_channels.clear()

    def _handle(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind in ("subscribe", "ssubscribe"):
            waiter = self._waiters.pop(channel, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            self._unconfirmed.discard(channel)
            self._report_gap()
            return
        if kind == "sunsubscribe" and self._on_moved is not None:
            # Ours (unwatch) concern users no longer watched; one of a watched user was pushed by
            # the server: its slot moved away from this node.
            user = self._user_of(channel)
            if user is not None:
                self._call(self._on_moved, frozenset((user,)))
            return
        if kind not in ("message", "smessage"):
            return
        try:
            update = decode_update(message["data"])
            if channel_key(update.user).encode() != channel:
                raise CodecError("the update's user does not own the channel it came on")
        except CodecError as exc:
            self.bad_messages += 1
            log.warning("broker.bad_message", error=str(exc))
            if self._on_bad_message is not None:
                self._call(self._on_bad_message, message["data"])
            return
        if update.user not in self._watched or self._deliver is None:
            return
        versions = self._last.setdefault(update.user, {})
        last, new = versions.get(update.feed), update.state.version
        if last is not None and last.epoch == new.epoch and new.n <= last.n:
            return
        versions[update.feed] = new
        self._call(self._deliver, update)

    def _user_of(self, channel: bytes) -> str | None:
        """The watched user whose channel is ``channel`` (a linear scan: rare events only)."""
        for user in self._watched:
            if channel_key(user).encode() == channel:
                return user
        return None

    def _report_gap(self) -> None:
        if self._gap and not self._unconfirmed:
            users, self._gap = self._gap & self._watched, frozenset()
            if users and self._on_gap is not None:
                self._call(self._on_gap, users)

    @staticmethod
    def _call(fn: Callable[[Any], None], arg: object) -> None:
        try:
            fn(arg)
        except Exception:
            log.exception("broker.callback_failed", callback=getattr(fn, "__qualname__", "?"))
