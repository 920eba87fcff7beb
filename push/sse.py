"""The SSE endpoints: ``GET /v1/sse`` (the stream) and ``POST /v1/sse/{conn}`` (client messages).

Each server message is an SSE event named after its type with the JSON message as ``data``;
snapshots and diffs carry ``id:`` listing every held version, so ``Last-Event-ID`` resumes. A
``: keepalive`` comment is sent every ping interval. Before the server ends a stream it sends a
``close`` event with the code and reason of docs/PROTOCOL.md.

Flow control: events wait in a queue whose byte size is watched; above the high-water mark the
session conflates (as a paused WebSocket does) until the response has written them out. The
socket's kernel send buffer is fixed (push/sockets.py), so a client that stops reading stops the
response's writes, the queue grows, and the session's send timeout closes it (4001). A stream
the server ended that has not finished a send timeout later is aborted: its client does not read,
and nothing else would ever free the socket (the response waits on it forever).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from push import protocol, sockets
from push.exceptions import HTTPProblem
from push.http import bearer_token, read_json
from push.protocol import Codec, ProtocolError
from push.runtime import Runtime
from push.session import Session
from sessions.exceptions import InvalidToken
from sessions.tokens import Claims
from sessions.versions import Version

HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024


class SseSink:
    """Queue between a :class:`Session` and the streaming response."""

    transport = "sse"
    codec = Codec.JSON

    def __init__(
        self, transport: asyncio.Transport | None = None, abort_after_s: float = 10.0
    ) -> None:
        self.session: Session | None = None
        self._events: deque[bytes] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self.ended = False
        self._transport = transport
        self._abort_after_s = abort_after_s
        self._abort: asyncio.TimerHandle | None = None

    def write(self, data: bytes, kind: str, resume: str | None) -> None:
        """Queue one message as an SSE event."""
        if self.ended:
            return
        head = f"id: {resume}\n" if resume else ""
        event = f"{head}event: {kind}\ndata: ".encode() + data + b"\n\n"
        self._events.append(event)
        self._bytes += len(event)
        self._ready.set()
        if self._bytes > HIGH_WATER and self.session is not None:
            self.session.pause()

    def end(self, code: int, reason: str) -> None:
        """Queue the ``close`` event and end the stream after it."""
        if self.ended:
            return
        self.write(protocol.encode(protocol.close(code, reason), Codec.JSON), "close", None)
        self.ended = True
        self._ready.set()
        if self._transport is not None:
            # Written out (the stream ends, finished() cancels this) or never read: cut off.
            loop = asyncio.get_running_loop()
            self._abort = loop.call_later(self._abort_after_s, sockets.reset, self._transport)

    def finished(self) -> None:
        """The stream ended: no abort is due any more."""
        if self._abort is not None:
            self._abort.cancel()
            self._abort = None

    async def events(self, keepalive_s: float) -> AsyncIterator[bytes]:
        """Events as they come, a keepalive comment when idle; ends after :meth:`end`."""
        while True:
            if not self._events:
                if self.ended:
                    return
                self._ready.clear()
                try:
                    async with asyncio.timeout(keepalive_s):
                        await self._ready.wait()
                except TimeoutError:
                    yield b": keepalive\n\n"
                continue
            event = self._events.popleft()
            self._bytes -= len(event)
            yield event
            if self._bytes < LOW_WATER and self.session is not None and not self.ended:
                self.session.resume()


def asgi_transport(receive: Any) -> asyncio.Transport | None:
    """The socket transport under an ASGI request, when the server is uvicorn.

    ASGI gives an application no handle on its socket; uvicorn's ``receive`` is a method of its
    request cycle, which holds the transport. None with any other server (or a wrapped
    ``receive``): the stream then keeps the kernel's default send buffer and is never aborted.
    """
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    return transport if isinstance(transport, asyncio.Transport) else None


def _claims(runtime: Runtime, request: Request) -> Claims:
    token = request.query_params.get("token") or bearer_token(request)
    if not token:
        runtime.metrics.auth_failures.labels("sse", "missing").inc()
        raise HTTPProblem(401, "unauthorized", "send ?token= or an Authorization: Bearer header")
    try:
        return runtime.verifier.verify_claims(token)
    except InvalidToken as exc:
        runtime.metrics.auth_failures.labels("sse", exc.reason).inc()
        raise HTTPProblem(401, "unauthorized", str(exc)) from None


async def sse_endpoint(request: Request) -> Response:
    """Open an event stream for the token's user (resuming ``Last-Event-ID`` or ``?have=``)."""
    runtime: Runtime = request.app.state.runtime
    claims = _claims(runtime, request)
    try:
        feeds = protocol.parse_feeds(request.query_params.get("feeds"), runtime.default_feeds)
        raw_have = request.headers.get("last-event-id") or request.query_params.get("have", "")
        have = protocol.parse_have(raw_have)
    except ProtocolError as exc:
        raise HTTPProblem(400, exc.code, exc.message) from None
    transport = asgi_transport(request.receive)
    if transport is not None:
        sockets.bound_send_buffer(transport, runtime.settings.socket_sndbuf_bytes)
    sink = SseSink(transport, runtime.settings.send_timeout_s)
    session = Session(runtime, sink, claims, item_table=False, resume_ids=True)
    sink.session = session
    return StreamingResponse(
        _stream(runtime, sink, session, feeds, have),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(
    runtime: Runtime,
    sink: SseSink,
    session: Session,
    feeds: tuple[str, ...],
    have: dict[str, Version],
) -> AsyncIterator[bytes]:
    try:
        yield b"retry: 2000\n\n"
        await session.open(feeds, have)
        async for event in sink.events(runtime.settings.ping_interval_s):
            session.last_seen = asyncio.get_running_loop().time()  # a written event is alive
            yield event
    finally:
        sink.finished()
        session.lost()


async def sse_message(request: Request) -> Response:
    """Take one client message for the stream ``conn`` of the caller's user on this node."""
    runtime: Runtime = request.app.state.runtime
    claims = _claims(runtime, request)
    session = runtime.connections.get(request.path_params["conn"])
    if not isinstance(session, Session) or session.user != claims.sub or session.closed:
        raise HTTPProblem(404, "no_stream", "no open stream with that id for this user")
    body = await read_json(request, runtime.settings.max_message_bytes)
    try:
        msg = protocol.parse_client(body)
    except ProtocolError as exc:
        runtime.metrics.bad_frames.labels(exc.code).inc()
        raise HTTPProblem(400, exc.code, exc.message) from None
    if msg.type == "track":
        raise HTTPProblem(400, "bad_message", "send events to POST /v1/events")
    if not session.received():
        raise HTTPProblem(429, "rate_limited", "too many messages")
    session.handle(msg)  # a failure here is a bug: the app's error handler logs it (500)
    return JSONResponse({"ok": True}, status_code=202)
