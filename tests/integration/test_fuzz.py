"""Fuzz test of the WebSocket endpoint ``/v1/ws`` against the live server.

Hypothesis generates frames of every kind docs/PROTOCOL.md talks about: valid and near-valid
messages (wrong field types, missing fields, unknown types, bad ids, bad versions), non-object,
truncated and mutated JSON, JSON in UTF-16/32, invalid UTF-8, msgpack bombs (deep nesting, huge
declared lengths, extension and binary types, non-string keys, truncation), oversized messages,
fragmented messages with control frames in between, framing violations, client close frames,
garbage before authentication, and garbage upgrade requests. They go over raw TCP: frames are
built with :func:`push.ws_codec.encode_masked_frame` and the server's frames parsed here.

The oracle is a model of each connection (codec, authenticated or not, its run of refused
messages, its subscriptions) that predicts the exact answer to every frame from the documented
rules: an ``error`` with its code and ``ref``, a ``pong`` message, a pong control frame, an
``ack``, nothing, or a close frame with its code followed by the end of the TCP connection. Every
wait is bounded, so a hang fails too. Snapshots and diffs arriving meanwhile are applied by a
:class:`FeedClient` (checksums checked).

A well-behaved client of another user stays connected through the whole run. At the end its feed
must still follow a change, the server must answer ``/healthz``, still run, stop cleanly, and its
log must hold no error and no traceback. The module sends at least :data:`MIN_FRAMES` generated
frames (printed with ``-s``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import os
import re
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from push.ws_codec import Opcode, encode_frame, encode_masked_frame
from sessions.exceptions import InvalidToken
from sessions.keys import trend_bucket, trend_key, trend_meta_key
from sessions.tokens import TokenVerifier
from streams.profile import user_keys
from tests.integration.conftest import ROOT, SECRET, start_server, stop_server
from tests.integration.harness import SCALE, FeedClient, Server, new_id, ws_client
from tests.integration.kafka_cluster import PARTITIONS, Cluster, cluster

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0, 1, 2, 8, 9, 10
MAX_MESSAGE = 16_384  # PUSHREC_MAX_MESSAGE_BYTES of the fuzzed server (the default)
AUTH_TIMEOUT_S = 4.0  # PUSHREC_AUTH_TIMEOUT_S of the fuzzed server
MIN_FRAMES = 10_000
MAX_SERVER_RSS_KIB = 256 * 1024  # peak resident memory of the fuzzed server (~60 MiB seen)
ANSWER_TIMEOUT_S = 5.0 * SCALE
SERVED_FEEDS = frozenset({"home", "offers", "similar", "cart"})
CLIENT_TYPES = ("auth", "identify", "ping", "pong", "resync", "subscribe", "track", "unsubscribe")
MAX_REFUSED = 10
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUBPROTOCOLS = {"json": "pushrec.v1.json", "msgpack": "pushrec.v1.msgpack"}

RUN = uuid.uuid4().hex[:8]
VERIFIER = TokenVerifier(SECRET)
OTHER_USER = f"fuzz-{RUN}-other"
SELF = "<the connection's own token>"  # placeholder, replaced when the message is encoded
OTHER_TOKEN = VERIFIER.mint(OTHER_USER, ttl_s=3600)
EXPIRED_TOKEN = VERIFIER.mint(OTHER_USER, ttl_s=-3600)
FORGED_TOKEN = TokenVerifier("another-secret-0123456789abcdef0123").mint(OTHER_USER, ttl_s=3600)

Ref = int | str | None


# -- the module's server, event loop and bookkeeping --------------------------------------------


@dataclass(repr=False)  # Hypothesis prints the arguments of a failing example: keep it short
class Fuzz:
    """The fuzzed server and what the run did to it."""

    loop: asyncio.AbstractEventLoop
    server: Server
    proc: subprocess.Popen[bytes]
    log: Path
    guard_user: str
    guard: FeedClient
    idle: list[Client]  # connections that never authenticate: closed with 4502 meanwhile
    frames: int = 0  # generated WebSocket frames sent
    steps: int = 0
    connections: int = 0
    heads: int = 0  # generated HTTP upgrade requests
    labels: Counter[str] = field(default_factory=Counter)  # per category of input
    answers: Counter[str] = field(default_factory=Counter)  # per answer checked
    ran: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)

    def __repr__(self) -> str:
        return f"Fuzz(server at {self.server.address}, log {self.log})"

    def run(self, coro: Any, timeout_s: float = 60.0) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout_s * SCALE))


@pytest.fixture(scope="module")
def fuzz() -> Iterator[Fuzz]:
    (ROOT / ".pytest_cache").mkdir(exist_ok=True)
    proc, server = start_server(
        {
            # The parser is fuzzed, not the rate limit (see test_rate_limit_refuses_then_closes).
            "PUSHREC_MAX_MESSAGES_PER_S": "100000",
            "PUSHREC_MESSAGE_BURST": "100000",
            "PUSHREC_MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
            "PUSHREC_AUTH_TIMEOUT_S": str(AUTH_TIMEOUT_S),
        },
        isolated=True,
    )
    loop = asyncio.new_event_loop()
    guard_cm: AbstractAsyncContextManager[FeedClient] | None = None
    try:
        server.load_catalog()
        guard_user = new_id("guard")
        guard_cm = ws_client(server, guard_user)
        guard = loop.run_until_complete(guard_cm.__aenter__())
        idle = [
            loop.run_until_complete(Client.open(server.address, "", codec))
            for codec in ("json", "msgpack")
        ]
        yield Fuzz(
            loop=loop,
            server=server,
            proc=proc,
            log=ROOT / ".pytest_cache" / f"server-{server.address.rsplit(':', 1)[1]}.log",
            guard_user=guard_user,
            guard=guard,
            idle=idle,
        )
    finally:
        if guard_cm is not None:
            with contextlib.suppress(Exception):
                loop.run_until_complete(guard_cm.__aexit__(None, None, None))
        loop.close()
        if proc.poll() is None:
            stop_server(proc)


# -- a raw WebSocket client ---------------------------------------------------------------------


class Client(asyncio.Protocol):
    """A raw TCP client: keeps every byte received, even when the peer resets the connection
    (a StreamReader would raise instead of returning a close frame already received)."""

    def __init__(self, codec: str) -> None:
        self.codec = codec
        self.buf = bytearray()
        self.ended = False
        self.transport: asyncio.Transport | None = None
        self._wake: asyncio.Event = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._wake.set()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self._wake.set()

    @classmethod
    async def connect(cls, address: str, codec: str = "json") -> Client:
        host, port = address.rsplit(":", 1)
        loop = asyncio.get_running_loop()
        _, client = await asyncio.wait_for(
            loop.create_connection(lambda: cls(codec), host, int(port)), ANSWER_TIMEOUT_S
        )
        return client

    @classmethod
    async def open(cls, address: str, query: str, codec: str) -> Client:
        """A WebSocket connection to ``/v1/ws{query}`` speaking ``codec`` (after the 101)."""
        client = await cls.connect(address, codec)
        key = base64.b64encode(os.urandom(16)).decode()
        client.write(
            (
                f"GET /v1/ws{query} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {SUBPROTOCOLS[codec]}\r\n"
                "\r\n"
            ).encode()
        )
        head = await client.head()
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 101 "), head
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
        accept = (
            base64.b64encode(hashlib.sha1(key.encode() + GUID, usedforsecurity=False).digest())
            .decode()
            .lower()
        )
        assert headers["sec-websocket-accept"] == accept
        assert headers["sec-websocket-protocol"] == SUBPROTOCOLS[codec]
        return client

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def send(self, data: bytes, splits: tuple[int, ...] = ()) -> None:
        """Write ``data``, in pieces cut at ``splits`` (mod its length) when there are any."""
        cuts = sorted({c % (len(data) + 1) for c in splits} | {0, len(data)})
        for start, end in itertools.pairwise(cuts):
            self.write(data[start:end])
            if end < len(data):
                await asyncio.sleep(0.0005)  # let the piece go out alone

    async def _more(self) -> None:
        self._wake.clear()
        await asyncio.wait_for(self._wake.wait(), ANSWER_TIMEOUT_S)

    async def head(self) -> bytes:
        """The HTTP response head (through the blank line)."""
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            assert not self.ended, f"connection closed during the handshake: {bytes(self.buf)!r}"
            await self._more()
        head = bytes(self.buf[: end + 4])
        del self.buf[: end + 4]
        return head

    async def until_closed(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        while not self.ended:
            await self._more()
        return bytes(self.buf)

    async def frame(self) -> tuple[int, bytes] | None:
        """The next server frame (checked to be well-formed), or None when the server closed."""
        while True:
            parsed = _server_frame(self.buf)
            if parsed is not None:
                size, opcode, payload = parsed
                del self.buf[:size]
                return opcode, payload
            if self.ended:
                assert not self.buf, f"connection closed inside a frame: {bytes(self.buf)!r}"
                return None
            await self._more()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _server_frame(buf: bytearray) -> tuple[int, int, bytes] | None:
    """(frame size, opcode, payload) of the first complete frame of ``buf``, if any."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    assert b0 & 0x80, f"server sent a fragmented frame: {bytes(buf[:16])!r}"
    assert not b0 & 0x70, f"server set RSV bits: {bytes(buf[:16])!r}"
    assert not b1 & 0x80, f"server masked a frame: {bytes(buf[:16])!r}"
    opcode = b0 & 0x0F
    assert opcode in (TEXT, BINARY, CLOSE, PING, PONG), f"server opcode {opcode}"
    n, at = b1 & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, at = int.from_bytes(buf[2:4], "big"), 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, at = int.from_bytes(buf[2:10], "big"), 10
    assert opcode < 8 or n <= 125, "server control frame longer than 125 bytes"
    if len(buf) < at + n:
        return None
    return at + n, opcode, bytes(buf[at : at + n])


