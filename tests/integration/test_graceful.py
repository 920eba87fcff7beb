"""Graceful shutdown (push/server.py): on SIGTERM a web node turns readiness false first, keeps
serving through its drain delay, then closes every push connection with 4000 spread over the
configured window, and exits cleanly; a worker commits what it processed and leaves its consumer
group (real Kafka)."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.integration.conftest import ROOT, start_server
from tests.integration.harness import SCALE, api, metric, new_id
from tests.integration.kafka_cluster import PARTITIONS, cluster

SOCKETS = 10
WINDOW_S = 2.0
DRAIN_S = 0.6


def test_sigterm_drains_then_spreads_the_reconnect_closes_over_the_window() -> None:
    proc, srv = start_server(
        {
            "PUSHREC_SHUTDOWN_WINDOW_S": str(WINDOW_S),
            "PUSHREC_DRAIN_DELAY_S": str(DRAIN_S),
            "PUSHREC_LOG_LEVEL": "info",  # to see the runtime stop in the log
        },
        embedded=True,
    )
    log_path = ROOT / ".pytest_cache" / f"server-{srv.address.rsplit(':', 1)[1]}.log"

    async def scenario() -> None:
        sockets = []
        for _ in range(SOCKETS):
            ws = await ws_connect(f"ws://{srv.address}/v1/ws?token={srv.token(new_id('g'))}")
            await ws.recv()  # hello
            sockets.append(ws)

        async def closed_at(ws: object) -> tuple[float, int | None, str | None]:
            assert hasattr(ws, "recv")
            try:
                async with asyncio.timeout(30 * SCALE):
                    while True:
                        await ws.recv()
            except ConnectionClosed:
                pass
            return time.monotonic(), ws.close_code, ws.close_reason  # type: ignore[attr-defined]

        waiting = [asyncio.create_task(closed_at(ws)) for ws in sockets]
        signalled = time.monotonic()
        proc.terminate()
        # Readiness turns false at once, while the node still serves (the drain delay).
        async with httpx.AsyncClient(base_url=srv.http) as client:
            async with asyncio.timeout(DRAIN_S * 0.8 * SCALE + 2):
                while True:
                    r = await client.get("/readyz")
                    if r.status_code == 503:
                        break
                    await asyncio.sleep(0.02)
        assert r.json()["checks"]["accepting"] is False
        results = await asyncio.gather(*waiting)
        times = sorted(t for t, _, _ in results)
        assert {code for _, code, _ in results} == {4000}
        assert all(reason and "reconnect" in reason for _, _, reason in results)
        assert times[0] - signalled >= DRAIN_S * 0.9  # nobody was closed during the drain
        # Spread: the i-th of n closes at about i x window / n after the drain.
        assert times[-1] - times[0] >= WINDOW_S * (SOCKETS - 1) / SOCKETS * 0.7

    try:
        asyncio.run(scenario())
        # uvicorn re-raises the signal after its graceful shutdown, so supervisors see it.
        assert proc.wait(30 * SCALE) in (0, -signal.SIGTERM)
        log = log_path.read_text()
        assert "runtime_stopped" in log and "Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_on_a_worker_commits_its_work_and_leaves_the_group_at_once() -> None:
    """A worker stopped by SIGTERM commits every offset it processed and leaves its consumer
    group before exiting: the group is empty at once (no session timeout to wait out), and a
    worker started afterwards has nothing to replay."""
    with cluster() as c:
        web = c.start("web", "serve", "--no-worker")
        web.load_catalog()
        worker = c.start("w1", "worker")
        users = [new_id("u") for _ in range(12)]
        events = [
            {"event_id": new_id("e"), "user_id": u, "type": "view", "item_id": item}
            for u in users
            for item in ("books-1", "toys-2")
        ]

        async def posted_and_processed() -> None:
            r = await web.post(events)
            assert r.status_code == 202, r.text
            async with api(worker) as client, asyncio.timeout(30 * SCALE):
                # Polling: the count lives in another process.
                while await metric(worker, "pushrec_events_processed_total", client) < len(events):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)

        asyncio.run(posted_and_processed())
        assert c.stop("w1") in (0, -signal.SIGTERM)
        committed, ends, state, members = asyncio.run(_group(c.bootstrap, c.topic, c.group))
        assert committed == ends and sum(ends.values()) == len(events)
        assert state == "Empty" and members == 0
        # A new worker starts exactly after the committed offsets: nothing is processed again.
        again = c.start("w2", "worker")
        time.sleep(3 * SCALE)
        assert asyncio.run(metric(again, "pushrec_events_processed_total")) == 0


async def _group(
    bootstrap: str, topic: str, group: str
) -> tuple[dict[int, int], dict[int, int], str, int]:
    """(committed offset per partition, end offset per partition, group state, members)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await admin.start()
    await consumer.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        committed = {tp.partition: o.offset for tp, o in offsets.items() if tp.topic == topic}
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = {tp.partition: o for tp, o in (await consumer.end_offsets(parts)).items()}
        committed = {p: committed.get(p, 0) for p in ends}
        [described] = await admin.describe_consumer_groups([group])
        _, _, state, _, _, members, *_ = described.groups[0]
        return committed, ends, state, len(members)
    finally:
        await consumer.stop()
        await admin.close()
