"""Faults on real parts under running nodes: Redis restarted without persistence."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import redis

from push.redis_server import redis_binary
from tests.integration.harness import SCALE, ws_client
from tests.integration.kafka_cluster import cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def redis_server(port: int) -> subprocess.Popen[bytes]:
    """A redis-server of this test's own on ``port`` (no persistence), once it answers."""
    proc = subprocess.Popen(
        [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tempfile.gettempdir(),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            redis.Redis(port=port).ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


@contextmanager
def private_redis() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A private Redis for one test; stopped at the end."""
    port = _free_port()
    proc = redis_server(port)
    try:
        yield port, proc
    finally:
        proc.terminate()
        proc.wait()


def test_redis_restart_starts_a_new_epoch_and_clients_recover() -> None:
    with private_redis() as (port, proc), cluster() as c:
        c.redis_url = f"redis://127.0.0.1:{port}/0"
        web = c.start("web", "serve", "--no-worker")
        c.start("worker", "worker")
        web.load_catalog()

        async def scenario() -> None:
            user = "fault-user"
            await web.crowd("phones-1", "phones-2", "phones-3")
            async with ws_client(web, user) as tab:
                await web.view(user, "phones-1")
                await tab.wait(lambda s: len(s.frames) > 1 and s.ids[:1] == ["phones-2"], 15)
                epoch = tab.version[0] if tab.version else None

                # Redis goes away and comes back empty (no persistence).
                proc.terminate()
                await asyncio.to_thread(proc.wait)
                restarted = await asyncio.to_thread(redis_server, port)
                try:
                    async with asyncio.timeout(30 * SCALE):
                        while True:  # the shop loads its catalog again once Redis answers
                            try:
                                async with httpx.AsyncClient() as client:
                                    r = await client.put(
                                        f"{web.http}/v1/items",
                                        json=[
                                            {
                                                "item_id": f"phones-{n}",
                                                "title": f"P{n}",
                                                "category": "phones",
                                            }
                                            for n in range(10)
                                        ],
                                        headers=web.admin,
                                    )
                                if r.status_code == 200:
                                    break
                            except httpx.HTTPError:
                                pass
                            await asyncio.sleep(0.2)
                    await web.crowd("phones-4", "phones-5", "phones-6")
                    await web.view(user, "phones-4")
                    # The stored feed is gone: the next version starts a new epoch, and the
                    # client gets it as a snapshot (no diff can bridge two epochs).
                    await tab.wait(
                        lambda s: (
                            s.version is not None
                            and s.version[0] != epoch
                            and s.ids[:1] == ["phones-5"]
                        ),
                        30,
                    )
                    assert tab.frames[-1]["type"] == "snapshot" or any(
                        f["type"] == "snapshot" and f["version"][0] != epoch for f in tab.frames
                    )
                    async with httpx.AsyncClient() as client:
                        assert (await client.get(f"{web.http}/healthz")).status_code == 200
                finally:
                    restarted.terminate()
                    restarted.wait()

        asyncio.run(scenario())
