"""Errors raised by the sessions layer.

::

    SessionsError
    ├── InvalidToken        a token failed verification (``reason`` says why)
    ├── VersionConflict     a feed write lost a compare-and-set race; re-read and retry
    ├── WriteRefused        a guarded feed write was refused by its guard (``code`` says which)
    ├── CodecError          bytes from another node are not a well-formed feed update
    ├── SubscribeFailed     the broker could not subscribe a user's updates in time
    └── CrossSlot           one script call or transaction named keys of several cluster slots
"""

from __future__ import annotations


class SessionsError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidToken(SessionsError):
    """A token was missing, malformed, badly signed, expired or lacked a subject.

    ``reason`` is a short machine-readable word (``expired``, ``signature``, ``malformed``,
    ``claims``) that is safe to show to the client and to log; the token itself is never kept.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class VersionConflict(SessionsError):
    """The stored feed was not at the expected base version when we tried to write it."""


class CodecError(SessionsError):
    """Bytes that are not a well-formed encoded feed update; the message says what was wrong."""


class WriteRefused(SessionsError):
    """A guarded write (:meth:`sessions.feeds.FeedStore.guarded`) was refused by its guard's
    script; nothing was written. ``code`` is the number the guard returned."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the write's guard refused it (code {code})")
        self.code = code


class SubscribeFailed(SessionsError):
    """The broker could not get a user's subscription confirmed within its timeout (Redis
    unreachable, or refusing the subscription): a connection must not be served without it."""


class CrossSlot(SessionsError, ValueError):
    """One script call (or MULTI) was given keys of several hash slots: Redis Cluster would refuse
    it (CROSSSLOT), so it is refused before anything is sent. A programming error: every key of
    one call must share a hash tag (sessions/keys.py). The message names the key positions and
    their slots, never the keys (they hold user ids)."""
