"""The Starlette application: routes, error handling and the runtime's lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from push.api_auth import post_anonymous
from push.api_catalog import get_categories, get_items, put_items
from push.api_consent import get_consent, put_consent
from push.api_events import post_events
from push.api_experiments import get_experiment, get_experiments, put_experiments
from push.api_feeds import get_feed
from push.api_rules import get_rules, put_rules
from push.api_users import delete_user, export
from push.demo import demo_routes, warm_up
from push.exceptions import HTTPProblem
from push.health import healthz, metrics, readyz
from push.http import problem_response
from push.logs import RequestContext
from push.protocol import CloseCode
from push.runtime import Runtime
from push.sse import sse_endpoint, sse_message

log = structlog.get_logger(__name__)


def build_app(runtime: Runtime) -> ASGIApp:
    """The ASGI app serving ``runtime``; starting the app starts the runtime. Outermost is the
    request context (push/logs.py), so even a 500's log line carries its ``request_id``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        runtime.connections.start()
        # What start-up allocated (catalog mirror, scripts, modules) lives as long as the
        # process: out of the collector's sight, a full collection stops the loop for 1-5 ms
        # instead of 55-80 ms (measured under REST load, docs/benchmarks.md).
        gc.collect()
        gc.freeze()
        warming = None
        if runtime.settings.warmup_file is not None:
            warming = asyncio.create_task(warm_up(runtime, runtime.settings.warmup_file))
        try:
            yield
        finally:
            if warming is not None:
                warming.cancel()
            await runtime.connections.shutdown(
                CloseCode.SHUTDOWN, "server shutting down; reconnect"
            )
            await runtime.stop()

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPProblem)
        runtime.metrics.http_errors.labels(str(exc.status), exc.code).inc()
        return problem_response(exc)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        runtime.metrics.http_errors.labels(str(exc.status_code), code).inc()
        return JSONResponse(
            {"error": code, "message": str(exc.detail)},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def on_error(request: Request, exc: Exception) -> Response:
        # Not the path: /v1/users/{id}/… carries a user id. The request_id ties the line to it.
        log.error("request_failed", method=request.method, error=type(exc).__name__)
        runtime.metrics.http_errors.labels("500", "internal").inc()
        return JSONResponse({"error": "internal", "message": "internal error"}, status_code=500)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]
    web: list[BaseRoute] = [
        Route("/v1/events", post_events, methods=["POST"]),
        Route("/v1/items", put_items, methods=["PUT"]),
        Route("/v1/items", get_items, methods=["GET"]),
        Route("/v1/categories", get_categories, methods=["GET"]),
        Route("/v1/rules", get_rules, methods=["GET"]),
        Route("/v1/rules", put_rules, methods=["PUT"]),
        Route("/v1/experiments", get_experiments, methods=["GET"]),
        Route("/v1/experiments", put_experiments, methods=["PUT"]),
        Route("/v1/experiments/{name}", get_experiment, methods=["GET"]),
        Route("/v1/users/{user}/feeds/{feed}", get_feed, methods=["GET"]),
        Route("/v1/users/{user}/export", export, methods=["GET"]),
        Route("/v1/users/{user}/consent", get_consent, methods=["GET"]),
        Route("/v1/users/{user}/consent", put_consent, methods=["PUT"]),
        Route("/v1/users/{user}", delete_user, methods=["DELETE"]),
        Route("/v1/sse", sse_endpoint, methods=["GET"]),
        Route("/v1/sse/{conn}", sse_message, methods=["POST"]),
        Route("/v1/anonymous", post_anonymous, methods=["POST"]),
    ]
    if runtime.settings.web:  # a worker-only node serves probes and metrics alone
        routes.extend(web)
    if runtime.settings.demo and runtime.settings.web:
        routes.extend(demo_routes())
    origins = runtime.settings.origins()
    cors = Middleware(
        CORSMiddleware,
        allow_origins=["*"] if origins is None else sorted(origins),
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        max_age=600,
    )
    app = Starlette(
        routes=routes,
        middleware=[cors],
        lifespan=lifespan,
        exception_handlers={HTTPProblem: on_problem, HTTPException: on_http, Exception: on_error},
    )
    app.state.runtime = runtime
    return RequestContext(app)
