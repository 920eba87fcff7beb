"""Consent as recorded state, on the real server and a real Redis (streams/consent.py,
docs/PROTOCOL.md "Consent"): a user without personalization consent leaves no profile and no
item-side index entry, feeds no aggregate, and gets the non-personal list; withdrawing consent
erases the earlier profile and pushes the non-personal list to the open socket (no 4504);
``PUSHREC_CONSENT=required`` without a grant behaves as denied; the admin API needs its key and
refuses malformed bodies. The whole database is scanned for the user's id, as in
test_privacy.py. Nothing is mocked."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sessions.keys import TREND_BUCKETS, neighbours_key, trend_key, user_tag
from streams.consent import consent_key
from streams.events import Event
from streams.merge import merge_profiles
from streams.profile import ProfileStore, ProfileTuning, user_keys
from tests.integration.conftest import (
    redis_client,
    redis_database,
    start_server,
    stop_server,
    sync_redis,
)
from tests.integration.harness import (
    Server,
    api,
    metric,
    new_id,
    processed_events,
    settle,
    stored_feed,
    view_settled,
    ws_peer,
)
from tests.integration.test_privacy import EXPERIMENTS, mentions

RULES = textwrap.dedent(
    """
    triggers:
      - name: second-look
        on: view
        count: {event: view, at_least: 2, within: 10m}
        offer: {feed: offers, badge: "Still interested?", ttl: 30m}
    """
)


@pytest.fixture(scope="module")
def node_url() -> Iterator[str]:
    """Database 17 of ``PUSHREC_TEST_REDIS_URL`` (scripts/redis.sh starts 32), or a private
    Redis: the tests scan the whole database."""
    with redis_database(17) as url:  # emptied first
        yield url


@pytest.fixture(scope="module")
def node(node_url: str) -> Iterator[Server]:
    """The default policy (``implied``), with triggers and an experiment in force."""
    proc, srv = start_server({"PUSHREC_REDIS_URL": node_url, "PUSHREC_WORKER": "1"})
    try:
        srv.load_catalog()
        with httpx.Client(base_url=srv.http) as client:
            for path, body in (("/v1/rules", RULES), ("/v1/experiments", EXPERIMENTS)):
                client.put(path, content=body, headers=srv.admin).raise_for_status()
        asyncio.run(_crowd(srv))
        yield srv
    finally:
        stop_server(proc)


async def _crowd(srv: Server) -> None:
    """Other visitors' traffic: neighbours and trending for the lists to differ."""
    for items in (
        ("phones-1", "phones-2", "phones-3", "phones-4"),
        ("phones-2", "phones-5", "phones-6"),
        ("books-1", "books-2", "books-3"),
        ("shoes-1", "shoes-2", "books-1"),
        ("books-4", "books-4", "books-5"),
    ):
        await view_settled(srv, new_id("crowd"), *items)


def _event(user: str, etype: str, item: str | None = None, **props: Any) -> dict[str, Any]:
    return {
        "event_id": new_id("e"),
        "user_id": user,
        "type": etype,
        "item_id": item,
        "props": props,
    }


def _consent(user: str, granted: bool, **fields: Any) -> dict[str, Any]:
    return {**_event(user, "consent", personalization=granted), **fields}


async def _post_settled(srv: Server, events: list[dict[str, Any]]) -> dict[str, Any]:
    """POST ``events`` with the API key, require them all accepted, wait until processed."""
    async with api(srv) as client:
        before = await processed_events(srv, client)
        r = await client.post("/v1/events", json=events, headers=srv.admin)
        assert r.status_code == 202 and r.json()["rejected"] == [], r.text
        await settle(srv, before, len(events), client)
        body: dict[str, Any] = r.json()
        return body


async def _non_personal(srv: Server) -> list[str]:
    """What a brand-new visitor with no profile gets: their first home feed."""
    return [p["id"] for p in (await stored_feed(srv, new_id("fresh")))["items"]]


