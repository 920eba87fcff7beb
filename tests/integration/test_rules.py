"""Business rules on the real server and a real Redis: ``GET/PUT /v1/rules``, the rules file, and
the next event's feed following them (docs/RULES.md)."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from streams.rules_store import RULES_KEY
from tests.integration.conftest import redis_database, start_server, stop_server, sync_redis
from tests.integration.harness import Server, api, metric, new_id, view_settled, ws_client

EVERYTHING = [f"{c}-{n}" for c in ("phones", "shoes", "books") for n in range(8)]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """This module's Redis (database 6 of ``PUSHREC_TEST_REDIS_URL``, or a private one)."""
    with redis_database(6) as url:
        client = sync_redis(url)
        client.delete(RULES_KEY)  # a clean slate on a reused external database
        client.close()
        yield url


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text("rules: []\n")
    return path


@pytest.fixture(scope="module")
def node(redis_url: str, rules_file: Path) -> Iterator[Server]:
    """A server with a rules file, the test catalog, and trending in every category (so a
    feed mixes phones, shoes and books)."""
    proc, srv = start_server(
        {"PUSHREC_REDIS_URL": redis_url, "PUSHREC_RULES_FILE": str(rules_file)}, isolated=True
    )
    try:
        srv.load_catalog()
        asyncio.run(view_settled(srv, new_id("crowd"), *EVERYTHING))
        yield srv
        # Announced, so every node following this Redis drops the module's rules: on a cluster
        # (one database) that includes the session's shared server.
        asyncio.run(put_rules(srv, "rules: []\n"))
    finally:
        stop_server(proc)


def _doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


async def put_rules(srv: Server, body: str, *, status: int = 200) -> dict[str, Any]:
    async with api(srv) as client:
        r = await client.put(
            "/v1/rules", content=body, headers={**srv.admin, "Content-Type": "application/yaml"}
        )
        assert r.status_code == status, r.text
        answer: dict[str, Any] = r.json()
        return answer


async def get_rules(srv: Server) -> dict[str, Any]:
    async with api(srv) as client:
        r = await client.get("/v1/rules", headers=srv.admin)
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer


def categories(feed: dict[str, Any]) -> set[str]:
    return {p["category"] for p in feed["items"]}


NO_SHOES = """
rules:
  - name: no-shoes
    when: {category: "sho*"}
    action: exclude
"""


def test_put_rules_then_the_next_feed_follows_them(node: Server) -> None:
    async def scenario() -> None:
        await put_rules(node, "rules: []\n")
        before = await view_settled(node, new_id("u"), "shoes-1", "phones-2")
        assert "shoes" in categories(before), before  # control: shoes without the rule

        answer = await put_rules(node, _doc(NO_SHOES))
        assert answer["rules"] == [
            {"name": "no-shoes", "action": "exclude", "when": {"category": ["sho*"]}}
        ]
        assert answer["version"] >= 1
        assert await get_rules(node) == answer

        user = new_id("u")
        async with ws_client(node, user) as tab:
            feed = await view_settled(node, user, "shoes-1", "phones-2")
            assert feed["items"] and "shoes" not in categories(feed), feed
            await tab.wait(lambda s: s.version == feed["version"])
            assert not any(i.startswith("shoes") for i in tab.ids)

    asyncio.run(scenario())


def test_a_pinned_item_sits_in_its_slot(node: Server) -> None:
    async def scenario() -> None:
        await put_rules(
            node,
            _doc("""
            rules:
              - {name: hero, action: pin, item: books-7, slot: 2}
              - {name: phones-up, action: boost, when: {category: phones}, factor: 50}
            """),
        )
        feed = await view_settled(node, new_id("u"), "books-7", "shoes-3")
        ids = [p["id"] for p in feed["items"]]
        assert ids[1] == "books-7" and ids.count("books-7") == 1, ids
        assert ids[0].startswith("phones"), ids  # the boost put a phone first
        assert await metric(node, "pushrec_rule_hits_total", action="pin") >= 1

    asyncio.run(scenario())


