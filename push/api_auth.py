"""``POST /v1/anonymous``: a server-signed identity for a visitor who is not logged in.

The anonymous id (``anon:…``) is random and carries no personal data; its token is signed with
the server secret and marked ``anon``, so it can never pass for a shop-issued user token. With a
still-valid anonymous token as Bearer the same id is returned with a fresh token.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from push.exceptions import HTTPProblem
from push.http import bearer_token
from push.runtime import Runtime
from sessions.exceptions import InvalidToken


async def post_anonymous(request: Request) -> Response:
    """Mint (or refresh) an anonymous visitor token."""
    runtime: Runtime = request.app.state.runtime
    ttl = runtime.settings.anon_token_ttl_s
    token = bearer_token(request)
    if token:
        try:
            user, fresh, expires = runtime.verifier.refresh_anonymous(token, ttl)
        except InvalidToken as exc:
            runtime.metrics.auth_failures.labels("anonymous", exc.reason).inc()
            raise HTTPProblem(401, "unauthorized", str(exc)) from None
    else:
        user, fresh, expires = runtime.verifier.mint_anonymous(ttl)
    return JSONResponse(
        {"user_id": user, "token": fresh, "expires_at": expires},
        headers={"Cache-Control": "no-store"},
    )
