"""One authenticated push connection, whatever its transport.

:meth:`LiveSession.run` registers the connection's outbox with the hub *before* reading the feed's
snapshot, so no update can fall between the snapshot and the first diff: an update that raced the
snapshot is either skipped (already contained) or applies right on top of it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from push import protocol
from push.protocol import Action, ClientState
from push.runtime import Runtime
from sessions.feeds import FeedState
from sessions.outbox import Outbox, SnapshotWanted

#: Transport-specific write: (frame text, frame type, resume id or None).
Send = Callable[[str, str, str | None], Awaitable[None]]
HOME = "home"


class SlowClient(Exception):
    """A frame could not be written within the send timeout."""


class Unavailable(Exception):
    """The feed store stayed unreachable: the client should reconnect (maybe elsewhere)."""


#: How long a connection waits for the feed store to come back before giving up on it.
STORE_PATIENCE_S = 15.0


def resume_id(state: FeedState) -> str:
    """The SSE ``id:`` of a frame that leaves the client at ``state``'s version."""
    return f"{state.feed}:{state.version.epoch}:{state.version.n}"


class LiveSession:
    """Writes a user's snapshot, then every change, to one connection."""

    def __init__(self, runtime: Runtime, user: str, transport: str, send: Send) -> None:
        self.runtime = runtime
        self.user = user
        self.transport = transport
        self.conn = secrets.token_hex(4)
        self._send_raw = send
        self._client = ClientState()
        m = runtime.metrics
        self.outbox = Outbox(
            max_diffs=runtime.settings.max_pending_diffs, on_conflate=m.conflations.inc
        )

    async def send(self, text: str, kind: str, rid: str | None = None) -> None:
        """Write one frame within the send timeout; raises :class:`SlowClient` otherwise."""
        try:
            async with asyncio.timeout(self.runtime.settings.send_timeout_s):
                await self._send_raw(text, kind, rid)
        except TimeoutError:
            raise SlowClient(
                f"frame not written within {self.runtime.settings.send_timeout_s} s"
            ) from None
        m = self.runtime.metrics
        m.frames_sent.labels(self.transport, kind).inc()
        m.bytes_sent.labels(self.transport).inc(len(text))

    async def run(self) -> None:
        """Send hello and the snapshot, then every update until the outbox closes."""
        hub = self.runtime.hub
        gauge = self.runtime.metrics.connections.labels(self.transport)
        await hub.attach(self.user, self.outbox)
        gauge.inc()
        try:
            await self.send(protocol.hello_frame(self.user, self.conn), "hello")
            await self._snapshot(await self._stored())
            while not self.outbox.closed:
                for work in await self.outbox.take():
                    if isinstance(work, SnapshotWanted):
                        await self._snapshot(await self._stored())
                        continue
                    action = self._client.on_update(work)
                    if action is Action.SEND:
                        kind, frame = protocol.update_frame(work)
                        await self.send(frame, kind, resume_id(work.state))
                    elif action is Action.SNAPSHOT:
                        await self._snapshot(work.state)
        finally:
            self.outbox.close()
            gauge.dec()
            await hub.detach(self.user, self.outbox)

    async def _stored(self) -> FeedState:
        """The stored feed, riding out a short Redis outage (restart, failover).

        Raises :class:`Unavailable` after ``STORE_PATIENCE_S``: the transport then closes with
        a reconnect code, and the client comes back to a node that can serve it.
        """
        delay = 0.1
        deadline = asyncio.get_running_loop().time() + STORE_PATIENCE_S
        while True:
            try:
                return await self.runtime.processor.ensure_feed(self.user)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise Unavailable("feed store unreachable") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _snapshot(self, state: FeedState) -> None:
        held = self._client.held(state.feed)
        if held is not None and held.epoch == state.version.epoch and held.n >= state.version.n:
            return
        self._client.sent_snapshot(state)
        await self.send(protocol.snapshot_frame(state), "snapshot", resume_id(state))
