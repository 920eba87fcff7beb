"""The SSE endpoint ``GET /v1/sse``: the same frames as the WebSocket, as ``text/event-stream``.

Each frame is an SSE event named after its type (``hello``, ``snapshot``, ``diff``, ``error``) with
the frame's JSON as ``data``. Snapshots and diffs carry ``id: <feed>:<epoch>:<n>``. A comment
line is sent every ``ping_interval_s`` so proxies keep the stream open and dead peers are noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from push.exceptions import HTTPProblem
from push.http import bearer_token
from push.live import LiveSession
from push.runtime import Runtime
from sessions.exceptions import InvalidToken


def _event(text: str, kind: str, rid: str | None) -> bytes:
    head = f"id: {rid}\n" if rid else ""
    return f"{head}event: {kind}\ndata: {text}\n\n".encode()


async def sse_endpoint(request: Request) -> Response:
    """Open an event stream for the token's user."""
    runtime: Runtime = request.app.state.runtime
    token = request.query_params.get("token") or bearer_token(request)
    if not token:
        runtime.metrics.auth_failures.labels("sse", "missing").inc()
        raise HTTPProblem(401, "unauthorized", "send ?token= or an Authorization: Bearer header")
    try:
        user = runtime.verifier.verify(token)
    except InvalidToken as exc:
        runtime.metrics.auth_failures.labels("sse", exc.reason).inc()
        raise HTTPProblem(401, "unauthorized", str(exc)) from None
    return StreamingResponse(
        _stream(runtime, user),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(runtime: Runtime, user: str) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1)

    async def send(text: str, kind: str, rid: str | None) -> None:
        # maxsize=1: the session waits here until the response has written the previous frame,
        # so a stuck client stalls its own session (and is timed out), never memory.
        await queue.put(_event(text, kind, rid))

    session = LiveSession(runtime, user, "sse", send)
    writer = asyncio.create_task(session.run())
    interval = runtime.settings.ping_interval_s
    try:
        yield b"retry: 2000\n\n"
        while True:
            get = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait(
                {get, writer}, timeout=interval, return_when=asyncio.FIRST_COMPLETED
            )
            if get in done:
                yield get.result()
                continue
            get.cancel()
            if writer in done:
                return  # the session ended (slow client, shutdown): end the stream
            yield b": keepalive\n\n"
    finally:
        session.outbox.close()
        writer.cancel()
        with contextlib.suppress(BaseException):
            await writer
