"""Memory per idle WebSocket connection of a running node, application state included.

Starts the real server (embedded Redis, demo catalog), measures its resident memory (RSS,
/proc), opens N authenticated WebSocket connections of N distinct visitors from a separate
client process (so the client's memory is not counted), waits until every one has its
snapshot, lets the server settle, and measures again: (RSS after - RSS before) / N.

    python -m benchmarks.idle_memory --sockets 1000 5000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import time
from pathlib import Path

from websockets.asyncio.client import connect

from benchmarks._plot import figure, save
from benchmarks._server import ROOT, SECRET, running_server
from sessions.tokens import TokenVerifier


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def hold(
    address: str,
    count: int,
    ready: multiprocessing.synchronize.Event,
    done: multiprocessing.synchronize.Event,
) -> None:
    """In a child process: open ``count`` sockets, signal ``ready``, hold them until ``done``."""

    async def main() -> None:
        verifier = TokenVerifier(SECRET)
        sockets = []
        for n in range(count):
            ws = await connect(
                f"ws://{address}/v1/ws?token={verifier.mint(f'idle-{n}')}",
                compression=None,
                ping_interval=None,
                max_queue=4,
            )
            for _ in range(2):  # hello, snapshot
                json.loads(await ws.recv())
            sockets.append(ws)
        ready.set()
        while not done.is_set():
            for ws in sockets:  # answer the server's pings so nothing is closed as silent
                while True:
                    try:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 0.001))
                    except TimeoutError:
                        break
                    if frame.get("type") == "ping":
                        await ws.send('{"type":"pong"}')
            await asyncio.sleep(1)
        for ws in sockets:
            await ws.close()

    asyncio.run(main())


def measure(count: int) -> tuple[int, float]:
    with running_server(warmup=False) as srv:
        pid = srv.pid
        time.sleep(1)
        before = rss_kib(pid)
        ctx = multiprocessing.get_context("spawn")
        ready, done = ctx.Event(), ctx.Event()
        child = ctx.Process(target=hold, args=(srv.address, count, ready, done))
        child.start()
        if not ready.wait(600):
            raise RuntimeError("sockets not opened in time")
        time.sleep(3)  # let allocations settle
        after = rss_kib(pid)
        done.set()
        child.join(60)
    return count, (after - before) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--plot", type=Path, default=ROOT / "docs/benchmarks/idle_memory.png")
    args = parser.parse_args()
    results = [measure(n) for n in args.sockets]
    gc.collect()
    print("\n| idle sockets | KiB per socket (server RSS delta / sockets) |\n|---|---|")
    for n, kib in results:
        print(f"| {n:,} | {kib:.1f} |")
    fig, (ax,) = figure()
    ax.plot([n for n, _ in results], [k for _, k in results], marker="o")
    ax.axhline(16, color="r", ls="--", label="limit 16 KiB")
    ax.axhline(12, color="g", ls="--", label="aim 12 KiB")
    ax.set_xlabel("idle WebSocket connections")
    ax.set_ylabel("KiB per connection")
    ax.set_title("server memory per idle connection (uvicorn websockets-sansio)")
    ax.legend()
    save(fig, args.plot)


if __name__ == "__main__":
    main()
