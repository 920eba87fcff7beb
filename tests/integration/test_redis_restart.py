"""Redis restarted empty under running nodes: open pages keep a good list (issue 12, defect 9).

A Redis without persistence comes back empty: no catalog, no profiles, no trending, no feeds.
The nodes still hold the catalog in their mirrors; they must write it back rather than adopt
the empty one, and must not push an open page a list worse than the one it holds (an empty strip
recomputed from nothing), while a deliberate catalog change still propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from typing import Any

import httpx
import redis

from tests.integration.conftest import start_server, stop_server
from tests.integration.harness import SCALE, FeedClient, Server, new_id, ws_client
from tests.integration.kafka_cluster import cluster
from tests.integration.test_faults import private_redis, redis_server

#: Long enough for every reconnect path (broker gap, catalog follow, 0.5 s to 5 s backoffs) to
#: have run: today's code pushes the empty strip about 4 s after the restart.
QUIET_S = 8.0
#: The small catalog of Server.load_catalog: 30 items.
CATALOG = 30


def _catalog_ids(port: int) -> list[str]:
    with redis.Redis(port=port) as client:
        return sorted(i.decode() for i in client.zrange("pr:items", 0, -1))


async def _await_catalog(port: int) -> None:
    """Until the restarted Redis holds the whole catalog again (written back by a node)."""
    async with asyncio.timeout(20 * SCALE):
        # Polling: the write-back happens in another process, there is no event to await.
        while len(await asyncio.to_thread(_catalog_ids, port)) < CATALOG:  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def _frames_within(tab: FeedClient, within_s: float) -> list[dict[str, Any]]:
    """The frames ``tab`` receives within ``within_s`` (scaled): awaits frames, and returns
    early once it saw several (no blind sleep past a frame)."""
    start = len(tab.frames)
    with contextlib.suppress(TimeoutError):
        await tab.wait(lambda s: len(s.frames) > start + 3, within_s)
    return tab.frames[start:]


def _restart_empty(port: int, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    """Stop the Redis at ``port`` and start it again, empty (no persistence)."""
    proc.terminate()
    proc.wait()
    return redis_server(port)


async def _hold_full_feed(server: Server, user: str, tab: FeedClient) -> None:
    await server.view(user, "phones-1", "books-1", "shoes-1")
    await tab.wait(lambda s: len(s.frames) > 1 and len(s.ids) >= 4, 15)


async def _survives_restart(
    server: Server, user: str, tab: FeedClient, port: int, proc: subprocess.Popen[bytes]
) -> subprocess.Popen[bytes]:
    """Restart Redis empty under ``tab``; check the page keeps a list no worse than it held and
    the catalog comes back by itself; returns the new Redis process."""
    held = list(tab.ids)
    restarted = await asyncio.to_thread(_restart_empty, port, proc)
    frames = await _frames_within(tab, QUIET_S)
    for frame in frames:
        if frame["type"] == "snapshot":
            assert len(frame["items"]) >= len(held), (frame["items"], held)
    assert len(tab.ids) >= len(held), (tab.ids, held)
    await _await_catalog(port)
    return restarted


async def _learns_again(server: Server, user: str, tab: FeedClient) -> None:
    """With the catalog back (nothing reloaded by hand), new events make full feeds again: the
    neighbours learnt after the restart lead the user's next list."""
    await server.crowd("phones-4", "phones-5", "phones-6")
    await server.view(user, "phones-4")
    await tab.wait(lambda s: "phones-5" in s.ids, 15)
    assert all(p["title"] for p in tab.items)


def test_single_node_writes_its_catalog_back_and_keeps_the_pages() -> None:
    with private_redis() as (port, proc):
        node, server = start_server({"PUSHREC_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
        try:
            server.load_catalog()
            user = new_id("restart")

            async def scenario() -> None:
                await server.crowd("phones-1", "phones-2", "phones-3")
                async with ws_client(server, user) as tab:
                    await _hold_full_feed(server, user, tab)
                    restarted = await _survives_restart(server, user, tab, port, proc)
                    try:
                        await _learns_again(server, user, tab)
                    finally:
                        restarted.terminate()
                        restarted.wait()

            asyncio.run(scenario())
        finally:
            stop_server(node)


def test_web_and_worker_resync_the_pages_with_a_good_list() -> None:
    """Kafka mode: the web node's broker resubscribes after the restart and resyncs every open
    page from what Redis holds, which is nothing: the snapshot must still carry a good list
    (the one the page holds, as the first version of a new epoch), not one recomputed from the
    emptied profile. A deliberate catalog change still reaches the page afterwards."""
    with private_redis() as (port, proc), cluster() as c:
        c.redis_url = f"redis://127.0.0.1:{port}/0"
        web = c.start("web", "serve", "--no-worker")
        c.start("worker", "worker")
        web.load_catalog()
        user = new_id("restart")

        async def scenario() -> None:
            await web.crowd("phones-1", "phones-2", "phones-3")
            async with ws_client(web, user) as tab:
                await _hold_full_feed(web, user, tab)
                epoch = tab.version[0] if tab.version else None
                restarted = await _survives_restart(web, user, tab, port, proc)
                try:
                    # The page was resynced: a new epoch, carrying the list it held.
                    await tab.wait(lambda s: s.version is not None and s.version[0] != epoch, 15)
                    # The restored feed is stored and indexed: taking an item out of stock
                    # still reaches the page, as a diff on the restored version.
                    gone = tab.ids[0]
                    async with httpx.AsyncClient() as client:
                        r = await client.put(
                            f"{web.http}/v1/items",
                            json=[{"item_id": gone, "category": "phones", "in_stock": False}],
                            headers=web.admin,
                        )
                    assert r.status_code == 200, r.text
                    await tab.wait(lambda s: gone not in s.ids, 15)
                    assert tab.frames[-1]["type"] == "diff"
                    await _learns_again(web, user, tab)
                finally:
                    restarted.terminate()
                    restarted.wait()

        asyncio.run(scenario())
