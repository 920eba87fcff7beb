"""Privacy endpoints (admin API key): erase a user, export what is stored about them.

- ``DELETE /v1/users/{user}``: every key, index entry, timer and marker of the user goes
  (:func:`streams.privacy.erase_user`), and every connection of the user, on every node, is
  closed with 4504 ``erased``. Idempotent: erasing an unknown user answers the same with zeros.
- ``GET /v1/users/{user}/export``: everything stored about the user as JSON
  (:func:`streams.privacy.export_user`).

Neither logs the user id (personal data): the log line carries the counts only.
"""

from __future__ import annotations

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from push.http import require_admin
from push.runtime import Runtime
from streams.privacy import erase_user, export_user

log = structlog.get_logger(__name__)


async def delete_user(request: Request) -> Response:
    """Erase the user: 200 ``{"erased": {keys, index_entries, timers, markers}}``."""
    runtime: Runtime = request.app.state.runtime
    require_admin(request, runtime, surface="privacy")
    user = request.path_params["user"]
    counts = await erase_user(runtime.redis, user)
    # After the keys: a connection closed first could reconnect and read the old feed.
    await runtime.close_user_everywhere(user)
    runtime.metrics.privacy_requests.labels("erase").inc()
    log.info("user_erased", **counts)
    return JSONResponse({"erased": counts})


async def export(request: Request) -> Response:
    """Everything stored about the user (200, also for a user with nothing stored)."""
    runtime: Runtime = request.app.state.runtime
    require_admin(request, runtime, surface="privacy")
    data = await export_user(runtime.redis, request.path_params["user"])
    runtime.metrics.privacy_requests.labels("export").inc()
    return JSONResponse(data)
