"""Kafka produce → client frame latency across processes, against offered load, with C sockets.

A web node (`serve --no-worker`) holds C WebSocket clients, one per visitor; a separate
`pushrec worker` consumes the topic (warmed up first with the REES46 replay). Both run on the
same Kafka and Redis (scripts/services.sh). The clients live in P client processes (``--procs``,
default one per 2,500 sockets; :mod:`benchmarks._ws_client`, bound to the loopback source
addresses 127.0.0.2, 127.0.0.3, …), each holding its share of the sockets and producing, straight
to Kafka, the events of its own visitors: one global schedule at the offered rate, interleaved
over the processes, visitors taken round-robin. Each event is timed in its client process, from
just before the produce call to the arrival of that visitor's next ``diff`` or ``snapshot`` frame
(taken on the process's event loop as the bytes arrive), so no clock is shared across processes.
Visitors view an item of their current list 70 % of the time, any catalog item otherwise; the
clients answer the server's protocol pings. Events after which no frame came once the worker
caught up left the list unchanged; an event followed by the visitor's next one before any frame
came is counted as superseded (unchanged, or its frame was late: only under overload, when the
latency exceeds C / rate seconds, the next frame is then timed against the newer event).

``--rates R1 R2 …`` runs one step per rate, one after another on the same web node, worker and
sockets (an unreported warm-up step first, a ``--settle`` pause before each step; every step's
events are new events), and prints one row per step: the produce rate achieved, events,
unchanged, superseded, latency percentiles, and the CPU seconds each process used during the step
(/proc/<pid>/stat: web node, worker, Redis, the Kafka broker, the client processes, and the rest
of the machine's busy time from /proc/stat — the host is shared), then the server's own view: the
web node's event→push histogram, the worker's lane time and Redis's EVALSHA statistics, and
(issue 13) the CPU µs per event of each process and Redis's costliest commands per event (INFO
commandstats; :mod:`benchmarks.event_cost` gives the same for the REES46 replay). A step
ends when the worker has processed every event produced in it, plus one second for the last
frames. Without ``--rates`` it is one step at ``--rate`` (the single-point table and CDF).

``--redis-cluster URL`` (a node of a Redis Cluster, e.g. scripts/redis-cluster.sh's) runs the web
node and the worker with ``PUSHREC_REDIS_CLUSTER=1`` on that cluster (flushed first) instead of a
database of ``PUSHREC_TEST_REDIS_URL``. Redis's CPU is then read per node (INFO ``used_cpu_user``
+ ``used_cpu_sys`` of every master and replica, :class:`benchmarks._cpu.RedisNodes`, as
:mod:`benchmarks.event_cost` does): the ``Redis`` columns are all nodes together, and the cost
table adds each node's CPU µs per event and the busiest master's share of all Redis CPU (how
evenly the shards share the load).

    scripts/services.sh run .venv/bin/python -m benchmarks.kafka_latency [--rate N] [--clients N]
    scripts/services.sh run .venv/bin/python -m benchmarks.kafka_latency \
        --rates 100 300 1000 2000 --clients 10000
    SERVICES_CLUSTER=1 scripts/services.sh run .venv/bin/python -m benchmarks.kafka_latency \
        --rates 100 300 1000 2000 --clients 10000 --redis-cluster redis://127.0.0.1:17000/0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from benchmarks._cpu import (
    CommandStats,
    RedisNodes,
    commandstats_delta,
    kafka_pid,
    load_average,
    machine_ticks,
)
from benchmarks._plot import EVENT_TARGETS, figure, latency_cdf, save
from benchmarks._profile import Profile
from benchmarks._prom import delta, histogram, quantile
from benchmarks._server import (
    ROOT,
    cpu_seconds,
    node_process,
    processed_total,
    websocket_connections,
)
from benchmarks._ws_client import FrameClient, new_stats, open_many, raise_nofile, sources
from push.demo import WARMUP_FILE, read_warmup
from streams.events import Event

HEADERS = [("content-type", b"application/msgpack")]
IN_FLIGHT = 64  # handshakes under way at once, per client process
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999))
CPU_COLUMNS = ("web", "worker", "Redis", "Kafka", "clients", "others")


def node_ms(buckets: dict[float, float], q: float) -> str:
    """A quantile of a node's histogram, in ms; beyond its largest finite bucket: "> bound"."""
    top = max((le for le in buckets if le != float("inf")), default=0.0)
    value = quantile(buckets, q)
    return f"> {top * 1000:,.0f} ms" if value >= top else f"{value * 1000:.1f} ms"


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


