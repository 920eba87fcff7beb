"""The wire protocol v1 (docs/PROTOCOL.md) end to end: real server, real sockets.

Most tests share one server of this module (``v1``: its own Redis, so a test can look at the
keys, a token leeway of 0 and an origin allowlist; no other test's traffic). Behaviours that need
other settings start their own server. Every waiting is bounded and scaled with
``PUSHREC_TEST_TIMEOUT_SCALE``; nothing is asserted on a timer alone except where the protocol
itself is about time (token expiry, rate limits, slowness).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin, Subprotocol

from tests.integration.conftest import ROOT, redis_client, redis_database, start_server, stop_server
from tests.integration.harness import (
    SCALE,
    FeedClient,
    Peer,
    Server,
    api,
    have,
    metric,
    new_id,
    of_type,
    processed_events,
    settle,
    sse_peer,
    stored_feed,
    view_settled,
    ws_peer,
)

ALLOWED_ORIGIN = "https://shop.example"
MSGPACK = Subprotocol("pushrec.v1.msgpack")
JSON = Subprotocol("pushrec.v1.json")


def serve(env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Server]:
    """:func:`start_server`, also when this module runs first (the log goes to .pytest_cache)."""
    (ROOT / ".pytest_cache").mkdir(exist_ok=True)
    return start_server(env, isolated=True)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """The v1 server's Redis (database 10 of ``PUSHREC_TEST_REDIS_URL``, or a private one)."""
    with redis_database(10) as url:
        yield url


@pytest.fixture(scope="module")
def v1(redis_url: str) -> Iterator[Server]:
    """This module's server: leeway 0 (expiry is exact), an origin allowlist, a known Redis."""
    proc, srv = serve(
        {
            "PUSHREC_REDIS_URL": redis_url,
            "PUSHREC_TOKEN_LEEWAY_S": "0",
            "PUSHREC_ALLOWED_ORIGINS": ALLOWED_ORIGIN,
        }
    )
    try:
        srv.load_catalog()
        yield srv
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def strict() -> Iterator[Server]:
    """A server keeping 3 changes of history and taking 5 client messages a second (bursts of 5)."""
    proc, srv = serve(
        {
            "PUSHREC_HISTORY_LEN": "3",
            "PUSHREC_MAX_MESSAGES_PER_S": "5",
            "PUSHREC_MESSAGE_BURST": "5",
        }
    )
    try:
        srv.load_catalog()
        yield srv
    finally:
        stop_server(proc)


# -- helpers ----------------------------------------------------------------------------------


def has_version(peer: Peer) -> bool:
    return peer.state.version is not None


def at(version: list[Any]) -> Callable[[Peer], bool]:
    """A :meth:`Peer.until` predicate: the peer holds ``version`` of the home feed."""
    return lambda p: p.state.version == version


def wire_id(version: list[Any]) -> str:
    """The SSE resume id of a home feed held at ``version``."""
    return f"home:{version[0]}:{version[1]}"


async def barrier(peer: Peer) -> None:
    """Ping and wait for the pong: every frame the server wrote before it has arrived."""
    pongs = len(peer.of_type("pong"))
    await peer.send({"type": "ping"})
    await peer.until(lambda p: len(p.of_type("pong")) > pongs)


async def answer(peer: Peer, ref: int | str) -> dict[str, Any]:
    """The ``ack`` or ``error`` answering the client message with ``id`` ``ref``."""
    return await peer.next(lambda m: m["type"] in ("ack", "error") and m.get("ref") == ref)


async def changes(
    server: Server,
    user: str,
    since: list[Any],
    k: int,
    items: tuple[str, str] = ("books-5", "shoes-5"),
) -> dict[str, Any]:
    """Move ``user``'s stored home feed exactly ``k`` versions past ``since``; the stored feed.

    Alternate views of two items: the item viewed is never recommended and the other one, just
    viewed too, comes back, so the list keeps changing. Each event is waited for, and one event
    makes at most one version, so the count is exact.
    """
    stored = await stored_feed(server, user)
    for i in range(4 * k + 8):
        assert stored["version"][0] == since[0], "the epoch changed"
        if stored["version"][1] >= since[1] + k:
            break
        stored = await view_settled(server, user, items[i % 2])
    assert stored["version"] == [since[0], since[1] + k]
    return stored


