"""Bad input: a clear refusal, counted, and no change to stored state; the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.integration.harness import Server, new_id, ws_client


def metric(server: Server, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 when absent)."""
    text = httpx.get(f"{server.http}/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def post_raw(server: Server, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{server.http}/v1/events",
        content=body,
        headers={"Content-Type": "application/json", **headers},
    )


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"user_id": "x", "type": "view", "item_id": "a"}, "missing_event_id"),
        ({"event_id": 5, "user_id": "x", "type": "view", "item_id": "a"}, "bad_event_id"),
        ({"event_id": "e", "type": "view", "item_id": "a"}, "missing_user_id"),
        ({"event_id": "e", "user_id": "x", "type": "teleport", "item_id": "a"}, "bad_type"),
        ({"event_id": "e", "user_id": "x", "type": "view"}, "missing_item_id"),
        ({"event_id": "e", "user_id": "x", "type": "view", "item_id": 3}, "bad_item_id"),
        ({"event_id": "e", "user_id": "x", "type": "view", "item_id": "a", "ts": "now"}, "bad_ts"),
        (
            {"event_id": "e", "user_id": "x", "type": "view", "item_id": "a", "props": []},
            "bad_props",
        ),
        (
            {"event_id": "e", "user_id": "x", "type": "view", "item_id": "a", "extra": 1},
            "unknown_field",
        ),
        ("not an object", "not_object"),
    ],
)
def test_invalid_events_are_refused_with_reason(server: Server, event: Any, reason: str) -> None:
    before = metric(server, "pushrec_collector_rejected_total", reason=reason)
    r = post_raw(server, json.dumps([event]).encode(), server.admin)
    assert r.status_code == 400
    body = r.json()
    assert body["accepted"] == 0
    assert body["rejected"][0]["index"] == 0
    assert body["rejected"][0]["reason"] == reason
    assert body["rejected"][0]["message"]
    assert metric(server, "pushrec_collector_rejected_total", reason=reason) == before + 1


def test_mixed_batch_accepts_the_valid_and_names_the_invalid(server: Server) -> None:
    user = new_id("u")
    good = {"event_id": new_id("e"), "user_id": user, "type": "view", "item_id": "books-1"}
    bad = {"event_id": new_id("e"), "user_id": user, "type": "nope"}
    r = post_raw(server, json.dumps([good, bad, good]).encode(), server.admin)
    assert r.status_code == 202
    assert r.json()["accepted"] == 2
    assert [x["index"] for x in r.json()["rejected"]] == [1]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "bad_json"),
        (b"[]", 400, "empty"),
        (b"x" * (1_048_576 + 10), 413, "too_large"),
    ],
)
def test_malformed_bodies(server: Server, body: bytes, status: int, code: str) -> None:
    r = post_raw(server, body, server.admin)
    assert r.status_code == status
    assert r.json()["error"] == code
    assert r.json()["message"]


def test_batch_limit_names_the_limit(server: Server) -> None:
    events = [
        {"event_id": str(i), "user_id": "x", "type": "view", "item_id": "a"} for i in range(501)
    ]
    r = post_raw(server, json.dumps(events).encode(), server.admin)
    assert r.status_code == 413
    assert "500" in r.json()["message"]


