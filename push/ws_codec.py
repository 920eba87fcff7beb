"""Sans-I/O WebSocket (RFC 6455) codec for the server side: handshake, frame reader, encoders.

No sockets, no asyncio, no threads: the transport (``push/ws_server.py``) feeds bytes in and writes
the returned bytes out. It exists because the ``websockets`` sans-I/O ``ServerProtocol`` costs
about 3.6 KiB per connection on its own, and the budget is 12 KiB per idle connection in total.

Handshake (:func:`parse_upgrade`) validates, and answers :class:`HandshakeError` otherwise:

* the head is at most :data:`MAX_HEAD` bytes (else 431) and ends with exactly one blank line;
* request line ``GET <origin-form target> HTTP/1.1`` (printable ASCII target starting with ``/``);
* every header line is ``token ":" value`` without obsolete line folding or control characters;
* ``Upgrade`` has the token ``websocket`` and ``Connection`` the token ``upgrade``
  (case-insensitive, comma-separated lists);
* ``Sec-WebSocket-Version`` is ``13`` (else 426 with ``Sec-WebSocket-Version: 13``);
* ``Sec-WebSocket-Key`` is the base64 encoding of exactly 16 bytes.

It never raises anything but :class:`HandshakeError`. It does not check ``Host`` or ``Origin``
(the caller decides what origins it accepts) and leaves the path percent-encoded as sent.
``Sec-WebSocket-Extensions`` is parsed into :attr:`Upgrade.extensions` (RFC 6455 9.1 grammar,
quoted values unescaped); a header that does not follow the grammar is ignored as a whole (no
extension offered: declining is always allowed, and such a header was ignored before
extensions existed here, so it must not start refusing connections).

Compression (RFC 7692 permessage-deflate) is optional and stateless: :func:`negotiate_deflate`
only ever accepts it *without context takeover in both directions*, so every message is
compressed and decompressed with a fresh zlib object and no zlib state lives on an idle
connection. An offer is declined (RFC 7692 7.1) when it has an unknown parameter, a repeated
one, a value where none is allowed, a window-bits value outside 8-15 (or with leading zeros),
or ``server_max_window_bits`` below 15 (our compressor does not honour a smaller limit).
``client_max_window_bits`` with or without a value is accepted and needs no answer: the
decompressor always uses a 32 KiB window, enough for any client window.

Frames (:class:`FrameReader`) from the client are validated as RFC 6455 section 5 requires of a
server that negotiates no extension (or only permessage-deflate), and any violation raises
:class:`WsProtocolError` carrying the close code to send: 1002 (framing: unmasked frame, RSV bits,
unknown opcode, control frame longer than 125 bytes or fragmented, continuation without a
message, data frame inside a fragmented message, 1-byte close payload, close code outside
1000-1003, 1007-1011, 3000-4999, 64-bit length with the top bit set), 1007 (text message or
close reason that is not UTF-8; compressed data that does not inflate) or 4509 (a frame, or the
fragments of a message so far, longer than ``max_message``: raised from the header alone, before
any of the payload is buffered; with deflate, also a message that inflates to more than
``max_message`` bytes: raised as soon as inflating passes the limit, so a zip bomb never makes
more than ``max_message + 1`` bytes of output). Length encodings need not be minimal.

With ``deflate=True`` (permessage-deflate negotiated) RSV1 on the first frame of a data message
marks it compressed; RSV1 on a continuation or control frame, and RSV2/RSV3 always, are 1002.
Without it any RSV bit is 1002. RFC 7692 says only "fail the connection" for data that does not
inflate; we close with 1007 (invalid payload data).

Memory: an idle reader (no partial frame, no fragmented message) is one object of six slots
that point at shared objects (``None``, ``True``/``False``, small ints, the caller's
``max_message`` int): about 80 bytes, compression or not. While a frame is incomplete it holds
one ``bytearray`` of the unparsed bytes; while a fragmented message is in progress one
``bytearray`` of its unmasked fragments. Both are dropped as soon as they are consumed. The
bytes held (:attr:`FrameReader.buffered`) never exceed ``max_message + 14`` (fragments so far,
plus the header and payload of the frame being read), except while a control frame interrupts a
fragmented message: then ``max_message + 6 + 125``. Inflating a compressed message allocates,
only for the duration of the :meth:`FrameReader.feed` call, a zlib inflater (~7 KiB plus a
32 KiB window) and at most ``max_message + 1`` bytes of output.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import http
import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

from push.exceptions import PushError

__all__ = [
    "DEFLATE",
    "DEFLATE_RESPONSE",
    "GUID",
    "MAX_HEAD",
    "Extension",
    "FrameReader",
    "HandshakeError",
    "Message",
    "Opcode",
    "Upgrade",
    "WsProtocolError",
    "accept_key",
    "accept_response",
    "deflate_message",
    "encode_close",
    "encode_frame",
    "encode_masked_frame",
    "head_complete",
    "negotiate_deflate",
    "parse_extensions",
    "parse_upgrade",
    "reject_response",
    "valid_close_code",
]

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 16 * 1024  # bytes of request head accepted; the transport should stop buffering there
_HEAD_END = b"\r\n\r\n"


class Opcode(enum.IntEnum):
    CONT = 0
    TEXT = 1
    BINARY = 2
    CLOSE = 8
    PING = 9
    PONG = 10


# Index by the 4-bit opcode: avoids Opcode(n) (an enum call) per frame; None marks reserved ones.
_OPCODES: tuple[Opcode | None, ...] = tuple(
    Opcode(n) if n in Opcode._value2member_map_ else None for n in range(16)
)


# ---------------------------------------------------------------------------------------------
# Handshake

#: One offered extension: its name and its parameters in order (name, value or None), as sent.
#: Parameters stay a sequence of pairs because RFC 7692 7.1 declines an offer that repeats one.
Extension = tuple[str, tuple[tuple[str, str | None], ...]]


class HandshakeError(PushError):
    """The upgrade request is refused: answer ``response()`` (an HTTP error) and close."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers  # extra response headers, e.g. Sec-WebSocket-Version on 426

    def response(self) -> bytes:
        """The complete HTTP response refusing the upgrade (see :func:`reject_response`)."""
        return reject_response(self.status, self.code, self.message, self.headers)


