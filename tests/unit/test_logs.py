"""Tokens never reach the logs, even when a library logs a URL that carries one."""

from __future__ import annotations

import logging

from push.logs import RedactTokens


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
