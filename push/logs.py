"""structlog set-up: JSON when not on a terminal (or when asked), readable on a terminal.

Context is bound once, not repeated at each call: ``node`` for the process (:func:`set_node`),
``request_id`` per HTTP request (:class:`RequestContext`, structlog's contextvars), ``conn`` and
``transport`` per push connection (a bound logger on the session). Nothing personal is logged:
no tokens, API keys, user ids, event props or search queries — a log line names a connection or
a request, and counts.

Third-party libraries log through the stdlib root logger, and at debug level some of them log
what they carry: aiokafka every produced record (user id, event, search query), redis-py and
websockets their traffic. So ``PUSHREC_LOG_LEVEL`` sets pushrec's own lines only; libraries stay
at info or above unless ``PUSHREC_LOG_LEVEL_LIBS`` asks for another level explicitly (then their
debug lines may hold personal data: for a debugging session, not for production).
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_TOKEN = re.compile(r"((?:token|access_token)=)[^&\s\"']+", re.IGNORECASE)


class RedactTokens(logging.Filter):
    """Masks ``token=…`` query values in stdlib log records (uvicorn logs WebSocket URLs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message.lower():
            record.msg = _TOKEN.sub(r"\1[redacted]", message)
            record.args = None
        return True


class Throttle(logging.Filter):
    """Lets one record per message template through per ``interval_s``; counts the rest.

    aiokafka logs every failed reconnect attempt at ERROR, thousands per second while a broker is
    down (seen: 22,000 lines in 4 s of a Kafka restart). The first line says it; the next one
    after the interval says how many were dropped.
    """

    def __init__(self, interval_s: float = 10.0, prefix: str = "") -> None:
        super().__init__()
        self._interval_s = interval_s
        #: Only records of loggers named so (``aiokafka`` covers ``aiokafka.consumer.fetcher``).
        self._prefix = prefix
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefix):
            return True
        key = f"{record.name}:{record.msg}"
        now = time.monotonic()
        last, dropped = self._seen.get(key, (-self._interval_s, 0))
        if now - last < self._interval_s:
            self._seen[key] = (last, dropped + 1)
            return False
        if dropped:
            record.msg = f"{record.msg} (and {dropped} more like it in the last interval)"
        self._seen[key] = (now, 0)
        if len(self._seen) > 1000:  # templates are few; bound the memory anyway
            self._seen.clear()
        return True


_STATIC: dict[str, str] = {}
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def set_node(node: str) -> None:
    """Name this process in every log line from now on (set once, at start-up)."""
    _STATIC["node"] = node


def _add_static(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
    for key, value in _STATIC.items():
        event.setdefault(key, value)
    return event


class RequestContext:
    """ASGI middleware: binds ``request_id`` for the request's log lines and answers it in
    ``X-Request-ID``. A well-formed incoming ``X-Request-ID`` (a proxy's) is kept, so one id
    follows the request through the fleet; anything else is replaced by a random one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.fullmatch(given) else secrets.token_hex(8)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        # Each HTTP request runs in its own task under uvicorn: the binding cannot leak.
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            await self.app(scope, receive, send_with_id)


#: Libraries whose loggers are pinned to the libraries' level, in case one sets its own level
#: (the root logger's level covers every other).
LIBRARY_LOGGERS = (
    "aiokafka",
    "kafka",
    "redis",
    "websockets",
    "uvicorn",
    "uvicorn.access",
    "uvicorn.error",
    "asyncio",
    "httpx",
    "httpcore",
    "multipart",
)


def _level(name: str) -> int:
    return logging.getLevelNamesMapping().get(name.upper(), logging.INFO)


def configure_logging(level: str = "info", fmt: str = "auto", libs: str | None = None) -> None:
    """Configure structlog (pushrec's lines, at ``level``) and the stdlib root logger (the
    libraries', uvicorn's included: at ``libs`` when given, else at ``level`` but never below
    info, see the module docstring)."""
    numeric = _level(level)
    libs_numeric = _level(libs) if libs else max(numeric, logging.INFO)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_static,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # The console renderer formats exceptions itself (prettier); JSON needs them as text.
            *([structlog.processors.format_exc_info] if use_json else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(
        level=libs_numeric, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
    )
    logging.getLogger().setLevel(libs_numeric)  # also when the root logger was set up before
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(libs_numeric)
    # On the handlers, not the loggers: filters on a logger do not apply to its children's
    # records, and uvicorn logs WebSocket request lines (with ?token=) through its own loggers.
    redact = RedactTokens()
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact)
    # On the handlers too: aiokafka's fetcher, coordinator and sender log NodeNotReadyError
    # through child loggers, many times a second while a broker is away.
    # One throttle per handler: a shared one would let a record through the first only.
    for handler in logging.getLogger().handlers:
        handler.addFilter(Throttle(prefix="aiokafka"))
