"""Event → diff latency, Redis round trips per event, and diff vs snapshot bytes.

Starts a private Redis and the real server (demo catalog, warmed up by replaying the REES46
sample), opens one WebSocket per simulated visitor, then posts events one at a time (low load)
and times each from just before ``POST /v1/events`` to the arrival of the diff frame on that
visitor's socket. A second, shorter phase runs Redis MONITOR and counts the commands the server
sent to Redis per event (commands a Lua script runs inside Redis are not round trips and are
not counted).

Usage: python benchmarks/event_latency.py [--events 2000] [--users 50] [--plot PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis
from websockets.asyncio.client import ClientConnection, connect

from benchmarks._plot import figure, latency_cdf, save
from benchmarks._prom import delta, histogram, quantile
from benchmarks._server import ADMIN_KEY, ROOT, SECRET, running_server
from sessions.diff import DiffBody, apply_diff
from sessions.tokens import TokenVerifier

TIMEOUT_S = 2.0


class Visitor:
    """One visitor's socket and the feed it holds."""

    def __init__(self, user: str, ws: ClientConnection) -> None:
        self.user = user
        self.ws = ws
        self.items: list[dict[str, Any]] = []
        #: Every payload this connection received: the server omits those it sent before
        #: (the item table, docs/PROTOCOL.md).
        self.seen: dict[str, dict[str, Any]] = {}
        self.frames: asyncio.Queue[tuple[float, str]] = asyncio.Queue()

    async def pump(self) -> None:
        async for message in self.ws:
            now = time.perf_counter()
            text = message if isinstance(message, str) else message.decode()
            frame = json.loads(text)
            if frame["type"] == "snapshot":
                self.items = frame["items"]
                self.seen.update((str(p["id"]), p) for p in frame["items"])
            if frame["type"] in {"snapshot", "diff"}:
                self.frames.put_nowait((now, text))


class RawHTTP:
    """A minimal keep-alive HTTP/1.1 client, so the client's own cost stays out of the figures."""

    def __init__(self, address: str) -> None:
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{head}\r\n".encode()
            + body
        )
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def snapshot_bytes(items: list[dict[str, Any]], version: list[Any], total: str) -> int:
    """Bytes of a snapshot frame of ``items``, encoded as the server encodes it."""
    frame = {"type": "snapshot", "feed": "home", "version": version, "items": items, "sum": total}
    return len(json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode())


