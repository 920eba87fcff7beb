"""Faults on real parts under running nodes: Redis restarted empty, Kafka restarted."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import redis

from push.redis_server import redis_binary
from tests.integration.conftest import ROOT
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


def _restart_kafka(env: dict[str, str]) -> None:
    """Stop the test broker and start it again on its existing log (topics, offsets kept)."""
    script = str(ROOT / "scripts" / "kafka.sh")
    subprocess.run([script, "stop"], env=env, check=True, capture_output=True, timeout=60)
    subprocess.run(
        [script, "start"],
        env={**env, "KAFKA_KEEP_DATA": "1"},
        check=True,
        capture_output=True,
        timeout=120,
    )


def _broker_env() -> dict[str, str]:
    names = (
        "PUSHREC_TEST_KAFKA_DIR",
        "PUSHREC_TEST_KAFKA_PORT",
        "PUSHREC_TEST_KAFKA_CONTROLLER_PORT",
    )
    if not all(os.environ.get(n) for n in names):
        message = "needs the broker of scripts/services.sh (PUSHREC_TEST_KAFKA_DIR, ...)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return {
        **os.environ,
        "KAFKA_DIR": os.environ["PUSHREC_TEST_KAFKA_DIR"],
        "KAFKA_PORT": os.environ["PUSHREC_TEST_KAFKA_PORT"],
        "KAFKA_CONTROLLER_PORT": os.environ["PUSHREC_TEST_KAFKA_CONTROLLER_PORT"],
    }


def test_kafka_restart_under_load_loses_no_accepted_event() -> None:
    """The collector answers 503 while Kafka is away and the client retries the same events;
    after the restart every accepted event is applied exactly once."""
    broker = _broker_env()
    with cluster() as c:
        node = c.start("a")
        node.load_catalog()
        users = [f"kr-{uuid.uuid4().hex[:6]}-{n}" for n in range(4)]
        start = int(time.time() * 1000)
        events: list[dict[str, object]] = [
            {
                "event_id": f"kr-{uuid.uuid4().hex}",
                "user_id": users[i % 4],
                "type": "view",
                "item_id": f"{('phones', 'shoes', 'books')[i % 3]}-{i % 10}",
                "ts": start + i,
            }
            for i in range(120)
        ]
        expected = {u: sum(e["user_id"] == u for e in events) for u in users}

        async def post_until_accepted(batch: list[dict[str, object]]) -> None:
            async with asyncio.timeout(120 * SCALE), httpx.AsyncClient(timeout=15) as client:
                while True:
                    try:
                        r = await client.post(
                            f"{node.http}/v1/events", json=batch, headers=node.admin
                        )
                        if r.status_code == 202:
                            return
                        assert r.status_code == 503 and "retry-after" in r.headers, r.text
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.3)

        async def scenario() -> None:
            for n in range(0, 60, 10):
                await post_until_accepted(events[n : n + 10])
            restart = asyncio.create_task(asyncio.to_thread(_restart_kafka, broker))
            for n in range(60, 120, 10):
                await post_until_accepted(events[n : n + 10])
            await restart
            store = c.redis()
            async with asyncio.timeout(90 * SCALE):
                while any(  # noqa: ASYNC110 - the state lives in other processes
                    store.zcard(f"pr:{{u:{u}}}:dedup") < n for u, n in expected.items()
                ):
                    await asyncio.sleep(0.2)
            for u, n in expected.items():
                assert store.zcard(f"pr:{{u:{u}}}:dedup") == n

        asyncio.run(scenario())
