"""Does one worker's resident memory level off under steady load? RSS series + tracemalloc diff.

Starts ONE real ``pushrec worker`` (Kafka ``PUSHREC_TEST_KAFKA_BOOTSTRAP``, a fresh topic; Redis
database 11 of ``PUSHREC_TEST_REDIS_URL``, flushed; demo catalog) inside a small wrapper that
starts ``tracemalloc`` (``--frames``) and writes a snapshot when sent SIGUSR1 (a benchmark-only
hook: the server has no debug endpoint). Then produces the REES46 sample log to the topic at
``--rate`` events/s for ``--minutes``, every copy of the log with fresh user ids (many distinct
users, as in production), samples the worker's RSS (/proc/<pid>/status VmRSS) every
``--every`` seconds, snapshots the heap after the first sample window and at the end, and prints
the RSS series and the top allocation sites that grew between the two snapshots.

Run: ``PUSHREC_TEST_KAFKA_BOOTSTRAP=127.0.0.1:29092 PUSHREC_TEST_REDIS_URL=redis://… \\
.venv/bin/python -m benchmarks.worker_rss [--minutes 5] [--rate 100]``. Plot:
``benchmarks/out/worker_rss.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import redis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from benchmarks._plot import figure, save
from benchmarks._server import ROOT, _node, processed_total
from push.demo import WARMUP_FILE, read_warmup

SNAPSHOT_DIR = ROOT / "benchmarks/out/worker_rss"


def child() -> None:
    """The worker, with tracemalloc on and a SIGUSR1 snapshot hook (``--child`` mode)."""
    frames = int(os.environ.get("WORKER_RSS_FRAMES", "0"))
    if frames:
        tracemalloc.start(frames)
        count = [0]

        def dump(_signum: int, _frame: object) -> None:
            count[0] += 1
            tracemalloc.take_snapshot().dump(str(SNAPSHOT_DIR / f"snap{count[0]}.bin"))

        signal.signal(signal.SIGUSR1, dump)
    from push.cli import main as cli_main

    sys.exit(cli_main(["worker"]))


@contextlib.contextmanager
def worker(bootstrap: str, redis_url: str, extra: dict[str, str]) -> Iterator[tuple[str, int]]:
    """This module's ``--child`` (a real ``pushrec worker``); yields its address and pid once
    ready."""
    with _node(bootstrap, redis_url, ("--child",), extra, module="benchmarks.worker_rss") as node:
        yield node


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def produce(bootstrap: str, topic: str, rate: float, seconds: float) -> int:
    """Send the log at ``rate`` events/s for ``seconds``; fresh user ids per copy of the log."""
    base = read_warmup(WARMUP_FILE, int(time.time() * 1000))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1)
    await producer.start()
    started = time.monotonic()
    sent = 0
    try:
        while time.monotonic() - started < seconds:
            tag = uuid.uuid4().hex[:6]
            for e in base:
                due = started + sent / rate
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())
                if time.monotonic() - started >= seconds:
                    break
                event = replace(e, event_id=f"{tag}-{e.event_id}", user_id=f"{tag}-{e.user_id}")
                await producer.send(
                    topic,
                    event.pack(),
                    key=event.user_id.encode(),
                    headers=[("content-type", b"application/msgpack")],
                )
                sent += 1
    finally:
        await producer.stop()
    return sent


def snapshot(pid: int, n: int) -> tracemalloc.Snapshot:
    path = SNAPSHOT_DIR / f"snap{n}.bin"
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 120
    size = -1
    while time.monotonic() < deadline:  # written when the file stops growing
        if path.exists() and path.stat().st_size == size and size > 0:
            break
        size = path.stat().st_size if path.exists() else -1
        time.sleep(1)
    return tracemalloc.Snapshot.load(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=100.0, help="events/s")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--frames", type=int, default=8, help="tracemalloc frames (0: off)")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks/out/worker_rss.png")
    args = parser.parse_args()
    if args.child:
        child()
        return
    bootstrap = os.environ["PUSHREC_TEST_KAFKA_BOOTSTRAP"]
    redis_url = os.environ["PUSHREC_TEST_REDIS_URL"].rsplit("/", 1)[0] + "/11"
    redis.Redis.from_url(redis_url).flushdb()
    SNAPSHOT_DIR.mkdir(parents=True, exist_ok=True)
    for old in SNAPSHOT_DIR.glob("snap*.bin"):
        old.unlink()
    topic = f"rss-{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
        await admin.close()

    asyncio.run(create())
    env = {
        "PUSHREC_KAFKA_TOPIC": topic,
        "PUSHREC_KAFKA_GROUP": f"g-{topic}",
        "WORKER_RSS_FRAMES": str(args.frames),
    }
    seconds = args.minutes * 60
    series: list[tuple[float, int, float]] = []
    with worker(bootstrap, redis_url, env) as (address, pid):
        loop_done: list[int] = []

        async def run() -> None:
            task = asyncio.create_task(produce(bootstrap, topic, args.rate, seconds))
            started = time.monotonic()
            first = None
            while not task.done():
                await asyncio.sleep(args.every)
                t = time.monotonic() - started
                series.append((t, rss_kib(pid), processed_total(address)))
                print(
                    f"{t:6.0f} s  RSS {series[-1][1] / 1024:7.1f} MiB  events {series[-1][2]:.0f}"
                )
                if first is None and args.frames and t >= 60:
                    first = await asyncio.to_thread(snapshot, pid, 1)
            loop_done.append(await task)
            if first is not None:
                last = await asyncio.to_thread(snapshot, pid, 2)
                grown = last.compare_to(first, "traceback")
                print(f"\ntop {args.top} allocation sites that grew (first snapshot at ~60 s):")
                for stat in grown[: args.top]:
                    print(f"\n{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks")
                    for line in stat.traceback.format()[-6:]:
                        print("   ", line)

        asyncio.run(run())
    print(f"\nproduced {loop_done[0]} events at {args.rate:.0f}/s")
    (t0, r0, _), (t1, r1, _) = series[0], series[-1]
    print(
        f"RSS {r0 / 1024:.1f} MiB at {t0:.0f} s → {r1 / 1024:.1f} MiB at {t1:.0f} s "
        f"({(r1 - r0) / 1024 / ((t1 - t0) / 60):+.2f} MiB/min)"
    )
    fig, (ax,) = figure()
    ax.plot([t for t, _, _ in series], [r / 1024 for _, r, _ in series])
    ax.set_xlabel("seconds")
    ax.set_ylabel("worker RSS, MiB")
    ax.set_title(f"one worker at {args.rate:.0f} events/s, distinct users")
    save(fig, args.plot)


if __name__ == "__main__":
    main()