@dataclass
class Shard:
    """One client process's visitors: their current lists and the events awaiting a frame."""

    users: list[str]
    catalog: list[str]
    rng: random.Random
    feeds: list[list[str]] = field(init=False)
    pending: dict[int, float] = field(default_factory=dict)  # visitor → perf_counter at produce
    latencies: list[float] = field(default_factory=list)
    superseded: int = 0
    cursor: int = 0

    def __post_init__(self) -> None:
        self.feeds = [[] for _ in self.users]

    def frame(self, user: int, now: float, payload: bytes) -> None:
        """A ``snapshot`` or ``diff`` of ``user`` arrived at ``now`` (perf_counter)."""
        sent = self.pending.pop(user, None)
        if sent is not None:
            self.latencies.append((now - sent) * 1000)
        frame = json.loads(payload)
        if frame["type"] == "snapshot":
            self.feeds[user] = [p["id"] for p in frame["items"]]
        else:  # order: item ids, and [start, length] runs of the previous list
            old, new = self.feeds[user], []
            for part in frame["order"]:
                if isinstance(part, str):
                    new.append(part)
                else:
                    new.extend(old[part[0] : part[0] + part[1]])
            self.feeds[user] = new

    async def produce(
        self, producer: AIOKafkaProducer, topic: str, step: dict[str, Any], index: int, procs: int
    ) -> dict[str, Any]:
        """This process's share of one step: global event n is due at start + n / rate and is
        produced by process n % procs."""
        rate, start = step["rate"], step["start"]
        sent = 0
        for n in range(index, int(rate * step["seconds"]), procs):
            delay = start + n / rate - time.time()
            await asyncio.sleep(max(delay, 0))  # behind schedule: still let frames be read
            user = self.cursor % len(self.users)
            self.cursor += 1
            if self.pending.pop(user, None) is not None:
                self.superseded += 1  # no frame since its previous event: unchanged, or late
            feed = self.feeds[user]
            item = self.rng.choice(feed if feed and self.rng.random() < 0.7 else self.catalog)
            name = self.users[user]
            event = Event(uuid.uuid4().hex, name, "view", item, int(time.time() * 1000))
            self.pending[user] = time.perf_counter()
            await producer.send(topic, event.pack(), key=name.encode(), headers=HEADERS)
            sent += 1
        return {"sent": sent, "ended": time.time()}

    def collect(self) -> dict[str, Any]:
        """The step's latencies; its events still awaiting a frame once the worker caught up
        (unchanged); those followed by the visitor's next event before any frame came."""
        result = {
            "lat": self.latencies,
            "unchanged": len(self.pending),
            "superseded": self.superseded,
        }
        self.latencies, self.superseded = [], 0
        self.pending.clear()
        return result


class LatencyClient(FrameClient):
    """A visitor's socket: ready at its first snapshot; timestamps every snapshot and diff."""

    __slots__ = ("shard", "user")

    def __init__(
        self,
        request: bytes,
        ready: asyncio.Future[None],
        stats: dict[str, int],
        shard: Shard,
        user: int,
    ) -> None:
        super().__init__(request, ready, stats)
        self.shard = shard
        self.user = user

    def message(self, payload: bytes) -> None:
        now = time.perf_counter()
        if payload.startswith((b'{"type":"snapshot"', b'{"type":"diff"')):
            self.shard.frame(self.user, now, payload)
            self.resolve()


@dataclass(frozen=True)
class ShardSpec:
    """What a client process needs: the servers, its visitors and its place in the schedule."""

    web: str
    bootstrap: str
    topic: str
    users: list[str]
    addresses: list[str]
    index: int
    procs: int


