"""The wire protocol, sans I/O: frames in and out, and each connection's feed versions.

Nothing here awaits or touches a socket: transports (``websocket.py``, ``sse.py``) feed received
text in and write the strings that come out. See docs/PROTOCOL.md for every frame.

Guarantee of :class:`ClientState`: a diff is only ever emitted for a connection whose held version
of that feed is exactly the diff's base; anything else yields "send a snapshot" (never a partial
or out-of-order replay) or "skip" (the connection already holds that version or a later one).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from sessions.feeds import FeedState, FeedUpdate
from sessions.versions import Version

PROTOCOL_VERSION = 1


class CloseCode(enum.IntEnum):
    """WebSocket close codes. 4000-4499: reconnect (with backoff). 4500-4999: terminal."""

    SHUTDOWN = 4000  # server going away (deploy): reconnect, possibly to another node
    SLOW = 4001  # the client did not keep up: reconnect and take a snapshot
    HEARTBEAT = 4002  # the client stopped answering pings
    UNAVAILABLE = 4003  # the server cannot reach its feed store: reconnect (maybe elsewhere)
    BAD_REQUEST = 4500  # protocol violation (too many malformed messages)
    UNAUTHORIZED = 4501  # token missing, invalid or expired: get a new token first
    AUTH_TIMEOUT = 4502  # no auth message in time
    FORBIDDEN = 4503  # the token is valid but may not do this
    TOO_BIG = 4509  # a message exceeded the size limit

    @property
    def reconnect(self) -> bool:
        """True for codes after which a client should reconnect."""
        return self < 4500


class ProtocolError(Exception):
    """A client message was refused; ``code`` is the stable error code sent back."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """A decoded, validated client message."""

    type: str
    token: str | None = None


CLIENT_TYPES = frozenset({"auth", "ping", "pong"})


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def hello_frame(user: str, conn: str) -> str:
    """First frame after authentication."""
    return _dumps({"type": "hello", "user": user, "conn": conn, "protocol": PROTOCOL_VERSION})


def snapshot_frame(state: FeedState) -> str:
    """The full state of one feed."""
    return _dumps(
        {
            "type": "snapshot",
            "feed": state.feed,
            "version": state.version.to_wire(),
            "items": list(state.items),
            "sum": state.sum,
        }
    )


def diff_frame(update: FeedUpdate) -> str:
    """The diff of one update, encoded once and reused for every connection of the user."""
    cached = update.frames.get("json")
    if cached is None:
        if update.diff is None or update.base is None:
            raise ValueError("an update that starts an epoch has no diff frame")
        cached = _dumps(
            {
                "type": "diff",
                "feed": update.feed,
                "base": update.base.to_wire(),
                "version": update.state.version.to_wire(),
                "order": update.diff["order"],
                "items": update.diff["items"],
                "patch": update.diff["patch"],
                "sum": update.state.sum,
            }
        )
        update.frames["json"] = cached
    return cached


def update_frame(update: FeedUpdate) -> tuple[str, str]:
    """``(type, frame)`` carrying ``update`` to a client that holds its base version.

    The diff, unless the snapshot of the new state is no larger (a diff that replaces almost the
    whole list): both leave the client at the same version, and the snapshot needs no base.
    Decided and encoded once per update.
    """
    cached = update.frames.get("best")
    if cached is None:
        diff = diff_frame(update)
        snapshot = snapshot_frame(update.state)
        cached = "snapshot" if len(snapshot) <= len(diff) else "diff"
        update.frames["best"] = cached
        update.frames["snapshot"] = snapshot
    return cached, update.frames[cached if cached == "snapshot" else "json"]


def error_frame(code: str, message: str) -> str:
    """An error answering a client message; the connection stays open."""
    return _dumps({"type": "error", "code": code, "message": message})


PING_FRAME = _dumps({"type": "ping"})
PONG_FRAME = _dumps({"type": "pong"})


def parse_client_message(text: str) -> ClientMessage:
    """Decode one client text frame; raises :class:`ProtocolError` with a stable code."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_json", "message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", "message must be a JSON object")
    mtype = obj.get("type")
    if not isinstance(mtype, str):
        raise ProtocolError("bad_message", "message needs a string 'type'")
    if mtype not in CLIENT_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {mtype[:40]!r}")
    token = obj.get("token")
    if mtype == "auth" and not isinstance(token, str):
        raise ProtocolError("bad_message", "auth needs a string 'token'")
    return ClientMessage(mtype, token if isinstance(token, str) else None)


class Action(enum.Enum):
    """What to do with an update for one connection."""

    SEND = "send"
    SKIP = "skip"
    SNAPSHOT = "snapshot"


class ClientState:
    """The feed versions one connection holds."""

    def __init__(self) -> None:
        self._held: dict[str, Version] = {}

    def held(self, feed: str) -> Version | None:
        """The version of ``feed`` the client holds, if any."""
        return self._held.get(feed)

    def sent_snapshot(self, state: FeedState) -> None:
        """Record that the client now holds ``state``."""
        self._held[state.feed] = state.version

    def on_update(self, update: FeedUpdate) -> Action:
        """Decide how ``update`` reaches this client; on SEND the held version advances."""
        held = self._held.get(update.feed)
        if held is None:
            return Action.SKIP  # no snapshot sent yet: the pending snapshot will carry it
        new = update.state.version
        if new.epoch == held.epoch and new.n <= held.n:
            return Action.SKIP
        if update.base is not None and update.diff is not None and update.base == held:
            self._held[update.feed] = new
            return Action.SEND
        return Action.SNAPSHOT