def new_ids(frame: dict[str, Any]) -> list[str]:
    """The ids a diff brings into the list (those named by a string in ``order``)."""
    return [op for op in frame["order"] if isinstance(op, str)]


def omitted_payloads(frames: list[dict[str, Any]]) -> list[str]:
    """Ids that diffs bring in without their payload; each was sent before on the connection."""
    sent: set[str] = set()
    omitted = []
    for frame in frames:
        if frame["type"] == "snapshot":
            sent.update(str(p["id"]) for p in frame["items"])
            continue
        for item in new_ids(frame):
            if item not in frame["items"]:
                assert item in sent, f"{item} omitted but never sent"
                omitted.append(item)
        sent.update(frame["items"])
    return omitted


def preloaded(feed: dict[str, Any]) -> FeedClient:
    """A client that already holds ``feed`` (from an earlier connection) with its item table."""
    return FeedClient(
        items=feed["items"],
        version=feed["version"],
        table={str(p["id"]): p for p in feed["items"]},
    )


def run(scenario: Callable[[], Any]) -> None:
    asyncio.run(scenario())


# -- 1. resume over WebSocket ---------------------------------------------------------------


def test_ws_resume_replays_exactly_the_missed_diffs(v1: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        await view_settled(v1, user, "phones-1", "books-1")
        async with ws_peer(v1, token=v1.token(user)) as tab:
            await tab.until(has_version)
        state = tab.state
        assert [f["type"] for f in state.frames] == ["snapshot"]
        held = state.version
        assert held is not None
        stored = await changes(v1, user, held, 3)

        query = {"have": wire_id(held)}
        async with ws_peer(v1, token=v1.token(user), query=query, state=state) as tab:
            await tab.until(at(stored["version"]))
            await barrier(tab)
        replay = state.frames[1:]
        assert [f["type"] for f in replay] == ["diff"] * 3  # no snapshot
        assert [f["base"] for f in replay] == [held] + [f["version"] for f in replay[:-1]]
        assert [f["version"][1] for f in replay] == [held[1] + 1, held[1] + 2, held[1] + 3]
        # Resumed diffs carry every payload (a resuming client may have lost its item table).
        assert all(i in f["items"] for f in replay for i in new_ids(f))
        assert state.items == stored["items"]

    run(scenario)


def test_ws_resume_with_have_in_subscribe_and_when_already_current(v1: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        stored = await view_settled(v1, user, "phones-2", "books-2")
        state = preloaded(stored)
        async with ws_peer(
            v1, token=v1.token(user), query={"have": have(stored)}, state=state
        ) as tab:
            await asyncio.sleep(0.2 * SCALE)  # let the resume read run (the checks hold either way)
            await barrier(tab)
            assert state.frames == []  # already at the stored version: nothing for the feed

            stored = await changes(v1, user, stored["version"], 1)
            await tab.until(at(stored["version"]))
            assert [f["version"] for f in state.frames] == [stored["version"]]  # only the change

            await tab.send({"type": "unsubscribe", "id": 1, "feeds": ["home"]})
            assert await answer(tab, 1) == {"type": "ack", "ref": 1, "of": "unsubscribe"}
            held, seen = state.version, len(state.frames)
            assert held is not None
            stored = await changes(v1, user, held, 2)
            await barrier(tab)
            assert len(state.frames) == seen  # not subscribed: nothing sent

            await tab.send(
                {"type": "subscribe", "id": 2, "feeds": ["home"], "have": {"home": held}}
            )
            assert await answer(tab, 2) == {"type": "ack", "ref": 2, "of": "subscribe"}
            await tab.until(at(stored["version"]))
            await barrier(tab)
        resumed = state.frames[seen:]
        assert [f["type"] for f in resumed] == ["diff", "diff"]
        assert [f["base"] for f in resumed] == [held, resumed[0]["version"]]
        assert state.items == stored["items"]

    run(scenario)


def test_ws_resume_that_cannot_be_proven_sends_one_snapshot(v1: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        stored = await view_settled(v1, user, "phones-3", "books-3")
        epoch, n = stored["version"]
        for held in (f"home:zzzzzzzz:{n}", f"home:{epoch}:{n + 5}"):  # other epoch; ahead
            async with ws_peer(v1, token=v1.token(user), query={"have": held}) as tab:
                await tab.until(has_version)
                await barrier(tab)
            assert [f["type"] for f in tab.state.frames] == ["snapshot"], held
            assert tab.state.version == stored["version"]
            assert tab.state.items == stored["items"]

        with pytest.raises(InvalidStatus) as refused:
            async with ws_peer(v1, token=v1.token(user), query={"have": "home:x"}):
                pass
        assert refused.value.response.status_code == 400
        assert json.loads(refused.value.response.body or b"{}")["error"] == "bad_version"

    run(scenario)


def test_ws_resume_beyond_the_history_sends_one_snapshot(strict: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        await view_settled(strict, user, "phones-1", "books-1")
        async with ws_peer(strict, token=strict.token(user)) as tab:
            await tab.until(has_version)
        state = tab.state
        held = state.version
        assert held is not None

        # Exactly history_len (3) changes behind: still a replay.
        stored = await changes(strict, user, held, 3)
        query = {"have": wire_id(held)}
        async with ws_peer(strict, token=strict.token(user), query=query, state=state) as tab:
            await tab.until(at(stored["version"]))
            await barrier(tab)
        assert [f["type"] for f in state.frames[1:]] == ["diff"] * 3

        # One more than the history holds: the chain cannot be proven, one snapshot instead.
        held = stored["version"]
        stored = await changes(strict, user, held, 4)
        seen = len(state.frames)
        query = {"have": wire_id(held)}
        async with ws_peer(strict, token=strict.token(user), query=query, state=state) as tab:
            await tab.until(at(stored["version"]))
            await barrier(tab)
        assert [f["type"] for f in state.frames[seen:]] == ["snapshot"]
        assert state.items == stored["items"]

    run(scenario)


# -- 2. resume over SSE -----------------------------------------------------------------------


def test_sse_resume_with_last_event_id(v1: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        await view_settled(v1, user, "phones-4", "books-4")
        async with sse_peer(v1, v1.token(user)) as stream:
            await stream.until(has_version)
        assert stream.state.version is not None
        [snapshot_id] = [
            i for m, i in zip(stream.log, stream.event_ids, strict=True) if m["type"] == "snapshot"
        ]
        assert snapshot_id == wire_id(stream.state.version)
        held = stream.state.version
        stored = await changes(v1, user, held, 2)

        headers = {"Last-Event-ID": snapshot_id}
        async with sse_peer(v1, v1.token(user), headers=headers, state=stream.state) as resumed:
            await resumed.until(at(stored["version"]))
            stored = await changes(v1, user, stored["version"], 1)  # and one live change
            await resumed.until(at(stored["version"]))
        feed_events = [
            (m, i)
            for m, i in zip(resumed.log, resumed.event_ids, strict=True)
            if m["type"] in ("snapshot", "diff")
        ]
        assert [m["type"] for m, _ in feed_events] == ["diff"] * 3
        assert feed_events[0][0]["base"] == held
        for message, event_id in feed_events:  # the id names the version held after the event
            assert event_id == wire_id(message["version"])
            assert all(i in message["items"] for i in new_ids(message))  # SSE: every payload
        assert all(
            i is None
            for m, i in zip(resumed.log, resumed.event_ids, strict=True)
            if m["type"] == "hello"
        )
        assert resumed.state.items == stored["items"]

    run(scenario)


# -- 3. msgpack -------------------------------------------------------------------------------


def test_msgpack_subprotocol_carries_the_same_messages(v1: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        token = v1.token(user)
        await view_settled(v1, user, "phones-5", "books-6")
        async with (
            ws_peer(v1, token=token, subprotocols=[MSGPACK]) as packed,
            ws_peer(v1, token=token) as plain,
            ws_peer(v1, token=token, subprotocols=[JSON]) as named,
        ):
            assert packed.subprotocol == MSGPACK
            assert plain.subprotocol is None  # JSON without negotiation
            assert named.subprotocol == JSON  # echoed
            for peer in (packed, plain, named):
                await peer.until(has_version)
            assert plain.state.version is not None
            stored = await changes(v1, user, plain.state.version, 2)
            for peer in (packed, plain, named):
                await peer.until(at(stored["version"]))
            hellos = [{**p.hello, "conn": ""} for p in (packed, plain, named)]
            assert hellos[0] == hellos[1] == hellos[2]
            assert hellos[0]["protocol"] == 1 and hellos[0]["user"] == user
            assert all(packed.binary) and not any(plain.binary) and not any(named.binary)
            # Same messages, whatever the encoding (the connections were sent the same items).
            # Only the choice of diff or snapshot (whichever frame is smaller) may differ.
            assert [f["type"] for f in packed.state.frames[:1]] == ["snapshot"]
            assert any(f["type"] == "diff" for f in packed.state.frames)
            versions = [f["version"] for f in packed.state.frames]
            for peer in (plain, named):
                assert [f["version"] for f in peer.state.frames] == versions
                for ours, theirs in zip(packed.state.frames, peer.state.frames, strict=True):
                    assert ours == theirs or ours["type"] != theirs["type"]
            assert packed.state.items == stored["items"]

            await packed.send_raw('{"type":"ping","id":1}')  # a text frame on msgpack
            error = await packed.next(of_type("error", "pong"))
            assert error["type"] == "error" and error["code"] == "wrong_encoding"
            await packed.send_raw(b"\xc1\xc1")  # never used in msgpack
            error = await packed.next(of_type("error", "pong"))
            assert error["type"] == "error" and error["code"] == "bad_msgpack"
            await packed.send({"type": "ping"})
            await packed.next(of_type("pong"))
            assert packed.binary[-1]

            await plain.send_raw(msgpack.packb({"type": "ping"}))  # a binary frame on JSON
            error = await plain.next(of_type("error", "pong"))
            assert error["type"] == "error" and error["code"] == "wrong_encoding"
            await plain.send_raw("{nope")
            error = await plain.next(of_type("error", "pong"))
            assert error["type"] == "error" and error["code"] == "bad_json"
            await barrier(plain)  # still open

    run(scenario)


# -- 4. item table ----------------------------------------------------------------------------


def test_diffs_omit_payloads_the_websocket_already_has_but_never_over_sse(v1: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        await view_settled(v1, user, "phones-6", "books-7")
        async with (
            ws_peer(v1, token=v1.token(user)) as tab,
            sse_peer(v1, v1.token(user)) as stream,
        ):
            await tab.until(has_version)
            await stream.until(has_version)
            omitted: list[str] = []
            for i in range(12):
                # The item viewed leaves the list and the other one, sent before, comes back.
                stored = await view_settled(v1, user, ("phones-6", "books-7")[i % 2])
                await tab.until(at(stored["version"]))
                await stream.until(at(stored["version"]))
                omitted = omitted_payloads(tab.state.frames)
                if omitted:
                    break
            assert omitted, "no diff ever relied on the item table"
            assert tab.state.items == stored["items"]  # FeedClient filled them from its table
            assert stream.state.items == stored["items"]
            # The same change over SSE carried the payloads the WebSocket diff left out.
            twins = {wire_id(f["version"]): f for f in stream.state.frames}
            for frame in tab.state.frames:
                if frame["type"] == "diff" and set(new_ids(frame)) - set(frame["items"]):
                    twin = twins[wire_id(frame["version"])]
                    sent = (
                        twin["items"]
                        if twin["type"] == "diff"
                        else {p["id"]: p for p in twin["items"]}
                    )
                    assert set(new_ids(frame)) <= set(sent)
            sse_diffs = [f for f in stream.state.frames if f["type"] == "diff"]
            assert sse_diffs
            assert all(i in f["items"] for f in sse_diffs for i in new_ids(f))

    run(scenario)


# -- 5. origin allowlist ----------------------------------------------------------------------


def test_origin_allowlist(v1: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        with pytest.raises(InvalidStatus) as refused:
            async with ws_peer(v1, token=v1.token(user), origin=Origin("https://evil.example")):
                pass
        assert refused.value.response.status_code == 403
        assert json.loads(refused.value.response.body or b"{}")["error"] == "forbidden_origin"
        async with ws_peer(v1, token=v1.token(user), origin=Origin(ALLOWED_ORIGIN)) as tab:
            await tab.until(has_version)
            assert tab.hello["user"] == user
        async with ws_peer(v1, token=v1.token(user)) as tab:  # no Origin: not a browser
            await tab.until(has_version)

        async with api(v1) as http:
            preflight = {
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            }
            ok = await http.options("/v1/events", headers={"Origin": ALLOWED_ORIGIN, **preflight})
            assert ok.status_code == 200
            assert ok.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
            assert "POST" in ok.headers["access-control-allow-methods"]
            bad = await http.options(
                "/v1/events", headers={"Origin": "https://evil.example", **preflight}
            )
            assert "access-control-allow-origin" not in bad.headers

    run(scenario)


# -- 6. token refresh and expiry --------------------------------------------------------------


def test_token_refresh_keeps_the_connection_past_expiry(v1: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        await view_settled(v1, user, "phones-7", "books-8")
        short = v1.token(user, ttl_s=3)  # the server's leeway is 0
        async with (
            ws_peer(v1, token=short) as kept,
            ws_peer(v1, token=short) as dropped,
            ws_peer(v1, token=v1.token(user)) as hijack,
            ws_peer(v1, token=v1.token(user)) as garbled,
        ):
            exp = kept.hello["exp"]
            assert dropped.hello["exp"] == exp
            fresh = v1.token(user, ttl_s=3600)
            await kept.send({"type": "auth", "id": 1, "token": fresh})
            ack = await answer(kept, 1)
            assert ack["type"] == "ack" and ack["of"] == "auth" and ack["exp"] > exp + 3000

            await hijack.send({"type": "auth", "id": 1, "token": v1.token(new_id("u"))})
            assert (await hijack.closed())[0] == 4503
            await garbled.send({"type": "auth", "id": 1, "token": "not.a.token"})
            assert (await garbled.closed())[0] == 4501

            code, reason = await dropped.closed(within_s=exp - time.time() + 3)
            assert time.time() >= exp
            assert code == 4501 and "expired" in reason

            await asyncio.sleep(1.2 * SCALE)  # the sweep runs every second: it saw `kept` too
            assert not kept.ended
            assert kept.state.version is not None
            stored = await changes(v1, user, kept.state.version, 1)
            await kept.until(at(stored["version"]))
            assert kept.state.frames[-1]["type"] in ("diff", "snapshot")

    run(scenario)


# -- 7. anonymous visitors and identify -------------------------------------------------------


async def user_keys(redis: Redis, user: str) -> list[bytes]:
    return [k async for k in redis.scan_iter(match=f"pr:{{u:{user}}}:*")]


def test_anonymous_visitor_identifies_as_a_user(v1: Server, redis_url: str) -> None:
    async def scenario() -> None:
        redis = redis_client(redis_url)
        try:
            await body(redis)
        finally:
            await redis.aclose()

    async def body(redis: Redis) -> None:
        async with api(v1) as http:
            r = await http.post("/v1/anonymous")
            assert r.status_code == 200
            first = r.json()
            anon = first["user_id"]
            assert anon.startswith("anon:") and len(anon) == 5 + 22
            assert first["expires_at"] > time.time() + 86_400
            r = await http.post(
                "/v1/anonymous", headers={"Authorization": f"Bearer {first['token']}"}
            )
            assert r.status_code == 200
            refreshed = r.json()
            assert refreshed["user_id"] == anon  # refresh keeps the visitor
            assert refreshed["expires_at"] >= first["expires_at"]
            anon_token = refreshed["token"]

            user = new_id("u")
            await view_settled(v1, user, "phones-8", "phones-9")  # the user's own history
            assert not {"shoes-7", "shoes-8"} & {
                p["id"] for p in (await stored_feed(v1, user))["items"]
            }

            async with (
                ws_peer(v1, token=anon_token) as tab,
                ws_peer(v1, token=v1.token(user)) as logged_in,
            ):
                assert tab.hello["user"] == anon
                await tab.until(has_version)
                await logged_in.until(has_version)

                # The visitor browses shoes, with its own token.
                before = await processed_events(v1)
                events = [
                    {"event_id": new_id("e"), "type": "view", "item_id": item}
                    for item in ("shoes-7", "shoes-8", "shoes-7")
                ]
                r = await http.post(
                    "/v1/events", json=events, headers={"Authorization": f"Bearer {anon_token}"}
                )
                assert r.status_code == 202 and r.json()["accepted"] == 3
                await settle(v1, before, 3)
                await tab.until(lambda p: "shoes-8" in p.state.ids)
                assert await user_keys(redis, anon)  # the visitor has a profile

                await logged_in.send({"type": "identify", "id": "x1", "token": v1.token(user)})
                refused = await answer(logged_in, "x1")
                assert refused["type"] == "error" and refused["code"] == "forbidden"
                await tab.send({"type": "identify", "id": 3, "token": "not-a-token"})
                refused = await answer(tab, 3)
                assert refused["type"] == "error" and refused["code"] == "unauthorized"
                await barrier(tab)  # still open, still the visitor's
                await barrier(logged_in)

                await tab.send({"type": "identify", "id": 4, "token": v1.token(user)})
                assert await answer(tab, 4) == {
                    "type": "ack",
                    "ref": 4,
                    "of": "identify",
                    "user": user,
                }
                snapshot = await tab.next(of_type("snapshot", "diff"))
                assert snapshot["type"] == "snapshot"
                stored = await stored_feed(v1, user)
                await tab.until(at(stored["version"]))
                await logged_in.until(at(stored["version"]))  # the user's other tab moves too
                assert tab.state.items == stored["items"] == logged_in.state.items

                # The visitor's profile is now the user's, and the visitor's keys are gone.
                assert {"shoes-7", "shoes-8"} <= set(tab.state.ids)
                members = await redis.zrange(f"pr:{{u:{user}}}:recent", 0, -1)
                recent = {m.decode() if isinstance(m, bytes) else str(m) for m in members}
                assert {"shoes-7", "shoes-8", "phones-8", "phones-9"} <= recent
                assert await user_keys(redis, anon) == []

                # The connection is the user's now: their next change reaches it.
                stored = await changes(v1, user, stored["version"], 1)
                await tab.until(at(stored["version"]))
                await tab.send({"type": "identify", "id": 5, "token": v1.token(user)})
                refused = await answer(tab, 5)
                assert refused["type"] == "error" and refused["code"] == "forbidden"

    run(scenario)


# -- 8. track over WebSocket ------------------------------------------------------------------


def test_track_over_websocket(v1: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        await view_settled(v1, user, "books-0", "phones-0", "shoes-0", "books-9")
        async with ws_peer(v1, token=v1.token(user)) as tab:
            await tab.until(has_version)
            assert "books-2" not in tab.state.ids
            before = await processed_events(v1)
            events = [
                {"event_id": new_id("e"), "type": "view", "item_id": "books-2"},
                {
                    "event_id": new_id("e"),
                    "user_id": "someone-else",
                    "type": "view",
                    "item_id": "x",
                },
                {"event_id": new_id("e"), "user_id": user, "type": "view", "item_id": "books-9"},
            ]
            await tab.send({"type": "track", "id": 9, "events": events})
            ack = await answer(tab, 9)
            assert ack["type"] == "ack" and ack["of"] == "track"
            assert ack["accepted"] == 2
            assert [(r["index"], r["reason"]) for r in ack["rejected"]] == [(1, "forbidden_user")]
            await settle(v1, before, 2)
            stored = await stored_feed(v1, user)
            await tab.until(at(stored["version"]))
            assert "books-2" in tab.state.ids  # the tracked view moved the feed
            assert any(f["type"] == "diff" for f in tab.state.frames[1:])
            assert tab.state.items == stored["items"]

    run(scenario)


# -- 9. rate limit ----------------------------------------------------------------------------


def test_rate_limit_refuses_then_closes_after_ten_in_a_row(strict: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        async with ws_peer(strict, token=strict.token(user)) as tab:
            await tab.until(has_version)
            # A burst over the limit (5): refused, the connection stays open.
            for _ in range(7):
                await tab.send({"type": "ping"})
            await tab.until(lambda p: len(p.of_type("pong", "error")) == 7)
            errors = tab.of_type("error")
            assert len(tab.of_type("pong")) >= 5 and errors
            assert {e["code"] for e in errors} == {"rate_limited"}
            await asyncio.sleep(0.5)  # refills 2.5 messages
            await barrier(tab)

            # A flood: after ten refused messages in a row, closed with 4500.
            answered = len(tab.log)
            try:
                for _ in range(30):
                    await tab.send({"type": "ping"})
            except ConnectionClosed:
                pass
            code, reason = await tab.closed()
            assert code == 4500, reason
            assert "refused" in reason
            flood = tab.log[answered:]
            assert any(m["type"] == "error" for m in flood)
            # After the last message let through: nine refusals, and the tenth closed.
            pongs = [i for i, m in enumerate(flood) if m["type"] == "pong"]
            tail = flood[pongs[-1] + 1 :] if pongs else flood
            assert [m.get("code") for m in tail] == ["rate_limited"] * 9

    run(scenario)


# -- 10. SSE client messages ------------------------------------------------------------------


def test_sse_client_messages(v1: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        await view_settled(v1, user, "phones-1", "shoes-1")
        async with (
            sse_peer(v1, v1.token(user)) as stream,
            api(v1) as http,
        ):
            await stream.until(has_version)
            conn = stream.hello["conn"]
            url = f"/v1/sse/{conn}"
            mine = v1.bearer(user)

            r = await http.post(url, json={"type": "resync", "feed": "home", "id": 4}, headers=mine)
            assert r.status_code == 202 and r.json() == {"ok": True}
            assert await answer(stream, 4) == {"type": "ack", "ref": 4, "of": "resync"}
            await stream.until(lambda p: len(p.state.frames) == 2)
            again = stream.state.frames[1]
            assert (
                again["type"] == "snapshot"
                and again["version"] == stream.state.frames[0]["version"]
            )
            assert stream.event_ids[stream.log.index(again)] == wire_id(again["version"])

            r = await http.post(
                url, json={"type": "subscribe", "id": 5, "feeds": ["offerz"]}, headers=mine
            )
            assert r.status_code == 202
            refused = await answer(stream, 5)
            assert refused["type"] == "error" and refused["code"] == "unknown_feed"

            other = v1.bearer(new_id("u"))
            r = await http.post(url, json={"type": "ping"}, headers=other)
            assert r.status_code == 404 and r.json()["error"] == "no_stream"
            r = await http.post("/v1/sse/nope", json={"type": "ping"}, headers=mine)
            assert r.status_code == 404
            r = await http.post(url, json={"type": "ping"})
            assert r.status_code == 401
            for bad in ({"type": "resync"}, {"kind": "ping"}, [1]):
                r = await http.post(url, json=bad, headers=mine)
                assert r.status_code == 400, bad
            r = await http.post(url, content=b"{nope", headers=mine)
            assert r.status_code == 400
            track = {"type": "track", "events": [{"event_id": "e", "type": "view", "item_id": "x"}]}
            r = await http.post(url, json=track, headers=mine)
            assert r.status_code == 400

            r = await http.post(url, json={"type": "ping"}, params={"token": v1.token(user)})
            assert r.status_code == 202
            await stream.next(of_type("pong"))

    run(scenario)


# -- 11. unknown feed -------------------------------------------------------------------------


def test_subscribe_to_an_unknown_feed(v1: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        async with ws_peer(v1, token=v1.token(user)) as tab:
            await tab.until(has_version)
            await tab.send({"type": "subscribe", "id": 8, "feeds": ["offerz"]})
            refused = await answer(tab, 8)
            assert refused["type"] == "error" and refused["code"] == "unknown_feed"
            assert "offerz" in refused["message"]
            await barrier(tab)
            answers = [m for m in tab.log if m["type"] in ("ack", "error") and m.get("ref") == 8]
            assert answers == [refused]  # refused: no ack as well
            await tab.send({"type": "resync", "feed": "offerz", "id": 9})
            refused = await answer(tab, 9)
            assert refused["type"] == "error" and refused["code"] == "unknown_feed"
            assert tab.state.version is not None
            stored = await changes(v1, user, tab.state.version, 1)  # home still flows
            await tab.until(at(stored["version"]))

    run(scenario)


# -- 12. shutdown -----------------------------------------------------------------------------


def test_shutdown_tells_clients_to_reconnect() -> None:
    proc, srv = serve()

    async def scenario() -> None:
        user = new_id("u")
        async with (
            ws_peer(srv, token=srv.token(user)) as tab,
            sse_peer(srv, srv.token(user)) as stream,
        ):
            await tab.until(has_version)
            await stream.until(has_version)
            stopping = asyncio.create_task(asyncio.to_thread(stop_server, proc))
            code, reason = await tab.closed(within_s=10)
            assert code == 4000 and reason
            code, reason = await stream.closed(within_s=10)
            assert code == 4000 and reason
            assert stream.log[-1]["type"] == "close"
            await stopping

    try:
        run(scenario)
    finally:
        stop_server(proc)


# -- 13. slow clients -------------------------------------------------------------------------


async def stalled_peer_socket(server: Server) -> socket.socket:
    """A connected TCP socket with a tiny receive buffer, so a client that stops reading
    backs the server up quickly."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    host, port = server.address.split(":")
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return sock


async def back_up(server: Server, peer: Peer, user: str) -> tuple[dict[str, Any], int]:
    """Fill the server's buffers towards ``peer`` (which stopped reading) until the server
    holds updates back, then move the feed twice more; returns the stored feed and the number
    of ``track`` messages sent.

    Big answers fill the kernel buffers (several MiB on loopback): ``track`` of 50 invalid
    events is acked with 50 reasons (~4 KiB). A change whose diff is not written (frames sent
    unchanged while the stored version moved) shows the connection is conflating.
    """
    bad = {"type": "track", "id": 1, "events": [{"type": "view"}] * 50}
    ws = {"transport": "websocket"}
    tracks = 0
    async with api(server) as client:

        async def sent(kind: str) -> float:
            return await metric(server, "pushrec_frames_sent_total", client, type=kind, **ws)

        acks = await sent("ack")
        stored = await stored_feed(server, user, client)
        for _ in range(20):
            for _ in range(250):
                await peer.send(bad)
            acks += 250
            tracks += 250
            async with asyncio.timeout(10 * SCALE):
                # Polling: the state lives in another process, there is no event to await here.
                while await sent("ack") < acks:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            before = await sent("diff") + await sent("snapshot")
            stored = await changes(server, user, stored["version"], 1, ("phones-3", "books-3"))
            if await sent("diff") + await sent("snapshot") == before:
                break
        else:
            raise AssertionError("the server never held an update back")
        conflated = await metric(server, "pushrec_conflations_total", client)
        stored = await changes(server, user, stored["version"], 2, ("phones-3", "books-3"))
        assert await metric(server, "pushrec_conflations_total", client) == conflated + 2
        return stored, tracks


def test_slow_client_gets_the_latest_state_or_4001() -> None:
    send_timeout = 4.0 * SCALE
    proc, srv = serve(
        {
            "PUSHREC_MAX_MESSAGES_PER_S": "1000000",
            "PUSHREC_MESSAGE_BURST": "1000000",
            "PUSHREC_SEND_TIMEOUT_S": str(send_timeout),
        }
    )

    async def scenario() -> None:
        srv.load_catalog()
        # Caught up within the send timeout: one snapshot of the latest state, not every diff.
        user = new_id("u")
        await view_settled(srv, user, "phones-3", "books-3", "shoes-3")
        reading = asyncio.Event()
        reading.set()
        sock = await stalled_peer_socket(srv)
        async with ws_peer(
            srv, token=srv.token(user), gate=reading, sock=sock, max_queue=1, compression=None
        ) as tab:
            await tab.until(has_version)
            reading.clear()
            stored, tracks = await back_up(srv, tab, user)
            reading.set()
            await tab.until(at(stored["version"]), within_s=15)
            # The three changes held back arrive as one snapshot of the latest state.
            last, before_last = tab.state.frames[-1], tab.state.frames[-2]
            assert last["type"] == "snapshot" and last["version"] == stored["version"]
            assert before_last["version"][1] <= stored["version"][1] - 3
            assert tab.state.items == stored["items"]
            assert len(tab.of_type("ack")) == tracks  # nothing else was dropped
            await barrier(tab)
            assert not tab.ended

        # Behind for longer than the send timeout: closed with 4001, then resume.
        user = new_id("u")
        await view_settled(srv, user, "phones-3", "books-3", "shoes-3")
        reading.set()
        sock = await stalled_peer_socket(srv)
        async with ws_peer(
            srv, token=srv.token(user), gate=reading, sock=sock, max_queue=1, compression=None
        ) as tab:
            await tab.until(has_version)
            reading.clear()
            slow = await metric(srv, "pushrec_connection_closes_total", reason="slow")
            stored, tracks = await back_up(srv, tab, user)
            async with asyncio.timeout(send_timeout + 5 * SCALE):
                while await metric(srv, "pushrec_connection_closes_total", reason="slow") == slow:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            reading.set()
            code, reason = await tab.closed(within_s=15)
            assert code == 4001, (code, reason)
            assert len(tab.of_type("ack")) == tracks  # the close frame came after the backlog
        state = tab.state
        assert state.version is not None
        query = {"have": wire_id(state.version)}
        async with ws_peer(srv, token=srv.token(user), query=query, state=state) as tab:
            await tab.until(at(stored["version"]))
            assert state.items == stored["items"]

    try:
        run(scenario)
    finally:
        stop_server(proc)
