"""Memory per idle WebSocket connection of a running node, application state included.

Starts the real server (embedded Redis, demo catalog) and posts the first 300 REES46 events of
the sample so that trending exists and every new visitor's snapshot holds a full list (12 items,
~1.6 kB). It is not warmed up with the whole replay: processing 17k events leaves ~13 MiB of
freed heap that new connections would reuse unseen, hiding most of their cost (measured: 0.2 KiB
per socket at 1,000 sockets). It reads the server's resident memory (VmRSS, /proc), then opens N
authenticated WebSocket connections of N distinct visitors from separate client processes (so
their memory is not counted), over several loopback source addresses (127.0.0.2, 127.0.0.3, …:
no single address runs out of ephemeral ports), waits until every one has its ``hello`` and
``snapshot``, and reads the server's RSS again: once after a short settle, once more after a full
heartbeat interval (every connection has been sent a protocol ``ping`` and has answered ``pong``,
as a live client must). Per socket = (RSS after - RSS before) / N; the slope between the two
largest N, (RSS(N2) - RSS(N1)) / (N2 - N1) of the readings after the ping cycle, removes what a
node allocates once and the noise of the "before" reading (it varies by ~5 MiB between runs:
garbage of the start-up awaiting a collection that the first connections then trigger, so per
socket figures at small N are only good to ±5 MiB / N).

The clients are a minimal WebSocket client written on raw asyncio protocols (a handshake, an
unmasked-frame parser, masked ``pong`` frames): about 1 KiB per socket on the client side, so one
process holds thousands. Each client offers ``permessage-deflate`` and checks that the server's
101 answer does not accept it (the server never negotiates compression).

Kernel socket buffers are not process memory and are not in RSS. Redis memory is reported beside
it (the stored feed of each new visitor) but is not counted per socket.

    python -m benchmarks.idle_memory                    # 1,000 / 5,000 / 19,000 sockets
    python -m benchmarks.idle_memory --sockets 1000 5000 --clients 2
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis

from benchmarks._plot import figure, save
from benchmarks._server import ROOT, SECRET, running_server, seed_events
from push.ws_codec import Opcode, encode_masked_frame
from sessions.tokens import TokenVerifier

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
PONG = b'{"type":"pong"}'
SEED_EVENTS = 300
IN_FLIGHT = 64  # handshakes under way at once, per client process


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def raise_nofile() -> int:
    """Raise this process's soft descriptor limit to the hard one; returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def open_sockets(address: str) -> int:
    """Open WebSocket connections counted by the server's gauge (pushrec_connections)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith('pushrec_connections{transport="websocket"}'):
                return int(float(line.rsplit(" ", 1)[1]))
    return 0


class IdleClient(asyncio.Protocol):
    """One idle WebSocket client: handshake, then answer pings; counts what it received."""

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
        self._fail("connection lost")
        self.transport = None

    def _fail(self, why: str) -> None:
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(RuntimeError(why))
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
                self._fail(buf[:end].decode(errors="replace").splitlines()[0])
                return
            if b"sec-websocket-extensions" in head:
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
            if buf[0] & 0x40:  # RSV1: a compressed message (the deflate baseline only)
                self.stats["compressed"] += 1
                self._frame(Opcode.TEXT, b'{"type":"snapshot"}')
            else:
                self._frame(buf[0] & 0x0F, buf[at : at + size])
            buf = buf[at + size :]
        self.buf = buf

    def _frame(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        if opcode == Opcode.TEXT:
            head = payload[:24]
            if head.startswith(b'{"type":"ping"'):
                self.transport.write(encode_masked_frame(Opcode.TEXT, PONG, os.urandom(4)))
                self.stats["pings"] += 1
            elif head.startswith(b'{"type":"snapshot"'):
                self.stats["snapshot_bytes"] += len(payload)
                if self.ready is not None and not self.ready.done():
                    self.ready.set_result(None)
                self.ready = None
        elif opcode == Opcode.PING:
            self.transport.write(encode_masked_frame(Opcode.PONG, payload, os.urandom(4)))
        elif opcode == Opcode.CLOSE:
            self.stats["closed"] += 1


def hold(address: str, users: range, sources: list[str], pipe: Connection, done: Any) -> None:
    """In a client process: open one socket per user, report, hold them until ``done``."""
    raise_nofile()
    host, port = address.rsplit(":", 1)
    verifier = TokenVerifier(SECRET)
    stats = {"lost": 0, "closed": 0, "pings": 0, "deflate": 0, "snapshot_bytes": 0, "compressed": 0}

    async def one(n: int, gate: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /v1/ws?token={verifier.mint(f'idle-{n}')} HTTP/1.1\r\nHost: {address}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: pushrec.v1.json\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        ).encode()
        async with gate:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((sources[n % len(sources)], 0))
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, int(port)))
            ready: asyncio.Future[None] = loop.create_future()
            await loop.create_connection(lambda: IdleClient(request, ready, stats), sock=sock)
            await asyncio.wait_for(ready, 60)  # hello, then snapshot

    async def main() -> None:
        gate = asyncio.Semaphore(IN_FLIGHT)
        started = time.monotonic()
        results = await asyncio.gather(*(one(n, gate) for n in users), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        pipe.send(
            {
                "opened": len(results) - len(errors),
                "errors": len(errors),
                "first_error": repr(errors[0]) if errors else None,
                "seconds": time.monotonic() - started,
                **stats,
            }
        )
        while not done.is_set():  # noqa: ASYNC110 - a multiprocessing Event: nothing to await
            await asyncio.sleep(0.5)
        pipe.send(dict(stats))

    asyncio.run(main())


def redis_used(url: str) -> int:
    client = redis.Redis.from_url(url)
    used = int(client.info("memory")["used_memory"])
    client.close()
    return used


@contextlib.contextmanager
def pushrec_server() -> Iterator[tuple[str, int, str | None]]:
    """The real server, seeded; yields its address, pid and Redis URL."""
    with running_server(warmup=False) as srv:
        seed_events(srv.address, SEED_EVENTS)
        yield srv.address, srv.pid, srv.redis_url


@contextlib.contextmanager
def baseline_server(deflate: bool) -> Iterator[tuple[str, int, str | None]]:
    """uvicorn's websockets-sansio transport and a bare ASGI app (no pushrec): the old stack's
    transport cost, with or without permessage-deflate."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.idle_memory", "--serve-baseline", str(port)]
        + (["--deflate"] if deflate else []),
        cwd=ROOT,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("baseline server did not start") from None
                time.sleep(0.1)
        yield address, proc.pid, None
    finally:
        proc.terminate()
        proc.wait(15)


