"""Kafka produce → client frame latency across processes, at a given load and socket count.

A web node (`serve --no-worker`) holds C WebSocket clients, one per visitor; a separate
`pushrec worker` consumes the topic (warmed up first with the REES46 replay). Events for those
visitors are produced straight to Kafka at R events/s; each is timed from just before the
produce call to the arrival of that visitor's next frame. Events that leave a list unchanged
send no frame and are counted apart.

    scripts/services.sh run .venv/bin/python -m benchmarks.kafka_latency [--rate N] [--clients N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from websockets.asyncio.client import ClientConnection, connect

from benchmarks._plot import figure, latency_cdf, save
from benchmarks._server import ROOT, SECRET, node_process, processed_total
from push.demo import WARMUP_FILE, read_warmup
from sessions.tokens import TokenVerifier

HEADERS = [("content-type", b"application/msgpack")]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def warm(bootstrap: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    events = read_warmup(WARMUP_FILE, int(time.time() * 1000))
    futures = [
        await producer.send(topic, e.pack(), key=e.user_id.encode(), headers=HEADERS)
        for e in events
    ]
    await asyncio.gather(*futures)
    await producer.stop()
    return len(events)


async def measure(
    web: str, bootstrap: str, topic: str, clients: int, rate: int, seconds: float
) -> dict[str, Any]:
    verifier = TokenVerifier(SECRET)
    catalog = [
        json.loads(line)["item_id"] for line in (ROOT / "examples/catalog/rees46.jsonl").open()
    ]
    rng = random.Random(5)
    users = [f"lat-{uuid.uuid4().hex[:8]}" for _ in range(clients)]
    feeds: dict[str, list[str]] = {u: [] for u in users}
    pending: dict[str, float] = {}
    latencies: list[float] = []
    sockets: list[ClientConnection] = []

    async def pump(user: str, ws: ClientConnection) -> None:
        async for message in ws:
            now = time.perf_counter()
            frame = json.loads(message)
            if frame["type"] == "snapshot":
                feeds[user] = [p["id"] for p in frame["items"]]
            elif frame["type"] == "diff":
                feeds[user] = [i for i in (frame["items"] or {})] or feeds[user]
            if frame["type"] in {"snapshot", "diff"} and user in pending:
                latencies.append((now - pending.pop(user)) * 1000)

    tasks = []
    for user in users:
        ws = await connect(f"ws://{web}/v1/ws?token={verifier.mint(user)}", max_queue=64)
        sockets.append(ws)
        tasks.append(asyncio.create_task(pump(user, ws)))
    await asyncio.sleep(2)  # let every snapshot arrive
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, enable_idempotence=True)
    await producer.start()
    sent = unchanged = 0
    started = time.perf_counter()
    total = int(rate * seconds)
    from streams.events import Event

    for n in range(total):
        due = started + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        user = users[n % clients]
        if user in pending:
            unchanged += 1  # its previous event changed nothing: no frame came
            pending.pop(user)
        options = feeds[user] if feeds[user] and rng.random() < 0.7 else catalog
        event = Event(uuid.uuid4().hex, user, "view", rng.choice(options), int(time.time() * 1000))
        pending[user] = time.perf_counter()
        await producer.send(topic, event.pack(), key=user.encode(), headers=HEADERS)
        sent += 1
    achieved = sent / (time.perf_counter() - started)
    await asyncio.sleep(2)
    await producer.stop()
    for ws in sockets:
        await ws.close()
    for t in tasks:
        t.cancel()
    return {"lat": latencies, "sent": sent, "unchanged": unchanged + len(pending), "rate": achieved}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs/benchmarks/kafka_latency.png")
    args = parser.parse_args()
    bootstrap = os.environ["PUSHREC_TEST_KAFKA_BOOTSTRAP"]
    redis_url = os.environ["PUSHREC_TEST_REDIS_URL"].rsplit("/", 1)[0] + "/12"
    redis.Redis.from_url(redis_url).flushdb()
    topic = f"lat-{uuid.uuid4().hex[:8]}"
    warmup = asyncio.run(warm(bootstrap, topic))
    env = {"PUSHREC_KAFKA_TOPIC": topic, "PUSHREC_KAFKA_GROUP": f"g-{topic}"}
    with (
        node_process(bootstrap, redis_url, ("worker",), env) as worker,
        node_process(bootstrap, redis_url, ("serve", "--no-worker"), env) as web,
    ):
        while processed_total(worker) < warmup:
            time.sleep(0.2)
        res = asyncio.run(measure(web, bootstrap, topic, args.clients, args.rate, args.seconds))
    lat = res["lat"]
    print(
        f"\nKafka produce → client frame, {args.clients} WebSocket clients on a web node, "
        f"a separate worker, {res['rate']:.0f} events/s offered for {args.seconds:.0f} s"
    )
    print("| metric | value |\n|---|---|")
    print(f"| events produced | {res['sent']} ({res['unchanged']} left the list unchanged) |")
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)):
        print(f"| latency {name} | {pct(lat, q):.2f} ms |")
    print(f"| latency max | {max(lat):.2f} ms |")
    fig, (ax,) = figure()
    latency_cdf(
        ax,
        lat,
        "Kafka produce → client frame (ms)",
        f"{args.clients} sockets, {res['rate']:.0f} events/s, web + worker processes",
    )
    save(fig, args.plot)


if __name__ == "__main__":
    main()
