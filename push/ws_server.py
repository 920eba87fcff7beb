"""The WebSocket endpoint ``/v1/ws`` as a bare asyncio protocol: no task, no timer when idle.

uvicorn parses the HTTP request and, on an upgrade, hands the connection to this protocol (its
``ws=`` class). From then on everything is callbacks: bytes in → :class:`~push.ws_codec.FrameReader`
→ :mod:`push.protocol` → :class:`~push.session.Session`; frames out are written to the transport
without waiting, and the transport's pause/resume drive the session's conflation. Idle cost is
this object, a frame reader, the session and the kernel socket (see benchmarks/idle_memory.py).

Guarantees: a connection is authenticated (``?token=`` or a first ``auth`` message within
``auth_timeout_s``) before it is registered anywhere; every refused handshake gets an HTTP status
with a JSON reason, every refused frame an ``error`` message or a close code of docs/PROTOCOL.md;
nothing a client sends can raise out of this protocol.
"""

from __future__ import annotations

import asyncio
import enum
import time
from typing import Any

import structlog

from push import protocol, sockets, ws_codec
from push.protocol import CloseCode, Codec, ProtocolError
from push.runtime import Runtime
from push.session import Session
from push.ws_codec import Message, Opcode, WsProtocolError
from sessions.exceptions import InvalidToken
from sessions.versions import Version

log = structlog.get_logger(__name__)
PATH = "/v1/ws"


class Phase(enum.IntEnum):
    """Where a WebSocket connection is. It only moves forward, through :meth:`WsConnection._enter`:
    HEAD (reading the upgrade request) → AUTH (upgraded, waiting for ``auth``) → OPEN (updates
    flow) → CLOSED; any phase may go straight to CLOSED."""

    HEAD = 0
    AUTH = 1
    OPEN = 2
    CLOSED = 3


#: After our close frame, how long the peer has to close its side before the socket is closed.
CLOSE_WAIT_S = 5.0


def protocol_for(runtime: Runtime) -> type[asyncio.Protocol]:
    """The ``ws=`` class for uvicorn, bound to ``runtime``."""
    return type("BoundWsConnection", (WsConnection,), {"__slots__": (), "runtime": runtime})


