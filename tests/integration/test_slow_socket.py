"""Sockets that never read: the kernel's send queue stays bounded and the server closes them.

Issue 12, defect 5: with Linux's autotuned send buffer (up to ``net.ipv4.tcp_wmem`` max, MiBs
on loopback) a write never blocked, so the transport's high-water mark was never reached: no
conflation, no 4001, kernel queues growing per socket. Here raw TCP clients do the WebSocket
handshake (or the SSE request) and then never read a byte, while the feed of their user moves
with big frames; a normal WebSocket and a normal SSE client of the same user read along.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import socket
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.integration.conftest import ROOT, redis_database, start_server, stop_server
from tests.integration.harness import (
    SCALE,
    Server,
    api,
    metric,
    new_id,
    processed_events,
    settle,
    sse_client,
    stored_feed,
    ws_client,
)

#: The server's per-socket kernel send buffer (PUSHREC_SOCKET_SNDBUF_BYTES); Linux doubles it.
SNDBUF = 32_768
SEND_TIMEOUT_S = 2.0 * SCALE
CATEGORIES = [f"cat{i}" for i in range(40)]
#: Bytes each socket is offered: far beyond what the bounded buffers hold (~200 KiB).
PUSHED_BYTES = 1_500_000


@pytest.fixture(scope="module")
def slow_server() -> Iterator[Server]:
    """A server with a short send timeout and a catalog of big payloads (~1.4 KB an item)."""
    (ROOT / ".pytest_cache").mkdir(exist_ok=True)
    with redis_database(23) as url:
        proc, srv = start_server(
            {
                "PUSHREC_REDIS_URL": url,
                "PUSHREC_SEND_TIMEOUT_S": str(SEND_TIMEOUT_S),
                "PUSHREC_SOCKET_SNDBUF_BYTES": str(SNDBUF),
            }
        )
        try:
            items = [
                {
                    "item_id": f"{c}-{n}",
                    "title": f"{c} {n} " + "t" * 280,
                    "image": "https://img.example/" + "i" * 950,
                    "price": 10.0 + n,
                    "category": c,
                }
                for c in CATEGORIES
                for n in range(25)
            ]
            for start in range(0, len(items), 200):
                r = httpx.put(
                    f"{srv.http}/v1/items", json=items[start : start + 200], headers=srv.admin
                )
                r.raise_for_status()
            yield srv
        finally:
            stop_server(proc)


async def never_reading(server: Server, request: bytes) -> socket.socket:
    """A TCP socket with a tiny receive buffer that sends ``request`` and never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    host, port = server.address.split(":")
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, request)
    return sock


def ws_request(server: Server, user: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /v1/ws?token={server.token(user)} HTTP/1.1\r\nHost: {server.address}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def sse_request(server: Server, user: str) -> bytes:
    return (
        f"GET /v1/sse?token={server.token(user)} HTTP/1.1\r\nHost: {server.address}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()


def server_send_queues(server_port: int, client_ports: set[int]) -> dict[int, int]:
    """Bytes in the kernel send queue (``tx_queue``) of each of the server's sockets towards
    ``client_ports``, by client port; a port missing from the answer has no socket any more."""
    queues: dict[int, int] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, queue = fields[1], fields[2], fields[4]
            lport, rport = int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)
            if lport == server_port and rport in client_ports:
                queues[rport] = int(queue.split(":")[0], 16)
    return queues


async def push_big_frames(
    server: Server, user: str, offered: Callable[[], int], until_bytes: int
) -> None:
    """Move ``user``'s feed, batch after batch of views across categories (each batch replaces
    most of the feed: a frame of ~16 KB), until ``offered()`` (bytes a reading client of the
    user received) reaches ``until_bytes``: what every socket of the user was offered."""
    rng = random.Random(5)  # noqa: S311 - test data, not security
    async with api(server) as client:
        while offered() < until_bytes:
            before = await processed_events(server, client)
            events = [
                {
                    "event_id": new_id("e"),
                    "user_id": user,
                    "type": "view",
                    "item_id": f"{rng.choice(CATEGORIES)}-{rng.randrange(25)}",
                }
                for _ in range(10)
            ]
            r = await client.post("/v1/events", json=events, headers=server.admin)
            assert r.status_code == 202, r.text
            await settle(server, before, len(events), client)


def test_never_reading_sockets_are_bounded_and_closed(slow_server: Server) -> None:
    srv = slow_server
    port = int(srv.address.rsplit(":", 1)[1])

    async def scenario() -> None:
        user = new_id("u")
        async with ws_client(srv, user) as tab, sse_client(srv, user) as stream:
            socks = [await never_reading(srv, ws_request(srv, user)) for _ in range(3)]
            socks += [await never_reading(srv, sse_request(srv, user)) for _ in range(2)]
            ports = {s.getsockname()[1] for s in socks}
            async with asyncio.timeout(5 * SCALE):
                # Polling: the sessions live in another process, there is no event to await here.
                while (  # noqa: ASYNC110
                    await metric(srv, "pushrec_connections", transport="websocket") < 4
                    or await metric(srv, "pushrec_connections", transport="sse") < 3
                ):
                    await asyncio.sleep(0.02)
            slow_before = await metric(srv, "pushrec_connection_closes_total", reason="slow")

            peak: dict[int, int] = {}

            async def watch() -> None:
                while True:
                    for p, q in server_send_queues(port, ports).items():
                        peak[p] = max(peak.get(p, 0), q)
                    await asyncio.sleep(0.05)

            watcher = asyncio.create_task(watch())
            try:
                received = lambda: sum(len(json.dumps(f)) for f in tab.frames)  # noqa: E731
                await push_big_frames(srv, user, received, PUSHED_BYTES)
                # The kernel holds at most its (doubled) send buffer per socket.
                assert peak, "no server-side socket of the never-reading clients was found"
                assert max(peak.values()) <= 2 * SNDBUF, peak
                # Behind for the send timeout: closed (4001), then cut off a send timeout later.
                async with asyncio.timeout(2 * SEND_TIMEOUT_S + 10 * SCALE):
                    while server_send_queues(port, ports):  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
            finally:
                watcher.cancel()
            slow = await metric(srv, "pushrec_connection_closes_total", reason="slow")
            assert slow - slow_before == len(socks)
            # The readers of the same user were never held back: they hold the stored state.
            stored = await stored_feed(srv, user)
            await tab.wait(lambda s: s.version == stored["version"], within_s=10)
            await stream.wait(lambda s: s.version == stored["version"], within_s=10)
            assert tab.items == stored["items"] and stream.items == stored["items"]
            for s in socks:
                s.close()

    asyncio.run(scenario())
