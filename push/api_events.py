"""``POST /v1/events``: the collector.

Takes one event or a JSON array of up to ``max_batch``. Each event is validated on its own; the
valid ones are handed to the event bus together, and the answer comes only once the bus has
them (Kafka: acknowledged by the broker). When it cannot take them (a full in-process bus, Kafka
unreachable) the answer is 503 with ``Retry-After``: retry the batch; events already taken are
absorbed by dedup on ``event_id``. The invalid ones are reported by index with a reason.

Credentials: ``X-API-Key`` (any user), or a visitor token (its own user's events only) as
``Authorization: Bearer`` or ``?token=`` — the latter for ``navigator.sendBeacon``, which cannot
set headers; both are verified and refused alike (:func:`push.http.authenticate`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from push.collector import collect
from push.exceptions import HTTPProblem
from push.http import authenticate, read_json
from push.runtime import Runtime
from streams.exceptions import SourceUnavailable


async def post_events(request: Request) -> Response:
    """Validate and enqueue events; 202 with per-event rejections, 400 when none was valid."""
    runtime: Runtime = request.app.state.runtime
    # ?token= as documented for navigator.sendBeacon (no headers; its text/plain body is read
    # as JSON like any other).
    principal = authenticate(request, runtime, surface="events", query_token=True)
    body = await read_json(request, runtime.settings.max_body_bytes)
    batch = body if isinstance(body, list) else [body]
    limit = runtime.settings.max_batch
    if len(batch) > limit:
        raise HTTPProblem(413, "too_many", f"at most {limit} events per request, got {len(batch)}")
    if not batch:
        raise HTTPProblem(400, "empty", "send one event or a non-empty array of events")
    try:
        accepted, rejected = await collect(runtime, batch, user=principal.user)
    except SourceUnavailable as exc:
        raise HTTPProblem(
            503, "unavailable", str(exc), {"Retry-After": str(exc.retry_after_s)}
        ) from None
    status = 202 if accepted else 400
    return JSONResponse({"accepted": accepted, "rejected": rejected}, status_code=status)
