"""Test clients that speak the real protocol: WebSocket, SSE and REST.

The clients apply diffs with :func:`sessions.diff.apply_diff` and check every frame's checksum, so
a test that waits for a state also proves the chain of diffs that led there was sound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

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
    #: The ``rec`` of the list held (None: made outside any experiment).
    rec: str | None = None

    def apply(self, frame: dict[str, Any]) -> None:
        if frame["type"] not in {"snapshot", "diff"}:
            self.others.append(frame)
            self.changed.set()
            return
        self.frames.append(frame)
        self.rec = frame.get("rec")
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
async def ws_client(
    server: Server, user: str, *, feed: str | None = None
) -> AsyncIterator[FeedClient]:
    """A WebSocket connection of ``user`` (to ``feed`` alone when given, else the default
    feeds), its frames applied in the background."""
    only = f"feeds={feed}&" if feed else ""
    url = f"ws://{server.address}/v1/ws?{only}token={server.token(user)}"
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


# -- protocol-level peers (docs/PROTOCOL.md) --------------------------------------------------


#: One TLS context for every API client of these helpers: building one per client (httpx's
#: default) costs ~60 ms, which adds up in tests that poll. The server speaks plain HTTP anyway.
_TLS = ssl.create_default_context()


def api(server: Server) -> httpx.AsyncClient:
    """An HTTP client for ``server``'s API (cheap to create)."""
    return httpx.AsyncClient(base_url=server.http, verify=_TLS, timeout=5.0 * SCALE)


async def metric(
    server: Server, name: str, client: httpx.AsyncClient | None = None, **labels: str
) -> float:
    """The sum of every sample of ``name`` in /metrics whose labels include ``labels``."""
    if client is None:
        async with api(server) as own:
            text = (await own.get("/metrics")).text
    else:
        text = (await client.get("/metrics")).text
    want = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == name or (
            sample.startswith(name + "{") and all(w in sample[len(name) :] for w in want)
        ):
            total += float(value)
    return total


async def processed_events(server: Server, client: httpx.AsyncClient | None = None) -> float:
    """Events the server's processor has handled so far (every outcome), from /metrics.

    Counted after the new feed version is stored and published, so once it has grown by the
    number of events a test posted, their effect is in the stored feed and on its way to clients.
    """
    return await metric(server, "pushrec_events_processed_total", client)


async def settle(
    server: Server, before: float, n: int, client: httpx.AsyncClient | None = None
) -> None:
    """Wait until ``n`` events more than ``before`` were processed (:func:`processed_events`)."""
    async with asyncio.timeout(5.0 * server.scale):
        # Polling: the state lives in another process, there is no event to await here.
        while await processed_events(server, client) < before + n:  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def stored_feed(
    server: Server, user: str, client: httpx.AsyncClient | None = None
) -> dict[str, Any]:
    """``GET /v1/users/{user}/feeds/home`` with the API key (:meth:`Server.feed`, faster)."""
    if client is None:
        async with api(server) as own:
            return await stored_feed(server, user, own)
    r = await client.get(f"/v1/users/{user}/feeds/home", headers=server.admin)
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


async def view_settled(server: Server, user: str, *items: str) -> dict[str, Any]:
    """View ``items`` (one event each) and wait until processed; returns the stored feed."""
    async with api(server) as client:
        before = await processed_events(server, client)
        events = [
            {"event_id": new_id("e"), "user_id": user, "type": "view", "item_id": i} for i in items
        ]
        r = await client.post("/v1/events", json=events, headers=server.admin)
        assert r.status_code == 202, r.text
        await settle(server, before, len(items), client)
        return await stored_feed(server, user, client)


def have(feed: dict[str, Any]) -> str:
    """The ``?have=`` / ``Last-Event-ID`` value for a stored feed (``GET .../feeds/home``)."""
    epoch, n = feed["version"]
    return f"{feed['feed']}:{epoch}:{n}"


@dataclass
class Peer:
    """One push connection seen from the client: every message, in order, and the home feed.

    ``state`` applies every snapshot and diff (checksums, item table); ``log`` keeps every message
    (with its SSE ``id:`` in ``event_ids``, ``None`` when absent). :meth:`next` hands out messages
    in arrival order; :meth:`until` waits for any condition. A frame that does not apply fails
    the waiting test with its own assertion.
    """

    state: FeedClient
    log: list[dict[str, Any]] = field(default_factory=list)
    event_ids: list[str | None] = field(default_factory=list)
    ended: bool = False
    close_code: int | None = None
    close_reason: str = ""
    error: BaseException | None = None
    subprotocol: str | None = None
    binary: list[bool] = field(default_factory=list)  # WebSocket: frame was binary
    _cursor: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _send: Callable[[dict[str, Any]], Any] | None = None
    _send_raw: Callable[[str | bytes], Any] | None = None
    ws: ClientConnection | None = None

    def take(self, message: dict[str, Any], event_id: str | None = None) -> None:
        self.log.append(message)
        self.event_ids.append(event_id)
        try:
            self.state.apply(message)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self._changed.set()

    def finish(self, code: int | None, reason: str) -> None:
        self.ended, self.close_code, self.close_reason = True, code, reason
        self._changed.set()

    async def until(self, predicate: Callable[[Peer], bool], within_s: float = 5.0) -> None:
        """Wait until ``predicate`` holds (fails if the connection ends first)."""
        async with asyncio.timeout(within_s * SCALE):
            while True:
                if self.error is not None:
                    raise self.error
                if predicate(self):
                    return
                if self.ended:
                    raise AssertionError(
                        f"connection ended ({self.close_code} {self.close_reason!r}) while waiting"
                    )
                self._changed.clear()
                await self._changed.wait()

    async def closed(self, within_s: float = 5.0) -> tuple[int | None, str]:
        """Wait for the end of the connection; its close code and reason."""
        async with asyncio.timeout(within_s * SCALE):
            while not self.ended:
                if self.error is not None:
                    raise self.error
                self._changed.clear()
                await self._changed.wait()
        return self.close_code, self.close_reason

    async def next(
        self, predicate: Callable[[dict[str, Any]], bool] | None = None, within_s: float = 5.0
    ) -> dict[str, Any]:
        """The next message (after the last one returned) that matches ``predicate``."""
        found: list[dict[str, Any]] = []

        def match(p: Peer) -> bool:
            while p._cursor < len(p.log):
                message = p.log[p._cursor]
                p._cursor += 1
                if predicate is None or predicate(message):
                    found.append(message)
                    return True
            return False

        await self.until(match, within_s)
        return found[0]

    async def send(self, message: dict[str, Any]) -> None:
        assert self._send is not None, "not a WebSocket peer"
        await self._send(message)

    async def send_raw(self, data: str | bytes) -> None:
        assert self._send_raw is not None, "not a WebSocket peer"
        await self._send_raw(data)

    @property
    def hello(self) -> dict[str, Any]:
        return next(m for m in self.log if m["type"] == "hello")

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [m for m in self.log if m["type"] in types]


