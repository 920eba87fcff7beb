"""The collector's core, shared by ``POST /v1/events`` and the WebSocket ``track`` message.

Each event is validated on its own; the valid ones go to the event bus together, and
:func:`collect` returns only once the bus has them (Kafka: acknowledged by the broker). Raises
:class:`~streams.exceptions.SourceUnavailable` when the bus cannot take them: the caller answers
"retry" (events already taken are absorbed by dedup on ``event_id``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from push.runtime import Runtime
from streams.events import Event, parse_event
from streams.exceptions import InvalidEvent, SourceUnavailable


async def collect(
    runtime: Runtime, batch: Sequence[Any], *, user: str | None
) -> tuple[int, list[dict[str, Any]]]:
    """Validate ``batch`` (events of ``user``, or of anyone when None) and hand the valid ones
    to the bus; returns (accepted count, rejections by index with reason and message)."""
    m = runtime.metrics
    now_ms = int(time.time() * 1000)
    accepted: list[Event] = []
    rejected: list[dict[str, Any]] = []
    for index, obj in enumerate(batch):
        try:
            accepted.append(parse_event(obj, auth_user=user, now_ms=now_ms))
        except InvalidEvent as exc:
            rejected.append({"index": index, "reason": exc.reason, "message": str(exc)})
            m.events_rejected.labels(exc.reason).inc()
        except Exception as exc:  # a validator bug costs this event, as on the Kafka path
            message = f"event could not be validated: {type(exc).__name__}"
            rejected.append({"index": index, "reason": "invalid", "message": message})
            m.events_rejected.labels("invalid").inc()
    if not accepted:
        return 0, rejected
    try:
        if runtime.producer is None:  # pragma: no cover - only web nodes collect
            raise SourceUnavailable("this node does not take events")
        await runtime.producer.send(accepted)
    except SourceUnavailable:
        m.events_rejected.labels("unavailable").inc(len(accepted))
        raise
    m.events_accepted.inc(len(accepted))
    return len(accepted), rejected
