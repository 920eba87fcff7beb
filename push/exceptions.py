"""Errors raised by the push layer.

::

    PushError
    ├── ConfigError     a setting is malformed; the message names the variable and what it expects
    └── HTTPProblem     an API request is refused: ``status``, stable ``code`` and a message
"""

from __future__ import annotations


class PushError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(PushError):
    """A configuration value is missing or malformed."""


class HTTPProblem(PushError):
    """A request is refused with ``status``; ``code`` is stable, ``message`` says what to fix."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
