"""``GET /v1/users/{user}/feeds/{feed}``: the stored version of a feed (the pull path).

Same rules as the push path: a visitor token may read only its own user's feeds; the API key may
read any. The answer is exactly the state the last snapshot or diff left a connection in.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from push.exceptions import HTTPProblem
from push.http import authenticate
from push.runtime import Runtime


async def get_feed(request: Request) -> Response:
    """The current list and version of one feed (computed on first read)."""
    runtime: Runtime = request.app.state.runtime
    principal = authenticate(request, runtime, surface="feeds")
    user = request.path_params["user"]
    feed = request.path_params["feed"]
    if not 0 < len(user) <= 128 or not user.isprintable():
        raise HTTPProblem(400, "bad_user", "user id must be 1 to 128 printable characters")
    if not principal.may_read(user):
        runtime.metrics.auth_failures.labels("feeds", "other_user").inc()
        raise HTTPProblem(403, "forbidden", "a visitor token may only read its own feeds")
    if feed not in runtime.served_feeds:
        known = ", ".join(runtime.served_feeds)
        raise HTTPProblem(404, "unknown_feed", f"unknown feed {feed[:40]!r}; known: {known}")
    state = await runtime.processor.ensure_feed(user, feed)
    body = {
        "user": user,
        "feed": feed,
        "version": state.version.to_wire(),
        "items": list(state.items),
        "sum": state.sum,
    }
    if state.tag:  # made by an experiment's variant: the id impressions and clicks quote
        body["rec"] = state.rec_id
    return JSONResponse(body)
