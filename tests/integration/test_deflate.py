"""permessage-deflate (RFC 7692) on the real server: off by default, and when enabled
(``PUSHREC_WS_DEFLATE=1``) always without context takeover, with frames intact both ways.

The client is the ``websockets`` library (``compression="deflate"``, its default offer). A
recording subclass of its extension notes the RSV1 bit of every data frame, so the tests see
which frames really travelled compressed; every snapshot and diff is applied by
:class:`FeedClient`, which checks its checksum.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import CTRL_OPCODES, Frame
from websockets.typing import ExtensionParameter, Subprotocol

from push.ws_codec import DEFLATE_RESPONSE
from tests.integration.conftest import start_server, stop_server
from tests.integration.harness import SCALE, FeedClient, Server, new_id

MSGPACK = Subprotocol("pushrec.v1.msgpack")
MIN_BYTES = 256  # the default PUSHREC_WS_DEFLATE_MIN_BYTES


@pytest.fixture(scope="module")
def deflating() -> Iterator[Server]:
    """A server with permessage-deflate enabled (default threshold of 256 bytes)."""
    proc, srv = start_server({"PUSHREC_WS_DEFLATE": "1"}, isolated=True)
    try:
        srv.load_catalog()
        yield srv
    finally:
        stop_server(proc)


class Recording(PerMessageDeflate):
    """The websockets client extension, noting (RSV1, wire bytes) of each data frame."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[tuple[bool, int]] = []
        self.sent: list[tuple[bool, int]] = []

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        if frame.opcode not in CTRL_OPCODES:
            self.received.append((frame.rsv1, len(frame.data)))
        return super().decode(frame, max_size=max_size)

    def encode(self, frame: Frame) -> Frame:
        out = super().encode(frame)
        if frame.opcode not in CTRL_OPCODES:
            self.sent.append((out.rsv1, len(out.data)))
        return out


class RecordingFactory(ClientPerMessageDeflateFactory):
    """websockets' default offer (``permessage-deflate; client_max_window_bits``), recording."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(compress_settings={"memLevel": 5}, **kwargs)
        self.made: list[Recording] = []

    def process_response_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> PerMessageDeflate:
        ext = super().process_response_params(params, accepted_extensions)
        recording = Recording(
            ext.remote_no_context_takeover,
            ext.local_no_context_takeover,
            ext.remote_max_window_bits,
            ext.local_max_window_bits,
            ext.compress_settings,
        )
        self.made.append(recording)
        return recording


class Tab(FeedClient):
    """A FeedClient that also keeps every message in order of arrival."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[dict[str, Any]] = []

    def apply(self, frame: dict[str, Any]) -> None:
        self.log.append(frame)
        super().apply(frame)


@contextlib.asynccontextmanager
async def feed_socket(
    server: Server, user: str, **connect_kw: Any
) -> AsyncIterator[tuple[ClientConnection, Tab]]:
    """A connection of ``user`` whose frames a FeedClient applies; yields once it has a snapshot."""
    url = f"ws://{server.address}/v1/ws?token={server.token(user)}"
    async with connect(url, **connect_kw) as ws:
        state = Tab()
        task = asyncio.create_task(_pump(ws, state))
        try:
            await state.wait(lambda s: s.version is not None)
            yield ws, state
        finally:
            task.cancel()


async def _pump(ws: ClientConnection, state: Tab) -> None:
    packed = ws.subprotocol == MSGPACK
    async for data in ws:
        message = msgpack.unpackb(data) if packed else json.loads(data)
        if message["type"] == "ping":
            await ws.send(msgpack.packb({"type": "pong"}) if packed else '{"type":"pong"}')
        state.apply(message)


def check_wire(tab: Tab, ext: Recording, packed: bool = False) -> int:
    """Every message came compressed iff its encoding has at least MIN_BYTES, and then smaller
    than that encoding; returns how many came compressed."""
    compressed = 0
    assert len(ext.received) >= len(tab.log)
    for message, (rsv1, wire) in zip(tab.log, ext.received, strict=False):
        size = len(
            msgpack.packb(message)
            if packed
            else json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
        )
        assert rsv1 == (size >= MIN_BYTES), (message["type"], size)
        if rsv1:
            assert wire < size, (message["type"], size, wire)
            compressed += 1
    return compressed


