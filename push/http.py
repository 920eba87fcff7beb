"""HTTP helpers shared by the REST endpoints: credentials, bounded JSON bodies, error responses.

Every refusal is a JSON body ``{"error": code, "message": text}`` with a fitting status, and is
counted in ``pushrec_http_errors``. Request bodies are bounded in size (413) and in the time they
take to arrive (408, :func:`read_body`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from push.exceptions import HTTPProblem
from push.runtime import Runtime
from sessions.exceptions import InvalidToken


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a visitor (``user`` set) or the shop backend/admin (``admin``)."""

    user: str | None
    admin: bool

    def may_read(self, user: str) -> bool:
        """True when this caller may see ``user``'s feeds."""
        return self.admin or self.user == user


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def authenticate(
    request: Request, runtime: Runtime, *, surface: str, query_token: bool = False
) -> Principal:
    """The caller's principal; 401 when no valid credential is presented.

    ``query_token``: a visitor token may also come as ``?token=`` (for ``navigator.sendBeacon``,
    which cannot set headers); the ``Authorization`` header wins when both are sent. Either way
    the token is verified, counted and refused exactly alike."""
    key = request.headers.get("x-api-key")
    if key is not None:
        if hmac.compare_digest(key.encode(), runtime.credentials.admin_key.encode()):
            return Principal(None, True)
        runtime.metrics.auth_failures.labels(surface, "api_key").inc()
        raise HTTPProblem(401, "unauthorized", "X-API-Key is not valid")
    token = bearer_token(request)
    if token is None and query_token:
        token = request.query_params.get("token") or None
    if token is None:
        runtime.metrics.auth_failures.labels(surface, "missing").inc()
        raise HTTPProblem(
            401,
            "unauthorized",
            "send Authorization: Bearer <token>, ?token=<token> or X-API-Key"
            if query_token
            else "send Authorization: Bearer <token> or X-API-Key",
            {"WWW-Authenticate": "Bearer"},
        )
    try:
        return Principal(runtime.verifier.verify(token), False)
    except InvalidToken as exc:
        runtime.metrics.auth_failures.labels(surface, exc.reason).inc()
        raise HTTPProblem(401, "unauthorized", str(exc), {"WWW-Authenticate": "Bearer"}) from None


def require_admin(request: Request, runtime: Runtime, *, surface: str) -> None:
    """403 unless the caller presented the admin API key."""
    if not authenticate(request, runtime, surface=surface).admin:
        raise HTTPProblem(403, "forbidden", "this operation needs the X-API-Key")


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, read up to ``limit`` bytes (413 beyond), whole within the node's
    ``body_timeout_s`` (408 beyond, and the connection is closed).

    Uvicorn bounds an idle keep-alive connection but not a body in progress: a sender trickling
    a byte now and then would hold the request (and what it sent) indefinitely. The deadline
    covers the whole body, however it is split."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(413, "too_large", f"body exceeds the limit of {limit} bytes")
    runtime: Runtime = request.app.state.runtime
    timeout_s = runtime.settings.body_timeout_s
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise HTTPProblem(413, "too_large", f"body exceeds the limit of {limit} bytes")
    except TimeoutError:
        raise HTTPProblem(
            408,
            "body_timeout",
            f"the request body did not arrive within {timeout_s:g} seconds",
            {"Connection": "close"},
        ) from None
    return bytes(body)


async def read_json(request: Request, limit: int) -> Any:
    """The request's JSON body, read up to ``limit`` bytes (413 beyond, 400 when malformed)."""
    body = await read_body(request, limit)
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise HTTPProblem(400, "bad_json", "body is not valid JSON") from None


def problem_response(exc: HTTPProblem) -> JSONResponse:
    """The JSON response of a refused request."""
    return JSONResponse(
        {"error": exc.code, "message": exc.message}, status_code=exc.status, headers=exc.headers
    )
