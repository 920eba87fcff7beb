"""CPU microseconds per event of each process (worker, Redis, Kafka) draining the REES46 replay.

Load A of issue 13. Fills a fresh topic (4 partitions) with ``--events`` events of
the REES46 sample log (examples/catalog/rees46-events.tsv, derived from
../shared/data/rees46-2019oct-sample), every copy of the log with fresh user and event ids
(:func:`benchmarks.kafka_throughput.fill`), BEFORE the worker starts; then ONE ``pushrec worker``
(demo catalog, a flushed Redis) drains it as fast as it can. Completion is counted by the worker's
``pushrec_events_processed_total``. Over the window from 10 % to 90 % of the events processed
(start-up and the tail left out) it reports the drain rate and the CPU seconds, and CPU µs per
event, of: the worker (/proc/<pid>/stat), every Redis process (INFO ``used_cpu_user`` +
``used_cpu_sys``; with ``--redis-cluster`` every master and replica from CLUSTER NODES), the Kafka
broker (its pid file under ``PUSHREC_TEST_KAFKA_DIR``; a shared broker also carries other
traffic), and the rest of the machine (/proc/stat), beside the load average; then Redis's commands
per event (INFO commandstats; commands a script runs are counted both on their own line and
inside the script's time).

``--profile`` adds where the time goes, at a cost to the figures of that run (do a separate
run): a SLOWLOG sample of the window's last ``--slowlog`` commands per Redis node, which tells
the scripts apart by sha (named after their file), and a py-spy profile of the worker over the
window (when py-spy is installed), summarized by function.

Load B (10,000 visitors sharing trending items) is :mod:`benchmarks.kafka_latency`, which prints
the same CPU µs per event per process for each step of its sweep.

    PUSHREC_TEST_KAFKA_BOOTSTRAP=127.0.0.1:19092 PUSHREC_TEST_REDIS_URL=redis://127.0.0.1:16379/0 \\
        .venv/bin/python -m benchmarks.event_cost [--events 100000] [--profile] \\
        [--redis-cluster redis://127.0.0.1:7000]

Only interfaces every version has are used (the CLI, environment settings, /metrics, Kafka,
Redis INFO), so the same file measures the code before and after a change. Plot:
``benchmarks/out/event_cost.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from benchmarks._cpu import (
    CommandStats,
    RedisNodes,
    busy_seconds,
    commandstats_delta,
    kafka_pid,
    load_average,
    machine_ticks,
    process_cpu,
)
from benchmarks._plot import figure, save
from benchmarks._profile import Profile
from benchmarks._server import ROOT, node_process, processed_total
from benchmarks.kafka_throughput import fill

OUT = ROOT / "benchmarks/out"
EVERY_S = 0.25  # sampling period of the drain


@dataclass(frozen=True)
class Reading:
    """Counters at one instant of the drain."""

    t: float  # seconds since the worker was ready
    processed: float
    procs: dict[str, float]  # CPU seconds so far: worker, Kafka
    redis: dict[str, float]  # CPU seconds so far, per Redis node
    ticks: tuple[int, int]


def read(address: str, pids: dict[str, int], nodes: RedisNodes, started: float) -> Reading:
    return Reading(
        time.perf_counter() - started,
        processed_total(address),
        process_cpu(pids),
        nodes.cpu(),
        machine_ticks(),
    )


def print_costs(
    args: argparse.Namespace,
    a: Reading,
    b: Reading,
    redis_cmds: CommandStats,
    loads: tuple[str, str],
) -> dict[str, float]:
    """The tables of the window between readings ``a`` and ``b``; returns µs per event by
    process, for the plot."""
    events = b.processed - a.processed
    wall = b.t - a.t
    print(
        f"\nREES46 replay, {args.events:,} events (4 partitions) drained by one "
        f"worker; window {args.window[0]:.0%}→{args.window[1]:.0%} of the events: "
        f"{events:,.0f} events in {wall:.1f} s = **{events / wall:,.0f} events/s**; "
        f"load average (1/5/15 min) {loads[0]} at the start, {loads[1]} at the end"
    )
    print("| process | CPU s in window | CPU µs per event | cores busy |\n|---|---|---|---|")
    costs: dict[str, float] = {}
    rows: list[tuple[str, float]] = [("worker", b.procs["worker"] - a.procs["worker"])]
    redis_total = 0.0
    for node in b.redis:
        spent = b.redis[node] - a.redis[node]
        redis_total += spent
        rows.append((f"Redis {node}", spent))
    if len(b.redis) > 1:
        rows.append(("Redis, all nodes", redis_total))
    if "Kafka" in b.procs:
        rows.append(("Kafka broker (shared)", b.procs["Kafka"] - a.procs["Kafka"]))
    measured = sum(s for name, s in rows if name != "Redis, all nodes")
    rows.append(("rest of the machine", max(0.0, busy_seconds(a.ticks, b.ticks) - measured)))
    for name, spent in rows:
        costs[name] = spent * 1e6 / max(1.0, events)
        print(f"| {name} | {spent:.2f} | {costs[name]:,.0f} | {spent / wall:.2f} |")
    costs["Redis"] = redis_total * 1e6 / max(1.0, events)
    total_usec = sum(usec for _calls, usec in redis_cmds.values())
    print(
        "\nRedis commands over the window (INFO commandstats, all nodes; commands a script "
        "runs are also inside the script's time, so the µs column does not add up)"
    )
    print("| command | calls per event | µs per event | µs per call |\n|---|---|---|---|")
    for name, (calls, usec) in sorted(redis_cmds.items(), key=lambda kv: -kv[1][1])[: args.top]:
        print(
            f"| {name} | {calls / max(1.0, events):.2f} | {usec / max(1.0, events):.1f} "
            f"| {usec / calls:.1f} |"
        )
    print(f"(top-level and script commands' µs together: {total_usec / max(1.0, events):.0f})")
    return costs


def plot(samples: list[Reading], costs: dict[str, float], path: Path) -> None:
    fig, (left, right) = figure(2)
    ts = [s.t for s in samples[1:]]
    left.plot(
        ts,
        [(b.processed - a.processed) / (b.t - a.t) for a, b in itertools.pairwise(samples)],
    )
    left.axhline(10_000, color="g", ls="--", label="target 10,000/s")
    left.set_xlabel("seconds since the worker was ready")
    left.set_ylabel("events/s drained")
    left.set_title("one worker draining the REES46 replay")
    left.legend()
    names = [n for n in costs if n != "Redis" and n != "rest of the machine"]
    right.barh(names, [costs[n] for n in names])
    right.axvline(60, color="g", ls="--", label="Redis target 60 µs")
    right.set_xlabel("CPU µs per event")
    right.set_title("CPU per event, by process")
    right.legend()
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--redis-cluster",
        metavar="URL",
        help="a node of a Redis Cluster: the worker runs with PUSHREC_REDIS_CLUSTER=1 on it",
    )
    parser.add_argument("--window", type=float, nargs=2, default=(0.1, 0.9))
    parser.add_argument("--profile", action="store_true", help="SLOWLOG sample and py-spy")
    parser.add_argument(
        "--slowlog", type=int, default=200_000, help="entries per Redis node: several batches"
    )
    parser.add_argument("--top", type=int, default=15, help="rows of the per-command tables")
    parser.add_argument("--plot", type=Path, default=OUT / "event_cost.png")
    args = parser.parse_args()
    bootstrap = os.environ["PUSHREC_TEST_KAFKA_BOOTSTRAP"]
    if args.redis_cluster:
        redis_url, cluster_env = args.redis_cluster, {"PUSHREC_REDIS_CLUSTER": "1"}
    else:
        redis_url = os.environ["PUSHREC_TEST_REDIS_URL"].rsplit("/", 1)[0] + "/10"
        cluster_env = {}
    nodes = RedisNodes.connect(redis_url, cluster=bool(args.redis_cluster))
    nodes.flush()
    topic = f"cost-{uuid.uuid4().hex[:8]}"
    fill_s = asyncio.run(fill(bootstrap, topic, args.events, False))
    print(f"produced {args.events:,} events to {topic} in {fill_s:.1f} s", flush=True)
    env = {"PUSHREC_KAFKA_TOPIC": topic, "PUSHREC_KAFKA_GROUP": f"g-{topic}"} | cluster_env
    loads = [load_average()]
    with node_process(bootstrap, redis_url, ("worker",), env) as worker:
        pids = {"worker": worker.pid}
        broker = kafka_pid()
        if broker is not None:
            pids["Kafka"] = broker
        print(f"pids: {pids}; Redis nodes: {', '.join(nodes.nodes)}", flush=True)
        started = time.perf_counter()
        samples: list[Reading] = []
        low, high = (args.events * w for w in args.window)
        edges: list[Reading] = []
        stats: list[CommandStats] = []
        profile = Profile(nodes, args.slowlog, OUT / "event_cost_worker.pyspy.txt")
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            reading = read(worker.address, pids, nodes, started)
            samples.append(reading)
            if not edges and reading.processed >= low:
                edges.append(reading)
                stats.append(nodes.commandstats())
                if args.profile:
                    profile.start(worker.pid)
            if len(edges) == 1 and reading.processed >= high:
                edges.append(reading)
                stats.append(nodes.commandstats())
                loads.append(load_average())
                if args.profile:
                    profile.stop()
            if reading.processed >= args.events:
                break
            time.sleep(EVERY_S)
        else:
            raise SystemExit(f"the worker processed {samples[-1].processed:,.0f} events in 1 h")
    total = samples[-1]
    print(
        f"all {args.events:,} events processed {total.t:.1f} s after the worker was ready "
        f"({args.events / total.t:,.0f} events/s incl. start and tail)"
    )
    window = commandstats_delta(stats[1], stats[0])
    costs = print_costs(args, edges[0], edges[1], window, (loads[0], loads[1]))
    if args.profile:
        events = edges[1].processed - edges[0].processed
        profile.print(args.top, window, events, costs["worker"])
    plot(samples, costs, args.plot)


if __name__ == "__main__":
    main()
