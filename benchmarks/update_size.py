"""Bytes on the wire per one-event update, against the full snapshot of the same version.

Starts the real server (embedded Redis, demo catalog, warmed up with the REES46 replay). Every
visitor holds three connections at once: WebSocket with ``pushrec.v1.json``, WebSocket with
``pushrec.v1.msgpack`` (both keep the item table of docs/PROTOCOL.md: the latest payload of the
last 512 distinct items received) and SSE (no item table). So the three transports see exactly
the same stream of feed versions. Events are posted one at a time; after each, the benchmark waits
until the server processed it, reads the stored feed (``GET /v1/users/{u}/feeds/home``) and waits
until every connection of that visitor holds the stored version.

Each client applies diffs itself (:func:`sessions.diff.apply_diff`, omitted payloads taken from its
item table), checks every frame's checksum and compares its list with the stored one, so only a
correct stream is measured. For every update frame it records the bytes on the wire (WebSocket:
frame header + payload; SSE: the ``id:``/``event:``/``data:`` lines; HTTP chunk framing excluded)
and the bytes the snapshot of the same version would take in the same codec and framing (encoded
with the server's own encoder from the client's list; checked equal to the real snapshot frames
received at connect). Diff bytes are split into envelope (type, feed, versions, sum, keys, framing),
``order``, ``items`` (payloads of items new to the list) and ``patch`` by re-encoding the frame
without each part.

Event streams (``--stream``):

* ``rees46``: the real sessions of the ``--users`` most active visitors of the REES46 sample
  (``examples/catalog/rees46-events.tsv``), replayed in order under fresh user ids;
* ``clicks``: as ``benchmarks/event_latency.py``: ``--events`` views round robin over ``--users``
  fresh visitors, 70 % of an item of the visitor's current list, 30 % of any catalog item.

    python -m benchmarks.update_size                       # both streams, 50 users each
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from benchmarks._plot import figure, save
from benchmarks._server import ADMIN_KEY, ROOT, SECRET, processed_total, running_server
from push.protocol import Codec, encode
from sessions.diff import DiffBody, apply_diff, checksum
from sessions.tokens import TokenVerifier

CLIENT_TABLE = 512  # distinct payloads a client keeps (docs/PROTOCOL.md)
TRANSPORTS = ("ws/json", "ws/msgpack", "sse")
PARTS = ("framing", "keys", "versions", "order", "items", "patch")


def ws_header(size: int) -> int:
    """Bytes of an unmasked server frame header for a payload of ``size`` bytes."""
    return 2 if size < 126 else 4 if size < 65536 else 10


def sse_event(kind: str, resume: str, data: int) -> int:
    """Bytes of one SSE event as push/sse.py writes it."""
    return len(f"id: {resume}\nevent: {kind}\ndata: ".encode()) + data + 2


@dataclass
class Update:
    """One update frame as received."""

    kind: str  # "diff" or "snapshot"
    wire: int  # bytes on the wire
    snapshot: int  # bytes of the snapshot of the same version, same codec and framing
    parts: dict[str, int]  # diff only: bytes per part (they add up to ``wire``)
    new_items: int  # ids new to the list (string ops of ``order``)
    sent_payloads: int  # payloads carried in ``items``
    runs: int  # [start, length] ops
    new_epoch: bool = False  # a snapshot that starts a new epoch (no diff could exist)


@dataclass
class Client:
    """One connection's view of the feed, built only from received frames."""

    transport: str
    items: list[dict[str, Any]] = field(default_factory=list)
    version: list[Any] | None = None
    table: collections.OrderedDict[str, dict[str, Any]] = field(
        default_factory=collections.OrderedDict
    )
    updates: list[Update] = field(default_factory=list)
    snapshots_checked: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def codec(self) -> Codec:
        return Codec.MSGPACK if self.transport == "ws/msgpack" else Codec.JSON

    def framed(self, kind: str, version: list[Any], data: int) -> int:
        if self.transport == "sse":
            return sse_event(kind, f"home:{version[0]}:{version[1]}", data)
        return ws_header(data) + data

    def snapshot_bytes(self, version: list[Any], total: str) -> int:
        message = {
            "type": "snapshot",
            "feed": "home",
            "version": version,
            "items": self.items,
            "sum": total,
        }
        return self.framed("snapshot", version, len(encode(message, self.codec)))

    def _keep(self, payloads: Iterator[dict[str, Any]]) -> None:
        if self.transport == "sse":
            return  # SSE has no item table: every payload travels with its diff
        for payload in payloads:
            key = str(payload["id"])
            self.table[key] = payload
            self.table.move_to_end(key)
        while len(self.table) > CLIENT_TABLE:
            self.table.popitem(last=False)

    def apply(self, frame: dict[str, Any], wire: int) -> None:
        kind = frame["type"]
        if kind not in ("snapshot", "diff"):
            return
        initial = self.version is None
        epoch = None if initial else self.version[0]  # type: ignore[index]
        if kind == "snapshot":
            self.items = frame["items"]
            self._keep(iter(self.items))
        else:
            if frame["base"] != self.version:
                raise AssertionError(
                    f"{self.transport}: diff base {frame['base']} != {self.version}"
                )
            self._keep(iter(frame["items"].values()))
            order = frame["order"]
            known = self.table if self.transport != "sse" else frame["items"]
            payloads = {op: known[op] for op in order if isinstance(op, str)}  # KeyError: broken
            body = DiffBody(order=order, items=payloads, patch=frame["patch"])
            self.items = apply_diff(self.items, body)
            self._keep(p for p in self.items if p["id"] in frame["patch"])
        if checksum([str(p["id"]) for p in self.items]) != frame["sum"]:
            raise AssertionError(f"{self.transport}: checksum mismatch at {frame['version']}")
        self.version = frame["version"]
        full = self.snapshot_bytes(frame["version"], frame["sum"])
        if kind == "snapshot":
            if full != wire:
                raise AssertionError(
                    f"{self.transport}: snapshot size {full} computed, {wire} sent"
                )
            self.snapshots_checked += 1
        if not initial:
            update = self._record(frame, wire, full)
            update.new_epoch = kind == "snapshot" and frame["version"][0] != epoch
            self.updates.append(update)
        self.changed.set()

    def _record(self, frame: dict[str, Any], wire: int, full: int) -> Update:
        if frame["type"] == "snapshot":
            return Update("snapshot", wire, full, {}, 0, 0, 0)
        size = len(encode(frame, self.codec))
        bare = {k: v for k, v in frame.items() if k not in ("base", "version")}
        parts = {
            "framing": wire - size,
            "versions": size - len(encode(bare, self.codec)),
            "order": size - len(encode({**frame, "order": []}, self.codec)),
            "items": size - len(encode({**frame, "items": {}}, self.codec)),
            "patch": size - len(encode({**frame, "patch": {}}, self.codec)),
        }
        parts["keys"] = wire - sum(parts.values())
        order = frame["order"]
        return Update(
            "diff",
            wire,
            full,
            parts,
            sum(isinstance(op, str) for op in order),
            len(frame["items"]),
            sum(not isinstance(op, str) for op in order),
        )

    async def wait_for(self, version: list[Any], within_s: float = 5.0) -> None:
        async with asyncio.timeout(within_s):
            while self.version != version:
                self.changed.clear()
                await self.changed.wait()


