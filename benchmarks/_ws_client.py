"""A minimal WebSocket client on raw asyncio protocols, for benchmarks that hold thousands of
sockets in one process: about 1 KiB per socket, a handshake that offers permessage-deflate, an
unmasked-frame parser (a compressed message is inflated), protocol ``ping`` and WebSocket PING
answered with masked ``pong`` frames. Sockets are bound to several loopback source addresses
(127.0.0.2, 127.0.0.3, …) so that no single address runs out of ephemeral ports.
"""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import socket
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks._server import SECRET
from push.ws_codec import Opcode, encode_masked_frame
from sessions.tokens import TokenVerifier

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
PONG = b'{"type":"pong"}'
DEFLATE_TAIL = b"\x00\x00\xff\xff"  # removed by the sender of a compressed message (RFC 7692)


def raise_nofile() -> int:
    """Raise this process's soft descriptor limit to the hard one; returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def sources(count: int) -> list[str]:
    """``count`` loopback source addresses: 127.0.0.2, 127.0.0.3, …"""
    return [f"127.0.0.{2 + i}" for i in range(count)]


def upgrade_request(address: str, token: str) -> bytes:
    """The handshake of a ``pushrec.v1.json`` socket authenticated by ``?token=``; it offers
    permessage-deflate (the server decides)."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /v1/ws?token={token} HTTP/1.1\r\nHost: {address}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: pushrec.v1.json\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    ).encode()


def new_stats() -> dict[str, int]:
    """The counters a :class:`FrameClient` keeps (shared by all sockets of a process)."""
    return {"lost": 0, "closed": 0, "pings": 0, "deflate": 0, "compressed": 0}


class FrameClient(asyncio.Protocol):
    """One WebSocket client: handshake, then frames. Data messages go to :meth:`message`
    (inflated when compressed); ``ready`` is resolved by a subclass (or failed on a refused
    handshake or a lost connection)."""

    __slots__ = ("buf", "phase", "ready", "stats", "transport")

    def __init__(self, request: bytes, ready: asyncio.Future[None], stats: dict[str, int]) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = request  # the handshake to send; then unparsed bytes
        self.phase = 0  # 0: handshake sent, 1: open
        self.ready: asyncio.Future[None] | None = ready
        self.stats = stats

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.buf)
        self.buf = b""

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats["lost"] += 1
        self.fail("connection lost")
        self.transport = None

    def fail(self, why: str) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(RuntimeError(why))
        self.ready = None

    def resolve(self) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(None)
        self.ready = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if self.phase == 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            head = buf[:end].lower()
            if not head.startswith(b"http/1.1 101"):
                self.fail(buf[:end].decode(errors="replace").splitlines()[0])
                return
            if b"\r\nsec-websocket-extensions:" in head and b"permessage-deflate" in head:
                self.stats["deflate"] += 1
            buf = buf[end + 4 :]
            self.phase = 1
        while len(buf) >= 2:
            size, at = buf[1] & 0x7F, 2
            if size == 126:
                if len(buf) < 4:
                    break
                size, at = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                if len(buf) < 10:
                    break
                size, at = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < at + size:
                break
            payload = buf[at : at + size]
            if buf[0] & 0x40:  # RSV1: a compressed message, no context takeover
                self.stats["compressed"] += 1
                payload = zlib.decompressobj(-15).decompress(payload + DEFLATE_TAIL)
            self._frame(buf[0] & 0x0F, payload)
            buf = buf[at + size :]
        self.buf = buf

    def _frame(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        if opcode == Opcode.TEXT:
            if payload.startswith(b'{"type":"ping"'):
                self.transport.write(encode_masked_frame(Opcode.TEXT, PONG, os.urandom(4)))
                self.stats["pings"] += 1
            else:
                self.message(payload)
        elif opcode == Opcode.BINARY:
            self.message(payload)
        elif opcode == Opcode.PING:
            self.transport.write(encode_masked_frame(Opcode.PONG, payload, os.urandom(4)))
        elif opcode == Opcode.CLOSE:
            self.stats["closed"] += 1

    def message(self, payload: bytes) -> None:
        """A data message other than a protocol ``ping`` (override)."""


async def open_socket(
    address: str, source: str, factory: Callable[[], FrameClient]
) -> asyncio.Transport:
    """Connect from ``source`` to ``address`` (host:port) with the protocol ``factory`` makes."""
    loop = asyncio.get_running_loop()
    host, port = address.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, int(port)))
        transport, _protocol = await loop.create_connection(factory, sock=sock)
    except BaseException:
        sock.close()
        raise
    return transport


async def open_many(
    address: str,
    users: Sequence[str],
    addresses: Sequence[str],
    make: Callable[[int, bytes, asyncio.Future[None]], FrameClient],
    *,
    in_flight: int = 64,
    timeout_s: float = 120.0,
) -> tuple[list[asyncio.Transport], dict[str, Any]]:
    """Open one socket per visitor of ``users`` (a ``?token=`` signed with the benchmark
    secret), from ``addresses`` in turn, at most ``in_flight`` handshakes at once;
    ``make(i, request, ready)`` builds the i-th protocol, which resolves ``ready`` once the socket
    is usable (within ``timeout_s``). Returns the transports and a report: ``opened``,
    ``errors``, ``first_error``, ``seconds``."""
    loop = asyncio.get_running_loop()
    verifier = TokenVerifier(SECRET)
    gate = asyncio.Semaphore(in_flight)
    transports: list[asyncio.Transport] = []

    async def one(i: int) -> None:
        request = upgrade_request(address, verifier.mint(users[i]))
        async with gate:
            ready: asyncio.Future[None] = loop.create_future()
            source = addresses[i % len(addresses)]
            transports.append(await open_socket(address, source, lambda: make(i, request, ready)))
            await asyncio.wait_for(ready, timeout_s)

    started = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(len(users))), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    return transports, {
        "opened": len(results) - len(errors),
        "errors": len(errors),
        "first_error": repr(errors[0]) if errors else None,
        "seconds": time.monotonic() - started,
    }