@dataclass(frozen=True, slots=True)
class Upgrade:
    """A validated WebSocket upgrade request."""

    path: str  # as sent (still percent-encoded), without the query
    query: dict[str, str]  # percent-decoded ("+" is a space), last value wins
    # Lower-case names; repeated headers joined with ", "; values decoded as latin-1 (bytes
    # 0x80-0xff are legal obs-text in HTTP and must not make the parse fail).
    headers: dict[str, str]
    key: str  # Sec-WebSocket-Key
    subprotocols: tuple[str, ...]  # offered, in order
    origin: str | None
    #: Sec-WebSocket-Extensions offers, in order; () when none (or a malformed header).
    extensions: tuple[Extension, ...] = ()


# RFC 9110 token; header names and subprotocol names must be tokens.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters other than HT are not allowed in a field value (RFC 9110 5.5).
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Origin-form request target: printable ASCII without spaces.
_TARGET = re.compile(r"/[\x21-\x7e]*")


def head_complete(buf: bytes | bytearray) -> bool:
    """True once ``buf`` holds a complete request head (it contains the blank line)."""
    return _HEAD_END in buf


def _bad(message: str) -> HandshakeError:
    return HandshakeError(400, "bad_upgrade", message)


def _tokens(value: str | None) -> list[str]:
    if value is None:
        return []
    return [t.strip(" \t").lower() for t in value.split(",")]


def parse_upgrade(raw: bytes) -> Upgrade:
    """Parse and validate a WebSocket upgrade request head (ending with ``\\r\\n\\r\\n``).

    Raises :class:`HandshakeError` (and nothing else) when the request must be refused.
    """
    try:
        return _parse_upgrade(bytes(raw))
    except HandshakeError:
        raise
    except Exception as exc:  # a bug here must still end in an HTTP answer, not a crash
        raise _bad("malformed request head") from exc


