"""Consent endpoints (admin API key): a user's personalization decision, recorded and read.

- ``PUT /v1/users/{user}/consent`` with ``{"personalization": true|false}``: records the decision
  now (source ``api``), by the same script and rules as a ``consent`` event
  (:mod:`streams.consent`). A withdrawal (a denial of a user with personal data) deletes the
  profile at once; the rest of the erasure, and the non-personal feeds pushed to the user's open
  connections, follow in the user's processor lane, after every event of theirs already on the
  bus: this endpoint sends a ``consent`` event there and answers once the bus has it.
- ``GET /v1/users/{user}/consent``: the record, the policy and whether the user is personalized.

Neither logs the user id (personal data).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from push.exceptions import HTTPProblem
from push.http import read_json, require_admin
from push.runtime import Runtime
from streams.consent import ConsentRecord, ConsentStore
from streams.events import CONSENT, MAX_ID_LEN, Event
from streams.exceptions import SourceUnavailable

log = structlog.get_logger(__name__)
#: Largest request body: the one field, with room for whitespace.
_MAX_BODY = 1024


def _user(request: Request) -> str:
    """The path's user id, held to the rules of an event's ``user_id`` (400 otherwise)."""
    user = str(request.path_params["user"])
    if not 1 <= len(user) <= MAX_ID_LEN or not user.isprintable():
        raise HTTPProblem(
            400, "bad_user_id", f"a user id is 1 to {MAX_ID_LEN} printable characters"
        )
    return user


def _body(user: str, record: ConsentRecord | None, consent: ConsentStore) -> dict[str, Any]:
    return {
        "user": user,
        "personalization": None,
        "recorded_at": None,
        "source": None,
        "pending_erase": False,
        **(record.to_json() if record is not None else {}),
        "policy": consent.policy,
        "personalized": consent.personal(record),
    }


async def put_consent(request: Request) -> Response:
    """Record the decision: 200 with the record and the ``outcome`` (see streams/consent.py)."""
    runtime: Runtime = request.app.state.runtime
    require_admin(request, runtime, surface="consent")
    user = _user(request)
    body = await read_json(request, _MAX_BODY)
    if (
        not isinstance(body, dict)
        or set(body) != {"personalization"}
        or not isinstance(body["personalization"], bool)
    ):
        raise HTTPProblem(
            400, "bad_consent", 'send {"personalization": true} or {"personalization": false}'
        )
    granted: bool = body["personalization"]
    profiles = runtime.processor.profiles
    change = await profiles.record_consent(user, granted, source="api")
    runtime.metrics.consent_changes.labels(change.outcome, "api").inc()
    log.info("consent_recorded", outcome=change.outcome, source="api")
    if change.marker is not None:
        # The erasure completing a withdrawal runs in the user's lane, behind the user's events
        # already on the bus, so none of them can store anything after it. Stamped with the
        # record's time, the event repeats the decision without changing the record.
        await _queue_erasure(runtime, user, granted, change.record)
    return JSONResponse(
        {**_body(user, change.record, profiles.consent), "outcome": change.outcome},
        headers={"Cache-Control": "no-store"},
    )


async def _queue_erasure(
    runtime: Runtime, user: str, granted: bool, record: ConsentRecord | None
) -> None:
    now_ms = int(time.time() * 1000)
    event = Event(
        f"consent-{secrets.token_hex(12)}",
        user,
        CONSENT,
        None,
        record.at_ms if record is not None else now_ms,
        {"personalization": granted},
        entered_ms=now_ms,
    )
    try:
        if runtime.producer is None:  # pragma: no cover - only web nodes serve the API
            raise SourceUnavailable("this node does not take events")
        await runtime.producer.send([event])
    except SourceUnavailable as exc:
        raise HTTPProblem(
            503,
            "unavailable",
            "the decision is recorded and the profile deleted, but the rest of the erasure could"
            " not be queued: send the same request again",
            {"Retry-After": str(exc.retry_after_s)},
        ) from None


async def get_consent(request: Request) -> Response:
    """The user's record (``personalization`` null: none), the policy and the effect."""
    runtime: Runtime = request.app.state.runtime
    require_admin(request, runtime, surface="consent")
    user = _user(request)
    consent = runtime.processor.profiles.consent
    record = await consent.read(user)
    return JSONResponse(_body(user, record, consent), headers={"Cache-Control": "no-store"})