def of_type(*types: str) -> Callable[[dict[str, Any]], bool]:
    """A :meth:`Peer.next` predicate: a message of one of ``types``."""
    return lambda m: m["type"] in types


@contextlib.asynccontextmanager
async def ws_peer(
    server: Server,
    *,
    token: str | None = None,
    query: dict[str, str] | None = None,
    state: FeedClient | None = None,
    wait_hello: bool = True,
    gate: asyncio.Event | None = None,
    **connect_kw: Any,
) -> AsyncIterator[Peer]:
    """A WebSocket connection (``connect_kw`` go to ``websockets``' ``connect``).

    ``state`` continues a :class:`FeedClient` of an earlier connection (resume). Messages are
    decoded as msgpack when the server confirmed ``pushrec.v1.msgpack``, else as JSON. With
    ``gate``, a message is taken only while the gate is set (a client that stops reading).
    """
    params = dict(query or {})
    if token is not None:
        params["token"] = token
    url = f"ws://{server.address}/v1/ws"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    async with connect(url, **connect_kw) as ws:
        peer = Peer(state or FeedClient(), subprotocol=ws.subprotocol)
        msgpack_ = ws.subprotocol == "pushrec.v1.msgpack"

        async def send(message: dict[str, Any]) -> None:
            await ws.send(msgpack.packb(message) if msgpack_ else json.dumps(message))

        peer._send, peer._send_raw, peer.ws = send, ws.send, ws
        task = asyncio.create_task(_pump_peer(ws, peer, msgpack_, gate))
        try:
            if wait_hello:
                await peer.until(lambda p: bool(p.of_type("hello")))
            yield peer
        finally:
            task.cancel()
        if peer.error is not None:
            raise peer.error


async def _pump_peer(
    ws: ClientConnection, peer: Peer, msgpack_: bool, gate: asyncio.Event | None
) -> None:
    try:
        while True:
            if gate is not None:
                await gate.wait()
            data = await ws.recv()
            peer.binary.append(isinstance(data, bytes))
            if msgpack_ and isinstance(data, bytes):
                message = msgpack.unpackb(data, raw=False)
            else:
                message = json.loads(data)
            if message["type"] == "ping":
                await ws.send(msgpack.packb({"type": "pong"}) if msgpack_ else '{"type":"pong"}')
            peer.take(message)
    except ConnectionClosed as exc:
        rcvd = exc.rcvd  # the server's close frame; None when the connection just broke
        peer.finish(rcvd.code if rcvd else None, rcvd.reason if rcvd else "")
    except BaseException:
        peer.finish(None, "client error")
        raise


@contextlib.asynccontextmanager
async def sse_peer(
    server: Server,
    token: str,
    *,
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    state: FeedClient | None = None,
) -> AsyncIterator[Peer]:
    """An SSE stream of the token's user; ``close`` events end the peer with their code."""
    timeout = httpx.Timeout(5.0 * SCALE, read=None)
    async with (
        httpx.AsyncClient(base_url=server.http, timeout=timeout) as client,
        client.stream(
            "GET",
            "/v1/sse",
            params=query or {},
            headers={"Authorization": f"Bearer {token}", **(headers or {})},
        ) as resp,
    ):
        assert resp.status_code == 200, resp.status_code
        peer = Peer(state or FeedClient())
        task = asyncio.create_task(_pump_sse_peer(resp, peer))
        try:
            await peer.until(lambda p: bool(p.of_type("hello")))
            yield peer
        finally:
            task.cancel()
        if peer.error is not None:
            raise peer.error


async def _pump_sse_peer(resp: httpx.Response, peer: Peer) -> None:
    data: list[str] = []
    event_id: str | None = None
    code: int | None = None
    reason = ""
    try:
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                data.append(line[6:])
            elif line.startswith("id: "):
                event_id = line[4:]
            elif line == "" and data:
                message = json.loads("\n".join(data))
                peer.take(message, event_id)
                if message["type"] == "close":
                    code, reason = message["code"], message["reason"]
                data, event_id = [], None
    except httpx.HTTPError:
        pass
    peer.finish(code, reason)
