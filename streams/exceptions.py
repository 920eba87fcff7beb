"""Errors raised by the streams layer.

::

    StreamsError
    ├── InvalidEvent            an event failed validation (``reason`` is a stable code)
    ├── SourceUnavailable       the event bus cannot take events now; retry later
    ├── InvalidItem             a catalog item failed validation (streams/catalog.py)
    ├── InvalidDocument         a rules/experiments document failed to parse (streams/yamldoc.py)
    └── PropagationIncomplete   a catalog change reached only some feeds (streams/propagate.py)

The last three are defined beside the code that raises them; all derive from
:class:`StreamsError`.
"""

from __future__ import annotations


class StreamsError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidEvent(StreamsError):
    """An event was malformed. ``reason`` is a short stable code; the message says what to fix."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SourceUnavailable(StreamsError):
    """The event bus is full or unreachable; nothing of the batch was accepted."""

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