def test_deflate_is_negotiated_and_every_frame_arrives_intact(deflating: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        await deflating.crowd("phones-1", "phones-2", "phones-3")
        factory = RecordingFactory()
        async with feed_socket(deflating, user, compression=None, extensions=[factory]) as (
            ws,
            tab,
        ):
            assert ws.response is not None
            assert ws.response.headers["Sec-WebSocket-Extensions"] == DEFLATE_RESPONSE
            (ext,) = factory.made
            assert ext.remote_no_context_takeover and ext.local_no_context_takeover
            await deflating.view(user, "phones-1")
            await tab.wait(lambda s: len(s.frames) > 1 and s.ids[:1] == ["phones-2"])
            # A client message, compressed by the client, is inflated by the server.
            await ws.send(json.dumps({"type": "resync", "feed": "home", "id": 7}))
            await tab.wait(lambda s: any(m["type"] == "ack" for m in s.others))
            await tab.wait(lambda s: len(s.frames) > 2)

        hello = tab.log[0]
        assert hello["type"] == "hello" and hello["user"] == user
        assert [f["type"] for f in tab.frames] == ["snapshot", "diff", "snapshot"]
        assert tab.frames[2]["version"] == tab.frames[1]["version"]  # the resync's answer
        # What crossed the wire: the small hello and ack as they are, every message from 256
        # bytes compressed (and smaller than its JSON).
        assert check_wire(tab, ext) >= 1  # at least the resync's snapshot
        assert ext.sent and all(rsv1 for rsv1, _ in ext.sent)  # the client compressed its own

    asyncio.run(scenario())


def test_msgpack_frames_are_compressed_too(deflating: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        await deflating.crowd("books-1", "books-2", "books-3")
        factory = RecordingFactory()
        kw: dict[str, Any] = {"compression": None, "extensions": [factory]}
        async with feed_socket(deflating, user, subprotocols=[MSGPACK], **kw) as (ws, tab):
            assert ws.subprotocol == MSGPACK
            await deflating.view(user, "books-1")
            await tab.wait(lambda s: len(s.frames) > 1 and s.ids[:1] == ["books-2"])
            await ws.send(msgpack.packb({"type": "resync", "feed": "home", "id": 1}))
            await tab.wait(lambda s: len(s.frames) > 2)
        (ext,) = factory.made
        assert len(tab.frames[2]["items"]) > 3
        assert check_wire(tab, ext, packed=True) >= 1  # at least the resync's snapshot

    asyncio.run(scenario())


def test_a_message_inflating_past_the_limit_is_closed_4509(deflating: Server) -> None:
    async def scenario() -> None:
        async with feed_socket(deflating, new_id("u"), compression="deflate") as (ws, _):
            # 64 KiB of JSON, ~100 bytes on the wire: far above PUSHREC_MAX_MESSAGE_BYTES inflated.
            await ws.send(json.dumps({"type": "ping", "pad": "a" * 65_536}))
            async with asyncio.timeout(5 * SCALE):
                await ws.wait_closed()
            received = ws.protocol.close_rcvd
        assert received is not None
        assert received.code == 4509

    asyncio.run(scenario())


def test_an_offer_the_server_cannot_honour_is_declined(deflating: Server) -> None:
    async def scenario() -> None:
        factory = RecordingFactory(server_max_window_bits=10)
        kw: dict[str, Any] = {"compression": None, "extensions": [factory]}
        async with feed_socket(deflating, new_id("u"), **kw) as (ws, tab):
            assert ws.response is not None
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            assert factory.made == []
        assert tab.frames[0]["type"] == "snapshot"

    asyncio.run(scenario())


def test_without_the_setting_deflate_is_not_confirmed(server: Server) -> None:
    async def scenario() -> None:
        factory = RecordingFactory()
        kw: dict[str, Any] = {"compression": None, "extensions": [factory]}
        async with feed_socket(server, new_id("u"), **kw) as (ws, tab):
            assert ws.response is not None
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            assert ws.protocol.extensions == []
            await ws.send(json.dumps({"type": "ping", "id": 1}))
            await tab.wait(lambda s: any(m["type"] == "pong" for m in s.others))
        assert factory.made == []
        assert tab.frames[0]["type"] == "snapshot"

    asyncio.run(scenario())


def test_no_offer_no_compression(deflating: Server) -> None:
    async def scenario() -> None:
        async with feed_socket(deflating, new_id("u"), compression=None) as (ws, tab):
            assert ws.response is not None
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert tab.frames[0]["type"] == "snapshot"

    asyncio.run(scenario())