def serve_baseline(port: int, deflate: bool) -> None:
    """Run uvicorn (websockets-sansio) with an app that sends each socket one snapshot-sized
    text message and then only waits for it to close."""
    import uvicorn

    lines = (ROOT / "examples/catalog/rees46.jsonl").read_text().splitlines()[:12]
    items = [
        {k: v for k, v in json.loads(line).items() if k in ("title", "category", "price", "image")}
        | {"id": json.loads(line)["item_id"]}
        for line in lines
    ]
    snapshot = json.dumps(
        {
            "type": "snapshot",
            "feed": "home",
            "version": ["AbCdEfGh", 1],
            "items": items,
            "sum": "00000000",
        },
        separators=(",", ":"),
    )

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": snapshot})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    raise_nofile()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        ws="websockets-sansio",
        ws_per_message_deflate=deflate,
        lifespan="off",
        log_level="warning",
        access_log=False,
    )


def uvicorn_version() -> str:
    import uvicorn

    return str(uvicorn.__version__)


def measure(
    count: int, clients: int, sources: list[str], settle_s: float, server: Any = None
) -> dict[str, Any]:
    """One fresh server, ``count`` idle sockets; RSS and Redis readings."""
    with server or pushrec_server() as (address, pid, redis_url):
        time.sleep(2)
        before = rss_kib(pid)
        redis_before = redis_used(redis_url) if redis_url else 0
        ctx = multiprocessing.get_context("spawn")
        done = ctx.Event()
        procs, pipes = [], []
        share = -(-count // clients)
        for c in range(clients):
            users = range(c * share, min(count, (c + 1) * share))
            parent, child = ctx.Pipe(duplex=False)
            p = ctx.Process(target=hold, args=(address, users, sources, child, done))
            p.start()
            procs.append(p)
            pipes.append(parent)
        t0 = time.monotonic()
        reports = [pipe.recv() for pipe in pipes]
        open_s = time.monotonic() - t0
        opened = sum(r["opened"] for r in reports)
        if opened != count:
            errors = [r["first_error"] for r in reports if r["first_error"]]
            raise RuntimeError(f"only {opened} of {count} sockets opened: {errors}")
        time.sleep(settle_s)
        after_open = rss_kib(pid)
        gauge_open = open_sockets(address) if redis_url else count
        # One full heartbeat interval (25 s default): every socket is pinged and answers.
        time.sleep(26)
        steady = rss_kib(pid)
        gauge = open_sockets(address) if redis_url else count - sum(r["lost"] for r in reports)
        redis_after = redis_used(redis_url) if redis_url else 0
        done.set()
        finals = [pipe.recv() for pipe in pipes]
        for p in procs:
            p.join(60)
    return {
        "n": count,
        "before": before,
        "after_open": after_open,
        "steady": steady,
        "gauge_open": gauge_open,
        "gauge": gauge,
        "open_s": open_s,
        "pings": sum(f["pings"] for f in finals),
        "lost": sum(f["lost"] for f in finals),
        "deflate": sum(f["deflate"] for f in finals),
        "compressed": sum(f["compressed"] for f in finals),
        "snapshot_bytes": sum(f["snapshot_bytes"] for f in finals) / count,
        "redis_per_user": (redis_after - redis_before) / count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, nargs="*", default=[1000, 5000, 19000])
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--sources", type=int, default=4, help="loopback source addresses")
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs/benchmarks/idle_memory.png")
    parser.add_argument(
        "--baseline",
        type=int,
        default=0,
        metavar="N",
        help="also measure N sockets on uvicorn websockets-sansio + a bare app, deflate off/on",
    )
    parser.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--deflate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline(args.serve_baseline, args.deflate)
        return
    limit = raise_nofile()  # inherited by the server subprocess
    if max([*args.sockets, args.baseline]) + 64 > limit:
        raise SystemExit(f"descriptor limit {limit} is too low for {max(args.sockets)} sockets")
    sources = [f"127.0.0.{2 + i}" for i in range(args.sources)]
    if args.baseline:
        base = []
        for deflate in (False, True):
            server = baseline_server(deflate)
            base.append(
                (deflate, measure(args.baseline, args.clients, sources, args.settle, server))
            )
        print(
            f"\ntransport baseline, not pushrec: uvicorn {uvicorn_version()} websockets-sansio "
            f"+ a bare ASGI app, one {base[0][1]['snapshot_bytes']:.0f}-byte text message per "
            "socket, then idle (WebSocket pings answered)"
        )
        print(
            "| permessage-deflate | sockets | accepted by server | KiB/socket (after open) "
            "| KiB/socket (after a ping cycle) |\n|---|---|---|---|---|"
        )
        for deflate, r in base:
            n = r["n"]
            print(
                f"| {'on' if deflate else 'off'} | {n:,} | {r['deflate']:,} "
                f"| {(r['after_open'] - r['before']) / n:.1f} "
                f"| {(r['steady'] - r['before']) / n:.1f} |"
            )
    if not args.sockets:
        return
    results = []
    for n in sorted(args.sockets):
        r = measure(n, args.clients, sources, args.settle)
        results.append(r)
        print(
            f"{n} sockets: opened in {r['open_s']:.1f} s, server gauge {r['gauge_open']} → "
            f"{r['gauge']}, pings answered {r['pings']}, lost {r['lost']}, "
            f"deflate accepted {r['deflate']}",
            flush=True,
        )
    print(
        f"\nidle WebSocket connections, {args.clients} client processes, source addresses "
        f"{sources[0]}…{sources[-1]}, descriptor limit {limit}; permessage-deflate offered by "
        f"every client, accepted by the server on {sum(r['deflate'] for r in results)} sockets"
    )
    print(
        "| idle sockets | server RSS before | after open | after a ping cycle "
        "| KiB/socket (after open) | KiB/socket (after ping cycle) | snapshot bytes/socket "
        "| Redis bytes/user |\n|---|---|---|---|---|---|---|---|"
    )
    for r in results:
        n = r["n"]
        print(
            f"| {n:,} | {r['before'] / 1024:.1f} MiB | {r['after_open'] / 1024:.1f} MiB "
            f"| {r['steady'] / 1024:.1f} MiB | {(r['after_open'] - r['before']) / n:.1f} "
            f"| **{(r['steady'] - r['before']) / n:.1f}** | {r['snapshot_bytes']:.0f} "
            f"| {r['redis_per_user']:.0f} |"
        )
    slope = None
    if len(results) >= 2:
        a, b = results[-2], results[-1]
        slope = (b["steady"] - a["steady"]) / (b["n"] - a["n"])
        print(
            f"\nslope {a['n']:,} → {b['n']:,} sockets ((RSS({b['n']:,}) - RSS({a['n']:,})) / "
            f"{b['n'] - a['n']:,}, after the ping cycle): **{slope:.2f} KiB per socket**"
        )
    fig, (left, right) = figure(2)
    ns = [r["n"] for r in results]
    left.plot(ns, [(r["steady"] - r["before"]) / 1024 for r in results], marker="o")
    left.set_xlabel("idle WebSocket connections")
    left.set_ylabel("server RSS growth (MiB)")
    left.set_title("server RSS growth after a ping cycle")
    for r in results:
        left.annotate(
            f"RSS {r['steady'] / 1024:.0f} MiB", ((r["n"]), (r["steady"] - r["before"]) / 1024)
        )
    right.plot(
        ns,
        [(r["after_open"] - r["before"]) / r["n"] for r in results],
        marker="o",
        label="after open",
    )
    right.plot(
        ns,
        [(r["steady"] - r["before"]) / r["n"] for r in results],
        marker="o",
        label="after a ping cycle",
    )
    if slope is not None:
        right.axhline(slope, color="k", ls=":", label=f"slope {ns[-2]:,}→{ns[-1]:,}: {slope:.1f}")
    right.axhline(16, color="r", ls="--", label="limit 16 KiB")
    right.axhline(12, color="g", ls="--", label="aim 12 KiB")
    right.set_ylim(bottom=0)
    right.set_xlabel("idle WebSocket connections")
    right.set_ylabel("KiB per connection")
    right.set_title("server memory per idle connection")
    right.legend(fontsize=8)
    save(fig, args.plot)


if __name__ == "__main__":
    main()