def client_process(spec: ShardSpec, pipe: Connection) -> None:
    """In a client process: open the sockets, report, then run the steps the parent sends
    (``("step", {...})``, ``("collect",)``, ``("stop",)``), answering each on ``pipe``."""
    raise_nofile()
    asyncio.run(_client_main(spec, pipe))


async def _client_main(spec: ShardSpec, pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    catalog = [
        json.loads(line)["item_id"] for line in (ROOT / "examples/catalog/rees46.jsonl").open()
    ]
    shard = Shard(spec.users, catalog, random.Random(5 + spec.index))
    stats = new_stats()
    transports, report = await open_many(
        spec.web,
        spec.users,
        spec.addresses,
        lambda user, request, ready: LatencyClient(request, ready, stats, shard, user),
        in_flight=IN_FLIGHT,
    )
    pipe.send(report)
    producer = AIOKafkaProducer(
        bootstrap_servers=spec.bootstrap, linger_ms=0, enable_idempotence=True
    )
    await producer.start()
    try:
        while True:
            command = await loop.run_in_executor(None, pipe.recv)
            if command[0] == "step":
                step = command[1]
                pipe.send(await shard.produce(producer, spec.topic, step, spec.index, spec.procs))
            elif command[0] == "collect":
                pipe.send(shard.collect() | {"stats": dict(stats)})
            else:
                break
    finally:
        await producer.stop()
        for transport in transports:
            transport.close()


@dataclass
class Rig:
    """The processes under measurement, the Redis they share and the client processes."""

    web: str
    worker: str
    nodes: RedisNodes
    pids: dict[str, list[int]]
    pipes: list[Connection]

    def read(self) -> dict[str, Any]:
        """Counters to difference over a step: CPU seconds per process, the machine's ticks,
        the nodes' own histograms and Redis's EVALSHA statistics."""
        return {
            "cpu": {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.pids.items()},
            "redis": self.nodes.cpu(),
            "ticks": machine_ticks(),
            "push": histogram(self.web, "pushrec_event_to_push_seconds", transport="websocket"),
            "lane": histogram(self.worker, "pushrec_recompute_seconds"),
            "commands": self.nodes.commandstats(),
            "processed": processed_total(self.worker),
        }

    def ask(self, command: tuple[Any, ...]) -> list[dict[str, Any]]:
        for pipe in self.pipes:
            pipe.send(command)
        return [pipe.recv() for pipe in self.pipes]


def run_step(rig: Rig, rate: int, seconds: float, profile: Profile | None = None) -> dict[str, Any]:
    """One step at ``rate`` events/s for ``seconds``: it ends once the worker processed every
    event produced in it, plus one second for the last frames. ``profile``: sampled over it."""
    r0, wall0 = rig.read(), time.monotonic()
    if profile is not None:
        profile.start(rig.pids["worker"][0])
    start = time.time() + 0.5
    ends = rig.ask(("step", {"rate": rate, "seconds": seconds, "start": start}))
    sent = sum(e["sent"] for e in ends)
    ended = max(e["ended"] for e in ends)
    deadline = time.monotonic() + 300
    while processed_total(rig.worker) < r0["processed"] + sent and time.monotonic() < deadline:
        time.sleep(0.2)
    backlog_s = time.time() - ended
    time.sleep(1.0)  # the last frames
    collected = rig.ask(("collect",))
    if profile is not None:
        profile.stop()
    r1, wall = rig.read(), time.monotonic() - wall0
    cpu = {name: r1["cpu"][name] - r0["cpu"][name] for name in r1["cpu"]}
    # Every Redis node's own CPU (INFO): on a cluster, the Redis column is their sum.
    redis_nodes = {name: r1["redis"][name] - r0["redis"][name] for name in r1["redis"]}
    if rig.nodes.cluster:
        cpu["Redis"] = sum(redis_nodes.values())
    idle, total = (b - a for a, b in zip(r0["ticks"], r1["ticks"], strict=True))
    busy = (total - idle) / os.sysconf("SC_CLK_TCK")
    cpu["others"] = max(0.0, busy - sum(cpu.values()))  # readings a tick apart: never below 0
    commands: CommandStats = commandstats_delta(r1["commands"], r0["commands"])
    return {
        "rate": rate,
        "achieved": sent / (ended - start),
        "sent": sent,
        "unchanged": sum(c["unchanged"] for c in collected),
        "superseded": sum(c["superseded"] for c in collected),
        "lat": [ms for c in collected for ms in c["lat"]],
        "cpu": cpu,
        "redis_nodes": redis_nodes,
        "idle": idle / max(1, total),
        "wall": wall,
        "backlog": backlog_s,
        "push": delta(r1["push"], r0["push"]),
        "lane": delta(r1["lane"], r0["lane"]),
        "evalsha": commands.get("evalsha", (0, 0)),
        "commands": commands,
        "load": load_average(),
        "stats": collected,
    }


def measure(
    args: argparse.Namespace,
    web: str,
    worker: str,
    nodes: RedisNodes,
    extra: dict[str, list[int]],
) -> Any:
    """Open the sockets from the client processes, run every step, stop the clients."""
    ctx = multiprocessing.get_context("spawn")
    run = uuid.uuid4().hex[:6]
    users = [f"lat-{run}-{n}" for n in range(args.clients)]
    addresses = sources(args.sources)
    procs, pipes = [], []
    for index in range(args.procs):
        spec = ShardSpec(
            web,
            args.bootstrap,
            args.topic,
            users[index :: args.procs],
            addresses,
            index,
            args.procs,
        )
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=client_process, args=(spec, child), daemon=True)
        proc.start()
        procs.append(proc)
        pipes.append(parent)
    clients = [os.getpid(), *(p.pid or 0 for p in procs)]
    rig = Rig(web, worker, nodes, extra | {"clients": clients}, pipes)
    steps = []
    try:
        opened = [pipe.recv() for pipe in pipes]
        connected = sum(o["opened"] for o in opened)
        errors = [o["first_error"] for o in opened if o["first_error"]]
        gauge = websocket_connections(web)
        print(
            f"{connected} of {args.clients} sockets connected (server gauge {gauge}) in "
            f"{max(o['seconds'] for o in opened):.0f} s over {args.procs} client processes"
            + (f"; first error: {errors[0]}" if errors else ""),
            flush=True,
        )
        if args.warmup:  # JIT, connections and caches warm; not reported
            print(f"warm-up: {args.rates[0]} events/s for {args.warmup:.0f} s …", flush=True)
            run_step(rig, args.rates[0], args.warmup)
        for rate in args.rates:
            time.sleep(args.settle)
            print(f"step: {rate} events/s for {args.seconds:.0f} s …", flush=True)
            profile = args.profiler if rate == args.profile_rate else None
            step = run_step(rig, rate, args.seconds, profile)
            steps.append(step)
            lat = step["lat"]
            print(
                f"  achieved {step['achieved']:.0f}/s, {step['sent']} events, "
                f"{step['unchanged']} unchanged, {step['superseded']} superseded, "
                f"p50 {pct(lat, 0.5):.1f} ms, "
                f"p99 {pct(lat, 0.99):.1f} ms, idle {step['idle']:.0%}",
                flush=True,
            )
        gauge_end = websocket_connections(web)
    finally:
        for pipe in pipes:
            pipe.send(("stop",))
        for proc in procs:
            proc.join(60)
    stats = steps[-1]["stats"] if steps else []
    lost = sum(s["stats"]["lost"] for s in stats)
    pings = sum(s["stats"]["pings"] for s in stats)
    return {
        "connected": connected,
        "gauge": gauge,
        "gauge_end": gauge_end,
        "lost": lost,
        "pings": pings,
        "steps": steps,
    }


