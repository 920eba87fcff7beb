"""Tokens never reach the logs, even when a library logs a URL that carries one; context is
bound once (node, request id); JSON lines when asked; the level filters."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from push.logs import RedactTokens, RequestContext, Throttle, configure_logging, set_node


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, args, None)


def test_query_token_is_masked() -> None:
    record = _record(
        '%s - "WebSocket %s" [accepted]', "127.0.0.1:5", "/v1/ws?token=eyJ.abc.def&x=1"
    )
    assert RedactTokens().filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "WebSocket /v1/ws?token=[redacted]&x=1" [accepted]'


def test_messages_without_tokens_are_untouched() -> None:
    record = _record("GET %s", "/v1/items")
    assert RedactTokens().filter(record)
    assert record.getMessage() == "GET /v1/items"


def test_throttle_lets_one_record_per_template_through_per_interval() -> None:
    throttle = Throttle(interval_s=3600)
    first = _record("Unable connect to node with id %s: %s", 1, "refused")
    assert throttle.filter(first)
    assert not any(
        throttle.filter(_record("Unable connect to node with id %s: %s", 1, "x")) for _ in range(5)
    )
    assert throttle.filter(_record("another message"))


def test_throttle_reports_how_many_were_dropped() -> None:
    throttle = Throttle(interval_s=0.05)
    assert throttle.filter(_record("m %s", 1))
    assert not throttle.filter(_record("m %s", 2))
    assert not throttle.filter(_record("m %s", 3))
    time.sleep(0.06)  # the interval itself is what this waits for
    record = _record("m %s", 4)
    assert throttle.filter(record)
    assert record.getMessage() == "m 4 (and 2 more like it in the last interval)"


def _json_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]


def test_json_lines_carry_the_node_and_the_level_filters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("warning", "json")
    set_node("node-a")
    log = structlog.get_logger("t")
    log.info("not_shown")
    log.warning("shown", n=2)
    [line] = _json_lines(capsys)
    assert line["event"] == "shown" and line["node"] == "node-a" and line["level"] == "warning"
    assert line["n"] == 2 and "timestamp" in line


def test_each_request_gets_an_id_in_its_log_lines_and_its_answer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")

    async def handler(request: Request) -> Response:
        structlog.get_logger("t").info("handled")
        return JSONResponse({})

    app = RequestContext(Starlette(routes=[Route("/x", handler)]))

    async def scenario() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            kept = await client.get("/x", headers={"x-request-id": "abc-123"})
            fresh = await client.get("/x", headers={"x-request-id": "bad id\n"})
            again = await client.get("/x")
        return [r.headers["x-request-id"] for r in (kept, fresh, again)]

    kept, fresh, again = asyncio.run(scenario())
    assert kept == "abc-123"
    assert fresh != "bad id\n" and len(fresh) == 16 and again not in (fresh, kept)
    lines = _json_lines(capsys)
    assert [line["request_id"] for line in lines if line["event"] == "handled"] == [
        kept,
        fresh,
        again,
    ]
    # Outside a request nothing is bound.
    structlog.get_logger("t").info("outside")
    assert "request_id" not in _json_lines(capsys)[0]
