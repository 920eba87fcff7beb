"""Sustained events/s one worker process consumes from Kafka through Redis to stored diffs.

Fills a fresh topic (4 partitions) with N events replayed from the REES46 sample (fresh event
and user ids per copy, so nothing is a duplicate), then starts ONE `pushrec worker` process on
a fresh Redis database (demo catalog) and samples its /metrics until every event is processed.
The rate is taken between 10 % and 90 % of the events, to leave out start-up and the tail.

Needs Kafka and Redis: run it as
    scripts/services.sh run .venv/bin/python -m benchmarks.kafka_throughput [--events 60000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path

import redis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from benchmarks._plot import figure, save
from benchmarks._server import ROOT, processed_total, worker_process
from push.demo import WARMUP_FILE, read_warmup


async def fill(bootstrap: str, topic: str, events: int, distinct_users: bool) -> float:
    """Create ``topic`` and produce ``events`` events; returns the seconds it took."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    await admin.close()
    base = read_warmup(WARMUP_FILE, int(time.time() * 1000))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks=1)
    await producer.start()
    started = time.perf_counter()
    try:
        sent = 0
        while sent < events:
            tag = uuid.uuid4().hex[:6]
            futures = []
            for e in base[: events - sent]:
                # --distinct-users: every event its own user, so no two events of a poll share a
                # user and nothing coalesces (the worst case for the worker).
                user = f"{tag}-{e.event_id}" if distinct_users else f"{tag}-{e.user_id}"
                event = replace(e, event_id=f"{tag}-{e.event_id}", user_id=user)
                futures.append(
                    await producer.send(
                        topic,
                        event.pack(),
                        key=event.user_id.encode(),
                        headers=[("content-type", b"application/msgpack")],
                    )
                )
            await asyncio.gather(*futures)
            sent += len(futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


def _redis_cpu(store: redis.Redis) -> float:
    info = store.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument(
        "--distinct-users", action="store_true", help="one event per user (nothing coalesces)"
    )
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    suffix = "_distinct" if args.distinct_users else ""
    plot = args.plot or ROOT / f"docs/benchmarks/kafka_throughput{suffix}.png"
    bootstrap = os.environ["PUSHREC_TEST_KAFKA_BOOTSTRAP"]
    redis_url = os.environ["PUSHREC_TEST_REDIS_URL"].rsplit("/", 1)[0] + "/13"
    redis.Redis.from_url(redis_url).flushdb()
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    fill_s = asyncio.run(fill(bootstrap, topic, args.events, args.distinct_users))
    print(f"produced {args.events} events in {fill_s:.1f} s")
    samples: list[tuple[float, float]] = []
    store = redis.Redis.from_url(redis_url)
    redis_cpu0 = _redis_cpu(store)
    with worker_process(bootstrap, topic, redis_url) as (address, cpu):
        started = time.perf_counter()
        while True:
            done = processed_total(address)
            samples.append((time.perf_counter() - started, done))
            if done >= args.events:
                break
            time.sleep(0.25)
        worker_cpu = cpu()
    redis_cpu = _redis_cpu(store) - redis_cpu0
    t10 = next(t for t, n in samples if n >= 0.1 * args.events)
    t90 = next(t for t, n in samples if n >= 0.9 * args.events)
    rate = 0.8 * args.events / (t90 - t10)
    total = samples[-1][0]
    print("\n| metric | value |\n|---|---|")
    print(
        f"| events | {args.events} ({'one per user' if args.distinct_users else 'REES46 users'}) |"
    )
    print(f"| sustained rate (10 %→90 %) | **{rate:,.0f} events/s** |")
    print(f"| all events, wall | {total:.1f} s ({args.events / total:,.0f} events/s incl. start) |")
    print(f"| worker process CPU (user+sys) | {worker_cpu:.1f} s |")
    print(f"| Redis server CPU (user+sys) | {redis_cpu:.1f} s |")
    fig, (ax,) = figure()
    ts = [t for t, _ in samples]
    rates = [0.0] + [(b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(samples)]
    ax.plot(ts, rates)
    ax.axhline(10_000, color="g", ls="--", label="target 10,000/s")
    ax.axhline(3_000, color="r", ls="--", label="floor 3,000/s")
    ax.set_xlabel("seconds since the worker started")
    ax.set_ylabel("events/s")
    ax.set_title("one worker process: Kafka → Redis → stored diffs")
    ax.legend()
    save(fig, plot)


if __name__ == "__main__":
    main()
