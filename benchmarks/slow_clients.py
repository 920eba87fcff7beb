"""Normal clients' event → push latency with and without never-reading sockets present.

Starts a private Redis and the real server (REES46 catalog, warmed up), opens one reading
WebSocket per user, and posts view events at a fixed rate spread over the users (several in
flight). An event is timed from just before its ``POST /v1/events`` to the first frame after
which the viewed item leads that user's home feed (the item being looked at leads it). Phase 1
runs so; then ``--slow`` raw sockets spread over the same users do the WebSocket handshake and
never read a byte (receive buffer ``--rcvbuf``), the events go on for ``--fill`` seconds (not
measured: the sockets' buffers fill), and phase 2 measures again with them present. The server's
send timeout and ping interval are set long enough that no never-reading socket is closed
during the run: phase 2 measures their presence, not their absence.

Beside the latencies: CPU of the server and of this process over the phase, the load average,
and the server's kernel send queues towards the never-reading sockets (``tx_queue`` of
/proc/net/tcp) at the end of the phase.

Usage: python -m benchmarks.slow_clients [--users 10] [--slow 500] [--rate 200] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import socket
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from benchmarks._plot import figure, latency_cdf, save
from benchmarks._server import ADMIN_KEY, ROOT, SECRET, cpu_seconds, metrics_text, running_server
from benchmarks._ws_client import raise_nofile
from benchmarks.event_latency import RawHTTP
from sessions.diff import DiffBody, apply_diff
from sessions.tokens import TokenVerifier

#: An event whose item has not led the feed after this long is counted as missed.
MISS_AFTER_S = 10.0


@dataclass
class Reader:
    """One normal visitor: a reading WebSocket, its feed, and the events awaiting their frame."""

    user: str
    ws: ClientConnection
    items: list[dict[str, Any]] = field(default_factory=list)
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)  # item id -> POST time
    latencies: list[float] = field(default_factory=list)
    first: asyncio.Event = field(default_factory=asyncio.Event)

    async def pump(self) -> None:
        async for message in self.ws:
            now = time.perf_counter()
            frame = json.loads(message)
            if frame["type"] == "snapshot":
                self.items = frame["items"]
                self.first.set()
            elif frame["type"] == "diff":
                self.seen.update(frame["items"])
                payloads = {op: self.seen[op] for op in frame["order"] if isinstance(op, str)}
                body = DiffBody(order=frame["order"], items=payloads, patch=frame["patch"])
                self.items = apply_diff(self.items, body)
            else:
                continue
            self.seen.update((str(p["id"]), p) for p in self.items)
            if self.items:
                t0 = self.pending.pop(str(self.items[0]["id"]), None)
                if t0 is not None:
                    self.latencies.append((now - t0) * 1000)


def upgrade(address: str, token: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /v1/ws?token={token} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def never_reading(address: str, token: str, rcvbuf: int) -> socket.socket:
    """A socket that sends the handshake and never reads (receive buffer ``rcvbuf``)."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    host, port = address.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, upgrade(address, token))
    return sock