def _only_own_feeds_and_consent(url: str, user: str) -> list[str]:
    """Every key mentioning ``user``, asserting that each is one of the user's own feeds (or
    their histories) or the consent record: no profile key, no item-side index entry."""
    found = mentions(url, user)
    tag = user_tag(user)
    for key in found:
        assert key.startswith(tag), f"{key} mentions {user}"
        rest = key[len(tag) :]
        assert rest == "consent" or rest.startswith(("feed:", "hist:")), key
    return found


async def _put_consent(
    srv: Server, user: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    async with api(srv) as client:
        return await client.put(
            f"/v1/users/{user}/consent",
            content=json.dumps(body),
            headers=srv.admin if headers is None else headers,
        )


async def _get_consent(srv: Server, user: str) -> dict[str, Any]:
    async with api(srv) as client:
        r = await client.get(f"/v1/users/{user}/consent", headers=srv.admin)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


async def _erased(srv: Server, user: str) -> dict[str, Any]:
    """The record once the withdrawal's erasure has completed (it runs in the user's lane)."""
    async with asyncio.timeout(5 * srv.scale):
        # Polling: the erasure runs in the server process, there is no event to await here.
        while (record := await _get_consent(srv, user))["pending_erase"]:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    return record


def _trending(url: str) -> list[list[Any]]:
    """Global trending, bucket by bucket."""
    return [_zset(url, trend_key(b)) for b in range(TREND_BUCKETS)]


def _zset(url: str, key: str) -> list[Any]:
    """The members of sorted set ``key`` with their scores, lowest first."""
    client = sync_redis(url)
    try:
        return list(client.zrange(key, 0, -1, withscores=True))
    finally:
        client.close()


def test_a_denied_users_events_store_nothing_and_get_the_non_personal_list(
    node: Server, node_url: str
) -> None:
    user = new_id("denied")

    async def scenario() -> None:
        r = await _put_consent(node, user, {"personalization": False})
        assert r.status_code == 200, r.text
        assert r.json() | {"recorded_at": 0} == {
            "user": user,
            "personalization": False,
            "recorded_at": 0,
            "source": "api",
            "pending_erase": False,
            "policy": "implied",
            "personalized": False,
            "outcome": "denied",  # nothing was stored about this user: nothing to withdraw
        }
        trend, neighbours = _trending(node_url), _zset(node_url, neighbours_key("phones-1"))
        no_consent = await metric(node, "pushrec_events_processed_total", outcome="no_consent")
        await _post_settled(
            node,
            [
                _event(user, "view", "phones-1"),
                _event(user, "view", "phones-1"),  # the second look would fire an offer
                _event(user, "view", "books-3"),
                _event(user, "search", query="phones"),
                _event(user, "add_to_cart", "shoes-1"),
                _event(user, "purchase", "shoes-1"),
                _event(user, "view", "phones-1"),
            ],
        )
        assert (
            await metric(node, "pushrec_events_processed_total", outcome="no_consent")
            == no_consent + 7
        )
        # Aggregates did not learn from them either (the conservative choice, docs).
        assert _trending(node_url) == trend
        assert _zset(node_url, neighbours_key("phones-1")) == neighbours
        # The feed is what a visitor with no profile gets, outside the experiment (no rec).
        feed = await stored_feed(node, user)
        assert [p["id"] for p in feed["items"]] == await _non_personal(node)
        assert "rec" not in feed
        # The context and offers feeds too, and after a click.
        async with api(node) as client:
            for name in ("similar", "cart", "offers"):
                r = await client.get(f"/v1/users/{user}/feeds/{name}", headers=node.admin)
                assert r.status_code == 200, r.text
        await _post_settled(node, [_event(user, "click", "phones-2")])
        found = _only_own_feeds_and_consent(node_url, user)
        assert consent_key(user) in found and f"{user_tag(user)}feed:home" in found

    asyncio.run(scenario())


def test_consent_events_come_from_the_user_over_http_and_the_socket(
    node: Server, node_url: str
) -> None:
    user, other = new_id("visitor"), new_id("someone")

    async def scenario() -> None:
        rejected = await metric(node, "pushrec_collector_rejected_total", reason="bad_consent")
        async with api(node) as client:
            before = await processed_events(node, client)
            r = await client.post(
                "/v1/events",
                json=[
                    {k: v for k, v in _consent(user, False).items() if k != "user_id"},
                    _consent(other, False),  # a visitor token posts only its own
                    _consent(user, True, props={"personalization": "yes"}),
                    _consent(user, True, props={"personalization": True, "why": "banner"}),
                    _consent(user, True, item_id="phones-1"),
                    {**_event(user, "consent")},
                ],
                headers=node.bearer(user),
            )
            assert r.status_code == 202, r.text
            reasons = [(x["index"], x["reason"]) for x in r.json()["rejected"]]
            assert reasons == [
                (1, "forbidden_user"),
                (2, "bad_consent"),
                (3, "bad_consent"),
                (4, "bad_consent"),
                (5, "bad_consent"),
            ]
            await settle(node, before, 1, client)
        assert (
            await metric(node, "pushrec_collector_rejected_total", reason="bad_consent")
            == rejected + 4
        )
        record = await _get_consent(node, user)
        assert (record["personalization"], record["source"]) == (False, "event")
        assert await _get_consent(node, other) == {
            "user": other,
            "personalization": None,
            "recorded_at": None,
            "source": None,
            "pending_erase": False,
            "policy": "implied",
            "personalized": True,
        }
        # The WebSocket track message: the grant, acknowledged like any event.
        async with ws_peer(node, token=node.token(user)) as peer, api(node) as client:
            before = await processed_events(node, client)
            await peer.send(
                {
                    "type": "track",
                    "id": 1,
                    "events": [{"event_id": new_id("e"), **_consent(user, True)}],
                }
            )
            ack = await peer.next(lambda m: m["type"] == "ack")
            assert (ack["accepted"], ack["rejected"]) == (1, [])
            await settle(node, before, 1, client)
        record = await _get_consent(node, user)
        assert (record["personalization"], record["personalized"]) == (True, True)
        # A denial always takes effect, even stamped before the recorded grant (a client's
        # clock); its record is not older than the grant it replaces ...
        granted_at = record["recorded_at"]
        await _post_settled(node, [_consent(user, False, ts=granted_at - 60_000)])
        record = await _get_consent(node, user)
        assert (record["personalization"], record["recorded_at"]) == (False, granted_at)
        # ... while a grant older than the recorded denial changes nothing (a late one).
        stale = await metric(node, "pushrec_consent_changes_total", outcome="stale")
        await _post_settled(node, [_consent(user, True, ts=granted_at - 1)])
        assert (await _get_consent(node, user))["personalization"] is False
        assert await metric(node, "pushrec_consent_changes_total", outcome="stale") == stale + 1
        # Granted again: events build a profile again.
        await _post_settled(node, [_consent(user, True)])
        await view_settled(node, user, "books-1")
        assert [m for m, _ in _zset(node_url, user_keys(user)[1])] == [b"books-1"]

    asyncio.run(scenario())


def test_withdrawing_over_the_socket_erases_the_profile_and_pushes_the_non_personal_list(
    node: Server, node_url: str
) -> None:
    user = new_id("withdraws")

    async def scenario() -> None:
        await _post_settled(
            node,
            [_consent(user, True)]
            + [_event(user, "view", item) for item in ("phones-1", "phones-2", "phones-1")]
            + [_event(user, "add_to_cart", "books-2")],
        )
        async with api(node) as client:
            for feed in ("similar", "cart", "offers"):
                r = await client.get(f"/v1/users/{user}/feeds/{feed}", headers=node.admin)
                assert r.status_code == 200, r.text
        # Personal data everywhere: profile, session index, shown index, trigger times, offers.
        found = mentions(node_url, user)
        assert any(k.startswith("pr:{i:") and k.endswith("}:is") for k in found), found
        assert any(k.startswith("pr:{i:") and ":shown:" in k for k in found), found
        assert any(k.endswith(":ev:view") for k in found), found
        expected = await _non_personal(node)
        async with ws_peer(node, token=node.token(user)) as peer:
            await peer.until(lambda p: p.state.version is not None)
            assert peer.state.ids != expected  # personal until now
            before = await processed_events(node)
            await peer.send(
                {"type": "track", "id": 7, "events": [_consent(user, False) | {"user_id": user}]}
            )
            await peer.until(lambda p: p.state.ids == expected)
            assert peer.state.rec is None  # outside the experiment now
            async with api(node) as client:
                await settle(node, before, 1, client)
            record = await _erased(node, user)
            assert not peer.ended  # no 4504: the socket stays, with the new list
            assert (record["personalization"], record["personalized"]) == (False, False)
            # Every further event of the user leaves the list and the database as they are.
            await _post_settled(node, [_event(user, "view", "shoes-3")])
            await asyncio.sleep(0.1 * node.scale)
            assert peer.state.ids == expected and not peer.ended
        assert (
            await metric(node, "pushrec_consent_changes_total", outcome="withdrawn", source="event")
            >= 1
        )
        _only_own_feeds_and_consent(node_url, user)
        async with api(node) as client:
            data = (await client.get(f"/v1/users/{user}/export", headers=node.admin)).json()
        assert data["keys"]["consent"]["value"]["state"] == "denied"
        assert data["indexes"] == {"is": [], "shown": []}
        assert data["timers"] == {}
        # Granting again starts from an empty profile.
        r = await _put_consent(node, user, {"personalization": True})
        assert r.json()["outcome"] == "granted"
        await view_settled(node, user, "books-3")
        assert [m for m, _ in _zset(node_url, user_keys(user)[1])] == [b"books-3"]

    asyncio.run(scenario())


def test_withdrawing_through_the_api_erases_the_profile_and_pushes_the_non_personal_list(
    node: Server, node_url: str
) -> None:
    user = new_id("api-withdraws")

    async def scenario() -> None:
        await view_settled(node, user, "books-1", "books-2", "phones-5")
        async with api(node) as client:
            r = await client.get(f"/v1/users/{user}/feeds/similar", headers=node.admin)
            assert r.status_code == 200
        expected = await _non_personal(node)
        withdrawn = await metric(
            node, "pushrec_consent_changes_total", outcome="withdrawn", source="api"
        )
        token = node.token(user)
        async with (
            ws_peer(node, token=token) as peer,
            ws_peer(node, token=token, query={"feeds": "similar"}) as similar,
        ):
            await peer.until(lambda p: p.state.version is not None)
            await similar.until(lambda p: p.state.version is not None)
            assert peer.state.ids != expected
            held = similar.state.version
            r = await _put_consent(node, user, {"personalization": False})
            assert r.status_code == 200, r.text
            assert (r.json()["outcome"], r.json()["source"]) == ("withdrawn", "api")
            # The profile went with the answer; the rest follows in the user's lane.
            assert not any(_zset(node_url, key) for key in user_keys(user)[1:3])
            await peer.until(lambda p: p.state.ids == expected)
            # A new epoch: the old history is erased, the client takes a snapshot.
            await similar.until(lambda p: p.state.version != held)
            assert similar.of_type("snapshot", "diff")[-1]["type"] == "snapshot"
            assert similar.state.version is not None and held is not None
            assert similar.state.version[0] != held[0]
            await _erased(node, user)
            assert not peer.ended and not similar.ended
        assert (
            await metric(node, "pushrec_consent_changes_total", outcome="withdrawn", source="api")
            == withdrawn + 1
        )
        _only_own_feeds_and_consent(node_url, user)
        # The same request again changes nothing and erases nothing more.
        again = await _put_consent(node, user, {"personalization": False})
        assert (again.json()["outcome"], again.json()["pending_erase"]) == ("unchanged", False)

    asyncio.run(scenario())


def test_the_admin_api_needs_the_key_and_a_well_formed_body(node: Server) -> None:
    user = new_id("api")

    async def scenario() -> None:
        async with api(node) as client:
            path = f"/v1/users/{user}/consent"
            assert (await client.get(path)).status_code == 401
            assert (await client.put(path, json={"personalization": True})).status_code == 401
            wrong = {"X-API-Key": "not-the-key-0123456789"}
            assert (await client.get(path, headers=wrong)).status_code == 401
            r = await client.put(path, json={"personalization": True}, headers=node.bearer(user))
            assert (r.status_code, r.json()["error"]) == (403, "forbidden")
            for body in (
                {},
                {"personalization": "true"},
                {"personalization": 1},
                {"personalization": None},
                {"personalization": True, "marketing": False},
                [True],
                "granted",
            ):
                r = await client.put(path, json=body, headers=node.admin)
                assert (r.status_code, r.json()["error"]) == (400, "bad_consent"), body
            r = await client.put(path, content=b"{", headers=node.admin)
            assert (r.status_code, r.json()["error"]) == (400, "bad_json")
            r = await client.put(path, content=b" " * 2000, headers=node.admin)
            assert r.status_code == 413
            long_id = "x" * 129
            r = await client.get(f"/v1/users/{long_id}/consent", headers=node.admin)
            assert (r.status_code, r.json()["error"]) == (400, "bad_user_id")
        # Nothing was recorded by any of those.
        assert (await _get_consent(node, user))["personalization"] is None

    asyncio.run(scenario())


def test_identify_merges_no_profile_into_a_user_without_consent(node_url: str) -> None:
    anon, user, keen = f"anon:{new_id('v')}", new_id("denies"), new_id("keen")

    async def scenario() -> None:
        client = redis_client(node_url)
        try:
            profiles = ProfileStore(client, ProfileTuning())
            for visitor in (anon, anon + "-2"):
                for item in ("phones-1", "phones-2"):
                    await profiles.apply(Event(new_id("e"), visitor, "view", item, _now()), [])
            await profiles.record_consent(user, False, source="api")
            denied = await merge_profiles(client, anon, user)
            assert not denied.merged and denied.deleted > 0
            assert await client.exists(*user_keys(user)) == 0
            assert await client.exists(*user_keys(anon)) == 0
            # The same merge into a user with consent (implied) carries the profile.
            kept = await merge_profiles(client, anon + "-2", keen)
            assert kept.merged and await client.zcard(user_keys(keen)[1]) == 2
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_the_required_policy_without_a_grant_behaves_as_denied(node: Server, node_url: str) -> None:
    user = new_id("required")
    proc, srv = start_server(
        {"PUSHREC_REDIS_URL": node_url, "PUSHREC_WORKER": "1", "PUSHREC_CONSENT": "required"}
    )
    try:

        async def scenario() -> None:
            record = await _get_consent(srv, user)
            assert (record["policy"], record["personalized"]) == ("required", False)
            expected = await _non_personal(srv)  # itself a list made without a profile
            trend = _trending(node_url)
            await view_settled(srv, user, "phones-1", "phones-2", "books-4")
            assert _trending(node_url) == trend
            assert [p["id"] for p in (await stored_feed(srv, user))["items"]] == expected
            _only_own_feeds_and_consent(node_url, user)
            # A grant: from now on the user is personalized.
            r = await _put_consent(srv, user, {"personalization": True})
            assert (r.json()["outcome"], r.json()["personalized"]) == ("granted", True)
            await view_settled(srv, user, "phones-3")
            assert [m for m, _ in _zset(node_url, user_keys(user)[1])] == [b"phones-3"]

        asyncio.run(scenario())
    finally:
        stop_server(proc)


def _now() -> int:
    return int(time.time() * 1000)
