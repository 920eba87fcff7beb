"""The wire protocol v1, sans I/O: messages in and out, and what each connection holds.

Nothing here awaits or touches a socket: transports (``ws_server.py``, ``sse.py``) hand received
frames in and write the bytes that come out. See docs/PROTOCOL.md for every message.

Guarantees:

- :func:`decode_client` accepts only the client messages of docs/PROTOCOL.md, with every field
  type- and size-checked, and raises :class:`ProtocolError` (with a stable code) for anything
  else, whatever the bytes (JSON or msgpack, any nesting, any size up to the transport's limit).
- :class:`ClientState` emits a diff only for a feed whose held version is exactly the diff's base;
  anything else yields "snapshot" (never a partial or out-of-order replay) or "skip" (the client
  already holds that version or a later one).
- :class:`ItemTable` never claims the client holds a payload it was not sent on this connection
  within the last :data:`ITEM_TABLE_SIZE` distinct items (the client keeps twice as many).
"""

from __future__ import annotations

import enum
import json
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from push.exceptions import PushError
from sessions.feeds import FeedState, FeedUpdate, rec_id
from sessions.versions import Version

PROTOCOL_VERSION = 1
SUBPROTOCOL_JSON = "pushrec.v1.json"
SUBPROTOCOL_MSGPACK = "pushrec.v1.msgpack"
#: Distinct items whose payloads the server assumes a client still holds (the SDK keeps 512).
ITEM_TABLE_SIZE = 256
MAX_TRACK_EVENTS = 50
MAX_FEEDS = 8
MAX_ID_LEN = 64
MAX_DEPTH = 16


class Codec(enum.Enum):
    """How messages are encoded on one connection."""

    JSON = "json"
    MSGPACK = "msgpack"

    @classmethod
    def for_subprotocols(cls, offered: Sequence[str]) -> tuple[Codec, str | None]:
        """The codec for a WebSocket's offered subprotocols and the one to confirm (if any)."""
        for name in offered:
            if name == SUBPROTOCOL_JSON:
                return cls.JSON, name
            if name == SUBPROTOCOL_MSGPACK:
                return cls.MSGPACK, name
        return cls.JSON, None


class CloseCode(enum.IntEnum):
    """Close codes. 4000-4499: reconnect (with backoff). 4500-4999 and RFC codes: terminal."""

    SHUTDOWN = 4000  # server going away (deploy): reconnect, possibly to another node
    SLOW = 4001  # the client did not keep up: reconnect and resume
    HEARTBEAT = 4002  # the client stopped answering pings
    UNAVAILABLE = 4003  # the server cannot reach its feed store: reconnect (maybe elsewhere)
    SETUP_FAILED = 4004  # the connection could not be set up (update subscription): reconnect
    BAD_REQUEST = 4500  # protocol violation (too many refused messages)
    UNAUTHORIZED = 4501  # token missing, invalid or expired: get a new token first
    AUTH_TIMEOUT = 4502  # no auth message in time
    FORBIDDEN = 4503  # the token is valid but may not do this
    ERASED = 4504  # the user's data was erased (DELETE /v1/users/{id}): do not reconnect
    TOO_BIG = 4509  # a message exceeded the size limit
    PROTOCOL_ERROR = 1002  # malformed WebSocket framing
    INVALID_DATA = 1007  # a text frame that is not UTF-8

    @property
    def reconnect(self) -> bool:
        """True for codes after which a client should reconnect."""
        return 4000 <= self < 4500


def close_name(code: int) -> str:
    """The metrics label of a close code (its name, or the number for RFC codes not listed)."""
    try:
        return CloseCode(code).name.lower()
    except ValueError:
        return str(code)