def send_queues(server_port: int, client_ports: set[int]) -> list[int]:
    """``tx_queue`` bytes of the server's sockets towards ``client_ports`` (those still open)."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        lport = int(fields[1].rsplit(":", 1)[1], 16)
        rport = int(fields[2].rsplit(":", 1)[1], 16)
        if lport == server_port and rport in client_ports:
            out.append(int(fields[4].split(":")[0], 16))
    return out


def counter(address: str, name: str) -> float:
    total = 0.0
    for line in metrics_text(address).splitlines():
        if line.startswith(name) and not line.startswith("#"):
            sample = line.split(" ", 1)[0]
            if sample == name or sample.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def pct(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1]


async def post_events(
    address: str, readers: list[Reader], catalog: list[str], rate: float, seconds: float
) -> int:
    """Post views at ``rate`` per second in total (one keep-alive connection per user, each at
    ``rate / users``) for ``seconds``; returns how many were posted."""
    per_user = rate / len(readers)
    posted = 0
    auth = {"X-API-Key": ADMIN_KEY}

    async def one_user(r: Reader, offset: float) -> None:
        nonlocal posted
        http = RawHTTP(address)
        rng = random.Random(r.user)
        start = time.perf_counter() + offset
        i = 0
        try:
            while True:
                due = start + i / per_user
                if due - start > seconds:
                    return
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                item = rng.choice(catalog)
                while item in r.pending:
                    item = rng.choice(catalog)
                now = time.perf_counter()
                for stale in [k for k, t in r.pending.items() if now - t > MISS_AFTER_S]:
                    del r.pending[stale]
                body = json.dumps(
                    {
                        "event_id": uuid.uuid4().hex,
                        "user_id": r.user,
                        "type": "view",
                        "item_id": item,
                    }
                ).encode()
                r.pending[item] = now
                status, answer = await http.post("/v1/events", body, auth)
                if status != 202:
                    raise RuntimeError(f"POST failed: {status} {answer!r}")
                posted += 1
                i += 1
        finally:
            await http.close()

    await asyncio.gather(*(one_user(r, k / rate) for k, r in enumerate(readers)))
    return posted


async def phase(
    name: str,
    address: str,
    pid: int,
    readers: list[Reader],
    catalog: list[str],
    args: argparse.Namespace,
    slow_ports: set[int],
    seconds: float,
) -> dict[str, Any]:
    for r in readers:
        r.latencies.clear()
        r.pending.clear()
    conflations = counter(address, "pushrec_conflations_total")
    cpu0, own0, t0 = cpu_seconds(pid), time.process_time(), time.monotonic()
    posted = await post_events(address, readers, catalog, args.rate, seconds)
    await asyncio.sleep(1.0)  # the last frames
    wall = time.monotonic() - t0
    port = int(address.rsplit(":", 1)[1])
    queues = send_queues(port, slow_ports) if slow_ports else []
    lat = [x for r in readers for x in r.latencies]
    return {
        "phase": name,
        "posted": posted,
        "lat": lat,
        "server_cpu": (cpu_seconds(pid) - cpu0) / wall,
        "own_cpu": (time.process_time() - own0) / wall,
        "load": os.getloadavg()[0],
        "queues": queues,
        "conflations": counter(address, "pushrec_conflations_total") - conflations,
    }


async def measure(address: str, pid: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    verifier = TokenVerifier(SECRET)
    catalog = [
        json.loads(line)["item_id"] for line in (ROOT / "examples/catalog/rees46.jsonl").open()
    ]
    readers = []
    for _ in range(args.users):
        user = f"slowbench-{uuid.uuid4().hex[:10]}"
        ws = await connect(f"ws://{address}/v1/ws?token={verifier.mint(user)}", compression=None)
        readers.append(Reader(user, ws))
    pumps = [asyncio.create_task(r.pump()) for r in readers]
    for r in readers:
        await r.first.wait()
    results = [await phase("without", address, pid, readers, catalog, args, set(), args.seconds)]
    socks = []
    for i in range(args.slow):
        user = readers[i % len(readers)].user
        socks.append(await never_reading(address, verifier.mint(user), args.rcvbuf))
    ports = {s.getsockname()[1] for s in socks}
    await phase("fill", address, pid, readers, catalog, args, ports, args.fill)
    results.append(
        await phase(f"with {args.slow}", address, pid, readers, catalog, args, ports, args.seconds)
    )
    results[-1]["closed"] = args.slow - len(results[-1]["queues"])
    for s in socks:
        s.close()
    for r in readers:
        await r.ws.close()
    for p in pumps:
        p.cancel()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--slow", type=int, default=500, help="never-reading sockets")
    parser.add_argument("--rate", type=float, default=200.0, help="events/s over all users")
    parser.add_argument("--seconds", type=float, default=30.0, help="each measured phase")
    parser.add_argument("--fill", type=float, default=25.0, help="unmeasured, slow sockets on")
    parser.add_argument("--rcvbuf", type=int, default=4096, help="never-reading SO_RCVBUF")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks/out/slow_clients.png")
    args = parser.parse_args()
    raise_nofile()
    env = {
        # Long enough that no never-reading socket is closed during the run (see the docstring).
        "PUSHREC_SEND_TIMEOUT_S": "600",
        "PUSHREC_PING_INTERVAL_S": "600",
    }
    with running_server(env=env) as srv:
        results = asyncio.run(measure(srv.address, srv.pid, args))
    print(
        f"\nnormal clients' event → push latency, {args.users} reading sockets, "
        f"{args.rate:g} events/s, {args.seconds:g} s per phase; never-reading sockets over "
        f"the same users (SO_RCVBUF {args.rcvbuf}); load average 1 min at the phase end"
    )
    print(
        "| never-reading sockets | events (timed) | p50 ms | p99 ms | server CPU | bench CPU "
        "| load avg | server send queues to them: total MB / max KB | conflations |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        q = r["queues"]
        queued = f"{sum(q) / 1e6:.1f} / {max(q) / 1024:.0f}" if q else "-"
        if "closed" in r:
            queued += f" ({len(q)} open)"
        print(
            f"| {r['phase']} | {r['posted']} ({len(r['lat'])}) | {pct(r['lat'], 0.5):.1f} "
            f"| {pct(r['lat'], 0.99):.1f} | {r['server_cpu']:.0%} | {r['own_cpu']:.0%} "
            f"| {r['load']:.2f} | {queued} | {r['conflations']:.0f} |"
        )
    fig, (ax,) = figure(1)
    for i, r in enumerate(results):
        latency_cdf(
            ax,
            r["lat"],
            "POST → frame leading with the item (ms)",
            "normal clients with never-reading sockets present",
            marks=(),
            label=f"{r['phase']} never-reading",
        )
        del i
    save(fig, args.plot)


if __name__ == "__main__":
    main()
