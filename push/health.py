"""Probes and metrics: ``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from push.runtime import Runtime


async def healthz(request: Request) -> Response:
    """Liveness: 200 as long as the event loop answers and no background loop is stuck failing
    (the Kafka consumer: see streams/supervise.py); 503 names the failing check."""
    runtime: Runtime = request.app.state.runtime
    checks = runtime.liveness()
    if all(checks.values()):
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "failing", "checks": checks}, status_code=503)


async def readyz(request: Request) -> Response:
    """Readiness: 200 when Redis answers within a second and this node's roles are running
    (consumer for a worker; the Kafka producer for a web node on Kafka)."""
    runtime: Runtime = request.app.state.runtime
    checks = runtime.readiness()
    try:
        async with asyncio.timeout(1.0):
            checks["redis"] = bool(await runtime.redis.ping())
    except Exception:
        checks["redis"] = False
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    """Prometheus exposition of this process's metrics."""
    runtime: Runtime = request.app.state.runtime
    if runtime.bus is not None:
        runtime.metrics.bus_backlog.set(runtime.bus.backlog)
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
