"""``POST /v1/events?token=…``, as ``navigator.sendBeacon`` sends it (no headers, a
``text/plain`` body), on the real server (issue 12, defect 7: it answered 401 because only the
``Authorization`` header was read). The query token gets exactly the header's checks: the same
verification, the same subject rules, the same refusals."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from sessions.tokens import TokenVerifier
from tests.integration.harness import Server, api, metric, new_id, processed_events, settle

BEACON = {"Content-Type": "text/plain;charset=UTF-8"}


def _view(item: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": new_id("e"), "type": "view", "item_id": item, **fields}


async def _recent(server: Server, client: httpx.AsyncClient, user: str) -> list[str]:
    r = await client.get(f"/v1/users/{user}/export", headers=server.admin)
    assert r.status_code == 200, r.text
    recent = r.json()["keys"].get("recent")
    return [m for m, _ in recent["value"]] if recent else []


def test_a_beacon_with_a_query_token_is_accepted_and_applied(server: Server) -> None:
    user = new_id("beacon")

    async def scenario() -> None:
        async with api(server) as client:
            before = await processed_events(server, client)
            body = json.dumps([_view("phones-1"), _view("phones-2", user_id=user)])
            r = await client.post(
                "/v1/events", params={"token": server.token(user)}, content=body, headers=BEACON
            )
            assert r.status_code == 202, r.text
            assert r.json() == {"accepted": 2, "rejected": []}
            await settle(server, before, 2, client)
            assert sorted(await _recent(server, client, user)) == ["phones-1", "phones-2"]

    asyncio.run(scenario())


def test_a_query_token_is_refused_as_the_header_would_be(server: Server) -> None:
    """Invalid, expired and wrongly signed tokens: 401 with the header path's body; and a token
    still only speaks for its own user."""
    user = new_id("beacon")
    expired = server.token(user, ttl_s=-3600)
    forged = TokenVerifier("another-secret-0123456789abcdef-xyz").mint(user)
    assert forged != server.token(user)

    async def scenario() -> None:
        async with api(server) as client:
            body = json.dumps(_view("phones-1"))
            for token in ("not-a-jwt", expired, forged):
                failures = await metric(server, "pushrec_auth_failures_total", client)
                header = await client.post(
                    "/v1/events",
                    content=body,
                    headers={**BEACON, "Authorization": f"Bearer {token}"},
                )
                query = await client.post(
                    "/v1/events", params={"token": token}, content=body, headers=BEACON
                )
                assert header.status_code == 401, header.text
                assert (query.status_code, query.json()) == (401, header.json())
                assert query.json()["error"] == "unauthorized"
                # Counted like the header's refusal.
                assert await metric(server, "pushrec_auth_failures_total", client) == failures + 2

            other = json.dumps(_view("phones-1", user_id=new_id("someone-else")))
            token = server.token(user)
            header = await client.post(
                "/v1/events", content=other, headers={"Authorization": f"Bearer {token}"}
            )
            query = await client.post("/v1/events", params={"token": token}, content=other)
            assert header.status_code == 400, header.text
            assert (query.status_code, query.json()) == (400, header.json())
            assert await _recent(server, client, user) == []

            missing = await client.post("/v1/events", content=body, headers=BEACON)
            assert missing.status_code == 401
            assert "?token=" in missing.json()["message"]

    asyncio.run(scenario())