def print_sweep(args: argparse.Namespace, res: dict[str, Any]) -> None:
    print(
        f"\nKafka produce → client frame, {res['connected']:,} WebSocket clients connected "
        f"(of {args.clients:,} asked; server gauge {res['gauge']:,} at the start, "
        f"{res['gauge_end']:,} at the end; {res['lost']} lost, {res['pings']:,} protocol pings "
        f"answered) over {args.procs} client processes and {args.sources} source addresses; "
        f"a web node and a separate worker; {args.seconds:.0f} s per step, "
        f"{args.settle:.0f} s pause before each step, after a {args.warmup:.0f} s warm-up step; "
        "CPU seconds per process over each step (until the worker caught up, plus 1 s), "
        "'others': the rest of the machine's busy time (other processes on the shared host)"
    )
    cpu_head = " | ".join(f"CPU s {name}" for name in CPU_COLUMNS)
    print(
        "| offered events/s | achieved | events | unchanged | superseded "
        "| p50 | p90 | p99 | p999 | max "
        f"| step wall s | {cpu_head} | machine idle |"
    )
    print("|" + "---|" * (12 + len(CPU_COLUMNS)))
    for step in res["steps"]:
        lat = step["lat"] or [float("nan")]
        ms = " | ".join(f"{pct(lat, q):.1f} ms" for _name, q in QUANTILES)
        cpu = " | ".join(f"{step['cpu'].get(name, float('nan')):.1f}" for name in CPU_COLUMNS)
        print(
            f"| {step['rate']:,} | {step['achieved']:,.0f} | {step['sent']:,} "
            f"| {step['unchanged']:,} | {step['superseded']:,} | {ms} | {max(lat):.1f} ms "
            f"| {step['wall']:.1f} "
            f"| {cpu} | {step['idle']:.0%} |"
        )
    print(
        "\nserver side, per step: the web node's own event→push histogram (Kafka record time → "
        "frame written, websocket), the worker's lane time (apply + recompute + store + publish "
        "of one lane), Redis EVALSHA (scripts) per event and its mean time, and how long after "
        "the last produce the worker caught up"
    )
    print(
        "| offered events/s | node event→push p50 | p99 | worker lane p50 | p99 "
        "| EVALSHA per event | µs per EVALSHA | Redis busy in EVALSHA | worker caught up after |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for step in res["steps"]:
        calls, usec = step["evalsha"]
        push, lane = step["push"], step["lane"]
        print(
            f"| {step['rate']:,} | {node_ms(push, 0.5)} | {node_ms(push, 0.99)} "
            f"| {node_ms(lane, 0.5)} | {node_ms(lane, 0.99)} | {calls / max(1, step['sent']):.2f} "
            f"| {usec / max(1, calls):.0f} | {usec / 1e6 / step['wall']:.0%} "
            f"| {step['backlog']:.1f} s |"
        )


def print_costs(args: argparse.Namespace, res: dict[str, Any]) -> None:
    """CPU µs per event of each process, and Redis's costliest commands per event, per step."""
    print(
        "\nCPU µs per event, per process, over each step (CPU seconds / events produced in it; "
        "Redis: the server process, or every node of a cluster; Kafka: the broker, shared with "
        "other traffic; 'others': the rest of the machine), and the load average (1/5/15 min) "
        "at the step's end"
    )
    head = " | ".join(f"{name} µs/event" for name in CPU_COLUMNS)
    print(f"| offered events/s | events | {head} | load average |")
    print("|" + "---|" * (3 + len(CPU_COLUMNS)))
    for step in res["steps"]:
        sent = max(1, step["sent"])
        cpu = " | ".join(
            f"{step['cpu'].get(name, float('nan')) * 1e6 / sent:,.0f}" for name in CPU_COLUMNS
        )
        print(f"| {step['rate']:,} | {step['sent']:,} | {cpu} | {step['load']} |")
    if args.redis_cluster:
        print_shards(res)
    print(
        "\nRedis commands per event, per step (INFO commandstats: calls and µs per event; "
        "commands a script runs are counted on their own and inside the script's µs)"
    )
    print("| offered events/s | command | calls per event | µs per event | µs per call |")
    print("|---|---|---|---|---|")
    for step in res["steps"]:
        sent = max(1, step["sent"])
        ranked = sorted(step["commands"].items(), key=lambda kv: -kv[1][1])[: args.top_commands]
        for name, (calls, usec) in ranked:
            print(
                f"| {step['rate']:,} | {name} | {calls / sent:.2f} | {usec / sent:.1f} "
                f"| {usec / calls:.1f} |"
            )
        rest = [stat for name, stat in step["commands"].items() if name != "evalsha"]
        calls, usec = sum(c for c, _u in rest), sum(u for _c, u in rest)
        print(
            f"| {step['rate']:,} | all but evalsha (mostly run by scripts) | {calls / sent:.2f} "
            f"| {usec / sent:.1f} | {usec / max(1, calls):.1f} |"
        )


def print_shards(res: dict[str, Any]) -> None:
    """Each Redis node's CPU µs per event over each step, and the busiest master's share of all
    Redis CPU (masters and replicas): 1/3 on 3 masters is an even spread."""
    names = sorted(res["steps"][0]["redis_nodes"]) if res["steps"] else []
    print(
        "\nRedis Cluster: CPU µs per event of each node over each step (INFO used_cpu_user + "
        "used_cpu_sys), and the busiest master's share of all Redis CPU (masters and replicas)"
    )
    print(f"| offered events/s | {' | '.join(names)} | busiest master's share |")
    print("|" + "---|" * (2 + len(names)))
    for step in res["steps"]:
        sent, spent = max(1, step["sent"]), step["redis_nodes"]
        masters = [spent[n] for n in names if n.endswith("master")]
        share = max(masters, default=0.0) / max(sum(spent.values()), 1e-9)
        cells = " | ".join(f"{spent[n] * 1e6 / sent:,.0f}" for n in names)
        print(f"| {step['rate']:,} | {cells} | {share:.0%} |")


def plot_sweep(args: argparse.Namespace, steps: list[dict[str, Any]], path: Path) -> None:
    fig, (left, right) = figure(2)
    rates = [s["rate"] for s in steps]
    for name, q, marker in (("p50", 0.5, "o"), ("p99", 0.99, "^"), ("p999", 0.999, "s")):
        left.plot(rates, [pct(s["lat"], q) for s in steps], marker=marker, label=name)
    left.axhline(3, color="g", ls="--", label="p50 target 3 ms")
    left.axhline(15, color="r", ls="--", label="p99 target 15 ms")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("offered events/s")
    left.set_ylabel("Kafka produce → client frame (ms)")
    left.set_title(f"latency vs offered load, {args.clients:,} sockets")
    left.legend(fontsize=8)
    for n, step in enumerate(steps):
        latency_cdf(
            right,
            step["lat"],
            "Kafka produce → client frame (ms)",
            f"CDF per offered rate, {args.clients:,} sockets",
            marks=() if n else EVENT_TARGETS,
            label=f"{step['rate']:,}/s",
        )
    right.legend(fontsize=7, loc="lower right")
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000, help="one step (the single-point mode)")
    parser.add_argument("--rates", type=int, nargs="+", help="a sweep: one step per rate")
    parser.add_argument("--clients", type=int, default=1000, help="WebSocket sockets (visitors)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per step")
    parser.add_argument("--settle", type=float, default=5.0, help="pause before each step (s)")
    parser.add_argument(
        "--warmup", type=float, default=10.0, help="an unreported first step at the first rate (s)"
    )
    parser.add_argument("--procs", type=int, default=0, help="client processes (0: 1 per 2,500)")
    parser.add_argument("--sources", type=int, default=4, help="loopback source addresses")
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument(
        "--top-commands", type=int, default=6, help="Redis commands per step in the cost table"
    )
    parser.add_argument(
        "--profile-rate",
        type=int,
        help="profile the step at this rate: SLOWLOG sample of Redis, py-spy of the worker "
        "(it costs CPU: that step's figures are not comparable)",
    )
    parser.add_argument("--slowlog", type=int, default=200_000, help="entries kept (profile)")
    parser.add_argument("--logs", type=Path, help="append the web node's and worker's output here")
    parser.add_argument(
        "--redis-cluster",
        metavar="URL",
        help="a node of a Redis Cluster: the web node and worker run with "
        "PUSHREC_REDIS_CLUSTER=1 on it (flushed first); Redis CPU per node",
    )
    args = parser.parse_args()
    sweep = args.rates is not None
    args.rates = args.rates or [args.rate]
    args.procs = args.procs or max(1, -(-args.clients // 2500))
    plot = args.plot or ROOT / (
        "docs/benchmarks/kafka_latency_sweep.png" if sweep else "docs/benchmarks/kafka_latency.png"
    )
    limit = raise_nofile()  # inherited by the web node
    if args.clients + 256 > limit:
        raise SystemExit(f"descriptor limit {limit} is too low for {args.clients} sockets")
    args.bootstrap = os.environ["PUSHREC_TEST_KAFKA_BOOTSTRAP"]
    if args.redis_cluster:
        redis_url, cluster_env = args.redis_cluster, {"PUSHREC_REDIS_CLUSTER": "1"}
    else:
        redis_url = os.environ["PUSHREC_TEST_REDIS_URL"].rsplit("/", 1)[0] + "/12"
        cluster_env = {}
    nodes = RedisNodes.connect(redis_url, cluster=bool(args.redis_cluster))
    nodes.flush()
    args.topic = f"lat-{uuid.uuid4().hex[:8]}"
    logs = args.logs
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
    warmup = asyncio.run(warm(args.bootstrap, args.topic))
    env = {"PUSHREC_KAFKA_TOPIC": args.topic, "PUSHREC_KAFKA_GROUP": f"g-{args.topic}"}
    env |= cluster_env
    with (
        node_process(
            args.bootstrap, redis_url, ("worker",), env, logs and logs / "worker.log"
        ) as worker,
        node_process(
            args.bootstrap, redis_url, ("serve", "--no-worker"), env, logs and logs / "web.log"
        ) as web,
    ):
        broker = kafka_pid()
        extra = {"web": [web.pid], "worker": [worker.pid]}
        if not nodes.cluster:  # the one server's process (a cluster's nodes are read by INFO)
            extra["Redis"] = [int(redis.Redis.from_url(redis_url).info("server")["process_id"])]
        if broker is not None:
            extra["Kafka"] = [broker]
        print(
            f"pids: {extra}; Redis nodes: {', '.join(nodes.nodes)}",
            flush=True,
        )
        while processed_total(worker.address) < warmup:
            time.sleep(0.2)
        args.profiler = Profile(
            nodes,
            args.slowlog,
            ROOT / "benchmarks/out/kafka_latency_worker.pyspy.txt",
        )
        res = measure(args, web.address, worker.address, nodes, extra)
    if sweep:
        print_sweep(args, res)
        print_costs(args, res)
        for step in res["steps"]:
            if step["rate"] == args.profile_rate:
                sent = max(1, step["sent"])
                print(f"\nprofile of the {step['rate']:,} events/s step")
                args.profiler.print(
                    args.top_commands * 2,
                    step["commands"],
                    sent,
                    step["cpu"]["worker"] * 1e6 / sent,
                )
        plot_sweep(args, res["steps"], plot)
        return
    step = res["steps"][0]
    lat = step["lat"]
    print(
        f"\nKafka produce → client frame, {res['connected']} WebSocket clients on a web node "
        f"(of {args.clients} asked), a separate worker, {step['achieved']:.0f} events/s "
        f"offered for {args.seconds:.0f} s"
    )
    print("| metric | value |\n|---|---|")
    print(
        f"| events produced | {step['sent']} ({step['unchanged']} left the list unchanged, "
        f"{step['superseded']} had no frame before the visitor's next event) |"
    )
    for name, q in QUANTILES:
        print(f"| latency {name} | {pct(lat, q):.2f} ms |")
    print(f"| latency max | {max(lat):.2f} ms |")
    fig, (ax,) = figure()
    latency_cdf(
        ax,
        lat,
        "Kafka produce → client frame (ms)",
        f"{res['connected']} sockets, {step['achieved']:.0f} events/s, web + worker processes",
    )
    save(fig, plot)


if __name__ == "__main__":
    main()
