"""Errors raised by the push layer.

::

    PushError
    ├── ConfigError      a setting is malformed; the message names the variable and what it expects
    ├── HTTPProblem      an API request is refused: ``status``, stable ``code`` and a message
    ├── ProtocolError    a client message is refused: stable ``code`` sent back (push/protocol.py)
    ├── HandshakeError   a WebSocket upgrade is refused with an HTTP error (push/ws_codec.py)
    ├── WsProtocolError  a client broke RFC 6455: close code and reason (push/ws_codec.py)
    └── Unavailable      the feed store stayed unreachable: the client reconnects (push/session.py)

Each is defined beside the code that raises it (they carry what that code answers with); all
derive from :class:`PushError`.
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