def _parse_upgrade(raw: bytes) -> Upgrade:
    if len(raw) > MAX_HEAD:
        raise HandshakeError(431, "headers_too_large", f"request head larger than {MAX_HEAD} bytes")
    end = raw.find(_HEAD_END)
    if end < 0:
        raise _bad("incomplete request head (no blank line)")
    if end + 4 != len(raw):
        raise _bad("unexpected bytes after the request head")
    # latin-1 maps every byte to one character, so decoding cannot fail; ASCII-only parts
    # (request target, header names) are then checked by the regular expressions.
    lines = raw[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _bad("malformed request line")
    method, target, version = parts
    if version != "HTTP/1.1":
        raise _bad("WebSocket upgrade needs HTTP/1.1")
    if method != "GET":
        raise _bad("WebSocket upgrade needs GET")
    if not _TARGET.fullmatch(target):
        raise _bad("malformed request target")

    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            raise _bad("obsolete header line folding")
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise _bad("malformed header line")
        value = value.strip(" \t")
        if _BAD_VALUE.search(value):
            raise _bad(f"control character in header {name}")
        name = name.lower()
        previous = headers.get(name)
        headers[name] = value if previous is None else f"{previous}, {value}"

    if "websocket" not in _tokens(headers.get("upgrade")):
        raise _bad("Upgrade header must include websocket")
    if "upgrade" not in _tokens(headers.get("connection")):
        raise _bad("Connection header must include upgrade")
    if headers.get("sec-websocket-version") != "13":
        raise HandshakeError(
            426,
            "unsupported_version",
            "Sec-WebSocket-Version must be 13",
            (("Sec-WebSocket-Version", "13"),),
        )
    key = headers.get("sec-websocket-key")
    if key is None:
        raise _bad("missing Sec-WebSocket-Key")
    try:
        raw_key = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
        raw_key = b""
    if len(raw_key) != 16:
        raise _bad("Sec-WebSocket-Key must be the base64 encoding of 16 bytes")

    path, _, query = target.partition("?")
    offered = headers.get("sec-websocket-protocol", "")
    return Upgrade(
        path=path,
        query=dict(parse_qsl(query, keep_blank_values=True)),
        headers=headers,
        key=key,
        subprotocols=tuple(p for p in (s.strip(" \t") for s in offered.split(",")) if p),
        origin=headers.get("origin"),
        extensions=parse_extensions(headers.get("sec-websocket-extensions", "")),
    )


_TOK = _TOKEN.pattern
_EXT_NAME = re.compile(rf"[ \t]*({_TOK})")
# ; name [= token | quoted-string]; a quoted-string's qdtext is anything but " and \ (control
# characters other than HT were refused with the header), quoted-pair is \ and any character.
_EXT_PARAM = re.compile(rf'[ \t]*;[ \t]*({_TOK})(?:[ \t]*=[ \t]*(?:({_TOK})|"((?:[^"\\]|\\.)*)"))?')
_EXT_SEP = re.compile(r"[ \t]*(?:,|\Z)")
_QUOTED_PAIR = re.compile(r"\\(.)")


def parse_extensions(value: str) -> tuple[Extension, ...]:
    """The offers of a ``Sec-WebSocket-Extensions`` value (RFC 6455 9.1), in order.

    A quoted parameter value is unescaped and must then be a token. Returns ``()`` when the
    value does not follow the grammar: all offers are then declined (never an error).
    """
    offers: list[Extension] = []
    pos = _skip_empty(value, 0)
    while pos < len(value):
        name = _EXT_NAME.match(value, pos)
        if name is None:
            return ()
        pos = name.end()
        params: list[tuple[str, str | None]] = []
        while (param := _EXT_PARAM.match(value, pos)) is not None:
            pos = param.end()
            raw = param[2]
            if param[3] is not None:
                raw = _QUOTED_PAIR.sub(r"\1", param[3])
                if not _TOKEN.fullmatch(raw):
                    return ()
            params.append((param[1], raw))
        sep = _EXT_SEP.match(value, pos)
        if sep is None:
            return ()
        offers.append((name[1], tuple(params)))
        pos = _skip_empty(value, sep.end())
    return tuple(offers)


def _skip_empty(value: str, pos: int) -> int:
    """Skip empty list elements, allowed by RFC 9110 5.6.1 (``a, , b``), and whitespace."""
    while pos < len(value) and value[pos] in " \t,":
        pos += 1
    return pos


DEFLATE = "permessage-deflate"
#: The only answer :func:`negotiate_deflate` gives (plus ``server_max_window_bits=15`` when the
#: offer named it): no context takeover either way, so no zlib state outlives a message.
DEFLATE_RESPONSE = f"{DEFLATE}; server_no_context_takeover; client_no_context_takeover"
_WINDOW_BITS = frozenset(str(n) for n in range(8, 16))  # decimal, no leading zeros (7692 7.1.2)


def negotiate_deflate(offers: Sequence[Extension]) -> str | None:
    """The ``Sec-WebSocket-Extensions`` response accepting the first permessage-deflate offer we
    can honour, or None when there is none (then answer without the header: no extension).

    See the module docstring for the offers declined. The answer always carries
    ``server_no_context_takeover; client_no_context_takeover``: RFC 7692 lets a server add both
    to any offer, and the client must then compress each message on its own.
    """
    for name, params in offers:
        if name != DEFLATE:
            continue
        seen: set[str] = set()
        accept = True
        for param, value in params:
            if param in seen:
                accept = False
            elif param in ("server_no_context_takeover", "client_no_context_takeover"):
                accept = value is None
            elif param == "server_max_window_bits":
                accept = value == "15"  # the default; any lower limit we would not honour
            elif param == "client_max_window_bits":
                accept = value is None or value in _WINDOW_BITS
            else:
                accept = False
            if not accept:
                break
            seen.add(param)
        if accept:
            if "server_max_window_bits" in seen:  # accepted by echoing it (RFC 7692 7.1.2.1)
                return f"{DEFLATE_RESPONSE}; server_max_window_bits=15"
            return DEFLATE_RESPONSE
    return None


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    digest = hashlib.sha1((key + GUID).encode("ascii"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def accept_response(key: str, subprotocol: str | None, extension: str | None = None) -> bytes:
    """The ``101 Switching Protocols`` response accepting the upgrade; ``extension`` is the
    ``Sec-WebSocket-Extensions`` value (from :func:`negotiate_deflate`), None for no header.

    Raises ValueError if ``subprotocol`` is not a token, or ``extension`` is empty or holds a
    control character (either would corrupt the response).
    """
    extra = ""
    if subprotocol is not None:
        if not _TOKEN.fullmatch(subprotocol):
            raise ValueError(f"subprotocol is not a token: {subprotocol!r}")
        extra = f"Sec-WebSocket-Protocol: {subprotocol}\r\n"
    if extension is not None:
        if not extension.strip(" \t") or _BAD_VALUE.search(extension):
            raise ValueError(f"invalid extension header value: {extension!r}")
        extra += f"Sec-WebSocket-Extensions: {extension}\r\n"
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n"
        f"{extra}\r\n"
    ).encode("ascii")


def reject_response(
    status: int, code: str, message: str, headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """A complete HTTP/1.1 error response with the JSON body ``{"error", "message"}``.

    Raises ValueError if a header name is not a token or a value holds a control character.
    """
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = json.dumps({"error": code, "message": message}).encode("ascii")  # ensure_ascii
    lines = [
        f"HTTP/1.1 {status} {phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise ValueError(f"invalid response header {name!r}: {value!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# ---------------------------------------------------------------------------------------------
# Frames


class WsProtocolError(PushError):
    """The client broke the protocol: close the connection with ``close_code`` and ``reason``.

    ``messages`` holds the complete messages that preceded the error in the same
    :meth:`FrameReader.feed` call (the caller may still act on them, e.g. on a CLOSE).
    """

    def __init__(self, close_code: int, reason: str, messages: tuple[Message, ...] = ()) -> None:
        super().__init__(f"{close_code} {reason}")
        self.close_code = close_code
        self.reason = reason
        self.messages = messages


@dataclass(frozen=True, slots=True)
class Message:
    """A complete message or a control frame received from the client."""

    opcode: Opcode  # TEXT, BINARY (reassembled), PING, PONG, CLOSE
    data: bytes  # payload, unmasked; for TEXT already validated as UTF-8
    close_code: int | None = None  # for CLOSE: the code, None when the frame had no payload
    close_reason: str = ""


def valid_close_code(code: int) -> bool:
    """True for the close codes a peer may send (RFC 6455 7.4.1 and 7.4.2)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1011 or 3000 <= code <= 4999


def _unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    # XOR of two big integers runs in C over machine words: ~35 us for 16 KiB, linear in n,
    # against ~1.7 ms for a Python loop over the bytes.
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class FrameReader:
    """Incremental parser of client frames into messages (see the module docstring).

    ``deflate``: permessage-deflate was negotiated (without client context takeover), so a data
    message whose first frame has RSV1 set is inflated, on its own, once complete.

    Once :meth:`feed` has raised :class:`WsProtocolError`, the reader is dead: it has freed its
    buffers and every later :meth:`feed` raises a new WsProtocolError with the same close code
    and reason (and no messages). It keeps parsing frames after a CLOSE message: stopping there
    is the caller's business (RFC 6455 says to send no more data after a close frame).
    """

    __slots__ = ("_buf", "_dead", "_deflate", "_max", "_msg", "_msg_op")

    def __init__(self, max_message: int, deflate: bool = False) -> None:
        self._max = max_message
        self._deflate = deflate
        # Unparsed bytes of an incomplete frame; None when none are pending. A bytearray so
        # that a frame arriving one byte at a time costs amortised O(1) per byte, not O(n).
        self._buf: bytearray | None = None
        # Unmasked fragments of a fragmented message (None when none is in progress) and its
        # opcode (0 when none), with _RSV1 added when the message is compressed.
        self._msg: bytearray | None = None
        self._msg_op = 0
        self._dead: WsProtocolError | None = None

    @property
    def deflate(self) -> bool:
        """permessage-deflate was negotiated for this connection."""
        return self._deflate

    @property
    def buffered(self) -> int:
        """Bytes held for incomplete frames and messages."""
        return (0 if self._buf is None else len(self._buf)) + (
            0 if self._msg is None else len(self._msg)
        )

    def feed(self, data: bytes | bytearray) -> list[Message]:
        """Consume ``data`` (any chunking) and return the messages it completes, in order."""
        dead = self._dead
        if dead is not None:
            # A new exception each time: re-raising one instance would grow its traceback.
            raise WsProtocolError(dead.close_code, dead.reason)
        buf = self._buf
        view: bytes | bytearray = data
        if buf is not None:
            buf += data
            view = buf
        out: list[Message] = []
        try:
            pos = self._parse(view, out)
        except WsProtocolError as exc:
            self._dead = exc
            self._buf = self._msg = None
            self._msg_op = 0
            exc.messages = tuple(out)
            raise
        if pos == len(view):
            self._buf = None
        elif buf is None or pos:
            # Copy the incomplete tail into a fresh, right-sized bytearray. The tail came from
            # this call's data (bytes before it formed complete frames), so the copying stays
            # linear in the input; and a big bytearray is not kept alive for a few bytes.
            self._buf = bytearray(memoryview(view)[pos:])
        # else: nothing consumed and buf already holds everything (it was extended in place).
        return out

    def _parse(self, data: bytes | bytearray, out: list[Message]) -> int:
        """Parse complete frames from ``data``; return the offset of the first unparsed byte."""
        pos = 0
        end = len(data)
        while end - pos >= 2:
            avail = end - pos
            b0 = data[pos]
            b1 = data[pos + 1]
            op = b0 & 0x0F
            fin = b0 & 0x80
            # Everything decidable from the first two bytes is checked before waiting for more.
            rsv = b0 & 0x70
            if rsv:
                if not self._deflate:
                    raise WsProtocolError(1002, "reserved bits set (no extension negotiated)")
                if rsv != _RSV1:
                    raise WsProtocolError(1002, "RSV2 or RSV3 set (only RSV1 is negotiated)")
                if op == 0 or op >= 8:
                    raise WsProtocolError(1002, "RSV1 set on a continuation or control frame")
            if _OPCODES[op] is None:
                raise WsProtocolError(1002, f"unknown opcode {op}")
            if not b1 & 0x80:
                raise WsProtocolError(1002, "unmasked client frame")
            if op >= 8:
                if not fin:
                    raise WsProtocolError(1002, "fragmented control frame")
            elif op == 0:
                if not self._msg_op:
                    raise WsProtocolError(1002, "continuation frame without a message")
            elif self._msg_op:
                raise WsProtocolError(1002, "new data frame inside a fragmented message")
            n = b1 & 0x7F
            if n < 126:
                hlen = 6
            elif op >= 8:
                raise WsProtocolError(1002, "control frame payload longer than 125 bytes")
            elif n == 126:
                if avail < 4:
                    break
                n = data[pos + 2] << 8 | data[pos + 3]
                hlen = 8
            else:
                if avail < 10:
                    break
                n = int.from_bytes(data[pos + 2 : pos + 10], "big")
                if n >> 63:
                    raise WsProtocolError(1002, "64-bit payload length with the top bit set")
                hlen = 14
            # The limit applies before the payload is buffered: to every frame, and to a
            # continuation together with the fragments received so far.
            total = n + len(self._msg) if op == 0 and self._msg is not None else n
            if total > self._max:
                raise WsProtocolError(4509, f"message longer than {self._max} bytes")
            if avail < hlen + n:
                break
            start = pos + hlen
            pos = start + n
            payload = _unmask(data[start:pos], data[start - 4 : start]) if n else b""
            if op >= 8:
                out.append(_control(op, payload))
            elif op == 0:
                assert self._msg is not None  # a continuation implies a message in progress
                self._msg += payload
                if fin:
                    op = self._msg_op
                    payload = bytes(self._msg)
                    self._msg = None
                    self._msg_op = 0
                    if op & _RSV1:
                        payload = _inflate(payload, self._max)
                    out.append(_data(op & 0x0F, payload))
            elif fin:
                out.append(_data(op, _inflate(payload, self._max) if rsv else payload))
            else:
                self._msg = bytearray(payload)
                self._msg_op = op | rsv
        return pos


_RSV1 = 0x40
# RFC 7692 7.2.2: the sender removed the 4 octets 00 00 ff ff ending the message's final empty
# stored block; the receiver appends them back before inflating.
_DEFLATE_TAIL = b"\x00\x00\xff\xff"


def _inflate(data: bytes, limit: int) -> bytes:
    """Inflate one compressed message with a fresh raw-deflate object, never making more than
    ``limit + 1`` bytes of output (4509 past ``limit``; 1007 when the data does not inflate)."""
    inflater = zlib.decompressobj(-15)  # a 32 KiB window fits any client_max_window_bits
    try:
        # max_length=0 would mean "no limit": with limit 0, output nothing here and let the
        # check below find out whether the message has any content at all.
        out = inflater.decompress(data + _DEFLATE_TAIL, limit) if limit else b""
        rest = inflater.unconsumed_tail if limit else data + _DEFLATE_TAIL
        # Input left over means the output reached the limit; one more byte is too many.
        if rest and inflater.decompress(rest, 1):
            raise WsProtocolError(4509, f"message inflates to more than {limit} bytes")
    except zlib.error:
        raise WsProtocolError(1007, "compressed message does not inflate") from None
    return out


def _data(op: int, payload: bytes) -> Message:
    if op == 1:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise WsProtocolError(1007, "text message is not valid UTF-8") from None
        return Message(Opcode.TEXT, payload)
    return Message(Opcode.BINARY, payload)


def _control(op: int, payload: bytes) -> Message:
    if op != 8:
        return Message(Opcode.PING if op == 9 else Opcode.PONG, payload)
    if not payload:
        return Message(Opcode.CLOSE, payload)
    if len(payload) == 1:
        raise WsProtocolError(1002, "close frame payload of 1 byte")
    code = payload[0] << 8 | payload[1]
    if not valid_close_code(code):
        raise WsProtocolError(1002, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WsProtocolError(1007, "close reason is not valid UTF-8") from None
    return Message(Opcode.CLOSE, payload, code, reason)


def _length(n: int) -> bytes:
    if n < 126:
        return bytes((n,))
    if n < 1 << 16:
        return bytes((126,)) + n.to_bytes(2, "big")
    return bytes((127,)) + n.to_bytes(8, "big")


#: zlib settings of :func:`deflate_message`. Level 6 (zlib's default) compresses our frames as
#: well as 9. memLevel 5 and a window sized to the message allocate ~58 KiB per message instead
#: of ~294 KiB with zlib's defaults (memLevel 8, 32 KiB window), for the same bytes; the CPU is
#: the same while the allocator has that memory at hand, but zlib's defaults cost up to ~15x
#: more when it must be faulted in from the system for each message (a bare interpreter:
#: ~80 us against ~5 us per snapshot). See benchmarks/deflate_cost.py.
DEFLATE_LEVEL = 6
DEFLATE_MEM_LEVEL = 5
_MIN_LOOKAHEAD = 262  # zlib matches at most window - 262 bytes back


def deflate_message(payload: bytes) -> bytes:
    """``payload`` compressed as one permessage-deflate message (RFC 7692 7.2.1), with a fresh
    compressor (no context takeover): raw DEFLATE, sync-flushed, ``00 00 ff ff`` removed.

    The LZ77 window is the smallest (512 B - 32 KiB) that reaches back over the whole payload,
    so it compresses as well as a 32 KiB one; a smaller window than negotiated is always
    allowed, and any client inflates it with its default window.
    """
    wbits = min(15, max(9, (len(payload) + _MIN_LOOKAHEAD).bit_length()))
    compressor = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -wbits, DEFLATE_MEM_LEVEL)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(_DEFLATE_TAIL)  # a sync flush always ends with an empty stored block
    return data[:-4]


def encode_frame(opcode: Opcode, payload: bytes, compress: bool = False) -> bytes:
    """One unmasked, unfragmented (FIN=1) server frame; with ``compress`` (only after
    permessage-deflate was negotiated) a TEXT or BINARY payload is deflated and RSV1 set.

    Raises ValueError for a control frame longer than 125 bytes (the client would fail the
    connection), and for ``compress`` on a control or continuation frame (RFC 7692 6.1).
    """
    if opcode >= 8 and len(payload) > 125:
        raise ValueError("control frame payload longer than 125 bytes")
    if compress:
        if opcode == 0 or opcode >= 8:
            raise ValueError("only a TEXT or BINARY message can be compressed")
        payload = deflate_message(payload)
        return bytes((0x80 | _RSV1 | opcode,)) + _length(len(payload)) + payload
    return bytes((0x80 | opcode,)) + _length(len(payload)) + payload


def encode_close(code: int, reason: str) -> bytes:
    """A close frame. The reason is cut to 123 bytes of UTF-8 without splitting a character.

    Raises ValueError for a code that may not be sent (see :func:`valid_close_code`).
    """
    if not valid_close_code(code):
        raise ValueError(f"invalid close code {code}")
    # "replace" so that a lone surrogate cannot fail; "ignore" on the way back drops only the
    # incomplete character the cut may leave at the end.
    data = reason.encode("utf-8", "replace")
    if len(data) > 123:
        data = data[:123].decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(Opcode.CLOSE, code.to_bytes(2, "big") + data)


def encode_masked_frame(
    opcode: int, payload: bytes, mask: bytes, fin: bool = True, rsv: int = 0
) -> bytes:
    """A masked client frame, for tests and fuzzers: nothing is validated beyond the field sizes,
    so malformed frames (reserved opcodes, long control frames...) can be built.

    ``opcode`` is 0-15; ``rsv`` the three RSV bits as a number 0-7 (4 = RSV1, 1 = RSV3);
    ``mask`` 4 bytes. The length uses the shortest encoding.
    """
    if len(mask) != 4:
        raise ValueError("mask must be 4 bytes")
    if not 0 <= opcode <= 15 or not 0 <= rsv <= 7:
        raise ValueError("opcode must be 0-15 and rsv 0-7")
    head = bytes(((0x80 if fin else 0) | rsv << 4 | opcode,)) + _length(len(payload))
    head = bytes((head[0], head[1] | 0x80)) + head[2:]
    return head + bytes(mask) + (_unmask(payload, mask) if payload else b"")