# -- what the client sends ----------------------------------------------------------------------


@dataclass(frozen=True)
class Msg:
    """A message object, encoded in the connection's codec (JSON text or msgpack binary)."""

    obj: Any
    ascii: bool = True  # JSON: escape non-ASCII characters (else raw UTF-8; lone surrogates
    # then become invalid UTF-8, which is fine: the oracle sees the bytes)


@dataclass(frozen=True)
class Padded:
    """A ``ping`` message padded to exactly ``size`` bytes in the connection's codec."""

    size: int


@dataclass(frozen=True)
class Send:
    """One data message, maybe fragmented, with control frames between the fragments."""

    label: str
    body: bytes | Msg | Padded
    opcode: int = TEXT  # for bytes bodies
    cuts: tuple[int, ...] = ()  # fragment boundaries (mod the length + 1)
    between: tuple[tuple[int, bytes] | None, ...] = ()  # a control frame after fragment i


@dataclass(frozen=True)
class Control:
    """One valid control frame on its own: ping, pong or close."""

    label: str
    opcode: int
    payload: bytes


@dataclass(frozen=True)
class Raw:
    """Bytes that break the framing, and the close code they must get."""

    label: str
    data: bytes
    code: int


Action = Send | Control | Raw


@dataclass(frozen=True)
class Step:
    slot: int
    action: Action
    mask: bytes
    splits: tuple[int, ...]  # write the step's bytes in pieces cut there


@dataclass(frozen=True)
class Slot:
    """A connection of a pool: its codec, and whether the token is in the URL."""

    codec: str
    token: bool


SLOTS = (Slot("json", True), Slot("msgpack", True), Slot("json", False), Slot("msgpack", False))


