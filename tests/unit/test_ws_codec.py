"""Unit tests of push/ws_codec.py: the sans-I/O WebSocket handshake and frame codec."""

from __future__ import annotations

import base64
import gc
import json
import os
import time
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import PayloadTooBig
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import Frame
from websockets.frames import Opcode as WsOpcode
from websockets.headers import build_extension, parse_extension
from websockets.streams import StreamReader
from websockets.utils import accept_key as websockets_accept_key

from push.ws_codec import (
    DEFLATE_RESPONSE,
    MAX_HEAD,
    Extension,
    FrameReader,
    HandshakeError,
    Message,
    Opcode,
    WsProtocolError,
    accept_key,
    accept_response,
    deflate_message,
    encode_close,
    encode_frame,
    encode_masked_frame,
    head_complete,
    negotiate_deflate,
    parse_extensions,
    parse_upgrade,
    reject_response,
    valid_close_code,
)

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # as printed in RFC 6455 1.3
MASK = b"\x37\xfa\x21\x3d"

BASE_HEADERS: list[tuple[str, str]] = [
    ("Host", "example.com"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", RFC_KEY),
    ("Sec-WebSocket-Version", "13"),
]


def request(
    target: str = "/v1/ws",
    headers: list[tuple[str, str]] | None = None,
    *,
    drop: tuple[str, ...] = (),
    replace: dict[str, str] | None = None,
    request_line: str | None = None,
) -> bytes:
    """An upgrade request head: BASE_HEADERS minus ``drop``, with ``replace``d values, plus
    ``headers``."""
    replace = replace or {}
    lines = [request_line if request_line is not None else f"GET {target} HTTP/1.1"]
    for name, value in BASE_HEADERS:
        if name not in drop:
            lines.append(f"{name}: {replace.get(name, value)}")
    lines += [f"{name}: {value}" for name, value in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def split_response(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, dict(line.split(": ", 1) for line in lines), body


def frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0) -> bytes:
    return encode_masked_frame(opcode, payload, MASK, fin=fin, rsv=rsv)


def client_deflate(data: bytes, level: int = 6) -> bytes:
    """``data`` compressed as a client without context takeover sends it (RFC 7692 7.2.1)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def feed_bytewise(reader: FrameReader, data: bytes) -> list[Message]:
    out: list[Message] = []
    for i in range(len(data)):
        out += reader.feed(data[i : i + 1])
    return out


# ---------------------------------------------------------------------------------------------
# Handshake


def test_accept_key_matches_rfc_example() -> None:
    assert accept_key(RFC_KEY) == RFC_ACCEPT


@settings(max_examples=50)
@given(st.binary(min_size=16, max_size=16))
def test_accept_key_matches_websockets(raw: bytes) -> None:
    key = base64.b64encode(raw).decode()
    assert accept_key(key) == websockets_accept_key(key)
    assert parse_upgrade(request(replace={"Sec-WebSocket-Key": key})).key == key


def test_accept_response() -> None:
    status, headers, body = split_response(accept_response(RFC_KEY, None))
    assert status == "HTTP/1.1 101 Switching Protocols"
    assert headers == {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Accept": RFC_ACCEPT,
    }
    assert body == b""
    _, headers, _ = split_response(accept_response(RFC_KEY, "pushrec.v1"))
    assert headers["Sec-WebSocket-Protocol"] == "pushrec.v1"


def test_accept_response_refuses_header_injection() -> None:
    with pytest.raises(ValueError):
        accept_response(RFC_KEY, "x\r\nSet-Cookie: a=b")


def test_parse_valid_upgrade() -> None:
    up = parse_upgrade(
        request(
            "/v1/ws?token=a%2Bb%20c&x=1&x=2&empty=&plus=a+b",
            [
                ("Sec-WebSocket-Protocol", "pushrec.v2, pushrec.v1"),
                ("sec-websocket-protocol", " json ,"),
                ("Origin", "https://shop.example"),
                ("X-Forwarded-For", "10.0.0.1"),
                ("x-forwarded-for", "10.0.0.2"),
            ],
        )
    )
    assert up.path == "/v1/ws"
    assert up.query == {"token": "a+b c", "x": "2", "empty": "", "plus": "a b"}
    assert up.key == RFC_KEY
    assert up.subprotocols == ("pushrec.v2", "pushrec.v1", "json")
    assert up.origin == "https://shop.example"
    assert up.headers["x-forwarded-for"] == "10.0.0.1, 10.0.0.2"
    assert up.headers["host"] == "example.com"
    assert all(name == name.lower() for name in up.headers)


def test_parse_minimal_upgrade_and_token_lists() -> None:
    up = parse_upgrade(
        request(
            "/",
            replace={"Upgrade": "h2c, WebSocket", "Connection": "keep-alive, UPGRADE"},
        )
    )
    assert up.path == "/"
    assert up.query == {}
    assert up.subprotocols == ()
    assert up.origin is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (request(request_line="POST /v1/ws HTTP/1.1"), "GET"),
        (request(request_line="GET /v1/ws HTTP/1.0"), "HTTP/1.1"),
        (request(request_line="GET /v1/ws  HTTP/1.1"), "request line"),
        (request(request_line="GET /v1/ws"), "request line"),
        (request(request_line="GET http://example.com/v1/ws HTTP/1.1"), "target"),
        (request(request_line="GET /v1/\x01ws HTTP/1.1"), "target"),
        (request(request_line="GET /v1/wé HTTP/1.1"), "target"),
        (request(drop=("Upgrade",)), "Upgrade"),
        (request(replace={"Upgrade": "h2c"}), "Upgrade"),
        (request(replace={"Upgrade": "websockets"}), "Upgrade"),
        (request(drop=("Connection",)), "Connection"),
        (request(replace={"Connection": "keep-alive"}), "Connection"),
        (request(drop=("Sec-WebSocket-Key",)), "missing Sec-WebSocket-Key"),
        (request(replace={"Sec-WebSocket-Key": ""}), "16 bytes"),
        (request(replace={"Sec-WebSocket-Key": "AAAAAAAAAAAAAAAAAAAA"}), "16 bytes"),  # 15
        (request(replace={"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ"}), "16 bytes"),  # pad
        (request(replace={"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25j!Q=="}), "16 bytes"),
        (request(replace={"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==é"}), "16 bytes"),
        (request(headers=[("Sec-WebSocket-Key", RFC_KEY)]), "16 bytes"),  # repeated
        (request(headers=[("Bad Name", "x")]), "header line"),
        (request(headers=[("Name ", "x")]), "header line"),
        (request(headers=[("", "x")]), "header line"),
        (request(headers=[("X-A", "a\x00b")]), "control character"),
        (request(headers=[("X-A", "a\nb")]), "control character"),
        (request(headers=[("X-A", "a"), (" folded", "b")]), "folding"),
        (request()[:-2], "incomplete"),
        (request() + b"\x81\x80", "after the request head"),
        (b"\r\n" + request(), "request line"),
        (b"", "incomplete"),
    ],
)
def test_bad_upgrade(raw: bytes, message: str) -> None:
    with pytest.raises(HandshakeError) as info:
        parse_upgrade(raw)
    assert (info.value.status, info.value.code) == (400, "bad_upgrade")
    assert message in info.value.message
    assert info.value.__cause__ is None  # a deliberate refusal, not the catch-all


@pytest.mark.parametrize("version", [None, "8", "13, 8", "14"])
def test_unsupported_version_is_426(version: str | None) -> None:
    raw = (
        request(drop=("Sec-WebSocket-Version",))
        if version is None
        else request(replace={"Sec-WebSocket-Version": version})
    )
    with pytest.raises(HandshakeError) as info:
        parse_upgrade(raw)
    error = info.value
    assert (error.status, error.code) == (426, "unsupported_version")
    assert error.headers == (("Sec-WebSocket-Version", "13"),)
    status, headers, _ = split_response(error.response())
    assert status == "HTTP/1.1 426 Upgrade Required"
    assert headers["Sec-WebSocket-Version"] == "13"


def test_head_too_large_is_431() -> None:
    raw = request(headers=[("X-Pad", "a" * MAX_HEAD)])
    with pytest.raises(HandshakeError) as info:
        parse_upgrade(raw)
    assert (info.value.status, info.value.code) == (431, "headers_too_large")
    # Just under the limit is fine.
    small = request()
    pad = MAX_HEAD - len(small) - len("X-Pad: \r\n")
    assert len(request(headers=[("X-Pad", "a" * pad)])) == MAX_HEAD
    assert parse_upgrade(request(headers=[("X-Pad", "a" * pad)])).headers["x-pad"] == "a" * pad


def test_head_complete() -> None:
    raw = request()
    assert head_complete(raw)
    assert not head_complete(raw[:-1])
    assert not head_complete(b"")
    assert head_complete(bytearray(raw) + b"extra")


def test_reject_response() -> None:
    raw = reject_response(400, "bad_upgrade", 'missing "key" ü', [("X-Why", "test")])
    status, headers, body = split_response(raw)
    assert status == "HTTP/1.1 400 Bad Request"
    assert headers["Content-Type"] == "application/json"
    assert headers["Connection"] == "close"
    assert headers["X-Why"] == "test"
    assert int(headers["Content-Length"]) == len(body)
    assert json.loads(body) == {"error": "bad_upgrade", "message": 'missing "key" ü'}
    assert split_response(reject_response(599, "x", "y"))[0] == "HTTP/1.1 599 Error"
    with pytest.raises(ValueError):
        reject_response(400, "x", "y", [("X-A", "a\r\nB: c")])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parse_upgrade_fuzz_only_raises_handshake_error(raw: bytes) -> None:
    for candidate in (raw, raw + b"\r\n\r\n", request()[:40] + raw + b"\r\n\r\n"):
        try:
            parse_upgrade(candidate)
        except HandshakeError as exc:
            assert exc.__cause__ is None, exc.__cause__  # the catch-all must not be needed


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0), st.binary(min_size=1, max_size=4))
def test_parse_upgrade_fuzz_mutations(where: int, insert: bytes) -> None:
    base = request("/v1/ws?a=1", [("Origin", "https://x"), ("Sec-WebSocket-Protocol", "a, b")])
    i = where % len(base)
    try:
        parse_upgrade(base[:i] + insert + base[i:])
    except HandshakeError as exc:
        assert exc.__cause__ is None, exc.__cause__


# ---------------------------------------------------------------------------------------------
# Frames: encoders


@pytest.mark.parametrize(
    ("n", "header"),
    [
        (0, b"\x82\x00"),
        (125, b"\x82\x7d"),
        (126, b"\x82\x7e\x00\x7e"),
        (65535, b"\x82\x7e\xff\xff"),
        (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_encode_frame_lengths(n: int, header: bytes) -> None:
    payload = os.urandom(n)
    assert encode_frame(Opcode.BINARY, payload) == header + payload


def test_encode_frame_control() -> None:
    assert encode_frame(Opcode.PING, b"hi") == b"\x89\x02hi"
    assert encode_frame(Opcode.TEXT, "é".encode()) == b"\x81\x02\xc3\xa9"
    with pytest.raises(ValueError):
        encode_frame(Opcode.PONG, b"x" * 126)


def test_encode_close() -> None:
    assert encode_close(1000, "") == b"\x88\x02\x03\xe8"
    assert encode_close(4509, "too big") == b"\x88\x09\x11\x9dtoo big"
    # 61 two-byte characters = 122 bytes, then a 2-byte character that would end at byte 124:
    # it is dropped whole.
    cut = encode_close(4000, "é" * 62)
    assert cut[1] == 2 + 122
    assert cut[4:].decode("utf-8") == "é" * 61
    # A 4-byte character straddling the limit.
    cut = encode_close(4000, "a" * 121 + "😀")
    assert cut[4:] == b"a" * 121
    assert len(encode_close(4000, "a" * 500)) == 2 + 125  # header + the longest control payload
    assert encode_close(1000, "\udc80")[4:] == b"?"  # a lone surrogate cannot fail
    for code in (999, 1004, 1005, 1006, 1015, 2000, 5000):
        with pytest.raises(ValueError):
            encode_close(code, "")


def test_encode_close_is_read_back() -> None:
    reader = FrameReader(1000)
    close = encode_close(4501, "token expired")
    # Server frames are unmasked: re-mask it the way a client would send it.
    (msg,) = reader.feed(frame(Opcode.CLOSE, close[2:]))
    assert (msg.opcode, msg.close_code, msg.close_reason) == (Opcode.CLOSE, 4501, "token expired")


def test_encode_masked_frame() -> None:
    data = encode_masked_frame(Opcode.TEXT, b"Hello", b"\x37\xfa\x21\x3d")
    assert data == bytes.fromhex("818537fa213d7f9f4d5158")  # RFC 6455 section 5.7
    assert encode_masked_frame(0xB, b"", MASK, fin=False, rsv=4)[0] == 0x4B
    with pytest.raises(ValueError):
        encode_masked_frame(Opcode.TEXT, b"", b"abc")
    with pytest.raises(ValueError):
        encode_masked_frame(16, b"", MASK)


# ---------------------------------------------------------------------------------------------
# Frames: reader


@pytest.mark.parametrize(
    ("opcode", "payload"),
    [
        (Opcode.TEXT, "héllo 😀".encode()),
        (Opcode.TEXT, b""),
        (Opcode.BINARY, bytes(range(256)) * 300),
        (Opcode.BINARY, b""),
        (Opcode.PING, b"p" * 125),
        (Opcode.PONG, b""),
    ],
)
def test_round_trip(opcode: Opcode, payload: bytes) -> None:
    data = frame(opcode, payload)
    assert FrameReader(1 << 20).feed(data) == [Message(opcode, payload)]
    reader = FrameReader(1 << 20)
    assert feed_bytewise(reader, data) == [Message(opcode, payload)]
    assert reader.buffered == 0


def test_close_frames() -> None:
    reader = FrameReader(1000)
    assert reader.feed(frame(Opcode.CLOSE)) == [Message(Opcode.CLOSE, b"", None, "")]
    payload = b"\x03\xe8" + "bye ✓".encode()
    assert reader.feed(frame(Opcode.CLOSE, payload)) == [
        Message(Opcode.CLOSE, payload, 1000, "bye ✓")
    ]


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999])
def test_valid_close_codes(code: int) -> None:
    assert valid_close_code(code)
    (msg,) = FrameReader(1000).feed(frame(Opcode.CLOSE, code.to_bytes(2, "big")))
    assert msg.close_code == code


def test_several_frames_in_one_chunk() -> None:
    data = frame(Opcode.TEXT, b"a") + frame(Opcode.PING, b"b") + frame(Opcode.BINARY, b"c")
    assert FrameReader(10).feed(data + data[:3]) == [
        Message(Opcode.TEXT, b"a"),
        Message(Opcode.PING, b"b"),
        Message(Opcode.BINARY, b"c"),
    ]


def test_fragmented_message_with_interleaved_ping() -> None:
    data = (
        frame(Opcode.TEXT, "héllo".encode()[:2], fin=False)  # splits the "é"
        + frame(Opcode.PING, b"are you there")
        + frame(Opcode.CONT, "héllo".encode()[2:4], fin=False)
        + frame(Opcode.CONT, b"", fin=False)
        + frame(Opcode.PONG, b"")
        + frame(Opcode.CONT, "héllo".encode()[4:], fin=True)
        + frame(Opcode.BINARY, b"\xff")
    )
    expected = [
        Message(Opcode.PING, b"are you there"),
        Message(Opcode.PONG, b""),
        Message(Opcode.TEXT, "héllo".encode()),
        Message(Opcode.BINARY, b"\xff"),
    ]
    assert FrameReader(100).feed(data) == expected
    reader = FrameReader(100)
    assert feed_bytewise(reader, data) == expected
    assert reader.buffered == 0


def test_non_minimal_length_encodings_are_accepted() -> None:
    reader = FrameReader(100)
    masked = frame(Opcode.BINARY, b"abc")[2:]  # mask + masked payload
    assert reader.feed(b"\x82\xfe\x00\x03" + masked) == [Message(Opcode.BINARY, b"abc")]
    assert reader.feed(b"\x82\xff" + (3).to_bytes(8, "big") + masked) == [
        Message(Opcode.BINARY, b"abc")
    ]


# Each case: the bytes fed, the close code expected.
PROTOCOL_ERRORS: dict[str, tuple[bytes, int]] = {
    "unmasked": (encode_frame(Opcode.TEXT, b"hi"), 1002),
    "unmasked empty": (b"\x81\x00", 1002),
    "rsv1": (frame(Opcode.TEXT, b"hi", rsv=4), 1002),
    "rsv2": (frame(Opcode.TEXT, b"hi", rsv=2), 1002),
    "rsv3": (frame(Opcode.PING, b"", rsv=1), 1002),
    **{f"opcode {op}": (frame(op, b"x"), 1002) for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)},
    "ping 126": (frame(Opcode.PING, b"x" * 126), 1002),
    "close 200": (frame(Opcode.CLOSE, b"\x03\xe8" + b"x" * 198), 1002),
    "fragmented ping": (frame(Opcode.PING, b"x", fin=False), 1002),
    "fragmented close": (frame(Opcode.CLOSE, b"", fin=False), 1002),
    "cont first": (frame(Opcode.CONT, b"x"), 1002),
    "cont after message": (frame(Opcode.TEXT, b"a") + frame(Opcode.CONT, b"x"), 1002),
    "text inside fragmented": (
        frame(Opcode.TEXT, b"a", fin=False) + frame(Opcode.TEXT, b"b"),
        1002,
    ),
    "binary inside fragmented": (
        frame(Opcode.BINARY, b"a", fin=False) + frame(Opcode.BINARY, b"b", fin=False),
        1002,
    ),
    "close length 1": (frame(Opcode.CLOSE, b"\x03"), 1002),
    **{
        f"close code {code}": (frame(Opcode.CLOSE, code.to_bytes(2, "big")), 1002)
        for code in (0, 999, 1004, 1005, 1006, 1012, 1015, 1016, 2000, 2999, 5000, 65535)
    },
    "64-bit msb": (b"\x82\xff\x80" + b"\x00" * 7 + MASK, 1002),
    "bad utf-8 text": (frame(Opcode.TEXT, b"\xff"), 1007),
    "truncated utf-8 text": (frame(Opcode.TEXT, "é".encode()[:1]), 1007),
    "surrogate in text": (frame(Opcode.TEXT, b"\xed\xa0\x80"), 1007),
    "bad utf-8 fragmented text": (
        frame(Opcode.TEXT, b"ok", fin=False) + frame(Opcode.CONT, b"\xc3"),
        1007,
    ),
    "bad utf-8 close reason": (frame(Opcode.CLOSE, b"\x03\xe8\xff"), 1007),
    "frame over max": (frame(Opcode.BINARY, b"x" * 101), 4509),
    "fragments over max": (
        frame(Opcode.TEXT, b"x" * 60, fin=False) + frame(Opcode.CONT, b"x" * 41),
        4509,
    ),
    "16-bit length over max": (b"\x82\xfe\x00\x65", 4509),  # header only: 101 announced
    "64-bit length over max": (b"\x82\xff" + (1 << 40).to_bytes(8, "big"), 4509),
}


@pytest.mark.parametrize(("data", "code"), PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
def test_protocol_errors(data: bytes, code: int) -> None:
    check_protocol_error(data, code, deflate=False)


def check_protocol_error(data: bytes, code: int, *, deflate: bool) -> None:
    with pytest.raises(WsProtocolError) as info:
        FrameReader(100, deflate).feed(data)
    assert info.value.close_code == code
    assert info.value.reason
    # The same in any chunking: byte by byte.
    reader = FrameReader(100, deflate)
    with pytest.raises(WsProtocolError) as info:
        feed_bytewise(reader, data)
    assert info.value.close_code == code
    # The reader is dead: it raises the same error again, holding nothing.
    assert reader.buffered == 0
    with pytest.raises(WsProtocolError) as again:
        reader.feed(frame(Opcode.TEXT, b"valid"))
    assert (again.value.close_code, again.value.reason) == (code, info.value.reason)


def test_error_carries_preceding_messages() -> None:
    reader = FrameReader(100)
    with pytest.raises(WsProtocolError) as info:
        reader.feed(frame(Opcode.TEXT, b"a") + frame(Opcode.CLOSE, b"\x03\xe8") + b"\x81\x00")
    assert info.value.close_code == 1002
    assert info.value.messages == (
        Message(Opcode.TEXT, b"a"),
        Message(Opcode.CLOSE, b"\x03\xe8", 1000, ""),
    )
    with pytest.raises(WsProtocolError) as again:
        reader.feed(b"")
    assert again.value.messages == ()


def test_errors_are_raised_from_the_first_two_bytes() -> None:
    for data in (b"\x81\x05", b"\xc1\x85", b"\x83\x85", b"\x09\x80", b"\x80\x80", b"\x89\xfe"):
        with pytest.raises(WsProtocolError):
            FrameReader(100).feed(data)


def test_message_exactly_at_max_and_one_over() -> None:
    assert FrameReader(100).feed(frame(Opcode.BINARY, b"x" * 100)) == [
        Message(Opcode.BINARY, b"x" * 100)
    ]
    at_max = frame(Opcode.TEXT, b"x" * 60, fin=False) + frame(Opcode.CONT, b"x" * 40)
    assert FrameReader(100).feed(at_max) == [Message(Opcode.TEXT, b"x" * 100)]
    assert FrameReader(100).feed(frame(Opcode.PING, b"x" * 100)) == [
        Message(Opcode.PING, b"x" * 100)
    ]
    for over in (
        frame(Opcode.BINARY, b"x" * 101),
        frame(Opcode.TEXT, b"x" * 60, fin=False) + frame(Opcode.CONT, b"x" * 41),
        frame(Opcode.TEXT, b"x" * 100, fin=False) + frame(Opcode.CONT, b"x"),
        frame(Opcode.PING, b"x" * 101),  # the limit applies to every frame
    ):
        with pytest.raises(WsProtocolError) as info:
            FrameReader(100).feed(over)
        assert info.value.close_code == 4509


def test_oversized_frame_is_refused_from_its_header() -> None:
    reader = FrameReader(16 * 1024)
    header = frame(Opcode.BINARY, b"x" * (16 * 1024 + 1))[:8]
    with pytest.raises(WsProtocolError) as info:
        feed_bytewise(reader, header[:4])  # 2 bytes + 16-bit length: enough to refuse
    assert info.value.close_code == 4509
    reader = FrameReader(16 * 1024)
    with pytest.raises(WsProtocolError):
        reader.feed(b"\x82\xff" + (10**12).to_bytes(8, "big"))


def test_buffered_counts_partial_frames_and_fragments() -> None:
    reader = FrameReader(1000)
    assert reader.buffered == 0
    assert reader.feed(frame(Opcode.TEXT, b"x" * 10, fin=False)) == []
    assert reader.buffered == 10
    partial = frame(Opcode.CONT, b"y" * 20)
    assert reader.feed(partial[:15]) == []
    assert reader.buffered == 10 + 15
    assert reader.feed(partial[15:]) == [Message(Opcode.TEXT, b"x" * 10 + b"y" * 20)]
    assert reader.buffered == 0


def test_buffer_bound_with_a_control_frame_inside_a_full_message() -> None:
    # The worst case of the documented bound: fragments at max, then an incomplete ping.
    reader = FrameReader(200)
    reader.feed(frame(Opcode.BINARY, b"x" * 200, fin=False))
    ping = frame(Opcode.PING, b"p" * 125)
    assert reader.feed(ping[:-1]) == []
    assert reader.buffered == 200 + 6 + 124 <= 200 + 6 + 125
    assert reader.feed(ping[-1:]) == [Message(Opcode.PING, b"p" * 125)]
    assert reader.feed(frame(Opcode.CONT)) == [Message(Opcode.BINARY, b"x" * 200)]


def test_bytewise_feeding_is_linear() -> None:
    payload = os.urandom(256 * 1024)
    data = frame(Opcode.BINARY, payload)
    reader = FrameReader(len(payload))
    start = time.perf_counter()
    out = feed_bytewise(reader, data)
    elapsed = time.perf_counter() - start
    assert out == [Message(Opcode.BINARY, payload)]
    assert elapsed < 2.0  # quadratic copying would take minutes


def test_unmask_is_fast_for_16k() -> None:
    data = frame(Opcode.BINARY, os.urandom(16 * 1024)) * 100
    reader = FrameReader(16 * 1024)
    start = time.perf_counter()
    assert len(reader.feed(data)) == 100
    per_frame = (time.perf_counter() - start) / 100
    print(f"\n16 KiB frame parsed + unmasked in {per_frame * 1e6:.0f} us")
    assert per_frame < 0.002


# ---------------------------------------------------------------------------------------------
# permessage-deflate (RFC 7692): negotiation


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("permessage-deflate", [("permessage-deflate", ())]),
        (
            "permessage-deflate; client_max_window_bits",
            [("permessage-deflate", (("client_max_window_bits", None),))],
        ),
        (
            'x-webkit-deflate-frame, permessage-deflate ;client_max_window_bits = "10" ,, foo;a=b',
            [
                ("x-webkit-deflate-frame", ()),
                ("permessage-deflate", (("client_max_window_bits", "10"),)),
                ("foo", (("a", "b"),)),
            ],
        ),
        ('a; b="\\c"', [("a", (("b", "c"),))]),  # quoted-pair
        (", a,", [("a", ())]),  # empty list elements
        ("", []),
        # Malformed: the whole header is ignored.
        ('a; b="c d"', []),  # a quoted value must be a token once unquoted
        ('a; b="c', []),
        ("a;", []),
        ("a b", []),
        ("a; b=", []),
        ("a; b=c=d", []),
        ("a=b", []),
        ("pérmessage-deflate", []),
    ],
)
def test_parse_extensions(header: str, expected: list[Extension]) -> None:
    assert parse_extensions(header) == tuple(expected)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='ab-=;," \t\\', max_size=30))
def test_parse_extensions_agrees_with_websockets(header: str) -> None:
    header = header.strip(" \t")  # as parse_upgrade leaves a header value
    try:
        theirs = [(name, tuple(params)) for name, params in parse_extension(header)]
    except Exception:  # InvalidHeaderFormat: malformed, so all offers are declined
        theirs = []
    assert parse_extensions(header) == tuple(theirs)


def test_parse_upgrade_reads_repeated_extension_headers() -> None:
    up = parse_upgrade(
        request(
            headers=[
                ("Sec-WebSocket-Extensions", "permessage-deflate; server_max_window_bits=10"),
                ("Sec-WebSocket-Extensions", "permessage-deflate"),
            ]
        )
    )
    assert up.extensions == (
        ("permessage-deflate", (("server_max_window_bits", "10"),)),
        ("permessage-deflate", ()),
    )
    assert negotiate_deflate(up.extensions) == DEFLATE_RESPONSE  # the second offer
    assert parse_upgrade(request()).extensions == ()
    # A malformed header does not refuse the upgrade: it offers nothing.
    bad = parse_upgrade(request(headers=[("Sec-WebSocket-Extensions", "permessage-deflate;")]))
    assert bad.extensions == ()


ECHO_15 = f"{DEFLATE_RESPONSE}; server_max_window_bits=15"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("permessage-deflate", DEFLATE_RESPONSE),  # Firefox, Safari
        ("permessage-deflate; client_max_window_bits", DEFLATE_RESPONSE),  # Chrome, websockets
        ("permessage-deflate; client_max_window_bits=10", DEFLATE_RESPONSE),
        ('permessage-deflate; client_max_window_bits="8"', DEFLATE_RESPONSE),
        ("permessage-deflate; client_max_window_bits=15", DEFLATE_RESPONSE),
        (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            DEFLATE_RESPONSE,
        ),
        ("permessage-deflate; server_max_window_bits=15", ECHO_15),
        ("permessage-deflate; client_max_window_bits; server_max_window_bits=15", ECHO_15),
        # Declined offers (RFC 7692 7.1).
        ("permessage-deflate; client_max_window_bits=16", None),
        ("permessage-deflate; client_max_window_bits=7", None),
        ("permessage-deflate; client_max_window_bits=08", None),
        ("permessage-deflate; client_max_window_bits=abc", None),
        ("permessage-deflate; server_max_window_bits=10", None),  # a limit we do not honour
        ("permessage-deflate; server_max_window_bits", None),  # a value is required
        ("permessage-deflate; server_no_context_takeover=1", None),  # no value allowed
        ("permessage-deflate; client_no_context_takeover=true", None),
        ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", None),
        ("permessage-deflate; client_max_window_bits; client_max_window_bits=10", None),
        ("permessage-deflate; mystery", None),
        ("Permessage-Deflate", None),
        ("x-webkit-deflate-frame", None),
        ("", None),
        # The first offer we can honour wins.
        ("permessage-deflate; server_max_window_bits=9, permessage-deflate", DEFLATE_RESPONSE),
        ("foo, permessage-deflate; x, permessage-deflate; server_max_window_bits=15", ECHO_15),
    ],
)
def test_negotiate_deflate(header: str, expected: str | None) -> None:
    assert negotiate_deflate(parse_extensions(header)) == expected


def negotiated(factory: ClientPerMessageDeflateFactory) -> PerMessageDeflate | None:
    """What the websockets client makes of our answer to its offer (None: declined)."""
    offer = build_extension([(factory.name, factory.get_request_params())])
    response = negotiate_deflate(
        parse_upgrade(request(headers=[("Sec-WebSocket-Extensions", offer)])).extensions
    )
    if response is None:
        return None
    ((name, params),) = parse_extension(response)
    assert name == "permessage-deflate"
    ext = factory.process_response_params(params, [])  # raises NegotiationError if wrong
    assert isinstance(ext, PerMessageDeflate)
    return ext


@pytest.mark.parametrize(
    "kwargs",
    [
        {"compress_settings": {"memLevel": 5}},  # websockets' compression="deflate"
        {"client_max_window_bits": None},
        {"client_max_window_bits": 10},
        {"server_no_context_takeover": True, "client_no_context_takeover": True},
        {"server_max_window_bits": 15},
    ],
)
def test_a_real_client_accepts_our_answer(kwargs: dict[str, object]) -> None:
    ext = negotiated(ClientPerMessageDeflateFactory(**kwargs))  # type: ignore[arg-type]
    assert ext is not None
    # No context takeover either way, whatever the client offered.
    assert ext.remote_no_context_takeover and ext.local_no_context_takeover
    assert ext.remote_max_window_bits == 15


def test_an_offer_limiting_our_window_is_declined() -> None:
    assert negotiated(ClientPerMessageDeflateFactory(server_max_window_bits=12)) is None


def test_accept_response_with_extension() -> None:
    _, headers, _ = split_response(accept_response(RFC_KEY, None, DEFLATE_RESPONSE))
    assert headers["Sec-WebSocket-Extensions"] == DEFLATE_RESPONSE
    _, headers, _ = split_response(accept_response(RFC_KEY, "pushrec.v1", None))
    assert "Sec-WebSocket-Extensions" not in headers
    for bad in ("", " ", "permessage-deflate\r\nSet-Cookie: a=b"):
        with pytest.raises(ValueError):
            accept_response(RFC_KEY, None, bad)


# ---------------------------------------------------------------------------------------------
# permessage-deflate: frames


def client_extension() -> PerMessageDeflate:
    """The websockets client side of a negotiated connection (default client offer)."""
    ext = negotiated(ClientPerMessageDeflateFactory(compress_settings={"memLevel": 5}))
    assert ext is not None
    return ext


def client_reads(data: bytes, ext: PerMessageDeflate, max_size: int | None = None) -> Frame:
    """Parse one server frame as the websockets client does, its extension applied."""
    stream = StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    parser = Frame.parse(stream.read_exact, mask=False, max_size=max_size, extensions=[ext])
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("incomplete frame")


def client_sends(ext: PerMessageDeflate, opcode: WsOpcode, data: bytes) -> bytes:
    """A compressed, masked client frame, as the websockets client sends it."""
    return Frame(opcode, data).serialize(mask=True, extensions=[ext])


payloads = st.one_of(
    st.binary(max_size=2000),
    st.builds(lambda s: json.dumps(s).encode(), st.lists(st.text(max_size=40), max_size=80)),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=50), st.integers(1, 3000)),
)


@settings(max_examples=200, deadline=None)
@given(payloads, st.sampled_from([Opcode.TEXT, Opcode.BINARY]))
def test_server_frames_inflate_in_a_real_client(payload: bytes, opcode: Opcode) -> None:
    data = encode_frame(opcode, payload, compress=True)
    assert data[0] == 0xC0 | opcode  # FIN + RSV1
    ext = client_extension()
    got = client_reads(data, ext)
    assert (got.opcode.value, got.data, got.rsv1) == (opcode, payload, False)
    # No context takeover: a second message inflates on its own too.
    assert client_reads(encode_frame(opcode, payload, compress=True), ext).data == payload


@pytest.mark.parametrize("n", [0, 1, 250, 262, 511, 4096, 32_506, 32_507, 40_000, 200_000])
def test_server_frames_of_any_size_inflate_in_a_real_client(n: int) -> None:
    payload = (os.urandom(97) * (n // 97 + 1))[:n]  # repeats far back: needs the whole window
    got = client_reads(encode_frame(Opcode.BINARY, payload, compress=True), client_extension())
    assert got.data == payload


@settings(max_examples=200, deadline=None)
@given(st.one_of(payloads, st.binary(min_size=30_000, max_size=40_000)))
def test_window_sized_to_the_message_compresses_as_a_full_window(payload: bytes) -> None:
    full = zlib.compressobj(6, zlib.DEFLATED, -15, 5)
    assert deflate_message(payload) == (full.compress(payload) + full.flush(zlib.Z_SYNC_FLUSH))[:-4]


def test_deflate_message_matches_rfc_examples() -> None:
    assert deflate_message(b"") == b"\x00"  # RFC 7692 7.2.3.6
    # RFC 7692 7.2.3.1 "Hello" (compressed with a fixed Huffman block by the RFC's encoder):
    assert FrameReader(100, deflate=True).feed(
        encode_masked_frame(1, bytes.fromhex("f248cdc9c90700"), MASK, rsv=4)
    ) == [Message(Opcode.TEXT, b"Hello")]
    assert zlib.decompressobj(-15).decompress(deflate_message(b"Hello") + b"\x00\x00\xff\xff") == (
        b"Hello"
    )


def test_control_and_continuation_frames_are_never_compressed() -> None:
    for opcode in (Opcode.PING, Opcode.PONG, Opcode.CLOSE, Opcode.CONT):
        with pytest.raises(ValueError):
            encode_frame(opcode, b"x", compress=True)
    assert encode_frame(Opcode.TEXT, b"x") == b"\x81\x01x"  # default: uncompressed


@settings(max_examples=200, deadline=None)
@given(payloads, st.sampled_from([WsOpcode.TEXT, WsOpcode.BINARY]))
def test_client_frames_from_a_real_client_are_inflated(payload: bytes, opcode: WsOpcode) -> None:
    if opcode is WsOpcode.TEXT:
        payload = payload.decode("utf-8", "replace").encode()
    ext = client_extension()
    data = client_sends(ext, opcode, payload) + client_sends(ext, opcode, payload)
    assert data[0] & 0x70 == 0x40  # RSV1
    reader = FrameReader(len(payload) + 100, deflate=True)
    expected = [Message(Opcode(opcode.value), payload)] * 2
    assert reader.feed(data) == expected
    assert feed_bytewise(FrameReader(len(payload) + 100, deflate=True), data) == expected
    assert reader.buffered == 0


def test_compressed_fragmented_message_with_interleaved_ping() -> None:
    text = ("héllo wörld " * 50).encode()
    z = client_deflate(text)
    data = (
        frame(Opcode.TEXT, z[:3], fin=False, rsv=4)  # RSV1 only on the first frame
        + frame(Opcode.PING, b"p")
        + frame(Opcode.CONT, z[3:10], fin=False)
        + frame(Opcode.CONT, z[10:])
        + frame(Opcode.TEXT, b"plain")  # uncompressed messages still work
        + frame(Opcode.BINARY, b"x", fin=False)
        + frame(Opcode.CONT, b"y")
    )
    expected = [
        Message(Opcode.PING, b"p"),
        Message(Opcode.TEXT, text),
        Message(Opcode.TEXT, b"plain"),
        Message(Opcode.BINARY, b"xy"),
    ]
    assert FrameReader(1000, deflate=True).feed(data) == expected
    reader = FrameReader(1000, deflate=True)
    assert feed_bytewise(reader, data) == expected
    assert reader.buffered == 0


def test_inflated_size_exactly_at_max_and_one_over() -> None:
    for max_message in (10, 100, 16_384):
        exact = client_deflate(b"a" * max_message)
        assert FrameReader(max_message, deflate=True).feed(frame(Opcode.TEXT, exact, rsv=4)) == [
            Message(Opcode.TEXT, b"a" * max_message)
        ]
        over = client_deflate(b"a" * (max_message + 1))
        with pytest.raises(WsProtocolError) as info:
            FrameReader(max_message, deflate=True).feed(frame(Opcode.TEXT, over, rsv=4))
        assert info.value.close_code == 4509
        assert "inflates to more than" in info.value.reason
    # With a limit of 0, the empty message still passes (max_length=0 means no limit to zlib).
    empty = frame(Opcode.BINARY, b"", rsv=4)
    assert FrameReader(0, deflate=True).feed(empty) == [Message(Opcode.BINARY, b"")]
    assert FrameReader(1, deflate=True).feed(frame(Opcode.BINARY, b"\x00", rsv=4)) == [
        Message(Opcode.BINARY, b"")
    ]


def test_zip_bomb_is_refused_without_inflating_it() -> None:
    limit = 16 * 1024
    bomb = client_deflate(b"\0" * 15_000_000, level=9)  # ~14.6 kB on the wire, 15 MB inflated
    assert len(bomb) <= limit
    data = frame(Opcode.BINARY, bomb[:5000], fin=False, rsv=4) + frame(Opcode.CONT, bomb[5000:])
    reader = FrameReader(limit, deflate=True)
    gc.collect()
    tracemalloc.start()
    try:
        with pytest.raises(WsProtocolError) as info:
            reader.feed(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.close_code == 4509
    assert "inflates to more than" in info.value.reason  # not the wire-size check
    # The frames (~30 kB: input and its copy), the zlib inflater (~7 kB + 32 kB window, traced
    # as it is allocated through PyMem_RawMalloc) and at most limit + 1 bytes of output.
    print(f"\nzip bomb: peak {peak / 1024:.0f} KiB traced while refusing it")
    assert peak < 3 * len(data) + limit + 64 * 1024
    assert reader.buffered == 0


# Each case: the bytes fed to a reader with deflate negotiated (max 100), the close code.
DEFLATE_ERRORS: dict[str, tuple[bytes, int]] = {
    **{name: case for name, case in PROTOCOL_ERRORS.items() if name != "rsv1"},
    "rsv2": (frame(Opcode.TEXT, client_deflate(b"hi"), rsv=2), 1002),
    "rsv3": (frame(Opcode.TEXT, client_deflate(b"hi"), rsv=1), 1002),
    "rsv1+rsv2": (frame(Opcode.TEXT, client_deflate(b"hi"), rsv=6), 1002),
    **{
        f"rsv1 on {op.name}": (frame(op, b"", rsv=4), 1002)
        for op in (Opcode.PING, Opcode.PONG, Opcode.CLOSE)
    },
    "rsv1 on a continuation": (
        frame(Opcode.TEXT, client_deflate(b"hi")[:1], fin=False, rsv=4)
        + frame(Opcode.CONT, client_deflate(b"hi")[1:], rsv=4),
        1002,
    ),
    "rsv1 on a continuation of a plain message": (
        frame(Opcode.TEXT, b"h", fin=False) + frame(Opcode.CONT, b"i", rsv=4),
        1002,
    ),
    "rsv1 on a lone continuation": (b"\xc0\x80", 1002),  # refused from two bytes
    "rsv1 on a reserved opcode": (frame(3, b"", rsv=4), 1002),
    "corrupt": (frame(Opcode.BINARY, b"\xff\xff\xff\xff", rsv=4), 1007),
    "corrupt fragmented": (
        frame(Opcode.BINARY, b"\xff", fin=False, rsv=4) + frame(Opcode.CONT, b"\xff\xff"),
        1007,
    ),
    "not utf-8 once inflated": (frame(Opcode.TEXT, client_deflate(b"\xff"), rsv=4), 1007),
    "inflates over max": (frame(Opcode.TEXT, client_deflate(b"a" * 101), rsv=4), 4509),
    "fragments inflate over max": (
        frame(Opcode.TEXT, client_deflate(b"a" * 500)[:2], fin=False, rsv=4)
        + frame(Opcode.CONT, client_deflate(b"a" * 500)[2:]),
        4509,
    ),
}


@pytest.mark.parametrize(("data", "code"), DEFLATE_ERRORS.values(), ids=DEFLATE_ERRORS.keys())
def test_protocol_errors_with_deflate(data: bytes, code: int) -> None:
    check_protocol_error(data, code, deflate=True)


def test_rsv1_without_deflate_is_a_protocol_error() -> None:
    # The same compressed frame a deflate reader accepts is 1002 when nothing was negotiated.
    data = frame(Opcode.TEXT, client_deflate(b"hi"), rsv=4)
    assert FrameReader(100, deflate=True).feed(data) == [Message(Opcode.TEXT, b"hi")]
    with pytest.raises(WsProtocolError) as info:
        FrameReader(100).feed(data)
    assert info.value.close_code == 1002
    assert not FrameReader(100).deflate and FrameReader(100, deflate=True).deflate


def test_a_real_client_rejects_what_we_refuse_to_send() -> None:
    # Sanity check of the test client: websockets bounds inflating as we do.
    ext = client_extension()
    with pytest.raises(PayloadTooBig):
        client_reads(encode_frame(Opcode.BINARY, b"a" * 1000, compress=True), ext, max_size=999)


# ---------------------------------------------------------------------------------------------
# Frames: properties


control_messages = st.one_of(
    st.builds(Message, st.sampled_from([Opcode.PING, Opcode.PONG]), st.binary(max_size=125)),
    st.builds(
        lambda code, reason: Message(
            Opcode.CLOSE, code.to_bytes(2, "big") + reason.encode(), code, reason
        ),
        st.sampled_from([1000, 1001, 1003, 1008, 1011, 3000, 4000, 4999]),
        st.text(max_size=30),
    ),
    st.just(Message(Opcode.CLOSE, b"")),
)
data_messages = st.one_of(
    st.builds(lambda s: Message(Opcode.TEXT, s.encode()), st.text(max_size=300)),
    st.builds(Message, st.just(Opcode.BINARY), st.binary(max_size=300)),
)
MAX = 1200  # a text of 300 characters is at most 1200 bytes of UTF-8


@st.composite
def client_streams(draw: st.DrawFn, deflate: bool = False) -> tuple[bytes, list[Message]]:
    """Masked frames for a list of messages (data messages fragmented at random, with control
    frames in between), and the messages a reader must return for them. With ``deflate``, some
    data messages are compressed (RSV1 on their first frame), as a client without context
    takeover sends them."""
    masks = st.binary(min_size=4, max_size=4)
    stream = bytearray()
    expected: list[Message] = []
    for message in draw(st.lists(st.one_of(data_messages, control_messages), max_size=8)):
        if message.opcode >= 8:
            stream += encode_masked_frame(message.opcode, message.data, draw(masks))
            expected.append(message)
            continue
        data, rsv = message.data, 0
        if deflate and draw(st.booleans()):
            data, rsv = client_deflate(data, draw(st.sampled_from([1, 6, 9]))), 4
        n = len(data)
        cuts = sorted(draw(st.lists(st.integers(0, n), max_size=4)))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
        for i, piece in enumerate(pieces):
            opcode = message.opcode if i == 0 else Opcode.CONT
            last = i == len(pieces) - 1
            stream += encode_masked_frame(
                opcode, piece, draw(masks), fin=last, rsv=rsv if i == 0 else 0
            )
            if not last and draw(st.booleans()):
                control = draw(control_messages)
                stream += encode_masked_frame(control.opcode, control.data, draw(masks))
                expected.append(control)
        expected.append(message)
    return bytes(stream), expected


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks = []
    pos = 0
    for size in sizes:
        chunks.append(data[pos : pos + size])
        pos += size
    chunks.append(data[pos:])
    return chunks


@settings(max_examples=300, deadline=None)
@given(client_streams(), st.lists(st.integers(0, 64), max_size=40))
def test_any_valid_stream_in_any_chunking_round_trips(
    case: tuple[bytes, list[Message]], sizes: list[int]
) -> None:
    stream, expected = case
    reader = FrameReader(MAX)
    out: list[Message] = []
    for chunk in chunked(stream, sizes):
        out += reader.feed(chunk)
        assert reader.buffered <= MAX + 6 + 125
    assert out == expected
    assert reader.buffered == 0


@settings(max_examples=300, deadline=None)
@given(client_streams(deflate=True), st.lists(st.integers(0, 64), max_size=40))
def test_any_valid_compressed_stream_in_any_chunking_round_trips(
    case: tuple[bytes, list[Message]], sizes: list[int]
) -> None:
    stream, expected = case
    reader = FrameReader(MAX + 20, deflate=True)  # room for incompressible data to grow
    out: list[Message] = []
    for chunk in chunked(stream, sizes):
        out += reader.feed(chunk)
        assert reader.buffered <= MAX + 20 + 6 + 125
    assert out == expected
    assert reader.buffered == 0


def buffer_bound(max_message: int) -> int:
    return max_message + max(14, 6 + min(125, max_message))


def feed_fuzz(max_message: int, chunks: list[bytes], deflate: bool = False) -> None:
    reader = FrameReader(max_message, deflate)
    try:
        for chunk in chunks:
            reader.feed(chunk)
            assert reader.buffered <= buffer_bound(max_message)
    except WsProtocolError as exc:
        assert exc.close_code in (1002, 1007, 4509)
        assert reader.buffered == 0


max_messages = st.sampled_from([0, 1, 10, 125, 300, 70_000])


@settings(max_examples=500, deadline=None)
@given(max_messages, st.lists(st.binary(max_size=64), max_size=20), st.booleans())
def test_fuzz_arbitrary_bytes(max_message: int, chunks: list[bytes], deflate: bool) -> None:
    feed_fuzz(max_message, chunks, deflate)


@st.composite
def frameish(draw: st.DrawFn) -> bytes:
    """Mostly well-formed masked frames with random fields, so the fuzzer gets past the first
    two bytes; sometimes an unmasked frame or a hand-built long length."""
    opcode = draw(st.sampled_from([0, 1, 2, 8, 9, 10]) | st.integers(0, 15))
    payload = draw(st.binary(max_size=140))
    if opcode == 8 and len(payload) >= 2 and draw(st.booleans()):
        code = draw(st.sampled_from([1000, 1004, 1012, 3000, 5000]))
        payload = code.to_bytes(2, "big") + payload[2:]
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return encode_frame(Opcode.BINARY, payload)
    if kind == 1:
        length = draw(st.integers(0, 2**64 - 1))
        return bytes((0x80 | opcode, 0xFF)) + length.to_bytes(8, "big") + MASK + payload
    rsv = draw(st.sampled_from([0, 0, 0, 0, 1, 2, 4, 4]))
    if rsv == 4 and draw(st.booleans()):  # a real compressed payload, maybe a bomb
        payload = client_deflate(draw(st.sampled_from([payload, b"\0" * 100_000])))
    return encode_masked_frame(
        opcode, payload, draw(st.binary(min_size=4, max_size=4)), fin=draw(st.booleans()), rsv=rsv
    )


@settings(max_examples=300, deadline=None)
@given(
    max_messages,
    st.lists(frameish(), max_size=8),
    st.lists(st.integers(0, 50), max_size=20),
    st.booleans(),
)
def test_fuzz_frame_like_streams(
    max_message: int, frames: list[bytes], sizes: list[int], deflate: bool
) -> None:
    feed_fuzz(max_message, chunked(b"".join(frames), sizes), deflate)


# ---------------------------------------------------------------------------------------------
# Memory


@pytest.mark.parametrize("deflate", [False, True])
def test_idle_reader_memory(deflate: bool) -> None:
    message = b'{"type":"ping","id":"r1"}'
    # With deflate, the message read is compressed: inflating must leave nothing behind.
    data = (
        frame(Opcode.TEXT, client_deflate(message), rsv=4)
        if deflate
        else frame(Opcode.TEXT, message)
    )
    readers: list[FrameReader] = []
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(5000):
            reader = FrameReader(16 * 1024, deflate)
            # Split so that the partial-frame buffer is created and released again.
            assert reader.feed(data[:5]) == []
            assert reader.feed(data[5:]) == [Message(Opcode.TEXT, message)]
            readers.append(reader)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    per_reader = (after - before) / len(readers)
    print(f"\nidle FrameReader (deflate={deflate}): {per_reader:.1f} bytes each (list slot incl.)")
    assert all(r.buffered == 0 for r in readers)
    assert per_reader < 300
