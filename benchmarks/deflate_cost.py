"""What optional permessage-deflate (``PUSHREC_WS_DEFLATE=1``) costs and saves, on real frames.

1. Frames: starts the real server (embedded Redis, demo catalog, warmed up with the REES46
   replay), opens one WebSocket per visitor (``--users``) without compression, and posts
   ``--events`` views as ``benchmarks/event_latency.py`` does (70 % of an item of the visitor's
   list, 30 % of any catalog item). Every frame received (hello, snapshots, diffs) is kept, as
   the payload bytes the server wrote.
2. Bytes and CPU, offline on those frames: the payload compressed as the server does
   (:func:`push.ws_codec.encode_frame` with ``compress=True``: a fresh compressor per message,
   no context takeover), the CPU time to build the compressed frame against the plain one (per
   message, over passes through all frames: see :func:`per_message_us`), the time a client
   takes to inflate it, and, for comparison, zlib's default compressor settings (memLevel 8,
   32 KiB window). Also the cost of inflating a typical client message (a ``track`` of one
   event) in the frame reader.
3. Server CPU in a fan-out: one visitor with ``--tabs`` connections (offering deflate) views
   ``--fanout-events`` items, each update reaching every connection; the server's CPU time
   (/proc utime + stime) over the run divided by the frames sent, deflate off and on, alternated
   twice on fresh servers (other load on the machine shows as a spread).
4. Memory: (a) tracemalloc: an idle :class:`~push.ws_codec.FrameReader` with and without deflate
   after it inflated a message, what stays allocated after compressing every frame, and the peak
   while compressing one; (b) the server's resident memory (VmRSS) per idle connection, deflate
   off and on: two fresh servers seeded with 300 events; clients that offer deflate, each
   waits for its hello and snapshot and sends one message (compressed when negotiated); the
   slope of RSS between a quarter of ``--sockets`` and all of them.

    python -m benchmarks.deflate_cost                     # defaults: ~6 minutes
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import gc
import json
import os
import random
import statistics
import time
import tracemalloc
import uuid
import zlib
from collections import defaultdict
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from benchmarks._server import ADMIN_KEY, ROOT, SECRET, running_server, seed_events
from push.ws_codec import (
    DEFLATE_RESPONSE,
    FrameReader,
    Message,
    Opcode,
    encode_frame,
    encode_masked_frame,
)
from sessions.diff import DiffBody, apply_diff
from sessions.tokens import TokenVerifier

TAIL = b"\x00\x00\xff\xff"
MIN_BYTES = 256  # the default PUSHREC_WS_DEFLATE_MIN_BYTES


# -- 1. real frames ------------------------------------------------------------------------------


async def collect_frames(address: str, users: int, events: int, seed: int) -> list[bytes]:
    """Every frame payload ``users`` visitors receive while ``events`` views are posted."""
    rng = random.Random(seed)
    verifier = TokenVerifier(SECRET)
    catalog = [
        json.loads(line)["item_id"] for line in (ROOT / "examples/catalog/rees46.jsonl").open()
    ]
    frames: list[bytes] = []
    sockets: list[ClientConnection] = []
    lists: list[list[dict[str, Any]]] = []
    tables: list[dict[str, dict[str, Any]]] = []  # the item table of docs/PROTOCOL.md
    queues: list[asyncio.Queue[dict[str, Any]]] = []

    async def pump(ws: ClientConnection, queue: asyncio.Queue[dict[str, Any]]) -> None:
        async for data in ws:
            raw = data.encode() if isinstance(data, str) else data
            frames.append(raw)
            queue.put_nowait(json.loads(raw))

    tasks = []
    subs = [f"deflate-{i}-{uuid.uuid4().hex[:6]}" for i in range(users)]
    for sub in subs:
        ws = await connect(f"ws://{address}/v1/ws?token={verifier.mint(sub)}", compression=None)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        sockets.append(ws)
        queues.append(queue)
        tasks.append(asyncio.create_task(pump(ws, queue)))
        while (message := await queue.get())["type"] != "snapshot":
            pass
        lists.append(message["items"])
        tables.append({p["id"]: p for p in message["items"]})
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        for n in range(events):
            i = n % users
            pool = [p["id"] for p in lists[i]] if lists[i] and rng.random() < 0.7 else catalog
            event = {
                "event_id": uuid.uuid4().hex,
                "user_id": subs[i],
                "type": "view",
                "item_id": rng.choice(pool),
            }
            r = await http.post("/v1/events", json=event, headers={"X-API-Key": ADMIN_KEY})
            r.raise_for_status()
            try:
                message = await asyncio.wait_for(queues[i].get(), 2.0)
            except TimeoutError:
                continue  # the list did not change
            if message["type"] == "diff":
                tables[i].update(message["items"])
                payloads = {op: tables[i][op] for op in message["order"] if isinstance(op, str)}
                body = DiffBody(order=message["order"], items=payloads, patch=message["patch"])
                lists[i] = apply_diff(lists[i], body)
            elif message["type"] == "snapshot":
                lists[i] = message["items"]
            tables[i].update((p["id"], p) for p in lists[i])
    for ws in sockets:
        await ws.close()
    for task in tasks:
        task.cancel()
    return frames


# -- 2. bytes and CPU ----------------------------------------------------------------------------


def per_message_us(fn: Any, payloads: list[bytes], passes: int = 5) -> float:
    """CPU µs per payload of ``fn(payload)``: process time of a pass over all ``payloads``
    (allocation and page faults included), median of ``passes`` passes.

    Process time, not wall time, so that other processes on the machine count as little as
    possible; the mean over a pass, not the fastest call, so that the cost of getting memory
    from the system (a compressor with zlib's default settings allocates ~270 KiB) is counted.
    """
    times = []
    for _ in range(passes):
        start = time.process_time()
        for payload in payloads:
            fn(payload)
        times.append(time.process_time() - start)
    return statistics.median(times) / len(payloads) * 1e6


def zlib_defaults(payload: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)  # memLevel 8, 32 KiB window
    return (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def header_len(n: int) -> int:
    return 2 if n < 126 else 4 if n < 65536 else 10


def costs(frames: list[bytes]) -> None:
    kinds: dict[str, list[bytes]] = defaultdict(list)
    for raw in frames:
        kinds[json.loads(raw)["type"]].append(raw)
    kinds["updates (snapshot + diff)"] = kinds["snapshot"] + kinds["diff"]
    print(
        f"\n{len(frames)} frames received: "
        + ", ".join(f"{k} {len(v)}" for k, v in kinds.items() if " " not in k)
    )
    print(
        "\n| frames | n | bytes, median | deflated, median | saved | compress µs/msg "
        "(plain frame) | zlib defaults µs/msg | client inflate µs/msg |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind in ("hello", "snapshot", "diff", "updates (snapshot + diff)"):
        payloads = kinds.get(kind, [])
        if not payloads:
            continue
        sizes = [len(p) + header_len(len(p)) for p in payloads]
        deflated = [encode_frame(Opcode.TEXT, p, compress=True) for p in payloads]
        wire = [len(f) for f in deflated]
        bodies = [f[2 if f[1] < 126 else 4 :] for f in deflated]
        for payload, body in zip(payloads, bodies, strict=True):  # they inflate back
            assert zlib.decompressobj(-15).decompress(body + TAIL) == payload
        compress_us = per_message_us(
            lambda p: encode_frame(Opcode.TEXT, p, compress=True), payloads
        )
        plain_us = per_message_us(lambda p: encode_frame(Opcode.TEXT, p), payloads)
        defaults_us = per_message_us(zlib_defaults, payloads)
        inflate_us = per_message_us(lambda b: zlib.decompressobj(-15).decompress(b + TAIL), bodies)
        saved = 1 - sum(wire) / sum(sizes)
        print(
            f"| {kind} | {len(payloads)} | {statistics.median(sizes):.0f} | "
            f"{statistics.median(wire):.0f} | {saved:.0%} | {compress_us:.1f} ({plain_us:.2f}) | "
            f"{defaults_us:.1f} | {inflate_us:.1f} |"
        )
    updates = kinds["updates (snapshot + diff)"]
    below = sum(1 for p in updates if len(p) < MIN_BYTES)
    plain_total = sum(len(p) + header_len(len(p)) for p in updates)
    sent = sum(len(encode_frame(Opcode.TEXT, p, compress=len(p) >= MIN_BYTES)) for p in updates)
    print(
        f"\nupdate bytes on the wire with the {MIN_BYTES}-byte threshold: {sent} instead of "
        f"{plain_total} ({1 - sent / plain_total:.0%} saved)"
    )
    print(
        f"\nupdate frames under {MIN_BYTES} bytes (sent plain by default): "
        f"{below} of {len(updates)}"
    )
    # A client message the server inflates: a track of one event (~150 bytes of JSON).
    track = json.dumps(
        {
            "type": "track",
            "id": 3,
            "events": [{"event_id": uuid.uuid4().hex, "type": "view", "item_id": "1005115"}],
        }
    ).encode()
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    zipped = (compressor.compress(track) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    masked = encode_masked_frame(1, zipped, b"\x01\x02\x03\x04", rsv=4)
    plain = encode_masked_frame(1, track, b"\x01\x02\x03\x04")
    reader, plain_reader = FrameReader(16_384, deflate=True), FrameReader(16_384)
    assert reader.feed(masked) == [Message(Opcode.TEXT, track)]
    inflate = per_message_us(lambda f: reader.feed(f), [masked] * 2000)
    parse = per_message_us(lambda f: plain_reader.feed(f), [plain] * 2000)
    print(
        f"client → server: a {len(track)}-byte track message ({len(zipped)} compressed) read in "
        f"{inflate:.1f} µs compressed, {parse:.1f} µs plain"
    )


# -- 3. memory -----------------------------------------------------------------------------------


def traced_memory(frames: list[bytes]) -> None:
    message = b'{"type":"ping","id":"r1"}'
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    zipped = (compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    for deflate in (False, True):
        data = encode_masked_frame(
            1, zipped if deflate else message, b"abcd", rsv=4 if deflate else 0
        )
        readers = []
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(5000):
            reader = FrameReader(16_384, deflate)
            reader.feed(data)
            readers.append(reader)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        print(
            f"idle FrameReader, deflate {'on ' if deflate else 'off'}: "
            f"{(after - before) / len(readers) - 8:.0f} bytes (after reading one message)"
        )
    for name, fn in (
        ("encode_frame(compress=True)", lambda p: encode_frame(Opcode.TEXT, p, compress=True)),
        ("zlib defaults", zlib_defaults),
    ):
        # Preallocated, and filled with machine ints: storing a result allocates nothing kept.
        peaks = array.array("q", bytes(8 * len(frames)))
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i, payload in enumerate(frames):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            fn(payload)
            peaks[i] = tracemalloc.get_traced_memory()[1] - base
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        print(
            f"{name}: {len(frames)} frames compressed, {kept} bytes still allocated after; "
            f"transient peak per message median {statistics.median(peaks) / 1024:.0f} KiB, "
            f"max {max(peaks) / 1024:.0f} KiB"
        )


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def open_idle(address: str, n: int) -> tuple[list[ClientConnection], int]:
    """``n`` connections (offering deflate) that got hello + snapshot and sent one message."""
    verifier = TokenVerifier(SECRET)
    sockets: list[ClientConnection] = []
    negotiated = 0
    for i in range(n):
        ws = await connect(
            f"ws://{address}/v1/ws?token={verifier.mint(f'idle-{i}-{uuid.uuid4().hex[:6]}')}",
            compression="deflate",
            ping_interval=None,
        )
        if (
            ws.response is not None
            and ws.response.headers.get("Sec-WebSocket-Extensions") == DEFLATE_RESPONSE
        ):
            negotiated += 1
        while json.loads(await ws.recv())["type"] != "snapshot":
            pass
        await ws.send('{"type":"ping","id":1}')  # compressed by the client when negotiated
        while json.loads(await ws.recv())["type"] != "pong":
            pass
        sockets.append(ws)
    return sockets, negotiated


def idle_rss(sockets: int) -> None:
    first = sockets // 4
    print(
        f"\nserver RSS per idle connection: slope between {first} and {sockets} sockets "
        "offering deflate (what a node allocates once, and freed heap that the first "
        "connections reuse, cancel out)"
    )
    print("| PUSHREC_WS_DEFLATE | negotiated | RSS at start MiB | KiB per socket |")
    print("|---|---|---|---|")
    for deflate in ("0", "1"):
        with running_server(warmup=False, env={"PUSHREC_WS_DEFLATE": deflate}) as srv:
            seed_events(srv.address, 300)

            async def measure() -> tuple[int, float, int]:
                start = rss_kib(srv.pid)
                opened, negotiated = await open_idle(srv.address, first)
                await asyncio.sleep(2.0)
                at_first = rss_kib(srv.pid)
                more, negotiated_more = await open_idle(srv.address, sockets - first)
                await asyncio.sleep(2.0)
                at_last = rss_kib(srv.pid)
                for ws in opened + more:
                    await ws.close()
                return start, (at_last - at_first) / (sockets - first), negotiated + negotiated_more

            start, per_socket, negotiated = asyncio.run(measure())
            print(f"| {deflate} | {negotiated} | {start / 1024:.0f} | {per_socket:.1f} |")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def fanout(address: str, pid: int, tabs: int, events: int, seed: int) -> tuple[float, int]:
    """Server CPU seconds while one visitor with ``tabs`` open connections (offering deflate)
    views ``events`` items, and the frames those connections received meanwhile."""
    rng = random.Random(seed)
    user = f"fanout-{uuid.uuid4().hex[:8]}"
    url = f"ws://{address}/v1/ws?token={TokenVerifier(SECRET).mint(user)}"
    sockets = [await connect(url, compression="deflate", ping_interval=None) for _ in range(tabs)]
    counts = [0] * tabs
    items: list[str] = []
    moved = asyncio.Event()

    async def pump(k: int, ws: ClientConnection) -> None:
        async for data in ws:
            counts[k] += 1
            if k == 0:
                message = json.loads(data)
                if message["type"] == "snapshot":
                    items[:] = [p["id"] for p in message["items"]]
                moved.set()

    tasks = [asyncio.create_task(pump(k, ws)) for k, ws in enumerate(sockets)]
    catalog = [
        json.loads(line)["item_id"] for line in (ROOT / "examples/catalog/rees46.jsonl").open()
    ]

    # Polling the counters of all tabs: cheaper here than an event per tab and frame.
    async def settled() -> None:
        while min(counts) < counts[0]:  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    while min(counts) < 2:  # noqa: ASYNC110 - hello and snapshot everywhere
        await asyncio.sleep(0.01)
    start_cpu, start_frames = cpu_seconds(pid), sum(counts)
    async with httpx.AsyncClient(base_url=f"http://{address}") as http:
        for _ in range(events):
            moved.clear()
            pool = items if items and rng.random() < 0.7 else catalog
            event = {
                "event_id": uuid.uuid4().hex,
                "user_id": user,
                "type": "view",
                "item_id": rng.choice(pool),
            }
            r = await http.post("/v1/events", json=event, headers={"X-API-Key": ADMIN_KEY})
            r.raise_for_status()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(moved.wait(), 1.0)
            await settled()
    cpu = cpu_seconds(pid) - start_cpu
    frames = sum(counts) - start_frames
    for ws in sockets:
        await ws.close()
    for task in tasks:
        task.cancel()
    return cpu, frames


def fanout_cpu(tabs: int, events: int, seed: int) -> None:
    print(
        f"\nserver CPU, fan-out: one visitor with {tabs} connections, {events} views "
        "(every update frame compressed once per connection)"
    )
    print("| PUSHREC_WS_DEFLATE | frames sent | server CPU s | µs per frame |\n|---|---|---|---|")
    for deflate in ("0", "1", "0", "1"):  # alternated, twice: other load on the machine shows
        with running_server(warmup=False, env={"PUSHREC_WS_DEFLATE": deflate}) as srv:
            seed_events(srv.address, 300)
            cpu, frames = asyncio.run(fanout(srv.address, srv.pid, tabs, events, seed))
            print(f"| {deflate} | {frames} | {cpu:.2f} | {cpu / frames * 1e6:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--sockets", type=int, default=4000)
    parser.add_argument("--tabs", type=int, default=400)
    parser.add_argument("--fanout-events", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with running_server() as srv:
        frames = asyncio.run(collect_frames(srv.address, args.users, args.events, args.seed))
    costs(frames)
    print()
    traced_memory(frames)
    fanout_cpu(args.tabs, args.fanout_events, args.seed)
    idle_rss(args.sockets)


if __name__ == "__main__":
    main()