class WsConnection(asyncio.Protocol):
    """One WebSocket connection (the uvicorn ``ws`` protocol interface)."""

    runtime: Runtime
    __slots__ = (
        "_feeds",
        "_have",
        "_head",
        "_phase",
        "_reader",
        "_server_state",
        "_timer",
        "_transport",
        "codec",
        "session",
    )

    def __init__(self, config: Any = None, server_state: Any = None, app_state: Any = None) -> None:
        self._transport: asyncio.Transport | None = None
        self._server_state = server_state
        self._phase = Phase.HEAD
        self._head = b""
        self._reader: ws_codec.FrameReader | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._feeds: tuple[str, ...] = ()
        self._have: dict[str, Version] | None = None
        self.session: Session | None = None
        self.codec = Codec.JSON

    def _enter(self, phase: Phase) -> None:
        """The one place the phase changes: forward only (see :class:`Phase`)."""
        if phase < self._phase:
            raise RuntimeError(f"phase {self._phase.name} cannot go back to {phase.name}")
        self._phase = phase

    def _closed(self) -> bool:
        """Closed by now (a method, not a field read: handlers called in between may close)."""
        return self._phase is Phase.CLOSED

    # -- the Sink interface of the session --------------------------------------------------

    @property
    def transport(self) -> str:
        """Metrics label of this transport."""
        return "websocket"

    def write(self, data: bytes, kind: str, resume: str | None) -> None:
        """Write one message frame (text for JSON, binary for msgpack); compressed when
        permessage-deflate was negotiated and the frame is not shorter than the threshold."""
        if self._transport is None or self._closed():
            return
        opcode = Opcode.BINARY if self.codec is Codec.MSGPACK else Opcode.TEXT
        reader = self._reader  # knows whether deflate was negotiated: no slot of our own
        compress = (
            reader is not None
            and reader.deflate
            and len(data) >= self.runtime.settings.ws_deflate_min_bytes
        )
        self._transport.write(ws_codec.encode_frame(opcode, data, compress))

    def end(self, code: int, reason: str) -> None:
        """Send a close frame and close (after what is still queued for the peer)."""
        transport = self._transport
        if transport is None or self._closed():
            return
        self._enter(Phase.CLOSED)
        self._cancel_timer()
        transport.write(ws_codec.encode_close(code, reason))
        loop = asyncio.get_running_loop()
        if transport.can_write_eof():
            # Half-close (RFC 6455 7.1.1: the peer closes TCP first): a FIN after the close frame,
            # and whatever the peer still sends is read and dropped. Closing outright made the
            # kernel answer a flooding client's next bytes with a reset, which discards the close
            # frame unread: the client saw no code (seen in the rate-limit test under CI load).
            transport.write_eof()
            self._timer = loop.call_later(CLOSE_WAIT_S, self._hang_up)
        else:
            transport.close()
        if code == CloseCode.SLOW:
            # The 4001 close frame waits behind the backlog: a client that was only slow (e.g. a
            # throttled background tab) reads it, then 4001, and resumes, as docs/PROTOCOL.md
            # promises (aborting here cut the stream, maybe mid-frame, with no close code). One
            # that never reads is cut off after one more send timeout; nothing is queued after
            # the close frame, so memory stays bounded. connection_lost cancels the timer.
            self._cancel_timer()
            timeout = self.runtime.settings.send_timeout_s
            self._timer = loop.call_later(timeout, sockets.reset, transport)

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        # A fixed kernel send buffer: a client that stops reading must back up into the
        # transport, whose pause_writing drives conflation and the 4001 (push/sockets.py).
        sockets.bound_send_buffer(transport, self.runtime.settings.socket_sndbuf_bytes)
        if self._server_state is not None:
            self._server_state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._enter(Phase.CLOSED)
        self._cancel_timer()
        if self._server_state is not None:
            self._server_state.connections.discard(self)
        if self.session is not None:
            self.session.lost()
        self._transport = None

    def pause_writing(self) -> None:
        if self.session is not None:
            self.session.pause()

    def resume_writing(self) -> None:
        if self.session is not None:
            self.session.resume()

    def shutdown(self) -> None:
        """uvicorn is stopping: tell the client to reconnect elsewhere."""
        self._close(CloseCode.SHUTDOWN, "server shutting down; reconnect")

    def data_received(self, data: bytes) -> None:
        try:
            if self._phase == Phase.HEAD:
                data = self._handshake(data)
                if not data:
                    return
            if self._phase in (Phase.AUTH, Phase.OPEN) and self._reader is not None:
                for message in self._reader.feed(data):
                    self._on_message(message)
                    if self._closed():
                        return
        except WsProtocolError as exc:
            for message in exc.messages:  # complete messages that came before the bad bytes
                if self._closed():
                    return
                self._on_message(message)
            self.runtime.metrics.bad_frames.labels(f"ws_{exc.close_code}").inc()
            self._close(exc.close_code, exc.reason)
        except Exception as exc:  # never let a client's bytes take the node down
            log.error("ws_failed", error=type(exc).__name__)
            self._close(CloseCode.BAD_REQUEST, "internal error handling the message")

    # -- handshake --------------------------------------------------------------------------

    def _handshake(self, data: bytes) -> bytes:
        """Buffer the request head, answer it; returns bytes that followed the head."""
        assert self._transport is not None
        head = self._head + data
        if not ws_codec.head_complete(head):
            if len(head) > ws_codec.MAX_HEAD:
                self._reject(431, "headers_too_large", "request head too large")
            else:
                self._head = head
            return b""
        self._head = b""
        end = head.index(b"\r\n\r\n") + 4
        rest = head[end:]
        rt = self.runtime
        try:
            upgrade = ws_codec.parse_upgrade(head[:end])
            if upgrade.path != PATH:
                raise ws_codec.HandshakeError(
                    404, "not_found", f"no WebSocket at {upgrade.path[:64]}"
                )
            origins = rt.settings.origins()
            if upgrade.origin is not None and origins is not None and upgrade.origin not in origins:
                rt.metrics.auth_failures.labels("websocket", "origin").inc()
                raise ws_codec.HandshakeError(403, "forbidden_origin", "origin not allowed")
            try:
                self._feeds = protocol.parse_feeds(upgrade.query.get("feeds"), rt.default_feeds)
                self._have = protocol.parse_have(upgrade.query.get("have", ""))
            except ProtocolError as exc:
                raise ws_codec.HandshakeError(400, exc.code, exc.message) from None
        except ws_codec.HandshakeError as exc:
            self._reject(exc.status, exc.code, exc.message, exc.headers)
            return b""
        self.codec, chosen = Codec.for_subprotocols(upgrade.subprotocols)
        # permessage-deflate only when enabled and offered; never with context takeover.
        deflate = ws_codec.negotiate_deflate(upgrade.extensions) if rt.settings.ws_deflate else None
        self._transport.write(ws_codec.accept_response(upgrade.key, chosen, deflate))
        self._reader = ws_codec.FrameReader(rt.settings.max_message_bytes, deflate is not None)
        token = upgrade.query.get("token")
        if token is None:
            self._enter(Phase.AUTH)
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(rt.settings.auth_timeout_s, self._auth_timeout)
        else:
            self._authenticate(token)
        return rest

    def _reject(self, status: int, code: str, message: str, headers: Any = ()) -> None:
        assert self._transport is not None
        self.runtime.metrics.http_errors.labels(str(status), code).inc()
        self._enter(Phase.CLOSED)
        self._transport.write(ws_codec.reject_response(status, code, message, headers))
        self._transport.close()

    def _auth_timeout(self) -> None:
        self._timer = None
        if self._phase == Phase.AUTH:
            self._close(CloseCode.AUTH_TIMEOUT, "no auth message in time")

    def _authenticate(self, token: str) -> None:
        rt = self.runtime
        try:
            claims = rt.verifier.verify_claims(token)
        except InvalidToken as exc:
            rt.metrics.auth_failures.labels("websocket", exc.reason).inc()
            self._close(CloseCode.UNAUTHORIZED, str(exc))
            return
        self._cancel_timer()
        self._enter(Phase.OPEN)
        session = Session(rt, self, claims, item_table=True, resume_ids=False)  # type: ignore[arg-type]
        self.session = session
        feeds, have = self._feeds, self._have or {}
        self._feeds, self._have = (), None
        rt.connections.spawn(session.open(feeds, have))

    # -- frames -----------------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        assert self._transport is not None
        op = message.opcode
        if op == Opcode.PING:
            self._transport.write(ws_codec.encode_frame(Opcode.PONG, message.data))
            self._seen()
            return
        if op == Opcode.PONG:
            self._seen()
            return
        if op == Opcode.CLOSE:
            code = message.close_code or 1000
            self._close(1000 if code < 3000 else code, "")
            return
        text = op == Opcode.TEXT
        if self._phase == Phase.AUTH:
            self._first_message(message.data, text)
            return
        session = self.session
        if session is None:
            return
        if not session.opened:  # hello not sent yet: answer in order, after it
            session.defer(lambda: self._on_data(message.data, text))
            return
        self._on_data(message.data, text)

    def _on_data(self, data: bytes, text: bool) -> None:
        session = self.session
        if session is None or session.closed or not session.received():
            return
        try:
            msg = protocol.decode_client(data, self.codec, text=text)
        except ProtocolError as exc:
            session.refuse(exc)
            return
        session.handle(msg)

    def _first_message(self, data: bytes, text: bool) -> None:
        try:
            msg = protocol.decode_client(data, self.codec, text=text)
        except ProtocolError as exc:
            self._close(CloseCode.BAD_REQUEST, f"expected an auth message: {exc.message}")
            return
        if msg.type != "auth" or msg.token is None:
            self._close(CloseCode.UNAUTHORIZED, "first message must be auth")
            return
        self._authenticate(msg.token)

    def _seen(self) -> None:
        if self.session is not None:
            self.session.last_seen = time.monotonic()

    def _close(self, code: int, reason: str) -> None:
        if self.session is not None:
            self.session.close(code, reason)  # counts it, then calls end()
        else:
            self.runtime.metrics.closes.labels(protocol.close_name(code)).inc()
            self.end(code, reason)

    def _hang_up(self) -> None:
        """The peer did not close in time after our close frame: close the socket, or abort it
        when bytes still wait for a peer that does not read (close() would wait for them)."""
        self._timer = None
        transport = self._transport
        if transport is None:
            return
        if transport.get_write_buffer_size():
            sockets.reset(transport)
        else:
            transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