def test_a_bad_put_is_refused_with_its_line_and_the_old_rules_stay(node: Server) -> None:
    async def scenario() -> None:
        good = await put_rules(node, _doc(NO_SHOES))
        bad = _doc("""
        rules:
          - name: no-shoes
            when: {category: "sho*"}
            action: exclude
          - name: up
            when: {category: books}
            action: boost
            factor: 0
        """)
        answer = await put_rules(node, bad, status=400)
        assert answer == {
            "error": "bad_rules",
            "message": "rules.yaml:8: boost.factor must be a number > 0",
            "line": 8,
        }
        syntax = await put_rules(node, "rules:\n  - name: a\n   action: x\n", status=400)
        assert syntax["error"] == "bad_rules" and syntax["line"] == 3
        unknown = "rules:\n  - {name: p, action: pin, item: nope-1, slot: 1}\n"
        refused = await put_rules(node, unknown, status=400)
        assert refused["message"] == "rules.yaml:2: pin.item 'nope-1' is not in the catalog"
        assert await get_rules(node) == good
        feed = await view_settled(node, new_id("u"), "shoes-1", "phones-2")
        assert feed["items"] and "shoes" not in categories(feed), feed

    asyncio.run(scenario())


def test_json_bodies_and_idempotent_puts(node: Server) -> None:
    async def scenario() -> None:
        doc = {
            "rules": [{"name": "cheap", "action": "include_only", "when": {"price": {"max": 13}}}]
        }
        async with api(node) as client:
            first = await client.put("/v1/rules", json=doc, headers=node.admin)
            again = await client.put("/v1/rules", json=doc, headers=node.admin)
        assert first.status_code == again.status_code == 200
        assert first.json() == again.json()  # same rules: no new version
        assert first.json()["rules"][0]["when"] == {"price": {"max": 13.0}}
        feed = await view_settled(node, new_id("u"), "books-1", "phones-2")
        assert feed["items"] and all(p["price"] <= 13 for p in feed["items"]), feed

    asyncio.run(scenario())


def test_rules_need_the_admin_key(node: Server) -> None:
    with httpx.Client(base_url=node.http) as client:
        for method in ("GET", "PUT"):
            assert client.request(method, "/v1/rules", content="rules: []").status_code == 401
            wrong = {"X-API-Key": "not-the-admin-key-at-all"}
            r = client.request(method, "/v1/rules", content="rules: []", headers=wrong)
            assert r.status_code == 401
            visitor = node.bearer(new_id("u"))
            r = client.request(method, "/v1/rules", content="rules: []", headers=visitor)
            assert r.status_code == 403


def test_the_rules_file_hot_reloads(node: Server, rules_file: Path) -> None:
    async def scenario() -> None:
        held = await get_rules(node)
        await asyncio.to_thread(
            rules_file.write_text,
            _doc("""
            rules:
              - name: file-no-phones
                when: {category: phones}
                action: exclude
            """),
        )
        async with asyncio.timeout(5 * node.scale):
            # Polling: the state lives in another process, there is no event to await here.
            while (current := await get_rules(node))["version"] == held["version"]:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert [r["name"] for r in current["rules"]] == ["file-no-phones"]
        feed = await view_settled(node, new_id("u"), "phones-1", "books-2")
        assert feed["items"] and "phones" not in categories(feed), feed

        invalid = await metric(
            node, "pushrec_rules_reloads_total", source="file", outcome="invalid"
        )
        await asyncio.to_thread(
            rules_file.write_text, "rules:\n  - name: x\n    action: pin\n    item: books-1\n"
        )
        async with asyncio.timeout(5 * node.scale):
            while (  # noqa: ASYNC110 - polling another process
                await metric(node, "pushrec_rules_reloads_total", source="file", outcome="invalid")
                == invalid
            ):
                await asyncio.sleep(0.1)
        assert await get_rules(node) == current  # the bad file changed nothing

    asyncio.run(scenario())


def test_a_second_node_applies_the_same_rules(node: Server, redis_url: str) -> None:
    proc, second = start_server({"PUSHREC_REDIS_URL": redis_url}, isolated=True)

    async def scenario() -> None:
        assert (await get_rules(second))["version"] == (await get_rules(node))["version"]
        answer = await put_rules(
            node,
            _doc("rules:\n  - {name: only-books, action: include_only, when: {category: books}}\n"),
        )
        async with asyncio.timeout(5 * node.scale):
            while (await get_rules(second))["version"] != answer["version"]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        # The second node computes this user's feed (its own in-process bus) with the new rules.
        feed = await view_settled(second, new_id("u"), "phones-1", "shoes-2")
        assert feed["items"] and categories(feed) == {"books"}, feed

    try:
        asyncio.run(scenario())
    finally:
        stop_server(proc)
