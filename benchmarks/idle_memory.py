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

The clients are a minimal WebSocket client written on raw asyncio protocols
(:mod:`benchmarks._ws_client`: a handshake, an unmasked-frame parser, masked ``pong`` frames):
about 1 KiB per socket on the client side, so one process holds thousands. Each client offers
``permessage-deflate``; ``--deflate on`` starts the server with ``PUSHREC_WS_DEFLATE=1`` (off by
default), ``--deflate both`` measures each N both ways. The sockets whose 101 answer accepted
the offer, and the compressed messages received (inflated by the client), are counted.

Kernel socket buffers are not process memory and are not in RSS. Redis memory is reported beside
it (the stored feed of each new visitor) but is not counted per socket.

    python -m benchmarks.idle_memory                    # 1,000 / 5,000 / 19,000 sockets
    python -m benchmarks.idle_memory --deflate both     # the same, compression off and on
    python -m benchmarks.idle_memory --sockets 1000 5000 --clients 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis

from benchmarks._plot import figure, save
from benchmarks._server import ROOT, running_server, seed_events, websocket_connections
from benchmarks._ws_client import FrameClient, new_stats, open_many, raise_nofile, sources

SEED_EVENTS = 300
IN_FLIGHT = 64  # handshakes under way at once, per client process


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class IdleClient(FrameClient):
    """One idle WebSocket client: ready once its snapshot came; counts the snapshot's bytes."""

    __slots__ = ()

    def message(self, payload: bytes) -> None:
        if payload.startswith(b'{"type":"snapshot"'):
            self.stats["snapshot_bytes"] += len(payload)
            self.resolve()