async def pump_ws(ws: ClientConnection, client: Client) -> None:
    async for message in ws:
        if isinstance(message, bytes):
            frame = msgpack.unpackb(message, raw=False)
            size = len(message)
        else:
            size = len(message.encode())
            frame = json.loads(message)
        if frame["type"] == "ping":
            pong = encode({"type": "pong"}, client.codec)
            await ws.send(pong if client.codec is Codec.MSGPACK else pong.decode())
        client.apply(frame, ws_header(size) + size)


async def pump_sse(http: httpx.AsyncClient, token: str, client: Client) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.stream("GET", "/v1/sse", headers=headers, timeout=None) as resp:
        resp.raise_for_status()
        event = resume = data = None
        async for line in resp.aiter_lines():
            if line.startswith("id: "):
                resume = line[4:]
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and data is not None:
                raw = data.encode()
                frame = json.loads(raw)
                wire = sse_event(event or "", resume, len(raw)) if resume else len(raw)
                client.apply(frame, wire)
                event = resume = data = None


@dataclass
class Visitor:
    user: str
    token: str
    clients: dict[str, Client]


async def open_visitor(
    address: str, http: httpx.AsyncClient, user: str, tasks: list[Any]
) -> Visitor:
    token = TokenVerifier(SECRET).mint(user)
    clients = {t: Client(t) for t in TRANSPORTS}
    for transport, sub in (("ws/json", "pushrec.v1.json"), ("ws/msgpack", "pushrec.v1.msgpack")):
        ws = await connect(
            f"ws://{address}/v1/ws?token={token}",
            subprotocols=[Subprotocol(sub)],
            compression=None,
        )
        if ws.subprotocol != sub:
            raise RuntimeError(f"server chose {ws.subprotocol!r}, not {sub}")
        tasks.append((ws, asyncio.create_task(pump_ws(ws, clients[transport]))))
    tasks.append((None, asyncio.create_task(pump_sse(http, token, clients["sse"]))))
    for c in clients.values():
        async with asyncio.timeout(10):
            while c.version is None:
                c.changed.clear()
                await c.changed.wait()
    return Visitor(user, token, clients)