def test_credentials_are_checked(server: Server) -> None:
    event = json.dumps({"event_id": "e", "type": "view", "item_id": "a"}).encode()
    assert post_raw(server, event, {}).status_code == 401
    assert post_raw(server, event, {"X-API-Key": "wrong-key-wrong-key"}).status_code == 401
    assert post_raw(server, event, {"Authorization": "Bearer not.a.jwt"}).status_code == 401
    expired = server.token("someone", ttl_s=-3600)
    r = post_raw(server, event, {"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in r.json()["message"]
    assert expired not in r.text


def test_visitor_token_is_bound_to_its_user(server: Server) -> None:
    alice, bob = new_id("alice"), new_id("bob")
    r = post_raw(
        server,
        json.dumps({"event_id": "e", "user_id": bob, "type": "view", "item_id": "a"}).encode(),
        server.bearer(alice),
    )
    assert r.status_code == 400
    assert r.json()["rejected"][0]["reason"] == "forbidden_user"
    r = httpx.get(f"{server.http}/v1/users/{bob}/feeds/home", headers=server.bearer(alice))
    assert r.status_code == 403
    r = httpx.get(f"{server.http}/v1/users/{alice}/feeds/home", headers=server.bearer(alice))
    assert r.status_code == 200 and r.json()["user"] == alice
    r = httpx.get(f"{server.http}/v1/users/{alice}/feeds/nope", headers=server.bearer(alice))
    assert r.status_code == 404
    r = httpx.get(f"{server.http}/v1/sse?token=garbage")
    assert r.status_code == 401


def test_catalog_writes_need_the_api_key_and_valid_items(server: Server) -> None:
    item = {"item_id": "x-1", "title": "X", "price": 1.0, "category": "x"}
    assert httpx.put(f"{server.http}/v1/items", json=[item]).status_code == 401
    r = httpx.put(f"{server.http}/v1/items", json=[item], headers=server.bearer("v"))
    assert r.status_code == 403
    r = httpx.put(
        f"{server.http}/v1/items", json=[item, {"item_id": "y", "price": -1}], headers=server.admin
    )
    assert r.status_code == 400 and "item 1" in r.json()["message"]
    # All or nothing: the valid first item of the refused batch was not stored either.
    listed = httpx.get(f"{server.http}/v1/items", params={"category": "x"}).json()
    assert listed["total"] == 0


async def _close_of(url: str, *send: str | bytes) -> tuple[int, str]:
    async with connect(url) as ws:
        for message in send:
            await ws.send(message)
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return closed.rcvd.code, closed.rcvd.reason
    raise AssertionError("not closed")


def test_websocket_refusals_use_documented_close_codes(server: Server) -> None:
    async def scenario() -> None:
        base = f"ws://{server.address}/v1/ws"
        code, reason = await _close_of(f"{base}?token=garbage")
        assert code == 4501 and reason
        expired = server.token("x", ttl_s=-3600)
        code, reason = await _close_of(f"{base}?token={expired}")
        assert code == 4501 and "expired" in reason
        code, _ = await _close_of(base)  # no token, no auth message
        assert code == 4502
        code, _ = await _close_of(base, json.dumps({"type": "ping"}))
        assert code == 4501
        code, _ = await _close_of(f"{base}?token={server.token('x')}", "y" * 20_000)
        assert code == 4509
        code, _ = await _close_of(f"{base}?token={server.token('x')}", *(["{bad"] * 10))
        assert code == 4500

    asyncio.run(scenario())


def test_bad_frames_get_errors_and_change_nothing(server: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        before_bad = metric(server, "pushrec_bad_frames_total", code="bad_json")
        async with ws_client(server, user) as tab:
            version = tab.version
            url = f"ws://{server.address}/v1/ws"
            async with connect(url) as ws:
                await ws.send(json.dumps({"type": "auth", "token": server.token(user)}))
                for message in ("{bad", json.dumps({"type": "warp"}), json.dumps([1]), b"\x00\xff"):
                    await ws.send(message)
                errors: list[str] = []
                while len(errors) < 4:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    if frame["type"] == "error":
                        errors.append(frame["code"])
                assert errors == ["bad_json", "unknown_type", "bad_message", "wrong_encoding"]
                await ws.send(json.dumps({"type": "ping"}))
                while json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] != "pong":
                    pass
            assert (await server.feed(user))["version"] == version
            assert tab.version == version
        assert metric(server, "pushrec_bad_frames_total", code="bad_json") == before_bad + 1

    asyncio.run(scenario())


def test_bad_input_leaves_the_feed_untouched(server: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        await server.view(user, "phones-7")
        stored = await server.feed(user)
        bad: list[dict[str, Any]] = [
            {"event_id": new_id("e"), "user_id": user, "type": "view"},
            {"event_id": new_id("e"), "user_id": user, "type": "fly", "item_id": "phones-8"},
            {"event_id": 1, "user_id": user, "type": "view", "item_id": "phones-8"},
        ]
        assert (await server.post(bad)).status_code == 400
        await server.post([{"event_id": "x"}] * 501)
        assert (await server.feed(user))["version"] == stored["version"]
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{server.http}/healthz")).status_code == 200

    asyncio.run(scenario())