def hold(address: str, users: range, addresses: list[str], pipe: Connection, done: Any) -> None:
    """In a client process: open one socket per user, report, hold them until ``done``."""
    raise_nofile()
    stats = new_stats() | {"snapshot_bytes": 0}

    async def main() -> None:
        _transports, report = await open_many(
            address,
            [f"idle-{n}" for n in users],
            addresses,
            lambda _i, request, ready: IdleClient(request, ready, stats),
            in_flight=IN_FLIGHT,
            timeout_s=60,  # hello, then snapshot
        )
        pipe.send(report | stats)
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
def pushrec_server(deflate: bool = False) -> Iterator[tuple[str, int, str | None]]:
    """The real server, seeded (permessage-deflate accepted when ``deflate``); yields its
    address, pid and Redis URL."""
    env = {"PUSHREC_WS_DEFLATE": "1" if deflate else "0"}
    with running_server(warmup=False, env=env) as srv:
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
        + (["--baseline-deflate"] if deflate else []),
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
    count: int, clients: int, addresses: list[str], settle_s: float, server: Any
) -> dict[str, Any]:
    """One fresh server, ``count`` idle sockets; RSS and Redis readings."""
    with server as (address, pid, redis_url):
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
            p = ctx.Process(target=hold, args=(address, users, addresses, child, done))
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
        gauge_open = websocket_connections(address) if redis_url else count
        # One full heartbeat interval (25 s default): every socket is pinged and answers.
        time.sleep(26)
        steady = rss_kib(pid)
        gauge = (
            websocket_connections(address) if redis_url else count - sum(r["lost"] for r in reports)
        )
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
    parser.add_argument(
        "--deflate",
        choices=("off", "on", "both"),
        default="off",
        help="pushrec's permessage-deflate (PUSHREC_WS_DEFLATE): off (default), on, or both",
    )
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
    parser.add_argument("--baseline-deflate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline(args.serve_baseline, args.baseline_deflate)
        return
    limit = raise_nofile()  # inherited by the server subprocess
    if max([*args.sockets, args.baseline]) + 64 > limit:
        raise SystemExit(f"descriptor limit {limit} is too low for {max(args.sockets)} sockets")
    addresses = sources(args.sources)
    if args.baseline:
        print_baseline(args.baseline, args.clients, addresses, args.settle)
    if not args.sockets:
        return
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.deflate]
    series: dict[bool, list[dict[str, Any]]] = {}
    for deflate in modes:
        for n in sorted(args.sockets):
            r = measure(n, args.clients, addresses, args.settle, pushrec_server(deflate))
            series.setdefault(deflate, []).append(r)
            print(
                f"deflate {'on' if deflate else 'off'}, {n} sockets: opened in "
                f"{r['open_s']:.1f} s, server gauge {r['gauge_open']} → {r['gauge']}, pings "
                f"answered {r['pings']}, lost {r['lost']}, deflate accepted {r['deflate']}, "
                f"compressed messages {r['compressed']}",
                flush=True,
            )
    print(
        f"\nidle WebSocket connections, {args.clients} client processes, source addresses "
        f"{addresses[0]}…{addresses[-1]}, descriptor limit {limit}; permessage-deflate offered "
        "by every client"
    )
    print(
        "| permessage-deflate | idle sockets | accepted by server | server RSS before "
        "| after open | after a ping cycle | KiB/socket (after open) "
        "| KiB/socket (after ping cycle) | snapshot bytes/socket (inflated) "
        "| Redis bytes/user |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    slopes: dict[bool, float] = {}
    for deflate, results in series.items():
        for r in results:
            n = r["n"]
            print(
                f"| {'on' if deflate else 'off'} | {n:,} | {r['deflate']:,} "
                f"| {r['before'] / 1024:.1f} MiB | {r['after_open'] / 1024:.1f} MiB "
                f"| {r['steady'] / 1024:.1f} MiB | {(r['after_open'] - r['before']) / n:.1f} "
                f"| **{(r['steady'] - r['before']) / n:.1f}** | {r['snapshot_bytes']:.0f} "
                f"| {r['redis_per_user']:.0f} |"
            )
    for deflate, results in series.items():
        if len(results) >= 2:
            a, b = results[-2], results[-1]
            slopes[deflate] = (b["steady"] - a["steady"]) / (b["n"] - a["n"])
            print(
                f"\ndeflate {'on' if deflate else 'off'}: slope {a['n']:,} → {b['n']:,} sockets "
                f"((RSS({b['n']:,}) - RSS({a['n']:,})) / {b['n'] - a['n']:,}, after the ping "
                f"cycle): **{slopes[deflate]:.2f} KiB per socket**"
            )
    plot(series, slopes, args.plot)


def print_baseline(count: int, clients: int, addresses: list[str], settle_s: float) -> None:
    """The transport baseline (uvicorn websockets-sansio + a bare app), deflate off and on."""
    base = [
        (deflate, measure(count, clients, addresses, settle_s, baseline_server(deflate)))
        for deflate in (False, True)
    ]
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


def plot(series: dict[bool, list[dict[str, Any]]], slopes: dict[bool, float], path: Path) -> None:
    """RSS growth and KiB per idle connection against N, one line per deflate setting."""
    fig, (left, right) = figure(2)
    for deflate, results in series.items():
        mode, colour = ("deflate on", "C1") if deflate else ("deflate off", "C0")
        ns = [r["n"] for r in results]
        growth = [(r["steady"] - r["before"]) / 1024 for r in results]
        left.plot(ns, growth, marker="o", color=colour, label=mode)
        for r, mib in zip(results, growth, strict=True):
            left.annotate(f"RSS {r['steady'] / 1024:.0f} MiB", (r["n"], mib), fontsize=7)
        right.plot(
            ns,
            [(r["after_open"] - r["before"]) / r["n"] for r in results],
            marker=".",
            ls=":",
            color=colour,
            label=f"{mode}, after open",
        )
        slope = f" (slope {slopes[deflate]:.1f})" if deflate in slopes else ""
        right.plot(
            ns,
            [(r["steady"] - r["before"]) / r["n"] for r in results],
            marker="o",
            color=colour,
            label=f"{mode}, after a ping cycle{slope}",
        )
    left.set_xlabel("idle WebSocket connections")
    left.set_ylabel("server RSS growth (MiB)")
    left.set_title("server RSS growth after a ping cycle")
    left.legend(fontsize=8)
    right.axhline(16, color="r", ls="--", label="limit 16 KiB")
    right.axhline(12, color="g", ls="--", label="aim 12 KiB")
    right.set_ylim(bottom=0)
    right.set_xlabel("idle WebSocket connections")
    right.set_ylabel("KiB per connection")
    right.set_title("server memory per idle connection")
    right.legend(fontsize=7)
    save(fig, path)


if __name__ == "__main__":
    main()
