"""Tokens never reach the logs, even when a library logs a URL that carries one."""

from __future__ import annotations

import logging
import time

from push.logs import RedactTokens, Throttle


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