async def measure(address: str, events: int, users: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    verifier = TokenVerifier(SECRET)
    catalog = [
        json.loads(line)["item_id"] for line in (ROOT / "examples/catalog/rees46.jsonl").open()
    ]
    visitors: list[Visitor] = []
    pumps = []
    for _ in range(users):
        user = f"bench-{uuid.uuid4().hex[:10]}"
        ws = await connect(f"ws://{address}/v1/ws?token={verifier.mint(user)}")
        v = Visitor(user, ws)
        visitors.append(v)
        pumps.append(asyncio.create_task(v.pump()))
        await v.frames.get()  # the snapshot
    latencies: list[float] = []
    diff_sizes: list[int] = []
    snap_sizes: list[int] = []
    no_diff = 0
    as_snapshot = 0

    http = RawHTTP(address)
    auth = {"X-API-Key": ADMIN_KEY}
    if True:
        for i in range(events):
            v = visitors[i % users]
            # Visitors mostly click what is recommended to them, sometimes browse elsewhere.
            pool = [p["id"] for p in v.items] if v.items and rng.random() < 0.7 else catalog
            item = rng.choice(pool)
            event = {
                "event_id": uuid.uuid4().hex,
                "user_id": v.user,
                "type": "view",
                "item_id": item,
            }
            body = json.dumps(event).encode()
            t0 = time.perf_counter()
            status, answer = await http.post("/v1/events", body, auth)
            if status != 202:
                raise RuntimeError(f"POST failed: {status} {answer!r}")
            try:
                t1, text = await asyncio.wait_for(v.frames.get(), TIMEOUT_S)
            except TimeoutError:
                no_diff += 1  # the list did not change: no frame is sent
                continue
            latencies.append((t1 - t0) * 1000)
            frame = json.loads(text)
            if frame["type"] == "diff":
                known = {**v.seen, **frame["items"]}
                payloads = {op: known[op] for op in frame["order"] if isinstance(op, str)}
                v.items = apply_diff(
                    v.items, DiffBody(order=frame["order"], items=payloads, patch=frame["patch"])
                )
                v.seen.update((str(p["id"]), p) for p in v.items)
            else:  # the server sends a snapshot when it is no larger than the diff
                v.items = frame["items"]
                as_snapshot += 1
            diff_sizes.append(len(text.encode()))
            snap_sizes.append(snapshot_bytes(v.items, frame["version"], frame["sum"]))
    await http.close()
    for v in visitors:
        await v.ws.close()
    for p in pumps:
        p.cancel()
    return {
        "latencies": latencies,
        "diff": diff_sizes,
        "snap": snap_sizes,
        "no_diff": no_diff,
        "as_snapshot": as_snapshot,
    }


def count_round_trips(address: str, redis_url: str, events: int) -> tuple[float, dict[str, int]]:
    """Run MONITOR while ``events`` events flow; top-level commands per event and their names."""
    client = redis.Redis.from_url(redis_url)
    seen: dict[str, int] = {}
    stop = threading.Event()
    ready = threading.Event()

    def watch() -> None:
        with client.monitor() as mon:  # type: ignore[no-untyped-call]
            ready.set()
            for entry in mon.listen():
                if stop.is_set():
                    break
                if entry.get("client_type") == "lua" or "lua" in str(
                    entry.get("client_address", "")
                ):
                    continue
                name = str(entry["command"]).split(" ", 1)[0].upper()
                seen[name] = seen.get(name, 0) + 1

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait()
    time.sleep(0.2)
    user = f"rt-{uuid.uuid4().hex[:8]}"
    catalog = [
        json.loads(line)["item_id"] for line in (ROOT / "examples/catalog/rees46.jsonl").open()
    ][:500]
    with httpx.Client(base_url=f"http://{address}", headers={"X-API-Key": ADMIN_KEY}) as http:
        for i in range(events):
            event = {
                "event_id": uuid.uuid4().hex,
                "user_id": user,
                "type": "view",
                "item_id": catalog[i],
            }
            http.post("/v1/events", json=event).raise_for_status()
        time.sleep(1.0)
    stop.set()
    client.ping()  # wakes the monitor loop
    thread.join(5)
    seen.pop("PING", None)
    return sum(seen.values()) / events, seen


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--rt-events", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs/benchmarks/event_latency.png")
    args = parser.parse_args()
    push_seconds = "pushrec_event_to_push_seconds"
    with running_server() as srv:
        before = histogram(srv.address, push_seconds, transport="websocket")
        res = asyncio.run(measure(srv.address, args.events, args.users, args.seed))
        server_side = delta(histogram(srv.address, push_seconds, transport="websocket"), before)
        rt, commands = count_round_trips(srv.address, srv.redis_url, args.rt_events)
    lat = res["latencies"]
    ratio = [d / s for d, s in zip(res["diff"], res["snap"], strict=True)]
    print(
        f"\nevent → diff latency, {len(lat)} events with a list change "
        f"({res['no_diff']} left the list unchanged), {args.users} sockets, one event in flight"
    )
    print("| metric | value |\n|---|---|")
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        print(f"| latency {name} | {pct(lat, q):.2f} ms |")
    print(f"| latency max | {max(lat):.2f} ms |")
    # The node's own view of the same frames: accept → frame written (no client read, no POST
    # answer), bucketed, so only good to the bucket bounds (0.5, 1, 2, 3, 5, 7.5, 10, 15 ms …).
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        value = quantile(server_side, q) * 1000
        print(f"| server-side {push_seconds} {name} | {value:.2f} ms |")
    calls = ", ".join(f"{k} {v}" for k, v in sorted(commands.items()))
    print(f"| Redis round trips per event | {rt:.2f} ({calls} over {args.rt_events} events) |")
    print(f"| updates sent as snapshot (no larger than the diff) | {res['as_snapshot']} |")
    print(f"| update frame bytes, median | {statistics.median(res['diff']):.0f} |")
    print(f"| snapshot frame bytes, median | {statistics.median(res['snap']):.0f} |")
    print(f"| update / snapshot, median | {statistics.median(ratio):.1%} |")
    print(f"| update / snapshot, p90 | {pct(ratio, 0.9):.1%} |")
    fig, (a, b) = figure(2)
    latency_cdf(a, lat, "POST → diff frame (ms)", "event → diff latency (CDF)")
    b.hist([r * 100 for r in ratio], bins=30)
    b.axvline(10, color="r", ls="--", label="target 10 %")
    b.set_xlabel("update bytes / snapshot bytes (%)")
    b.set_title("wire size of one-event updates")
    b.legend()
    save(fig, args.plot)


if __name__ == "__main__":
    main()