class ProtocolError(PushError):
    """A client message was refused; ``code`` is the stable error code sent back."""

    def __init__(self, code: str, message: str, ref: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """A decoded, validated client message (only the fields of its type are set)."""

    type: str
    id: int | str | None = None
    token: str | None = None
    feeds: tuple[str, ...] = ()
    have: Mapping[str, Version] = field(default_factory=dict)
    feed: str | None = None
    events: tuple[Any, ...] = ()


CLIENT_TYPES = frozenset(
    {"auth", "subscribe", "unsubscribe", "resync", "track", "identify", "ping", "pong"}
)

# -- encoding ---------------------------------------------------------------------------------


def encode(message: Mapping[str, Any], codec: Codec) -> bytes:
    """One message as frame payload bytes (UTF-8 JSON, or msgpack)."""
    if codec is Codec.MSGPACK:
        packed: bytes = msgpack.packb(message, use_bin_type=True)
        return packed
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate a client sent as "\ud800" (e.g. its id): escape
        return json.dumps(message, separators=(",", ":")).encode()


def hello(user: str, conn: str, heartbeat_s: float, exp: int) -> dict[str, Any]:
    """First message after authentication."""
    return {
        "type": "hello",
        "user": user,
        "conn": conn,
        "protocol": PROTOCOL_VERSION,
        "heartbeat": heartbeat_s,
        "exp": exp,
    }


def snapshot(state: FeedState) -> dict[str, Any]:
    """The full state of one feed (with ``rec``, its recommendation id, when it has one)."""
    message = {
        "type": "snapshot",
        "feed": state.feed,
        "version": state.version.to_wire(),
        "items": list(state.items),
        "sum": state.sum,
    }
    if state.tag:
        message["rec"] = state.rec_id
    return message


def diff(
    feed: str,
    base: Version,
    version: Version,
    body: Mapping[str, Any],
    total: str,
    items: Mapping[str, Any] | None = None,
    tag: str = "",
) -> dict[str, Any]:
    """A diff from ``base`` to ``version``; ``items`` overrides the body's payloads; a ``tag``
    (the new list's, :attr:`FeedState.tag`) adds its recommendation id ``rec``."""
    message = {
        "type": "diff",
        "feed": feed,
        "base": base.to_wire(),
        "version": version.to_wire(),
        "order": body["order"],
        "items": body["items"] if items is None else items,
        "patch": body["patch"],
        "sum": total,
    }
    if tag:
        message["rec"] = rec_id(version, tag)
    return message


def ack(of: str, ref: int | str | None, **extra: Any) -> dict[str, Any]:
    """Acknowledges a client message that carried an ``id``."""
    return {"type": "ack", "ref": ref, "of": of, **extra}


def error(code: str, message: str, ref: int | str | None = None) -> dict[str, Any]:
    """Refuses a client message; the connection stays open."""
    out: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if ref is not None:
        out["ref"] = ref
    return out


def close(code: int, reason: str) -> dict[str, Any]:
    """SSE only: the stream is about to end (WebSocket uses its close frame)."""
    return {"type": "close", "code": code, "reason": reason}


PING = {"type": "ping"}
PONG = {"type": "pong"}


def cached_snapshot(update: FeedUpdate, codec: Codec) -> bytes:
    """The snapshot of ``update``'s new state, encoded once per codec for every connection."""
    key = f"snapshot:{codec.value}"
    cached = update.frames.get(key)
    if cached is None:
        cached = encode(snapshot(update.state), codec)
        update.frames[key] = cached
    return cached


def cached_diff(update: FeedUpdate, codec: Codec) -> bytes:
    """The diff of ``update`` with every payload, encoded once per codec."""
    key = f"diff:{codec.value}"
    cached = update.frames.get(key)
    if cached is None:
        if update.diff is None or update.base is None:
            raise ValueError("an update that starts an epoch has no diff")
        state = update.state
        message = diff(
            update.feed, update.base, state.version, update.diff, state.sum, tag=state.tag
        )
        cached = encode(message, codec)
        update.frames[key] = cached
    return cached


# -- decoding ---------------------------------------------------------------------------------


def decode_client(data: bytes, codec: Codec, *, text: bool) -> ClientMessage:
    """Decode and validate one client frame; raises :class:`ProtocolError` with a stable code."""
    if text != (codec is Codec.JSON):
        expected = "text (JSON)" if codec is Codec.JSON else "binary (msgpack)"
        raise ProtocolError("wrong_encoding", f"this connection takes {expected} frames")
    if codec is Codec.JSON:
        try:
            # Decoded here: json.loads(bytes) would also take UTF-16/32 (RFC 8259: UTF-8 only).
            obj = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise ProtocolError("bad_json", "message is not valid JSON") from None
    else:
        try:
            obj = msgpack.unpackb(
                data, raw=False, strict_map_key=True, max_bin_len=0, max_ext_len=0
            )
        except Exception:  # msgpack raises many types (ExtraData, FormatError, ValueError, ...)
            raise ProtocolError("bad_msgpack", "message is not valid msgpack") from None
        if _depth(obj) > MAX_DEPTH:
            raise ProtocolError("bad_msgpack", f"message nests deeper than {MAX_DEPTH}")
        if _binary(obj):
            raise ProtocolError("bad_msgpack", "binary strings and extension types are refused")
    return parse_client(obj)


def parse_client(obj: object) -> ClientMessage:
    """Validate a decoded client message (shared by every transport and codec)."""
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", "message must be a map")
    ref = _ref(obj.get("id"))
    mtype = obj.get("type")
    if not isinstance(mtype, str):
        raise ProtocolError("bad_message", "message needs a string 'type'", ref)
    if mtype not in CLIENT_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {mtype[:40]!r}", ref)
    try:
        if mtype in ("auth", "identify"):
            return ClientMessage(mtype, ref, token=_token(obj))
        if mtype == "subscribe":
            feeds = _feeds(obj)
            return ClientMessage(mtype, ref, feeds=feeds, have=_have(obj.get("have")))
        if mtype == "unsubscribe":
            return ClientMessage(mtype, ref, feeds=_feeds(obj))
        if mtype == "resync":
            return ClientMessage(mtype, ref, feed=_feed_name(obj.get("feed")))
        if mtype == "track":
            return ClientMessage(mtype, ref, events=_events(obj))
    except ProtocolError as exc:
        exc.ref = ref
        raise
    return ClientMessage(mtype, ref)


def parse_have(raw: str) -> dict[str, Version]:
    """Parse ``?have=`` / ``Last-Event-ID``: ``feed:epoch:n`` comma separated."""
    out: dict[str, Version] = {}
    if not raw:
        return out
    parts = raw.split(",")
    if len(parts) > MAX_FEEDS:
        raise ProtocolError("bad_version", f"at most {MAX_FEEDS} held versions")
    for part in parts:
        fields = part.strip().split(":")
        if len(fields) != 3 or not fields[2].isdigit():
            raise ProtocolError("bad_version", "held versions are feed:epoch:n")
        version = Version.from_wire([fields[1], int(fields[2])])
        if version is None:
            raise ProtocolError("bad_version", "held versions are feed:epoch:n")
        out[_feed_name(fields[0])] = version
    return out


def parse_feeds(raw: str | None, default: Sequence[str]) -> tuple[str, ...]:
    """Parse ``?feeds=``: comma-separated names (the default when absent)."""
    if raw is None:
        return tuple(default)
    return _feeds({"feeds": [f.strip() for f in raw.split(",") if f.strip()]})


def resume_id(held: Mapping[str, Version]) -> str:
    """The SSE ``id:`` naming every held version (what ``Last-Event-ID`` sends back)."""
    return ",".join(f"{feed}:{v.epoch}:{v.n}" for feed, v in held.items())


def _ref(value: object) -> int | str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ProtocolError("bad_message", "'id' must be an integer or a short string")
    if isinstance(value, int) and not 0 <= value < 2**31:
        raise ProtocolError("bad_message", "'id' must be within 0 .. 2^31-1")
    if isinstance(value, str) and len(value) > MAX_ID_LEN:
        raise ProtocolError("bad_message", f"'id' must be at most {MAX_ID_LEN} characters")
    return value


def _token(obj: dict[str, Any]) -> str:
    token = obj.get("token")
    if not isinstance(token, str) or not token or len(token) > 4096:
        raise ProtocolError("bad_message", "'token' must be a non-empty string")
    if not _unicode(token):  # the JWT library would raise UnicodeEncodeError
        raise ProtocolError("bad_message", "'token' must be valid Unicode")
    return token


def _unicode(text: str) -> bool:
    """False for a string with a lone surrogate (JSON can carry "\\ud800"): it cannot be
    encoded, so it must not reach Redis or the JWT library."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _feed_name(value: object) -> str:
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= 32
        or not value.isascii()
        or not value.isidentifier()
    ):
        raise ProtocolError("bad_message", "a feed name is 1-32 letters, digits or '_'")
    return value


def _feeds(obj: Mapping[str, Any]) -> tuple[str, ...]:
    feeds = obj.get("feeds")
    if not isinstance(feeds, list) or not 0 < len(feeds) <= MAX_FEEDS:
        raise ProtocolError("bad_message", f"'feeds' must list 1-{MAX_FEEDS} feed names")
    return tuple(dict.fromkeys(_feed_name(f) for f in feeds))


def _have(value: object) -> dict[str, Version]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_FEEDS:
        raise ProtocolError("bad_message", f"'have' must map at most {MAX_FEEDS} feeds")
    out: dict[str, Version] = {}
    for name, raw in value.items():
        version = Version.from_wire(raw)
        if version is None or not _unicode(version.epoch):  # the epoch goes to Redis
            raise ProtocolError("bad_version", "a held version is [epoch, n]")
        out[_feed_name(name)] = version
    return out


def _events(obj: Mapping[str, Any]) -> tuple[Any, ...]:
    events = obj.get("events")
    if not isinstance(events, list) or not 0 < len(events) <= MAX_TRACK_EVENTS:
        raise ProtocolError("bad_message", f"'events' must list 1-{MAX_TRACK_EVENTS} events")
    return tuple(events)


def _binary(obj: object) -> bool:
    """True when ``obj`` holds a binary string or an extension value, as key or value (msgpack
    lets empty ones past ``max_bin_len=0`` and ``max_ext_len=0``). Call after :func:`_depth`."""
    if isinstance(obj, bytes | msgpack.ExtType):
        return True
    if isinstance(obj, dict):
        return any(_binary(k) or _binary(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_binary(v) for v in obj)
    return False


def _depth(obj: object, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(obj, dict):
        return max((_depth(v, level + 1) for v in obj.values()), default=level + 1)
    if isinstance(obj, list):
        return max((_depth(v, level + 1) for v in obj), default=level + 1)
    return level


# -- per-connection state ---------------------------------------------------------------------


class Action(enum.Enum):
    """What to do with an update for one connection."""

    SEND = "send"
    SKIP = "skip"
    SNAPSHOT = "snapshot"


class ItemTable:
    """Which item payloads this connection was sent, so diffs can omit them.

    Keeps (hash of id, hash of payload) for the last :data:`ITEM_TABLE_SIZE` distinct items sent,
    in two flat arrays (16 bytes an item: idle connections are the common case).
    """

    __slots__ = ("_ids", "_sums")

    def __init__(self) -> None:
        self._ids = array("q")
        self._sums = array("q")

    def holds(self, item_id: str, payload: Mapping[str, Any]) -> bool:
        """True when the client was sent exactly this payload for ``item_id`` and still has it."""
        try:
            at = self._ids.index(hash(item_id))
        except ValueError:
            return False
        return self._sums[at] == _payload_hash(payload)

    def sent(self, payloads: Iterable[Mapping[str, Any]]) -> None:
        """Record payloads the client now holds (most recent last)."""
        ids, sums = self._ids, self._sums
        for payload in payloads:
            key = hash(str(payload["id"]))
            try:
                at = ids.index(key)
            except ValueError:
                pass
            else:
                del ids[at]
                del sums[at]
            ids.append(key)
            sums.append(_payload_hash(payload))
        excess = len(ids) - ITEM_TABLE_SIZE
        if excess > 0:
            del ids[:excess]
            del sums[:excess]

    def __len__(self) -> int:
        return len(self._ids)


def _payload_hash(payload: Mapping[str, Any]) -> int:
    return hash(msgpack.packb(payload, use_bin_type=True))


class ClientState:
    """The feeds one connection subscribed to and the version of each it holds."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        #: feed -> held version (None: subscribed, no snapshot sent yet)
        self._held: dict[str, Version | None] = {}

    def subscribe(self, feed: str) -> None:
        """Start following ``feed`` (the caller sends its snapshot or replay next)."""
        self._held.setdefault(feed, None)

    def unsubscribe(self, feed: str) -> None:
        """Stop following ``feed``."""
        self._held.pop(feed, None)

    def subscribed(self, feed: str) -> bool:
        """Whether the connection follows ``feed``."""
        return feed in self._held

    @property
    def feeds(self) -> tuple[str, ...]:
        """Every followed feed."""
        return tuple(self._held)

    def held(self, feed: str) -> Version | None:
        """The version of ``feed`` the client holds, if any."""
        return self._held.get(feed)

    def holding(self) -> dict[str, Version]:
        """Every held version (for the SSE resume id)."""
        return {f: v for f, v in self._held.items() if v is not None}

    def now_holds(self, feed: str, version: Version) -> None:
        """Record that the client holds ``version`` of ``feed`` (a snapshot or diff went out)."""
        if feed in self._held:
            self._held[feed] = version

    def wants(self, state: FeedState) -> bool:
        """Whether a snapshot of ``state`` would move the client forward."""
        if state.feed not in self._held:
            return False
        held = self._held[state.feed]
        if held is None or held.epoch != state.version.epoch:
            return True
        return state.version.n > held.n

    def on_update(self, update: FeedUpdate) -> Action:
        """Decide how ``update`` reaches this client; on SEND the held version advances."""
        if update.feed not in self._held:
            return Action.SKIP
        held = self._held[update.feed]
        if held is None:
            return Action.SKIP  # no snapshot sent yet: the pending one will carry it
        new = update.state.version
        if new.epoch == held.epoch and new.n <= held.n:
            return Action.SKIP
        if update.base is not None and update.diff is not None and update.base == held:
            self._held[update.feed] = new
            return Action.SEND
        return Action.SNAPSHOT


class RateLimit:
    """Token bucket: ``rate`` messages a second on average, bursts of ``burst``."""

    __slots__ = ("_at", "_tokens")

    def __init__(self, burst: int, now: float) -> None:
        self._tokens = float(burst)
        self._at = now

    def allow(self, now: float, rate: float, burst: int) -> bool:
        """Take one token; False (message to be dropped) when the bucket is empty."""
        self._tokens = min(float(burst), self._tokens + (now - self._at) * rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