# -- the oracle ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """One answer the server must send: ``error`` (code, ref), ``ack`` (of as code, ref, n
    events for track), ``pong`` (message), ``cpong`` (control frame with data), ``close``."""

    kind: str
    code: str | int = ""
    ref: Ref = None
    data: bytes = b""
    events: int = -1


@dataclass(frozen=True)
class Refusal:
    code: str
    ref: Ref


@dataclass(frozen=True)
class Valid:
    type: str
    ref: Ref
    token: str = ""
    feeds: tuple[str, ...] = ()
    feed: str = ""
    events: int = 0


class _Bad:
    """Marks a payload that does not decode."""


BAD = _Bad()


def _feed_name(value: object) -> bool:
    return (
        isinstance(value, str) and 0 < len(value) <= 32 and value.isascii() and value.isidentifier()
    )


def _version(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and 0 < len(value[0]) <= 32
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
        and value[1] >= 0
    )


def judge(obj: object) -> Refusal | Valid:
    """What the server makes of a decoded client message (docs/PROTOCOL.md, "client → server";
    checks in the server's order: id, type, then the fields of the type)."""
    if not isinstance(obj, dict):
        return Refusal("bad_message", None)
    ref = obj.get("id")
    if ref is not None and (
        isinstance(ref, bool)
        or not isinstance(ref, int | str)
        or (isinstance(ref, int) and not 0 <= ref < 2**31)
        or (isinstance(ref, str) and len(ref) > 64)
    ):
        return Refusal("bad_message", None)
    kind = obj.get("type")
    if not isinstance(kind, str):
        return Refusal("bad_message", ref)
    if kind not in CLIENT_TYPES:
        return Refusal("unknown_type", ref)
    if kind in ("auth", "identify"):
        token = obj.get("token")
        if not isinstance(token, str) or not 0 < len(token) <= 4096 or not _unicode(token):
            return Refusal("bad_message", ref)
        return Valid(kind, ref, token=token)
    if kind in ("subscribe", "unsubscribe"):
        feeds = obj.get("feeds")
        if not isinstance(feeds, list) or not 0 < len(feeds) <= 8:
            return Refusal("bad_message", ref)
        if not all(_feed_name(f) for f in feeds):
            return Refusal("bad_message", ref)
        have = obj.get("have") if kind == "subscribe" else None
        if have is not None:
            if not isinstance(have, dict) or len(have) > 8:
                return Refusal("bad_message", ref)
            for name, version in have.items():
                if not _version(version) or not _unicode(version[0]):
                    return Refusal("bad_version", ref)
                if not _feed_name(name):
                    return Refusal("bad_message", ref)
        return Valid(kind, ref, feeds=tuple(dict.fromkeys(feeds)))
    if kind == "resync":
        feed = obj.get("feed")
        if not _feed_name(feed):
            return Refusal("bad_message", ref)
        assert isinstance(feed, str)
        return Valid(kind, ref, feed=feed)
    if kind == "track":
        events = obj.get("events")
        if not isinstance(events, list) or not 0 < len(events) <= 50:
            return Refusal("bad_message", ref)
        return Valid(kind, ref, events=len(events))
    return Valid(kind, ref)


def _unicode(text: str) -> bool:
    """No lone surrogate (JSON can carry "\\ud800"; it is not text)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def decode_json(data: bytes) -> object:
    """A text frame's JSON value (RFC 8259: UTF-8), or BAD."""
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return BAD


def _plain(obj: object, level: int = 0) -> bool:
    """The msgpack value is a JSON-like value: no binary, no extension, string keys, maps and
    arrays nested at most 16 deep."""
    if isinstance(obj, dict):
        return level < 16 and all(
            isinstance(k, str) and _plain(v, level + 1) for k, v in obj.items()
        )
    if isinstance(obj, list):
        return level < 16 and all(_plain(v, level + 1) for v in obj)
    return obj is None or isinstance(obj, bool | int | float | str)


def decode_msgpack(data: bytes) -> object:
    """A binary frame's msgpack value (docs/PROTOCOL.md, "msgpack encoding"), or BAD."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=lambda c, d: BAD)
    except Exception:
        return BAD
    return obj if _plain(obj) else BAD


def verified_user(token: str) -> str | None:
    try:
        return VERIFIER.verify_claims(token).sub
    except InvalidToken:
        return None


def close_answer(payload: bytes) -> int:
    """The code the server closes with when the client sends a close frame with ``payload``."""
    if not payload:
        return 1000
    if len(payload) == 1:
        return 1002
    code = int.from_bytes(payload[:2], "big")
    if not (1000 <= code <= 1003 or 1007 <= code <= 1011 or 3000 <= code <= 4999):
        return 1002
    if not _utf8(payload[2:]):
        return 1007
    return 1000 if code < 3000 else code


class Conn:
    """One live connection of a pool and the model of what the server holds for it."""

    def __init__(self, client: Client, slot: Slot, user: str) -> None:
        self.client = client
        self.codec = slot.codec
        self.slot_user = user
        self.user = user if slot.token else None  # None until authenticated
        self.refused = 0
        self.subscribed = {"home"}
        self.closed = False
        self.greeted = False  # hello received
        self.opened = time.monotonic()
        self.feed = FeedClient()
        #: Other served feeds (``offers``, ``similar``, ``cart``), each applied on its own.
        self.others: dict[str, FeedClient] = {}

    # -- model ----------------------------------------------------------------------------

    def encode(self, body: Msg | Padded) -> tuple[int, bytes]:
        if isinstance(body, Padded):
            return self._padded(body.size)
        obj = body.obj
        if isinstance(obj, dict) and obj.get("token") == SELF:
            obj = {**obj, "token": VERIFIER.mint(self.slot_user, ttl_s=3600)}
        if self.codec == "json":
            text = json.dumps(obj, ensure_ascii=body.ascii)
            return TEXT, text.encode("utf-8", "surrogatepass")
        packed: bytes = msgpack.packb(obj, use_bin_type=True, unicode_errors="surrogatepass")
        return BINARY, packed

    def _padded(self, size: int) -> tuple[int, bytes]:
        pad = max(0, size - 40)
        for _ in range(3):
            data = self.encode(Msg({"type": "ping", "pad": "x" * pad}))
            pad += size - len(data[1])
        assert len(data[1]) == size
        return data

    def refuse(self, code: str, ref: Ref) -> list[Expect]:
        if self.closed:
            return []
        self.refused += 1
        if self.refused >= MAX_REFUSED:
            return self.close(4500)
        return [Expect("error", code, ref)]

    def close(self, code: int) -> list[Expect]:
        self.closed = True
        return [Expect("close", code)]

    def message(self, opcode: int, data: bytes) -> list[Expect]:
        """The answers to a complete data message (valid UTF-8 when text)."""
        text = opcode == TEXT
        if text != (self.codec == "json"):
            verdict: Refusal | Valid = Refusal("wrong_encoding", None)
        else:
            obj = decode_json(data) if text else decode_msgpack(data)
            bad = Refusal("bad_json" if text else "bad_msgpack", None)
            verdict = bad if obj is BAD else judge(obj)
        if self.user is None:  # the first message must be a valid auth
            if isinstance(verdict, Refusal):
                return self.close(4500)
            user = verified_user(verdict.token) if verdict.type == "auth" else None
            if user is None:
                return self.close(4501)
            self.user = user
            return []
        if isinstance(verdict, Refusal):
            return self.refuse(verdict.code, verdict.ref)
        return self.handle(verdict)

    def handle(self, msg: Valid) -> list[Expect]:
        self.refused = 0
        ack = [Expect("ack", msg.type, msg.ref)] if msg.ref is not None else []
        if msg.type == "ping":
            return [Expect("pong", ref=msg.ref)]
        if msg.type == "pong":
            return []
        if msg.type == "auth":
            user = verified_user(msg.token)
            if user is None:
                return self.close(4501)
            if user != self.user:
                return self.close(4503)
            return ack
        if msg.type == "identify":  # pool users are not anonymous
            return self.refuse("forbidden", msg.ref)
        if msg.type == "subscribe":
            out: list[Expect] = []
            for feed in msg.feeds:
                if feed in SERVED_FEEDS:
                    self.subscribed.add(feed)
                else:
                    out += self.refuse("unknown_feed", msg.ref)
            return out or ack  # an ack only when no feed was refused
        if msg.type == "unsubscribe":
            self.subscribed.difference_update(msg.feeds)
            return ack
        if msg.type == "resync":
            if msg.feed not in self.subscribed:
                return self.refuse("unknown_feed", msg.ref)
            return ack
        assert msg.type == "track"
        if msg.ref is None:
            return []
        return [Expect("ack", "track", msg.ref, events=msg.events)]

    def plan(self, action: Action, mask: bytes) -> tuple[list[bytes], list[Expect]]:
        """The frames of ``action`` and the answers they must get; updates the model."""
        if isinstance(action, Raw):
            return [action.data], self.close(action.code)
        if isinstance(action, Control):
            frame = encode_masked_frame(action.opcode, action.payload, mask)
            if action.opcode == PING:
                return [frame], [Expect("cpong", data=action.payload)]
            if action.opcode == PONG:
                return [frame], []
            return [frame], self.close(close_answer(action.payload))
        if isinstance(action.body, bytes):
            opcode, data = action.opcode, action.body
        else:
            opcode, data = self.encode(action.body)
        cuts = sorted({c % (len(data) + 1) for c in action.cuts} | {0, len(data)})
        pieces = [data[a:b] for a, b in itertools.pairwise(cuts)] or [b""]
        frames: list[bytes] = []
        expected: list[Expect] = []
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            frames.append(encode_masked_frame(CONT if i else opcode, piece, mask, fin=last))
            if sum(map(len, pieces[: i + 1])) > MAX_MESSAGE:  # refused from the header
                return frames, expected + self.close(4509)
            control = action.between[i] if i < len(action.between) and not last else None
            if control is not None:
                frames.append(encode_masked_frame(control[0], control[1], mask))
                if control[0] == PING:
                    expected.append(Expect("cpong", data=control[1]))
        if opcode == TEXT and not _utf8(data):
            return frames, expected + self.close(1007)
        return frames, expected + self.message(opcode, data)

    # -- the wire -------------------------------------------------------------------------

    async def answer(self, hello: bool = False) -> tuple[str, Any]:
        """The next answer: ("msg", dict), ("cpong", data), ("close", (code, reason)), ("eof",
        None); ("hello", dict) too when ``hello``, else hello is only checked. Snapshots and diffs
        are applied to the feed, server pings skipped."""
        while True:
            frame = await self.client.frame()
            if frame is None:
                return "eof", None
            opcode, data = frame
            if opcode == PONG:
                return "cpong", data
            if opcode == CLOSE:
                assert len(data) >= 2, f"close frame without a code: {data!r}"
                reason = data[2:].decode("utf-8")
                assert len(reason.encode()) <= 120, f"close reason over 120 bytes: {reason!r}"
                return "close", (int.from_bytes(data[:2], "big"), reason)
            assert opcode != PING, "the server pings with messages, not control frames"
            assert opcode == (TEXT if self.codec == "json" else BINARY), f"opcode {opcode}"
            msg = json.loads(data) if opcode == TEXT else msgpack.unpackb(data, raw=False)
            assert isinstance(msg, dict), msg
            if msg["type"] in ("snapshot", "diff"):
                feed = msg["feed"]
                (self.feed if feed == "home" else self.others.setdefault(feed, FeedClient())).apply(
                    msg
                )
            elif msg["type"] == "hello":
                assert (msg["user"], msg["protocol"]) == (self.user, 1), msg
                assert not self.greeted, "a second hello"
                self.greeted = True
                if hello:
                    return "hello", msg
            elif msg["type"] != "ping":
                return "msg", msg

    async def greeting(self) -> None:
        """Wait for hello, the first message after authentication. The server handles messages
        that arrive before it against an empty subscription (the bug of
        test_messages_right_after_auth_see_the_default_feed), so the fuzzer waits."""
        if not self.greeted:
            kind, got = await self.answer(hello=True)
            assert kind == "hello", f"{kind} {got!r} before hello"

    async def check(self, expect: Expect, context: str) -> None:
        kind, got = await self.answer()
        where = f"expected {expect} after {context}; got {kind} {got!r}"
        if expect.kind == "cpong":
            assert (kind, got) == ("cpong", expect.data), where
        elif expect.kind == "close":
            assert kind == "close" and got[0] == expect.code, where
            rest = await self.client.until_closed()
            assert rest == b"", f"{where}; then {rest!r:.200} and no end of the connection"
        else:
            assert kind == "msg" and got["type"] == expect.kind, where
            if expect.kind == "error":
                assert got["code"] == expect.code, where
                assert isinstance(got["message"], str) and got["message"], where
            if expect.kind == "pong":
                assert got.get("ref") == expect.ref, where
            if expect.kind == "ack":
                assert got["of"] == expect.code, where
                if expect.events >= 0:
                    assert got["accepted"] + len(got["rejected"]) == expect.events, where
            if expect.kind in ("error", "ack"):
                assert got.get("ref") == expect.ref, where
                assert ("ref" in got) == (expect.ref is not None), where


class Pool:
    """The connections of one example, opened when first used (fresh for every example, so
    that examples are independent and Hypothesis can replay them)."""

    def __init__(self, fuzz: Fuzz, slots: tuple[Slot, ...]) -> None:
        self.fuzz = fuzz
        self.slots = slots
        self.users = [f"fuzz-{RUN}-{i}" for i in range(len(slots))]
        self.conns: dict[int, Conn] = {}

    async def conn(self, index: int) -> Conn:
        i = index % len(self.slots)
        conn = self.conns.get(i)
        # A connection waiting for its auth message is replaced well before the auth timeout.
        if (
            conn is not None
            and conn.user is None
            and time.monotonic() - conn.opened > AUTH_TIMEOUT_S / 2
        ):
            conn.client.abort()
            conn = None
        if conn is None:
            slot, user = self.slots[i], self.users[i]
            query = f"?token={VERIFIER.mint(user, ttl_s=3600)}" if slot.token else ""
            client = await Client.open(self.fuzz.server.address, query, slot.codec)
            conn = self.conns[i] = Conn(client, slot, user)
            self.fuzz.connections += 1
        return conn

    async def step(self, step: Step) -> None:
        conn = await self.conn(step.slot)
        if conn.user is not None:
            await conn.greeting()
        frames, expected = conn.plan(step.action, step.mask)
        await conn.client.send(b"".join(frames), step.splits)
        self.fuzz.frames += len(frames)
        self.fuzz.steps += 1
        self.fuzz.labels[step.action.label] += 1
        context = f"{step.action!r} on a {conn.codec} connection (frames {frames!r:.600})"
        for expect in expected:
            await conn.check(expect, context)
            self.fuzz.answers[f"{expect.kind} {expect.code}".strip()] += 1
        if conn.closed:
            del self.conns[step.slot % len(self.slots)]

    async def sync(self) -> None:
        """Every open connection answers a ping, with nothing unexpected before the pong."""
        for i, conn in list(self.conns.items()):
            token = f"sync-{i}".encode()
            conn.client.write(encode_masked_frame(PING, token, os.urandom(4)))
            await conn.check(Expect("cpong", data=token), "the final ping")

    def close(self) -> None:
        for conn in self.conns.values():
            conn.client.abort()
        self.conns.clear()


def run_steps(fuzz: Fuzz, steps: list[Step], slots: tuple[Slot, ...] = SLOTS) -> None:
    async def scenario() -> None:
        pool = Pool(fuzz, slots)
        try:
            for step in steps:
                await pool.step(step)
            await pool.sync()
        finally:
            pool.close()

    fuzz.run(scenario())


# -- strategies ---------------------------------------------------------------------------------


def weighted(*branches: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``branches``, each drawn with its weight (``st.one_of`` gives every branch, after
    flattening nested ``one_of`` and merging repeated strategies, the same chance)."""
    table = [strategy for weight, strategy in branches for _ in range(weight)]
    return st.sampled_from(table).flatmap(lambda strategy: strategy)


# Leaves come mostly from pools of interesting values: one draw each. Hypothesis pays per draw
# (a message of freely generated text and nested values cost ~5 ms to generate, against ~0.5 ms
# now), and the edge cases are what finds bugs: lone surrogates, NUL, int and float extremes.
def _pool(values: list[Any], *rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly one of ``values``; 1 in 4 a value of one of the ``rare`` strategies."""
    pool = st.sampled_from(values)
    if not rare:
        return pool
    return weighted((3 * len(rare), pool), *((1, r) for r in rare))


STRINGS = ["", "x", "home", "ping", "\ud800", "a\udfffb", "é", "\x00", "🚀", "home ", "x" * 64]
STRINGS += ["\u2028", "\\", '"', "{}", "null", "a" * 65, "\U0010ffff", "ﬁ", "\ufeff"]
ints = st.integers(-(2**63), 2**64 - 1)
masks = _pool([b"\0\0\0\0", b"abcd", b"\xff\xff\xff\xff"], st.binary(min_size=4, max_size=4))
texts = _pool(STRINGS, st.text(max_size=6))
NUMBERS = [0, 1, -1, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1, 1.5, -0.0]
NUMBERS += [float("nan"), float("inf"), float("-inf"), 1e308, 5e-324]
SCALARS = [None, True, False, *NUMBERS, *STRINGS]
scalars = _pool(SCALARS, ints, texts)
CONTAINERS: list[Any] = [[], {}, [1], [[[]]], {"a": None}, {"type": "ping"}, [{"id": 1}]]
CONTAINERS += [{"": {"": [None]}}, ["home", "home"], {"\ud800": 1}, [[1, [2, [3]]]], {"x": []}]
json_values = _pool(SCALARS + CONTAINERS, st.lists(scalars, max_size=3))
non_objects = _pool(SCALARS + [c for c in CONTAINERS if not isinstance(c, dict)])

good_ids = _pool(
    [0, 1, 2**31 - 1, "r1", "", "x" * 64, "é" * 64, "\ud800", "\x00", "🚀"],
    st.integers(0, 2**31 - 1),
    st.text(max_size=8),
)
BAD_IDS: list[Any] = [-1, 2**31, 2**63 - 1, -(2**63), 2**64 - 1, True, False, 1.0, 0.5]
BAD_IDS += [float("nan"), "x" * 65, "é" * 65, [], [1], {}, {"id": 1}]
bad_ids = _pool(BAD_IDS, st.integers(-(2**63), -1), st.integers(2**31, 2**64 - 1))
ids = weighted((5, good_ids), (1, bad_ids))
UNKNOWN_TYPES = ["hello", "snapshot", "error", "ack", "PING", "ping ", "", "auth\x00", "\ud800"]
UNKNOWN_TYPES += ["diff", "close", "Subscribe", "ping\n", "pïng"]
types = weighted(
    (12, st.sampled_from(CLIENT_TYPES)),
    (2, _pool(UNKNOWN_TYPES, st.text(max_size=6))),
    (1, st.sampled_from([None, 1, 0.0, True, ["ping"], {"type": "ping"}])),
)
GOOD_NAMES = ["home", "home", "home", "offers", "similar", "cart", "_", "a1", "f" * 32, "hôme"]
BAD_NAMES = ["", "a b", "2home", "home-1", "x" * 33, "\ud800", "home\n", "home ", "\x00"]
good_names = _pool(GOOD_NAMES, st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=32))
names = weighted((3, good_names), (1, st.sampled_from([*BAD_NAMES, None, 1, ["home"], {}])))
feeds: st.SearchStrategy[Any] = weighted(
    (6, st.just(["home"])),
    (2, st.lists(names, min_size=1, max_size=8)),
    (2, st.lists(good_names, min_size=1, max_size=3)),
    (1, st.lists(good_names, min_size=9, max_size=10)),
    (1, st.sampled_from([[], None, "home", {"home": 1}, 1])),
)
epochs = _pool(["E", "Xy3_aQ", "x" * 32, "é", "\ud800"], st.text(min_size=1, max_size=8))
counts = _pool([0, 1, 41, 2**63 - 1], st.integers(0, 2**64 - 1))
good_versions = st.tuples(epochs, counts).map(list)
BAD_VERSIONS: list[Any] = [["E"], ["E", 1, 2], "E:1", None, {"E": 1}, [], ["", 1], ["x" * 33, 1]]
BAD_VERSIONS += [["E", -1], ["E", True], ["E", 1.0], [1, 1], [None, 0], ["E", "1"], [["E"], 1]]
bad_versions = _pool(BAD_VERSIONS, st.tuples(epochs, scalars).map(list))
have = weighted(
    (6, st.none()),
    (2, st.fixed_dictionaries({"home": good_versions})),
    (
        2,
        st.dictionaries(
            weighted((3, good_names), (1, st.sampled_from(BAD_NAMES))),
            weighted((3, good_versions), (1, bad_versions)),
            max_size=3,
        ),
    ),
    (1, st.dictionaries(good_names, good_versions, min_size=9, max_size=10)),
    (1, non_objects),
)
tokens = weighted(
    (4, st.sampled_from([SELF, SELF, SELF, OTHER_TOKEN, EXPIRED_TOKEN, FORGED_TOKEN])),
    (1, st.sampled_from(["garbage", "a.b.c", "", "x" * 4097, "x" * 4096, "\ud800", None, 1])),
)
events_item = weighted(
    (
        3,
        st.fixed_dictionaries(
            {"event_id": texts, "type": st.sampled_from(["view", "search", "search", "fly", 3])},
            optional={
                "item_id": _pool(["phones-1", "books-2"], scalars),
                "user_id": st.sampled_from([OTHER_USER, "", 5]),
                "ts": st.sampled_from([0, 2**40, 2**62, "now", None, 1.5]),
                "props": st.sampled_from(
                    [{}, {"query": "phones"}, {"query": "\ud800"}, {"\ud800": 1}, None, [], "x"]
                ),
                "\ud800x": st.just(1),
                "extra": scalars,
            },
        ),
    ),
    (1, json_values),
)
events = weighted(
    (4, st.lists(events_item, min_size=1, max_size=4)),
    (1, st.integers(51, 55).map(lambda n: [{}] * n)),
    (1, st.sampled_from([[], None, {}, "view", [None] * 50])),
)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "token": tokens,
    "feeds": feeds,
    "have": have,
    "feed": weighted((1, st.just("home")), (1, names)),
    "events": events,
}
TYPE_FIELDS = {
    "auth": ("token",),
    "identify": ("token",),
    "subscribe": ("feeds", "have"),
    "unsubscribe": ("feeds",),
    "resync": ("feed",),
    "track": ("events",),
}
EXTRA_FIELDS = st.dictionaries(
    st.sampled_from(["x", "ID", "Type", "token", "events"]), scalars, max_size=1
)
ONE_IN_10 = st.integers(0, 9)
# Which fields a message gets, relative to the fields of its type: one draw.
PLANS = st.sampled_from(["wanted"] * 7 + ["missing", "other", "none", "extra"])
OTHER_FIELDS = st.sampled_from(sorted(FIELDS))


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    """Near-valid client messages: a type, maybe an id, the fields of the type (each valid or
    not, sometimes missing), sometimes fields of other types and unknown fields."""
    obj: dict[str, Any] = {}
    if draw(ONE_IN_10):
        obj["type"] = draw(types)
    if draw(ONE_IN_10) > 2:
        obj["id"] = draw(ids)
    wanted = TYPE_FIELDS.get(obj["type"], ()) if isinstance(obj.get("type"), str) else ()
    plan = draw(PLANS)
    chosen = list(wanted)
    if plan == "missing" and chosen:
        del chosen[draw(POS) % len(chosen)]
    elif plan == "other":
        chosen.append(draw(OTHER_FIELDS))
    elif plan == "none":
        chosen = []
    for name in chosen:
        obj[name] = draw(FIELDS[name])
    if plan == "extra":
        obj.update(draw(EXTRA_FIELDS))
    return obj


PING_MSG = Msg({"type": "ping"})
bodies_msg = weighted(
    (6, st.builds(Msg, messages(), st.booleans())), (1, st.builds(Msg, non_objects))
)
messages_sent = bodies_msg.map(lambda body: Send("message", body))

BAD_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8\x88\x80\x80\x80", b"\x80"]
BAD_UTF8 += [b"\xf4\x90\x80\x80", b"\xfe\xfe\xff\xff", b"\xe0\x80\x80"]
_BAD_UTF8 = st.sampled_from(BAD_UTF8)


POS = st.integers(0, 2**16)  # a position, taken modulo the length
TEXT_KINDS = st.sampled_from(
    ["truncated", "mutated", "text", "bytes", "bad_utf8", "utf16", "bomb", "numbers"]
)
INSERTS = _pool([*'{}[]":,\\ 0e-', "\x00", "\ud800", "é"], st.text(max_size=2))
JSON_CODECS = st.sampled_from(["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
JSON_DEPTHS = st.one_of(st.integers(1, 40), st.integers(5000, 8000))
NESTINGS = st.sampled_from(["[", '{"a":'])


@st.composite
def json_texts(draw: st.DrawFn) -> Send:
    """Text frames: mutated JSON, random text and bytes, invalid UTF-8, other encodings, bombs."""
    kind = draw(TEXT_KINDS)
    data: bytes
    if kind in ("truncated", "mutated", "bad_utf8"):
        text = json.dumps(draw(messages()))
        at = draw(POS) % (len(text) + 1)
        if kind == "truncated":
            data = text[: min(at, len(text) - 1)].encode()
        elif kind == "mutated":
            data = (text[:at] + draw(INSERTS) + text[at + draw(POS) % 3 :]).encode(
                "utf-8", "surrogatepass"
            )
        else:
            data = text[:at].encode() + draw(_BAD_UTF8) + text[at:].encode()
    elif kind == "text":
        data = draw(st.text(max_size=30)).encode()
    elif kind == "bytes":
        data = draw(st.binary(max_size=40))
    elif kind == "utf16":
        data = json.dumps({"type": "ping"}).encode(draw(JSON_CODECS))
    elif kind == "bomb":
        depth = draw(JSON_DEPTHS)
        inner = draw(NESTINGS)
        close = "]" if inner == "[" else "}"
        data = ('{"type":"ping","x":' + inner * depth + "1" + close * depth + "}").encode()
        if len(data) > MAX_MESSAGE:
            data = ("[" * depth + "]" * depth).encode()
    else:  # huge numbers: more digits than Python converts
        digits = draw(POS) % 6000 + 1
        data = ('{"type":"ping","id":' + "7" * digits + "}").encode()
    return Send(f"text_{kind}", data, TEXT)


MSGPACK_PREFIX = b"\x82\xa4type\xa4ping\xa1x"  # {"type": "ping", "x": <value>}
MSGPACK_BOMBS = {
    "array32_huge": b"\xdd\xff\xff\xff\xff\x01\x02",
    "map32_huge": b"\xdf\xff\xff\xff\xff\xa1a\x01",
    "str32_huge": b"\xdb\xff\xff\xff\xffabc",
    "bin32_huge": b"\xc6\xff\xff\xff\xffabc",
    "ext32_huge": b"\xc9\xff\xff\xff\xff\x05abc",
    "array16_huge": b"\xdc\xff\xff\x01",
    "bin_empty": b"\xc4\x00",
    "bin": b"\xc4\x03abc",
    "bin16": b"\xc5\x00\x01a",
    "ext_empty": b"\xc7\x00\x05",
    "fixext1": b"\xd4\x05\x01",
    "fixext16": b"\xd8\x05" + bytes(16),
    "timestamp": b"\xd6\xff\x00\x00\x00\x01",
    "reserved": b"\xc1",
    "bad_utf8_str": b"\xa2\xff\xfe",
    "int_key": b"\x81\x01\x02",
    "nil_key": b"\x81\xc0\x02",
    "array_key": b"\x81\x91\x01\x02",
    "bin_key_empty": b"\x81\xc4\x00\x01",
    "bin_key": b"\x81\xc4\x04type\xa4ping",
}


MSGPACK_KINDS = st.sampled_from(
    ["bomb", "bomb", "deep", "truncated", "trailing", "bytes", "bare_bomb"]
)
BOMB_NAMES = st.sampled_from(sorted(MSGPACK_BOMBS))
MSGPACK_DEPTHS = st.one_of(st.integers(10, 20), st.integers(100, 2000))
MSGPACK_LEVELS = st.sampled_from(
    [b"\x91", b"\x81\xa1a", b"\xdc\x00\x01", b"\xdf\x00\x00\x00\x01\xa0"]
)


@st.composite
def msgpack_binaries(draw: st.DrawFn) -> Send:
    """Binary frames: msgpack bombs, truncated, trailing bytes, random bytes, non-map values."""
    kind = draw(MSGPACK_KINDS)
    if kind == "bomb":
        name = draw(BOMB_NAMES)
        return Send(f"msgpack_{name}", MSGPACK_PREFIX + MSGPACK_BOMBS[name], BINARY)
    if kind == "bare_bomb":  # the bomb is the whole frame
        name = draw(BOMB_NAMES)
        return Send(f"msgpack_bare_{name}", MSGPACK_BOMBS[name], BINARY)
    if kind == "deep":
        level, depth = draw(MSGPACK_LEVELS), draw(MSGPACK_DEPTHS)
        return Send("msgpack_deep", MSGPACK_PREFIX + level * depth + b"\x01", BINARY)
    if kind == "bytes":
        return Send("msgpack_bytes", draw(st.binary(max_size=40)), BINARY)
    packed = msgpack.packb(draw(messages()), use_bin_type=True, unicode_errors="surrogatepass")
    if kind == "truncated":
        return Send("msgpack_truncated", packed[: draw(POS) % len(packed)], BINARY)
    return Send("msgpack_trailing", packed + draw(st.binary(min_size=1, max_size=4)), BINARY)


sizes_over = st.integers(MAX_MESSAGE + 1, MAX_MESSAGE + 3000)
oversized = weighted(
    (
        2,
        st.builds(
            lambda n, op: Send("oversized", b"x" * n, op), sizes_over, st.sampled_from([1, 2])
        ),
    ),
    (2, st.builds(lambda n: Send("oversized_padded", Padded(n)), sizes_over)),
    (
        1,
        st.builds(
            lambda n: Send("max_size_padded", Padded(n)), st.integers(MAX_MESSAGE - 2, MAX_MESSAGE)
        ),
    ),
)
controls_between = st.lists(
    st.one_of(st.none(), st.tuples(st.sampled_from([PING, PONG]), st.binary(max_size=125))),
    max_size=6,
).map(tuple)
cuts = st.lists(st.integers(0, 2**15), min_size=1, max_size=5).map(tuple)


@st.composite
def fragmented(draw: st.DrawFn, bodies: st.SearchStrategy[Send]) -> Send:
    send = draw(bodies)
    return Send(
        f"fragmented_{send.label}", send.body, send.opcode, draw(cuts), draw(controls_between)
    )


def _valid_close_payload(code: int, reason: str) -> bytes:
    return code.to_bytes(2, "big") + reason.encode()[:123]


close_frames = weighted(
    (1, st.just(b"")),
    (
        3,
        st.builds(
            _valid_close_payload,
            st.one_of(st.integers(1000, 1003), st.integers(1007, 1011), st.integers(3000, 4999)),
            st.text(max_size=20),
        ),
    ),
).map(lambda payload: Control("close", CLOSE, payload))
controls = weighted(
    (2, st.builds(lambda p: Control("ping", PING, p), st.binary(max_size=125))),
    (1, st.builds(lambda p: Control("pong", PONG, p), st.binary(max_size=125))),
)
INVALID_CLOSE_CODES = st.one_of(
    st.integers(0, 999), st.integers(1004, 1006), st.integers(1012, 2999), st.integers(5000, 65535)
)


@st.composite
def violations(draw: st.DrawFn) -> Raw:
    """Framing violations, each with the close code RFC 6455 / docs/PROTOCOL.md give it."""
    kind = draw(
        st.sampled_from(
            [
                "rsv",
                "reserved_opcode",
                "unmasked",
                "fragmented_control",
                "long_control",
                "orphan_continuation",
                "data_inside_fragmented",
                "close_1_byte",
                "close_bad_code",
                "close_bad_utf8",
                "length_top_bit",
                "declared_oversize",
                "unmasked_oversize",
                "fragments_oversize",
            ]
        )
    )
    mask = draw(masks)
    payload = draw(st.binary(max_size=40))
    data_op = draw(st.sampled_from([TEXT, BINARY]))
    if kind == "rsv":
        op = draw(st.sampled_from([CONT, TEXT, BINARY, CLOSE, PING, PONG]))
        rsv = draw(st.integers(1, 7))
        return Raw(kind, encode_masked_frame(op, payload, mask, rsv=rsv), 1002)
    if kind == "reserved_opcode":
        op = draw(st.sampled_from([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]))
        return Raw(kind, encode_masked_frame(op, payload, mask, fin=draw(st.booleans())), 1002)
    if kind == "unmasked":
        op = draw(st.sampled_from([Opcode.TEXT, Opcode.BINARY, Opcode.PING, Opcode.PONG]))
        return Raw(kind, encode_frame(op, b'{"type":"ping"}' if op < 8 else payload), 1002)
    if kind == "fragmented_control":
        op = draw(st.sampled_from([CLOSE, PING, PONG]))
        return Raw(kind, encode_masked_frame(op, payload, mask, fin=False), 1002)
    if kind == "long_control":
        op = draw(st.sampled_from([CLOSE, PING, PONG]))
        big = draw(st.binary(min_size=126, max_size=300))
        return Raw(kind, encode_masked_frame(op, big, mask), 1002)
    if kind == "orphan_continuation":
        return Raw(kind, encode_masked_frame(CONT, payload, mask, fin=draw(st.booleans())), 1002)
    if kind == "data_inside_fragmented":
        start = encode_masked_frame(data_op, payload, mask, fin=False)
        again = encode_masked_frame(draw(st.sampled_from([TEXT, BINARY])), payload, mask)
        return Raw(kind, start + again, 1002)
    if kind == "close_1_byte":
        return Raw(kind, encode_masked_frame(CLOSE, payload[:1] or b"\x03", mask), 1002)
    if kind == "close_bad_code":
        code = draw(INVALID_CLOSE_CODES)
        return Raw(kind, encode_masked_frame(CLOSE, code.to_bytes(2, "big") + b"bye", mask), 1002)
    if kind == "close_bad_utf8":
        reason = b"bye" + draw(st.sampled_from(BAD_UTF8))
        return Raw(kind, encode_masked_frame(CLOSE, b"\x03\xe8" + reason, mask), 1007)
    if kind == "length_top_bit":
        n = (1 << 63) | draw(st.integers(0, 2**20))
        return Raw(kind, bytes((0x80 | data_op, 0xFF)) + n.to_bytes(8, "big") + mask, 1002)
    if kind in ("declared_oversize", "unmasked_oversize"):
        n = draw(st.one_of(st.integers(MAX_MESSAGE + 1, 65535), st.integers(65536, 2**63 - 1)))
        length = (
            bytes((126,)) + n.to_bytes(2, "big")
            if n < 65536
            else bytes((127,)) + n.to_bytes(8, "big")
        )
        if kind == "unmasked_oversize":
            return Raw(kind, bytes((0x80 | data_op, length[0])) + length[1:] + payload, 1002)
        head = bytes((0x80 | data_op, 0x80 | length[0])) + length[1:] + mask
        return Raw(kind, head + payload, 4509)
    # fragments_oversize: a small start, then a continuation that takes the total over the limit
    first = draw(st.integers(1, 2000))
    start = encode_masked_frame(data_op, b"[" * first, mask, fin=False)
    rest = MAX_MESSAGE - first + draw(st.integers(1, 100))
    head = bytes((0x80, 0x80 | 126)) + rest.to_bytes(2, "big") + mask
    return Raw(kind, start + head + b"x" * draw(st.integers(0, 64)), 4509)


splits = _pool([(), (), (), (), (1,), (2,), (7,)], st.lists(POS, max_size=3).map(tuple))


def steps(actions: st.SearchStrategy[Action], slots: int) -> st.SearchStrategy[Step]:
    return st.builds(Step, st.integers(0, slots - 1), actions, masks, splits)


reset = st.just(Send("reset_ping", PING_MSG))  # a valid message: ends a run of refusals
message_actions: st.SearchStrategy[Action] = weighted(
    (10, messages_sent),
    (2, reset),
    (1, json_texts()),
    (1, msgpack_binaries()),
    (1, controls),
    (1, fragmented(messages_sent)),
)
framing_actions: st.SearchStrategy[Action] = weighted(
    (4, violations()),
    (1, close_frames),
    (2, oversized),
    (1, fragmented(weighted((1, json_texts()), (1, msgpack_binaries())))),
    (2, fragmented(messages_sent)),
    (1, fragmented(oversized)),
    (1, controls),
    (1, json_texts()),
    (1, msgpack_binaries()),
    (2, messages_sent),
    (1, reset),
)
# Before authentication: a first message that is mostly an auth message (valid or not).
auth_messages = st.builds(
    lambda token, ref, ascii: Msg({"type": "auth", "token": token, "id": ref}, ascii),
    tokens,
    weighted((1, st.none()), (1, ids)),
    st.booleans(),
).map(lambda body: Send("auth", body))
first_actions: st.SearchStrategy[Action] = weighted(
    (4, auth_messages),
    (1, fragmented(auth_messages)),
    (2, messages_sent),
    (1, json_texts()),
    (1, msgpack_binaries()),
    (1, controls),
    (1, close_frames),
    (1, violations()),
)

# No shrinking: against a live server it takes minutes, and a failure already names the frame's
# bytes, the answer expected and the one received.
FUZZ_SETTINGS = settings(
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


# -- tests --------------------------------------------------------------------------------------


@settings(FUZZ_SETTINGS, max_examples=250)
@given(script=st.lists(steps(message_actions, 2), min_size=20, max_size=60))
def test_messages_get_their_documented_answers(fuzz: Fuzz, script: list[Step]) -> None:
    """Valid and invalid messages on authenticated JSON and msgpack connections."""
    fuzz.ran.add("messages")
    run_steps(fuzz, script, SLOTS[:2])


@settings(FUZZ_SETTINGS, max_examples=200)
@given(script=st.lists(steps(framing_actions, 4), min_size=10, max_size=40))
def test_framing_violations_close_with_their_code(fuzz: Fuzz, script: list[Step]) -> None:
    """Framing violations, oversized and fragmented messages, close frames; with and without
    the token in the URL (then the first message must be auth)."""
    fuzz.ran.add("framing")
    run_steps(fuzz, script, SLOTS)


@settings(FUZZ_SETTINGS, max_examples=100)
@given(
    script=st.lists(
        st.tuples(
            st.sampled_from(["json", "msgpack"]), st.lists(first_actions, min_size=1, max_size=3)
        ),
        min_size=4,
        max_size=10,
    )
)
def test_first_frames_before_auth(fuzz: Fuzz, script: list[tuple[str, list[Action]]]) -> None:
    """Connections without ``?token=``: garbage first frames close with 4500 or 4501; a valid
    auth message authenticates. Each connection of the example runs concurrently."""
    fuzz.ran.add("before_auth")

    async def one(codec: str, actions: list[Action], mask: bytes) -> None:
        pool = Pool(fuzz, (Slot(codec, False),))
        try:
            for action in actions:
                await pool.step(Step(0, action, mask, ()))
                if 0 not in pool.conns:
                    break  # closed: the rest would go to a new connection
            await pool.sync()
        finally:
            pool.close()

    async def scenario() -> None:
        await asyncio.gather(*(one(codec, actions, os.urandom(4)) for codec, actions in script))

    fuzz.run(scenario())


@dataclass(frozen=True)
class Head:
    label: str
    data: bytes
    valid: bool | None  # a complete, valid upgrade request: 101 expected (None: 101 or 4xx)


def _upgrade_lines(token: str) -> list[str]:
    key = base64.b64encode(b"0123456789abcdef").decode()
    return [
        f"GET /v1/ws?token={token} HTTP/1.1",
        "Host: localhost",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: pushrec.v1.json",
    ]


# uvicorn hands our protocol a request line it rebuilt as "HTTP/1.1" whatever version the client
# sent, so HTTP/1.0 and "HTTP/2.0" upgrades are accepted (RFC 6455 4.1 asks for 1.1 or later):
# tolerated here.
TOLERATED = {"version_1_0", "version_2"}
HEAD_MUTATIONS = {
    "method": (0, "POST /v1/ws HTTP/1.1"),
    "version_1_0": (0, "GET /v1/ws HTTP/1.0"),
    "version_2": (0, "GET /v1/ws HTTP/2.0"),
    "path": (0, "GET /v1/wsx HTTP/1.1"),
    "bad_have": (0, "GET /v1/ws?have=nope HTTP/1.1"),
    "bad_feeds": (0, "GET /v1/ws?feeds=a%20b HTTP/1.1"),
    "no_feeds": (0, "GET /v1/ws?feeds= HTTP/1.1"),
    "no_upgrade": (2, "X-Nothing: 1"),
    "upgrade_h2c": (2, "Upgrade: h2c"),
    "no_connection": (3, "X-Nothing: 1"),
    "connection_close": (3, "Connection: close"),
    "no_key": (4, "X-Nothing: 1"),
    "short_key": (4, "Sec-WebSocket-Key: " + base64.b64encode(b"x" * 15).decode()),
    "bad_key": (4, "Sec-WebSocket-Key: not base64!"),
    "empty_key": (4, "Sec-WebSocket-Key: "),
    "no_version": (5, "X-Nothing: 1"),
    "version_8": (5, "Sec-WebSocket-Version: 8"),
    "two_versions": (5, "Sec-WebSocket-Version: 13, 8"),
    "folded": (6, "Sec-WebSocket-Protocol: pushrec.v1.json\r\n continued"),
    "no_colon": (6, "Sec-WebSocket-Protocol pushrec.v1.json"),
    "space_before_colon": (1, "Host : localhost"),
    "control_char": (1, "Host: local\x01host"),
    "huge_header": (1, "Host: " + "h" * 20_000),
}


@st.composite
def heads(draw: st.DrawFn) -> Head:
    token = VERIFIER.mint(f"fuzz-{RUN}-head", ttl_s=3600)
    kind = draw(st.sampled_from(["valid", "mutated", "mutated", "mutated", "random", "cut"]))
    lines = _upgrade_lines(token)
    if kind == "valid":
        return Head("valid", ("\r\n".join(lines) + "\r\n\r\n").encode(), True)
    if kind == "mutated":
        chosen = draw(st.lists(st.sampled_from(sorted(HEAD_MUTATIONS)), min_size=1, max_size=3))
        applied = {HEAD_MUTATIONS[name][0]: name for name in chosen}  # the last one per line
        for at, name in applied.items():
            lines[at] = HEAD_MUTATIONS[name][1]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return Head("mutated", data, None if set(applied.values()) <= TOLERATED else False)
    if kind == "random":
        noise = draw(st.binary(max_size=200))
        return Head("random", noise + draw(st.sampled_from([b"\r\n\r\n", b""])), False)
    data = ("\r\n".join(lines) + "\r\n\r\n").encode()
    cut = data[: draw(st.integers(0, len(data) - 1))] + draw(st.binary(max_size=20))
    # The garbage may complete the head, even as another valid upgrade (a cut subprotocol
    # `pushrec.v1.js` is one the server does not know, so it answers without one, as RFC 6455
    # 4.2.2 allows): only a cut that kept the whole head must be upgraded.
    return Head("cut", cut, True if cut.startswith(data) else None)


@settings(FUZZ_SETTINGS, max_examples=40)
@given(script=st.lists(heads(), min_size=5, max_size=10))
def test_garbage_upgrade_requests_are_refused(fuzz: Fuzz, script: list[Head]) -> None:
    """Garbage and broken upgrade requests: an HTTP 4xx answer or a plain close, never a hang,
    never a 5xx; valid ones are upgraded."""
    fuzz.ran.add("handshake")

    async def one(head: Head) -> None:
        client = await Client.connect(fuzz.server.address)
        try:
            client.write(head.data)
            if client.transport is not None and client.transport.can_write_eof():
                client.transport.write_eof()
            answer = await client.until_closed()
        finally:
            client.abort()
        fuzz.heads += 1
        fuzz.labels[f"head_{head.label}"] += 1
        if head.valid or (head.valid is None and answer.startswith(b"HTTP/1.1 101 ")):
            assert answer.startswith(b"HTTP/1.1 101 "), (head, answer[:200])
            fuzz.answers["http 101"] += 1
            return
        if answer:
            status = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
            assert status is not None, (head, answer[:200])
            assert 400 <= int(status.group(1)) < 500, f"{head.data!r} got {answer[:300]!r}"
            fuzz.answers[f"http {int(status.group(1))}"] += 1
        else:
            fuzz.answers["http closed"] += 1

    async def scenario() -> None:
        await asyncio.gather(*(one(head) for head in script))

    fuzz.run(scenario())


def test_ten_refused_messages_in_a_row_close_with_4500(fuzz: Fuzz) -> None:
    """Nine refusals then a valid message: still open. Ten in a row: 4500 (both codecs; a
    refused valid message, here ``identify`` on a non-anonymous connection, counts too)."""
    mask = b"abcd"
    ping = Step(0, Send("ping", PING_MSG), mask, ())
    bad_json = Step(0, Send("bad", b"{nope", TEXT), mask, ())
    bad_msgpack = Step(0, Send("bad", b"\xc1", BINARY), mask, ())
    identify = Step(0, Send("forbidden", Msg({"type": "identify", "token": "t"})), mask, ())
    before = Counter(fuzz.answers)
    run_steps(fuzz, [bad_json] * 9 + [ping] + [bad_json] * 10, SLOTS[:1])
    run_steps(fuzz, [bad_msgpack] * 9 + [ping, identify] + [bad_msgpack] * 9, SLOTS[1:2])
    assert fuzz.answers["close 4500"] - before["close 4500"] == 2
    assert fuzz.answers["error bad_json"] - before["error bad_json"] == 18
    assert fuzz.answers["error bad_msgpack"] - before["error bad_msgpack"] == 17


def test_messages_right_after_auth_see_the_default_feed(fuzz: Fuzz) -> None:
    """``auth`` and ``resync home`` in one write: docs/PROTOCOL.md says hello comes right after
    authentication and the connection follows ``home`` (the ``?feeds=`` default), so the answer
    is hello, then the ack: messages that arrive before hello wait until the session is open
    (it once answered ``unknown_feed`` first, the subscription not existing yet)."""

    async def scenario() -> None:
        user = new_id("early")
        conn = Conn(await Client.open(fuzz.server.address, "", "json"), SLOTS[2], user)
        try:
            auth = {"type": "auth", "token": VERIFIER.mint(user, ttl_s=3600)}
            resync = {"type": "resync", "feed": "home", "id": 1}
            conn.client.write(
                b"".join(
                    encode_masked_frame(TEXT, json.dumps(m).encode(), b"mask")
                    for m in (auth, resync)
                )
            )
            conn.user = user
            await conn.greeting()
            await conn.check(Expect("ack", "resync", 1), "auth and resync in one write")
        finally:
            conn.client.abort()

    fuzz.run(scenario())


def test_rate_limit_refuses_then_closes(server: Server) -> None:
    """Default limits (burst 40): a flood gets 40 pongs, then rate_limited errors and, at the
    tenth refusal in a row, 4500; another connection of the same user is not affected."""

    async def scenario() -> None:
        user = new_id("flood")
        query = f"?token={server.token(user)}"
        flood = Conn(await Client.open(server.address, query, "json"), SLOTS[0], user)
        calm = Conn(await Client.open(server.address, query, "json"), SLOTS[0], user)
        try:
            frame = encode_masked_frame(TEXT, b'{"type":"ping"}', b"mask")
            flood.client.write(frame * 80)
            answers: list[str] = []
            while True:
                kind, got = await flood.answer()
                if kind != "msg":
                    assert (kind, got[0]) == ("close", 4500), (kind, got)
                    break
                answers.append(got["type"] if got["type"] == "pong" else got["code"])
            pongs = answers.count("pong")
            assert 40 <= pongs <= 45, answers
            assert answers[:40] == ["pong"] * 40
            assert answers[-9:] == ["rate_limited"] * 9, answers
            assert set(answers) == {"pong", "rate_limited"}
            calm.client.write(frame)
            await calm.check(Expect("pong"), "a ping on the other connection")
        finally:
            flood.client.abort()
            calm.client.abort()

    asyncio.run(scenario())


def test_nothing_else_was_disturbed(fuzz: Fuzz) -> None:
    """After the fuzzing: the guard connection still follows its feed, idle unauthenticated
    connections were closed with 4502, the server answers, stops cleanly, and logged no error."""

    async def scenario() -> None:
        for client in fuzz.idle:
            conn = Conn(client, Slot(client.codec, False), "")
            await conn.check(Expect("close", 4502), "no auth message in time")
        guard = fuzz.guard
        before = guard.version
        await fuzz.server.view(fuzz.guard_user, "phones-1", "books-2")
        await guard.wait(lambda s: s.version != before, within_s=10)
        stored = await fuzz.server.feed(fuzz.guard_user)
        await guard.wait(lambda s: s.version == stored["version"], within_s=10)
        assert guard.ids == [str(p["id"]) for p in stored["items"]]
        assert not [f for f in guard.others if f["type"] in ("error", "close")], guard.others
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{fuzz.server.http}/healthz")).status_code == 200

    fuzz.run(scenario())
    assert fuzz.proc.poll() is None, "the server died"
    status = Path(f"/proc/{fuzz.proc.pid}/status")
    if status.exists():  # Linux: the bombs did not blow the server's memory up
        peak = re.search(r"VmHWM:\s+(\d+) kB", status.read_text())
        assert peak is not None
        print(f"\nserver peak RSS: {int(peak.group(1)) // 1024} MiB")
        assert int(peak.group(1)) < MAX_SERVER_RSS_KIB, status.read_text()
    elapsed = time.monotonic() - fuzz.started
    print(
        f"\nfuzz: {fuzz.frames} frames in {fuzz.steps} steps on {fuzz.connections} connections, "
        f"{fuzz.heads} upgrade requests, {elapsed:.1f} s"
    )
    print("inputs:", dict(sorted(fuzz.labels.items())))
    print("answers:", dict(sorted(fuzz.answers.items())))
    if {"messages", "framing", "before_auth"} <= fuzz.ran:
        assert fuzz.frames >= MIN_FRAMES
    assert stop_server(fuzz.proc) in (0, -15)  # uvicorn re-raises the SIGTERM it handled
    log = fuzz.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    errors = [
        line
        for line in log.splitlines()
        if re.search(r'"level": "(error|critical)"', line) or line.startswith(("ERROR", "CRITICAL"))
    ]
    assert not errors, errors[:20]


# -- poison records on the Kafka path -----------------------------------------------------------
# Hypothesis draws runs of records that must never become events — props nested past the bound,
# records too large to decode (up to the broker's own limit, too large to copy whole into the
# dead-letter topic), events dated beyond tomorrow (also in the record's own timestamp), records
# keyed by another user or by nothing — and produces each run to one partition of a real topic,
# followed by a normal event. Oracle: every poison is dead-lettered with its reason and its
# origin, no victim user has any state, the trending decay origin did not move, and the normal
# event after them is applied (the partition kept moving).


@dataclass(frozen=True)
class Poison:
    """One poison record: its expected reason and how it is made."""

    reason: str
    codec: str  # "json" or "msgpack"
    size: int = 0  # nesting depth (bad_props), value bytes (too_large), ms ahead (bad_ts)
    lists: bool = False  # bad_props: nest lists rather than objects
    key: bytes | None = None  # key_mismatch: the wrong key; no_key: None or b""
    stamp: bool = False  # bad_ts: the record's own timestamp says the same future

    def record(self, victim: str, now_ms: int) -> tuple[bytes | None, bytes, int | None]:
        """(key, value, record timestamp) of this poison, an event of ``victim``."""
        event: dict[str, Any] = {
            "event_id": new_id("e"),
            "user_id": victim,
            "type": "view",
            "item_id": f"poison-{RUN}",
        }
        key: bytes | None = victim.encode()
        stamp: int | None = None
        if self.reason == "bad_props":
            nested: Any = {"leaf": 1}
            for _ in range(self.size - 1):
                nested = [nested] if self.lists else {"a": nested}
            event["props"] = {"p": nested} if self.lists else nested
        elif self.reason == "too_large":
            event["props"] = {"pad": "x" * self.size}
        elif self.reason == "bad_ts":
            event["ts"] = now_ms + self.size
            stamp = event["ts"] if self.stamp else None
        else:
            key = self.key
        value = json.dumps(event).encode() if self.codec == "json" else msgpack.packb(event)
        return key, value, stamp


_codecs = st.sampled_from(["json", "msgpack"])
poisons = st.one_of(
    # Up to 800 levels: deeper, the decoders' own limits answer first (undecodable).
    st.builds(Poison, st.just("bad_props"), _codecs, st.integers(9, 800), lists=st.booleans()),
    st.builds(Poison, st.just("too_large"), _codecs, st.integers(65_537, 1_048_000)),
    st.builds(
        Poison,
        st.just("bad_ts"),
        _codecs,
        st.integers(24 * 3_600_000 + 60_000, 10**14),
        stamp=st.booleans(),
    ),
    st.builds(
        Poison,
        st.just("key_mismatch"),
        _codecs,
        key=st.binary(min_size=1, max_size=64).filter(lambda k: not k.startswith(b"victim-")),
    ),
    st.builds(Poison, st.just("no_key"), _codecs, key=st.sampled_from([None, b""])),
)


@dataclass(repr=False)
class PoisonRig:
    cluster: Cluster
    server: Server
    loop: asyncio.AbstractEventLoop
    producer: AIOKafkaProducer
    letters: AIOKafkaConsumer
    #: Dead letters read so far, by (partition, offset) of the original record.
    dead: dict[tuple[int, int], dict[str, bytes]] = field(default_factory=dict)
    runs: int = 0
    records: int = 0

    def __repr__(self) -> str:
        return f"PoisonRig(topic {self.cluster.topic})"

    def run(self, coro: Any, timeout_s: float = 60.0) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout_s * SCALE))


@pytest.fixture(scope="module")
def poison_rig() -> Iterator[PoisonRig]:
    with cluster() as c:
        server = c.start("a")
        server.load_catalog()
        loop = asyncio.new_event_loop()

        async def clients() -> tuple[AIOKafkaProducer, AIOKafkaConsumer]:
            producer = AIOKafkaProducer(bootstrap_servers=c.bootstrap, max_request_size=2_000_000)
            letters = AIOKafkaConsumer(
                f"{c.topic}.dlq",
                bootstrap_servers=c.bootstrap,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=4_000_000,
                fetch_max_bytes=4_000_000,
            )
            await producer.start()
            await letters.start()
            return producer, letters

        producer, letters = loop.run_until_complete(clients())
        rig = PoisonRig(c, server, loop, producer, letters)
        try:
            yield rig
        finally:
            loop.run_until_complete(producer.stop())
            loop.run_until_complete(letters.stop())
            loop.close()
        print(f"\npoison fuzz: {rig.records} poison records in {rig.runs} runs")


def _recent_of(c: Cluster, user: str) -> list[str]:
    members = c.redis().zrevrange(user_keys(user)[1], 0, -1)
    return [m.decode() if isinstance(m, bytes) else str(m) for m in members]


@settings(FUZZ_SETTINGS, max_examples=30)
@given(
    run=st.lists(poisons, min_size=1, max_size=6),
    partition=st.integers(0, PARTITIONS - 1),
)
def test_poison_records_are_dead_lettered_and_the_partition_moves_on(
    poison_rig: PoisonRig, run: list[Poison], partition: int
) -> None:
    rig, c = poison_rig, poison_rig.cluster
    now_ms = int(time.time() * 1000)
    poison_meta = trend_meta_key(trend_bucket(f"poison-{RUN}"))
    t0 = c.redis().hget(poison_meta, "t0")
    victims = [f"victim-{uuid.uuid4().hex[:12]}" for _ in run]
    user = new_id("u")
    good = {"event_id": new_id("e"), "user_id": user, "type": "view", "item_id": "books-1"}

    async def produce() -> list[int]:
        offsets = []
        for poison, victim in zip(run, victims, strict=True):
            key, value, stamp = poison.record(victim, now_ms)
            meta = await rig.producer.send_and_wait(
                c.topic, value=value, key=key, partition=partition, timestamp_ms=stamp
            )
            offsets.append(meta.offset)
        await rig.producer.send_and_wait(
            c.topic, value=json.dumps(good).encode(), key=user.encode(), partition=partition
        )
        return offsets

    async def applied() -> None:
        while _recent_of(c, user) != ["books-1"]:  # noqa: ASYNC110 - state in another process
            await asyncio.sleep(0.05)

    async def dead_lettered(offsets: list[int]) -> None:
        while any((partition, o) not in rig.dead for o in offsets):
            for records in (await rig.letters.getmany(timeout_ms=500)).values():
                for r in records:
                    headers = dict(r.headers)
                    origin = (int(headers["x-pushrec-partition"]), int(headers["x-pushrec-offset"]))
                    rig.dead[origin] = headers

    offsets = rig.run(produce())
    rig.run(applied())
    rig.run(dead_lettered(offsets))
    rig.runs += 1
    rig.records += len(run)
    for poison, offset, victim in zip(run, offsets, victims, strict=True):
        headers = rig.dead[(partition, offset)]
        assert headers["x-pushrec-reason"].decode() == poison.reason, poison
        assert headers["x-pushrec-topic"].decode() == c.topic
        assert not c.redis().exists(*user_keys(victim)), poison
    if t0 is not None:
        assert c.redis().hget(poison_meta, "t0") == t0
    assert c.redis().zscore(trend_key(trend_bucket(f"poison-{RUN}")), f"poison-{RUN}") is None