def rees46_events(users: int, tag: str) -> list[tuple[str, str, str]]:
    """(user, type, item) of the ``users`` most active REES46 visitors, in time order."""
    rows = [
        line.rstrip("\n").split("\t")
        for line in (ROOT / "examples/catalog/rees46-events.tsv").open()
    ][1:]
    counts = collections.Counter(r[1] for r in rows)
    top = {u for u, _ in counts.most_common(users)}
    return [(f"{tag}-{u}", kind, item) for _ts, u, kind, item in rows if u in top]


async def wait_processed(address: str, target: float) -> None:
    async with asyncio.timeout(10):
        while processed_total(address) < target:  # noqa: ASYNC110 - another process's counter
            await asyncio.sleep(0.002)


async def run_stream(
    address: str, stream: str, users: int, events: int, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    tag = f"{stream}-{uuid.uuid4().hex[:6]}"
    lines = (ROOT / "examples/catalog/rees46.jsonl").open()
    catalog = [json.loads(line)["item_id"] for line in lines]
    if stream == "rees46":
        plan: list[tuple[str, str, str] | None] = list(rees46_events(users, tag))
        names = list(dict.fromkeys(step[0] for step in plan if step is not None))
    else:
        names = [f"{tag}-{n}" for n in range(users)]
        plan = [None] * events
    tasks: list[Any] = []
    admin = {"X-API-Key": ADMIN_KEY}
    async with httpx.AsyncClient(base_url=f"http://{address}", timeout=10) as http:
        visitors = {u: await open_visitor(address, http, u, tasks) for u in names}
        base = processed_total(address)
        unchanged = 0
        started = time.monotonic()
        for n, step in enumerate(plan):
            if step is None:  # clicks: mostly an item of the visitor's list
                v = visitors[names[n % len(names)]]
                shown = v.clients["ws/json"].items
                pool = [p["id"] for p in shown] if shown and rng.random() < 0.7 else catalog
                user, kind, item = v.user, "view", rng.choice(pool)
            else:
                user, kind, item = step
                v = visitors[user]
            held = v.clients["ws/json"].version
            event = {"event_id": uuid.uuid4().hex, "user_id": user, "type": kind, "item_id": item}
            resp = await http.post("/v1/events", json=event, headers=admin)
            if resp.status_code != 202:
                raise RuntimeError(f"POST /v1/events: {resp.status_code} {resp.text[:200]}")
            await wait_processed(address, base + n + 1)
            stored = (await http.get(f"/v1/users/{user}/feeds/home", headers=admin)).json()
            if stored["version"] == held:
                unchanged += 1
                continue
            for c in v.clients.values():
                await c.wait_for(stored["version"])
                if c.items != stored["items"]:
                    raise AssertionError(f"{c.transport} of {user} differs from the stored feed")
        seconds = time.monotonic() - started
        for ws, task in tasks:
            if ws is not None:
                await ws.close()
            task.cancel()
    per = {t: [u for v in visitors.values() for u in v.clients[t].updates] for t in TRANSPORTS}
    checked = sum(c.snapshots_checked for v in visitors.values() for c in v.clients.values())
    return {
        "stream": stream,
        "users": len(names),
        "events": len(plan),
        "unchanged": unchanged,
        "seconds": seconds,
        "updates": per,
        "snapshots_checked": checked,
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(res: dict[str, Any]) -> None:
    print(
        f"\n### stream {res['stream']}: {res['events']} events of {res['users']} visitors, "
        f"{res['events'] - res['unchanged']} changed the list ({res['unchanged']} did not), "
        f"{res['seconds']:.0f} s; every frame's checksum and every final list verified, "
        f"{res['snapshots_checked']} snapshot sizes checked against the server's frames\n"
    )
    print(
        "| transport / codec | updates | median update bytes | median snapshot bytes "
        "| median ratio | p90 ratio | sent as snapshot |\n|---|---|---|---|---|---|---|"
    )
    for t in TRANSPORTS:
        ups = res["updates"][t]
        ratio = [u.wire / u.snapshot for u in ups]
        snaps = sum(u.kind == "snapshot" for u in ups)
        epochs = sum(u.new_epoch for u in ups)
        print(
            f"| {t} | {len(ups)} | {statistics.median(u.wire for u in ups):.0f} "
            f"| {statistics.median(u.snapshot for u in ups):.0f} "
            f"| **{statistics.median(ratio):.1%}** | {pct(ratio, 0.9):.1%} "
            f"| {snaps / len(ups):.1%} ({snaps}, {epochs} of them a new epoch) |"
        )
    print(
        "\nwhere the bytes of the diffs go (mean bytes per diff frame). framing: WebSocket "
        "header or SSE id/event/data lines; keys: the type, feed and sum fields, the field "
        "names and the empty containers; versions: base and version; items: payloads of new "
        "ids not in the item table:\n"
    )
    print(
        "| transport / codec | diffs | framing | keys | versions | order | items | patch | total "
        "| new ids per diff | payloads sent per diff | payloads omitted (item table) "
        "| diffs with no payload: median ratio |\n" + "|---" * 13 + "|"
    )
    for t in TRANSPORTS:
        diffs = [u for u in res["updates"][t] if u.kind == "diff"]
        if not diffs:
            continue
        mean = {p: statistics.fmean(u.parts[p] for u in diffs) for p in PARTS}
        new = sum(u.new_items for u in diffs)
        sent = sum(u.sent_payloads for u in diffs)
        bare = [u.wire / u.snapshot for u in diffs if u.sent_payloads == 0]
        bare_txt = f"{statistics.median(bare):.1%} ({len(bare)} diffs)" if bare else "—"
        print(
            f"| {t} | {len(diffs)} | {mean['framing']:.0f} | {mean['keys']:.0f} "
            f"| {mean['versions']:.0f} | {mean['order']:.0f} | {mean['items']:.0f} "
            f"| {mean['patch']:.0f} "
            f"| {statistics.fmean(u.wire for u in diffs):.0f} | {new / len(diffs):.2f} "
            f"| {sent / len(diffs):.2f} | {(new - sent) / new if new else 0:.0%} | {bare_txt} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--stream", nargs="+", choices=["rees46", "clicks"], default=["rees46", "clicks"]
    )
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--events", type=int, default=1500, help="clicks stream only")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs/benchmarks/update_size.png")
    args = parser.parse_args()
    results = []
    with running_server() as srv:
        for stream in args.stream:
            results.append(
                asyncio.run(run_stream(srv.address, stream, args.users, args.events, args.seed))
            )
    for res in results:
        report(res)
    fig, axes = figure(len(results) + 1)
    for ax, res in zip(axes, results, strict=False):
        for t in TRANSPORTS:
            ratio = sorted(100 * u.wire / u.snapshot for u in res["updates"][t])
            ax.plot(ratio, [i / len(ratio) for i in range(len(ratio))], label=t)
        ax.axvline(10, color="r", ls="--", label="target 10 %")
        ax.set_xlim(0, 105)
        ax.set_xlabel("update bytes / snapshot bytes (%)")
        ax.set_ylabel("fraction of updates")
        ax.set_title(f"update size, {res['stream']} stream (CDF)")
        ax.legend(fontsize=8)
    ax = axes[-1]
    labels, bottoms = [], []
    for res in results:
        for t in TRANSPORTS:
            diffs = [u for u in res["updates"][t] if u.kind == "diff"]
            labels.append(f"{res['stream']}\n{t}")
            bottoms.append(
                {p: statistics.fmean(u.parts[p] for u in diffs) if diffs else 0 for p in PARTS}
            )
    x = range(len(labels))
    acc = [0.0] * len(labels)
    for p in PARTS:
        heights = [b[p] for b in bottoms]
        ax.bar(x, heights, bottom=acc, label=p)
        acc = [a + h for a, h in zip(acc, heights, strict=True)]
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_ylabel("mean bytes per diff frame")
    ax.set_title("where a diff's bytes go")
    ax.legend(fontsize=8)
    save(fig, args.plot)


if __name__ == "__main__":
    main()
