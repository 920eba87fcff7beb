"""Event in → profile in Redis → feed recomputed → diff on every connection of that user."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.integration.harness import FeedClient, Server, new_id, sse_client, version_key, ws_client


def leads_with(item: str) -> Callable[[FeedClient], bool]:
    """A predicate: an update followed the first snapshot and ``item`` now heads the list.

    The update may be a diff or, when that is no larger, a snapshot (docs/PROTOCOL.md).
    """
    return lambda s: len(s.frames) > 1 and s.ids[:1] == [item]


def test_event_reaches_websocket_as_diff(server: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        await server.crowd("phones-1", "phones-2", "phones-3")
        async with ws_client(server, user) as tab:
            await server.view(user, "phones-1")
            await tab.wait(leads_with("phones-2"))
            assert tab.frames[0]["type"] == "snapshot"
            assert tab.frames[1]["type"] == "diff"  # a 12-item list: the diff is the smaller
            assert "phones-1" not in tab.ids  # the item being viewed is not recommended
            assert len(tab.ids) == len(set(tab.ids)) <= 12

    asyncio.run(scenario())


def test_event_reaches_sse(server: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        await server.crowd("books-1", "books-2")
        async with sse_client(server, user) as stream:
            await server.view(user, "books-1")
            await stream.wait(leads_with("books-2"))
            assert any(f["type"] == "diff" for f in stream.frames)

    asyncio.run(scenario())


def test_all_tabs_of_a_user_are_updated_and_no_one_else(server: Server) -> None:
    async def scenario() -> None:
        user, other = new_id("u"), new_id("u")
        await server.crowd("shoes-1", "shoes-2", "shoes-3")
        async with (
            ws_client(server, user) as tab1,
            ws_client(server, user) as tab2,
            sse_client(server, user) as tab3,
            ws_client(server, other) as stranger,
        ):
            await server.view(user, "shoes-1")
            for tab in (tab1, tab2, tab3):
                await tab.wait(leads_with("shoes-2"))
            assert tab1.items == tab2.items == tab3.items
            assert tab1.version == tab2.version == tab3.version
            # Barrier: the stranger's own next update arrives after anything published before
            # it, so if the user's update had leaked, it would be in these frames already.
            await server.crowd("books-5", "books-0")
            await server.view(other, "books-5")
            await stranger.wait(leads_with("books-0"))
            assert all(
                f["type"] == "snapshot" or f["base"] != tab1.version for f in stranger.frames
            )
            assert stranger.version is not None and tab1.version is not None
            assert stranger.version[0] != tab1.version[0]

    asyncio.run(scenario())


def test_pull_api_equals_last_pushed_state(server: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        await server.crowd("phones-4", "phones-5", "books-4")
        async with ws_client(server, user) as tab:
            await server.view(user, "phones-4", "books-4")
            await tab.wait(leads_with("phones-5"))
            # The stored version may be ahead of what has arrived yet; every stored version is
            # pushed, so the tab reaches it, and must have held exactly the pulled list there.
            pulled = await server.feed(user)
            key = version_key(pulled["version"])
            await tab.wait(lambda s: key in s.states)
            assert tab.states[key] == pulled["items"]

    asyncio.run(scenario())


def test_duplicate_event_id_changes_nothing(server: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        await server.crowd("books-7", "books-8")
        event = {"event_id": new_id("e"), "user_id": user, "type": "view", "item_id": "books-7"}
        async with ws_client(server, user) as tab:
            assert (await server.post([event])).status_code == 202
            await tab.wait(leads_with("books-8"))
            before = await server.feed(user)
            assert (await server.post([event, event])).status_code == 202
            await server.view(user, "books-7")  # a new event id on the same item: no list change
            after = await server.feed(user)
            assert after["version"] == before["version"]

    asyncio.run(scenario())


def test_bought_and_out_of_stock_items_are_never_recommended(server: Server) -> None:
    async def scenario() -> None:
        user = new_id("u")
        await server.crowd("shoes-7", "shoes-8", "shoes-9")
        async with ws_client(server, user) as tab:
            await server.view(user, "shoes-7")
            await tab.wait(leads_with("shoes-8"))
            assert "shoes-9" not in tab.ids  # out of stock in the test catalog
            r = await server.post(
                [
                    {
                        "event_id": new_id("e"),
                        "user_id": user,
                        "type": "purchase",
                        "item_id": "shoes-8",
                    }
                ]
            )
            assert r.status_code == 202
            await tab.wait(lambda s: "shoes-8" not in s.ids)

    asyncio.run(scenario())


def test_decay_survives_a_jump_of_decades(server: Server) -> None:
    """An event long before the decay origin, then one now: the scores are rescaled, not lost."""

    async def scenario() -> None:
        user = new_id("u")
        await server.crowd("books-3", "books-6")
        old = {"event_id": new_id("e"), "user_id": user, "type": "view", "item_id": "phones-6"}
        r = await server.post([{**old, "ts": 978_307_200_000}])  # 2001-01-01
        assert r.status_code == 202
        async with ws_client(server, user) as tab:
            await server.view(user, "books-3")
            await tab.wait(leads_with("books-6"))
            # The 2001 view decayed to nothing next to today's: books lead the affinity.
            assert all(f["type"] != "error" for f in tab.others)

    asyncio.run(scenario())
