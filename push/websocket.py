"""The WebSocket endpoint ``/v1/ws``: authenticate, then run a :class:`LiveSession`.

Three tasks per connection: the session's writer, a reader (auth refresh later, pings, bad input)
and a heartbeat that pings and closes clients silent for two intervals. Whichever ends first ends
the connection, with the close code of docs/PROTOCOL.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from push import protocol
from push.live import LiveSession, SlowClient, Unavailable
from push.protocol import CloseCode, ProtocolError
from push.runtime import Runtime
from sessions.exceptions import InvalidToken

log = structlog.get_logger(__name__)
MAX_BAD_MESSAGES = 10


class _Close(Exception):
    def __init__(self, code: CloseCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def websocket_endpoint(ws: WebSocket) -> None:
    """Serve one WebSocket connection until either side closes it."""
    runtime: Runtime = ws.app.state.runtime
    await ws.accept()
    try:
        user = await _authenticate(ws, runtime)
    except _Close as refused:
        await _close(ws, runtime, refused)
        return
    except WebSocketDisconnect:
        return

    async def send(text: str, _kind: str, _rid: str | None) -> None:
        await ws.send_text(text)

    session = LiveSession(runtime, user, "websocket", send)
    last_seen = [time.monotonic()]
    tasks = [
        asyncio.create_task(session.run()),
        asyncio.create_task(_read(ws, runtime, session, last_seen)),
        asyncio.create_task(_heartbeat(session, runtime, last_seen)),
    ]
    close: _Close | None = None
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            exc = task.exception()
            if isinstance(exc, _Close):
                close = exc
            elif isinstance(exc, SlowClient):
                close = _Close(CloseCode.SLOW, "client too slow; reconnect")
            elif isinstance(exc, Unavailable):
                close = _Close(CloseCode.UNAVAILABLE, "feed store unreachable; reconnect")
            elif isinstance(exc, WebSocketDisconnect | OSError) or exc is None:
                pass
            else:
                log.error("connection_failed", conn=session.conn, error=type(exc).__name__)
    finally:
        session.outbox.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
    if close is not None:
        await _close(ws, runtime, close)


async def _authenticate(ws: WebSocket, runtime: Runtime) -> str:
    token = ws.query_params.get("token")
    if token is None:
        try:
            async with asyncio.timeout(runtime.settings.auth_timeout_s):
                text = await ws.receive_text()
        except TimeoutError:
            raise _Close(CloseCode.AUTH_TIMEOUT, "no auth message in time") from None
        except (KeyError, RuntimeError):  # a binary frame, or the socket went away
            raise _Close(CloseCode.BAD_REQUEST, "expected an auth message") from None
        try:
            msg = protocol.parse_client_message(text)
        except ProtocolError as exc:
            raise _Close(CloseCode.BAD_REQUEST, exc.message) from None
        if msg.type != "auth" or msg.token is None:
            raise _Close(CloseCode.UNAUTHORIZED, "first message must be auth")
        token = msg.token
    try:
        return runtime.verifier.verify(token)
    except InvalidToken as exc:
        runtime.metrics.auth_failures.labels("websocket", exc.reason).inc()
        raise _Close(CloseCode.UNAUTHORIZED, str(exc)) from None


async def _read(
    ws: WebSocket, runtime: Runtime, session: LiveSession, last_seen: list[float]
) -> None:
    limit = runtime.settings.max_message_bytes
    bad = 0
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        last_seen[0] = time.monotonic()
        text = message.get("text")
        if text is None:
            code, reason = "binary_unsupported", "binary frames are not accepted (use JSON text)"
        elif len(text) > limit:
            runtime.metrics.bad_frames.labels("too_big").inc()
            raise _Close(CloseCode.TOO_BIG, f"message larger than {limit} bytes")
        else:
            try:
                msg = protocol.parse_client_message(text)
            except ProtocolError as exc:
                code, reason = exc.code, exc.message
            else:
                bad = 0
                if msg.type == "ping":
                    await session.send(protocol.PONG_FRAME, "pong")
                elif msg.type == "auth":
                    # Re-auth on a live connection may refresh the token, never change the user.
                    _reauth(runtime, session, msg.token or "")
                continue
        bad += 1
        runtime.metrics.bad_frames.labels(code).inc()
        if bad >= MAX_BAD_MESSAGES:
            raise _Close(CloseCode.BAD_REQUEST, "too many malformed messages")
        await session.send(protocol.error_frame(code, reason), "error")


def _reauth(runtime: Runtime, session: LiveSession, token: str) -> None:
    try:
        user = runtime.verifier.verify(token)
    except InvalidToken as exc:
        runtime.metrics.auth_failures.labels("websocket", exc.reason).inc()
        raise _Close(CloseCode.UNAUTHORIZED, str(exc)) from None
    if user != session.user:
        runtime.metrics.auth_failures.labels("websocket", "other_user").inc()
        raise _Close(CloseCode.FORBIDDEN, "a connection cannot change its user")


async def _heartbeat(session: LiveSession, runtime: Runtime, last_seen: list[float]) -> None:
    interval = runtime.settings.ping_interval_s
    while True:
        await asyncio.sleep(interval)
        if time.monotonic() - last_seen[0] > 2 * interval:
            raise _Close(CloseCode.HEARTBEAT, "no message from the client for two ping intervals")
        await session.send(protocol.PING_FRAME, "ping")


async def _close(ws: WebSocket, runtime: Runtime, close: _Close) -> None:
    runtime.metrics.closes.labels(close.code.name.lower()).inc()
    if ws.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await ws.close(int(close.code), close.reason[:120])
