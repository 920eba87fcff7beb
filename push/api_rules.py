"""Business rules endpoints: ``GET /v1/rules`` and ``PUT /v1/rules`` (admin API key).

``PUT`` takes the whole rules document, as YAML or JSON (read by the same YAML parser, so line
numbers point into the body as sent), validates it (:func:`streams.rules.parse_rules`) and stores
it in Redis, from where every node applies it (:mod:`streams.rules_store`). A bad document is
refused whole with its line and reason and the rules in force stay. Schema: ``docs/RULES.md``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from push.http import read_body, require_admin
from push.runtime import Runtime
from streams.rules import MAX_TEXT_BYTES, InvalidRules, RuleSet, parse_rules

SOURCE = "rules.yaml"  # how errors name the body: ``rules.yaml:12: …``


def _answer(rules: RuleSet, **extra: Any) -> JSONResponse:
    return JSONResponse({"version": rules.version, **rules.to_dict(), **extra})


async def get_rules(request: Request) -> Response:
    """The rules in force on this node, normalized, with their version (0: none ever stored)."""
    runtime: Runtime = request.app.state.runtime
    require_admin(request, runtime, surface="rules")
    return _answer(runtime.rules.current)


async def put_rules(request: Request) -> Response:
    """Replace the rules: 200 with the normalized rules and their version; 400 ``bad_rules``
    with ``line`` (null when the error has none) when any rule is bad."""
    runtime: Runtime = request.app.state.runtime
    require_admin(request, runtime, surface="rules")
    body = await read_body(request, min(runtime.settings.max_body_bytes, MAX_TEXT_BYTES))
    catalog = runtime.catalog
    try:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRules(SOURCE, None, "the body must be UTF-8 text") from None
        rules = parse_rules(
            text, source=SOURCE, known_item=lambda item_id: catalog.get(item_id) is not None
        )
    except InvalidRules as exc:
        runtime.metrics.rules_reloads.labels("api", "invalid").inc()
        runtime.metrics.http_errors.labels("400", "bad_rules").inc()
        return JSONResponse(
            {"error": "bad_rules", "message": str(exc), "line": exc.line}, status_code=400
        )
    stored = await runtime.rules.save(rules, source="api")
    return _answer(stored)
