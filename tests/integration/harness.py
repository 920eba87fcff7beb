"""Test clients that speak the real protocol: WebSocket, SSE and REST.

The clients apply diffs with :func:`sessions.diff.apply_diff` and check every frame's checksum, so
a test that waits for a state also proves the chain of diffs that led there was sound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from sessions.diff import DiffBody, apply_diff, checksum
from sessions.tokens import TokenVerifier

SCALE = float(os.environ.get("PUSHREC_TEST_TIMEOUT_SCALE", "1"))


def new_id(prefix: str) -> str:
    """A unique id, so tests never share users or events."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass
class Server:
    """A running server under test."""

    address: str
    secret: str
    admin_key: str
    scale: float = SCALE

    @property
    def http(self) -> str:
        return f"http://{self.address}"

    @property
    def admin(self) -> dict[str, str]:
        return {"X-API-Key": self.admin_key}

    def token(self, user: str, ttl_s: int = 3600) -> str:
        return TokenVerifier(self.secret).mint(user, ttl_s=ttl_s)

    def bearer(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}

    def load_catalog(self) -> None:
        """A small catalog: 3 categories x 10 items, one out of stock."""
        items = [
            {
                "item_id": f"{cat}-{n}",
                "title": f"{cat.title()} {n}",
                "price": 10.0 + n,
                "category": cat,
                "in_stock": f"{cat}-{n}" != "shoes-9",
            }
            for cat in ("phones", "shoes", "books")
            for n in range(10)
        ]
        r = httpx.put(f"{self.http}/v1/items", json=items, headers=self.admin)
        r.raise_for_status()

    async def post(self, events: list[dict[str, Any]], **kw: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.http) as client:
            return await client.post("/v1/events", json=events, headers=self.admin, **kw)

    async def view(self, user: str, *items: str) -> None:
        """Post one view event per item, in order, and require 202."""
        events = [
            {"event_id": new_id("e"), "user_id": user, "type": "view", "item_id": i} for i in items
        ]
        r = await self.post(events)
        assert r.status_code == 202, r.text

    async def crowd(self, *items: str) -> None:
        """A fresh visitor browses ``items`` (≥ 2) in order, teaching co-visitation neighbours.

        Returns once the last view is processed: per-user order means that is when the item
        before it shows up among the visitor's recommendations (as a neighbour of the last).
        """
        user = new_id("crowd")
        await self.view(user, *items)
        async with asyncio.timeout(5.0 * self.scale):
            # Polling: the state lives in another process, there is no event to await here.
            while items[-2] not in [p["id"] for p in (await self.feed(user))["items"]]:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    async def feed(self, user: str) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.http) as client:
            r = await client.get(f"/v1/users/{user}/feeds/home", headers=self.admin)
            r.raise_for_status()
            body: dict[str, Any] = r.json()
            return body


def version_key(version: list[Any] | None) -> str:
    """A dict key for a wire version ``[epoch, n]``."""
    return f"{version[0]}:{version[1]}" if version else ""


@dataclass
class FeedClient:
    """Feed state as a client holds it, built only from received frames."""

    items: list[dict[str, Any]] = field(default_factory=list)
    version: list[Any] | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)  # snapshots and diffs
    others: list[dict[str, Any]] = field(default_factory=list)  # every other frame
    states: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # every version held
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: The item table of docs/PROTOCOL.md: latest payload of every item received.
    table: dict[str, dict[str, Any]] = field(default_factory=dict)

    def apply(self, frame: dict[str, Any]) -> None:
        if frame["type"] not in {"snapshot", "diff"}:
            self.others.append(frame)
            self.changed.set()
            return
        self.frames.append(frame)
        if frame["type"] == "snapshot":
            self.items = frame["items"]
            self.version = frame["version"]
            self.table.update((str(p["id"]), p) for p in self.items)
        elif frame["type"] == "diff":
            assert frame["base"] == self.version, f"diff base {frame['base']} != {self.version}"
            self.table.update(frame["items"])
            # Payloads the server omitted come from the item table (docs/PROTOCOL.md).
            payloads = {op: self.table[op] for op in frame["order"] if isinstance(op, str)}
            body = DiffBody(order=frame["order"], items=payloads, patch=frame["patch"])
            self.items = apply_diff(self.items, body)
            self.version = frame["version"]
            self.table.update((str(p["id"]), p) for p in self.items if p["id"] in frame["patch"])
        assert checksum([str(p["id"]) for p in self.items]) == frame["sum"]
        self.states[version_key(self.version)] = self.items
        self.changed.set()

    @property
    def ids(self) -> list[str]:
        return [str(p["id"]) for p in self.items]

    async def wait(self, predicate: Callable[[FeedClient], bool], within_s: float = 5.0) -> None:
        """Wait until ``predicate`` holds for this client's state."""
        async with asyncio.timeout(within_s * SCALE):
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def ws_client(server: Server, user: str) -> AsyncIterator[FeedClient]:
    """A WebSocket connection of ``user``, its frames applied in the background."""
    url = f"ws://{server.address}/v1/ws?token={server.token(user)}"
    async with connect(url) as ws:
        state = FeedClient()
        task = asyncio.create_task(_pump_ws(ws, state))
        try:
            await state.wait(lambda s: s.version is not None)
            yield state
        finally:
            task.cancel()


async def _pump_ws(ws: ClientConnection, state: FeedClient) -> None:
    async for message in ws:
        frame = json.loads(message)
        if frame["type"] == "ping":
            await ws.send(json.dumps({"type": "pong"}))
        state.apply(frame)


@contextlib.asynccontextmanager
async def sse_client(server: Server, user: str) -> AsyncIterator[FeedClient]:
    """An SSE stream of ``user``, its events applied in the background."""
    # No read timeout: an idle stream is normal; FeedClient.wait bounds every test's waiting.
    timeout = httpx.Timeout(5.0 * SCALE, read=None)
    async with (
        httpx.AsyncClient(base_url=server.http, timeout=timeout) as client,
        client.stream("GET", "/v1/sse", headers=server.bearer(user)) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        state = FeedClient()
        task = asyncio.create_task(_pump_sse(resp, state))
        try:
            await state.wait(lambda s: s.version is not None)
            yield state
        finally:
            task.cancel()


async def _pump_sse(resp: httpx.Response, state: FeedClient) -> None:
    data: list[str] = []
    event_id = None
    async for line in resp.aiter_lines():
        if line.startswith("data: "):
            data.append(line[6:])
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line == "" and data:
            frame = json.loads("\n".join(data))
            if frame["type"] in {"snapshot", "diff"}:
                v = frame["version"]  # the resume id lists every held version: here, one feed
                assert event_id == f"{frame['feed']}:{v[0]}:{v[1]}"
            state.apply(frame)
            data, event_id = [], None
