"""structlog set-up: JSON when not on a terminal (or when asked), readable on a terminal.

Context (``user``, ``conn``, ``event_id``, ``node``) is bound once per connection or event with
structlog's contextvars. Callers never log tokens, API keys or event props.
"""

from __future__ import annotations

import logging
import re
import sys
import time

import structlog

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

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
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


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and the stdlib root logger (uvicorn logs through it)."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
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
        level=numeric, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
    )
    # On the handlers, not the loggers: filters on a logger do not apply to its children's
    # records, and uvicorn logs WebSocket request lines (with ?token=) through its own loggers.
    redact = RedactTokens()
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact)
    logging.getLogger("aiokafka").addFilter(Throttle())
