"""/metrics exposes every series the operations guide relies on, and they move with traffic.

Two real set-ups: a single node on Redis with the in-process bus (WebSocket and SSE clients
receiving pushes), and a node consuming a real Kafka topic (consumer lag per partition, a poison
record dead-lettered). The dashboard in examples/grafana/pushrec.json is built on these names.
"""

from __future__ import annotations

import asyncio
import json
import re

import httpx

from tests.integration.harness import (
    Server,
    api,
    metric,
    new_id,
    sse_client,
    ws_client,
)
from tests.integration.kafka_cluster import PARTITIONS, cluster

#: Every family a node exposes from start-up (the dashboard's and alerts' inputs).
FAMILIES = [
    "pushrec_collector_accepted_total",
    "pushrec_collector_rejected_total",
    "pushrec_events_processed_total",
    "pushrec_recompute_seconds",
    "pushrec_recompute_lane_events",
    "pushrec_event_to_push_seconds",
    "pushrec_frames_sent_total",
    "pushrec_bytes_sent_total",
    "pushrec_connections",
    "pushrec_conflations_total",
    "pushrec_connection_closes_total",
    "pushrec_redis_seconds",
    "pushrec_kafka_consumer_lag",
    "pushrec_dead_letters_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "python_gc_collections_total",
    "python_info",
]


def _families(text: str) -> set[str]:
    """The metric families named by ``# TYPE`` lines (present even before a first sample)."""
    return {line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def test_every_series_is_exposed_and_the_push_latency_moves_per_transport(server: Server) -> None:
    user = new_id("m")

    async def scenario() -> None:
        async with api(server) as client:
            text = (await client.get("/metrics")).text
            assert set(FAMILIES) <= _families(text), set(FAMILIES) - _families(text)
            before = {
                t: await metric(server, "pushrec_event_to_push_seconds_count", client, transport=t)
                for t in ("websocket", "sse")
            }
            frames_before = await metric(server, "pushrec_frames_sent_total", client)
            async with ws_client(server, user) as ws, sse_client(server, user) as sse:
                assert (
                    await metric(server, "pushrec_connections", client, transport="websocket") >= 1
                )
                assert await metric(server, "pushrec_connections", client, transport="sse") >= 1
                start_ws, start_sse = ws.version, sse.version
                for item in ("books-1", "books-2", "toys-3"):
                    await server.view(user, item)
                await ws.wait(lambda s: s.version != start_ws)
                await sse.wait(lambda s: s.version != start_sse)
                text = (await client.get("/metrics")).text
            for transport in ("websocket", "sse"):
                after = await metric(
                    server, "pushrec_event_to_push_seconds_count", client, transport=transport
                )
                assert after > before[transport], transport
                # The histogram holds real durations: below the top bucket, not negative.
                total = await metric(
                    server, "pushrec_event_to_push_seconds_sum", client, transport=transport
                )
                assert 0 <= total < 30 * after
            assert await metric(server, "pushrec_frames_sent_total", client) > (frames_before)
            assert await metric(server, "pushrec_recompute_seconds_count", client) > 0
            assert await metric(server, "pushrec_events_processed_total", client, outcome="ok") > 0
            # Scripts go in pipelines (sessions/scripts.py): one round trip, one observation.
            assert await metric(server, "pushrec_redis_seconds_count", client, command="pipeline")
            assert (
                await metric(server, "pushrec_bytes_sent_total", client, transport="websocket") > 0
            )
            assert await metric(server, "process_resident_memory_bytes", client) > 0
            # Nothing personal in the labels: no user id anywhere in the exposition.
            assert user not in text

    asyncio.run(scenario())


def test_kafka_lag_per_partition_and_dead_lettered_events_are_exposed() -> None:
    with cluster() as c:
        node = c.start("a")
        node.load_catalog()
        user = new_id("u")

        async def scenario() -> None:
            async with ws_client(node, user) as ws:
                start = ws.version
                views = [
                    {"event_id": new_id("e"), "user_id": user, "type": "view", "item_id": item}
                    for item in ("books-1", "books-2", "toys-3")
                ]
                await c.produce(
                    [(b"poison", b"{not json", [])]
                    + [(user.encode(), json.dumps(v).encode(), []) for v in views]
                )
                await ws.wait(lambda s: s.version != start, within_s=15.0)
            async with httpx.AsyncClient(base_url=node.http) as client:
                # The lag gauge is refreshed about once a second, after a poll.
                async with asyncio.timeout(15.0):
                    while True:
                        text = (await client.get("/metrics")).text
                        found = re.findall(
                            rf'pushrec_kafka_consumer_lag\{{partition="(\d+)",topic="{c.topic}"\}}'
                            r" (\S+)",
                            text,
                        )
                        if len(found) == PARTITIONS and all(float(v) == 0 for _, v in found):
                            break
                        await asyncio.sleep(0.2)
                assert sorted(int(p) for p, _ in found) == list(range(PARTITIONS))
                dead = await metric(
                    node, "pushrec_events_processed_total", client, outcome="dead_lettered"
                )
                assert dead == 1
                pushed = await metric(
                    node, "pushrec_event_to_push_seconds_count", client, transport="websocket"
                )
                assert pushed >= 1

        asyncio.run(scenario())
