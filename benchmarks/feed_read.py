"""REST feed-read latency under load: ``GET /v1/users/{user}/feeds/home`` at a sweep of rates.

Starts a private Redis and the real server (demo catalog, warmed up with the REES46 replay, so
the replay's visitors have real stored home feeds), then drives feed reads of those visitors
with an open-loop load generator (``benchmarks/loadgen/main.go``, built into ``.cache/``):
requests leave on a fixed timetable whatever the server does, and each latency runs from the
request's *scheduled* time to the end of its answer, so queueing behind a slow answer is
counted (no coordinated omission). Each visitor reads its own feed with its own token (the
browser pull path; ``--auth key``: the shop backend's API key instead), over keep-alive
connections. Per offered rate: achieved rate, latency percentiles, errors, and the CPU used by
the server, Redis and the generator during the measured window.

By default the server runs alone on CPU 0, Redis and the generator on CPU 1 (``--no-pin``:
anywhere). Then the generator is measured against a trivial server (``--floor-rates``): the floor
of the measurement on this machine. ``--profile`` samples the server with py-spy at the target rate
and prints where its time goes.

Usage: python -m benchmarks.feed_read [--rates 500 1000 … 5000] [--duration 10]
       [--users 2000] [--auth token|key] [--profile] [--no-pin] [--plot PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from benchmarks._plot import figure, latency_cdf, save
from benchmarks._server import ADMIN_KEY, ROOT, SECRET, _free_port, cpu_seconds, pin, running_server
from sessions.keys import feed_key
from sessions.tokens import TokenVerifier

LOADGEN_SRC = ROOT / "benchmarks/loadgen/main.go"
LOADGEN_BIN = ROOT / ".cache/loadgen/loadgen"
OUT = ROOT / "benchmarks/out"
TARGET_P99_MS = 2.0
SERVER_CPUS = {0}
CLIENT_CPUS = {1}  # the generator, Redis and py-spy


@dataclass
class Step:
    """One offered rate: what the generator saw and what the processes spent."""

    offered: float
    achieved: float
    latency_ms: list[float]  # sorted, answered requests of the measured window
    lag_ms: list[float]  # sorted: how late each request left the generator's scheduler
    scheduled: int
    errors: dict[str, int]
    unfinished: int
    body_bytes: int
    window_s: float
    cpu: dict[str, float] = field(default_factory=dict)  # share of one core in the window

    @property
    def failed(self) -> int:
        return sum(self.errors.values()) + self.unfinished


def pct(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of sorted ``ordered``."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def build_loadgen() -> Path:
    """Build the generator into the git-ignored cache when its source is newer."""
    if shutil.which("go") is None:
        raise SystemExit("the load generator needs Go (https://go.dev/dl/) on PATH")
    if not LOADGEN_BIN.exists() or LOADGEN_BIN.stat().st_mtime < LOADGEN_SRC.stat().st_mtime:
        LOADGEN_BIN.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["go", "build", "-trimpath", "-o", str(LOADGEN_BIN), str(LOADGEN_SRC)],
            cwd=ROOT,
            check=True,
        )
    return LOADGEN_BIN


def stored_users(redis_url: str, count: int) -> list[str]:
    """The first ``count`` visitors of the warm-up replay (``r46-`` ids) whose home feed is
    stored, so that no read falls through to computing a first feed."""
    seen: dict[str, None] = {}
    with (ROOT / "examples/catalog/rees46-events.tsv").open() as fh:
        next(fh)
        for line in fh:
            seen.setdefault(f"r46-{line.split(chr(9), 2)[1]}", None)
    candidates = list(seen)
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    for user in candidates:
        pipe.hexists(feed_key(user, "home"), "e")
    stored = [u for u, ok in zip(candidates, pipe.execute(), strict=True) if ok]
    client.close()
    if len(stored) < count:
        print(f"note: only {len(stored)} replay visitors have a stored feed; using all of them")
    return stored[:count]


def write_requests(users: list[str], auth: str, path: Path, seed: int) -> None:
    """One request line per visitor (path, then headers), in a shuffled order."""
    verifier = TokenVerifier(SECRET)
    order = list(users)
    random.Random(seed).shuffle(order)
    lines = []
    for user in order:
        header = (
            f"Authorization: Bearer {verifier.mint(user)}"
            if auth == "token"
            else f"X-API-Key: {ADMIN_KEY}"
        )
        lines.append(f"/v1/users/{user}/feeds/home\t{header}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def py_spy() -> str:
    """py-spy from this interpreter's environment, else from PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    return found


def busy_seconds() -> float:
    """CPU time all processes of the machine have used (``/proc/stat``: all but idle, iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def taskset(cpus: set[int] | None) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, sorted(cpus)))] if cpus else []


def run_step(
    loadgen: Path,
    address: str,
    rate: float,
    args: argparse.Namespace,
    watch: dict[str, int],
    *,
    profile: Path | None = None,
    server_pid: int = 0,
) -> Step:
    """Offer ``rate`` requests/s for warm-up + duration (``profile``: py-spy ``server_pid``
    meanwhile); the CPU of ``watch``'s processes, the generator's and everybody else's is read
    over the measured window."""
    client_cpus = None if args.no_pin else CLIENT_CPUS
    command = [
        *taskset(client_cpus),
        str(loadgen),
        f"-addr={address}",
        f"-rate={rate}",
        f"-duration={args.duration}s",
        f"-warmup={args.warmup}s",
        f"-conns={args.conns}",
        f"-requests={args.requests_file}",
    ]
    gen = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert gen.stdout is not None
    watch = {**watch, "client": gen.pid}  # taskset execs the generator: same pid
    spy: subprocess.Popen[bytes] | None = None
    if gen.stdout.readline().strip() != "start":
        raise RuntimeError("load generator failed")
    t0, before = time.monotonic(), {k: cpu_seconds(p) for k, p in watch.items()}
    busy0 = busy_seconds()
    if profile is not None:
        spy = subprocess.Popen(
            [
                *taskset(client_cpus),
                py_spy(),
                "record",
                "--pid",
                str(server_pid),
                "--duration",
                str(max(1, int(args.duration) - 1)),
                "--rate",
                str(args.spy_rate),
                "--function",
                "--format",
                "raw",
                "-o",
                str(profile),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    if gen.stdout.readline().strip() != "end":
        raise RuntimeError("load generator failed")
    t1, after = time.monotonic(), {k: cpu_seconds(p) for k, p in watch.items()}
    busy1 = busy_seconds()
    res: dict[str, Any] = json.loads(gen.stdout.readline())
    gen.wait()
    if spy is not None:
        spy.wait(60)
    window = t1 - t0
    cpu = {k: (after[k] - before[k]) / window for k in watch}
    cpu["others"] = max(0.0, (busy1 - busy0) / window - sum(cpu.values()))
    return Step(
        offered=rate,
        achieved=res["achieved_rps"],
        latency_ms=sorted(x / 1000 for x in res["latency_us"]),
        lag_ms=sorted(x / 1000 for x in res["lag_us"]),
        scheduled=res["scheduled"],
        errors=res["errors"],
        unfinished=res["unfinished"],
        body_bytes=res["body_bytes"],
        window_s=window,
        cpu=cpu,
    )


def quiet_step(
    loadgen: Path, address: str, rate: float, args: argparse.Namespace, watch: dict[str, int]
) -> Step:
    """:func:`run_step`, again (up to ``--retries`` times, after a pause) while other processes
    of this shared machine used more than ``--max-others`` of a core during the window."""
    for attempt in range(args.retries + 1):
        step = run_step(loadgen, address, rate, args, watch)
        if step.cpu["others"] <= args.max_others:
            break
        again = attempt < args.retries
        print(
            f"  ({rate:,.0f} req/s: other processes used {step.cpu['others']:.0%} of a core; "
            + ("again)" if again else "kept, marked *)"),
            flush=True,
        )
        if again:
            time.sleep(args.retry_pause)
    return step


def floor_steps(loadgen: Path, body: int, args: argparse.Namespace) -> list[Step]:
    """The generator against its own trivial server (where the feed server would run), at
    each of ``--floor-rates``: what the machine and the client add to any server's figures."""
    port = _free_port()
    server = subprocess.Popen(
        [
            *taskset(None if args.no_pin else SERVER_CPUS),
            str(loadgen),
            f"-serve=127.0.0.1:{port}",
            f"-body={body}",
        ]
    )
    try:
        time.sleep(0.5)
        return [
            quiet_step(loadgen, f"127.0.0.1:{port}", rate, args, {"server": server.pid})
            for rate in args.floor_rates
        ]
    finally:
        server.terminate()
        server.wait(5)


#: Where a sample's time goes: the leaf-most frame matching one of these markers names it.
LAYERS = (
    ("token check (PyJWT HS256)", ("authenticate ",)),
    ("feed decode (msgpack → FeedState)", ("parse_state ",)),
    ("Redis HMGET (redis-py client)", ("FeedStore.read ",)),
    ("JSON encode of the answer", ("JSONResponse", "Response.__init__ ")),
    ("rest of get_feed", ("get_feed ",)),
    ("Starlette middleware, routing, ASGI", ("starlette/", "uvicorn/middleware/", "run_asgi ")),
    ("uvicorn HTTP protocol (parse, write)", ("uvicorn/protocols/",)),
)
OTHER = "event loop, sockets, other"


def profile_summary(path: Path, cpu_us: float, top: int = 12) -> list[str]:
    """Markdown tables of where the server's samples went (py-spy raw output): by layer, with
    the CPU µs per request each stands for (``cpu_us``: server CPU per request), then the
    functions with the most self time."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        self_time[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
        layers[_layer(frames)] += n
    rows = [
        f"{total} samples, server CPU {cpu_us:.0f} µs per request",
        "",
        "| layer | share of samples | µs per request |",
        "|---|---|---|",
    ]
    for name in [n for n, _ in LAYERS] + [OTHER]:
        share = layers[name] / total
        rows.append(f"| {name} | {share:.1%} | {share * cpu_us:.0f} |")
    rows += ["", "| function (self time) | self | inclusive |", "|---|---|---|"]
    for frame, n in self_time.most_common(top):
        rows.append(f"| `{frame}` | {n / total:.1%} | {inclusive[frame] / total:.1%} |")
    return rows


def _layer(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, markers in LAYERS:
            if any(m in frame for m in markers):
                return name
    return OTHER


def row(step: Step, noisy: float, name: str | None = None) -> str:
    lat = step.latency_ms
    errors = ", ".join(f"{k} {v}" for k, v in sorted(step.errors.items()))
    if step.unfinished:
        errors = f"{errors}, unanswered {step.unfinished}".lstrip(", ")
    cpu = " | ".join(
        f"{step.cpu[k]:.0%}" if k in step.cpu else "—"
        for k in ("server", "redis", "client", "others")
    )
    return (
        f"| {name or f'{step.offered:,.0f}'}{' *' if step.cpu['others'] > noisy else ''} | "
        f"{step.achieved:,.0f} | {pct(lat, 0.5):.2f} | "
        f"{pct(lat, 0.9):.2f} | {pct(lat, 0.99):.2f} | {pct(lat, 0.999):.2f} | {lat[-1]:.2f} | "
        f"{errors or 0} | {cpu} | {pct(step.lag_ms, 0.99):.2f} |"
    )


def met(step: Step) -> bool:
    return (
        step.failed == 0
        and step.achieved >= 0.99 * step.offered
        and pct(step.latency_ms, 0.99) <= TARGET_P99_MS
    )


def plot(
    steps: list[Step], target: Step | None, best: Step | None, floor: Step | None, path: Path
) -> None:
    """Percentiles against the offered rate; CDFs at the target rate, at the highest rate
    meeting the target (``best``) and of the generator's floor at the target rate."""
    fig, (a, b) = figure(2)
    rates = [s.offered for s in steps]
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)):
        a.plot(rates, [pct(s.latency_ms, q) for s in steps], marker="o", label=name)
    a.plot(rates, [s.latency_ms[-1] for s in steps], marker="x", ls=":", label="max")
    a.axhline(TARGET_P99_MS, color="r", ls="--", label=f"p99 target {TARGET_P99_MS:g} ms")
    if target is not None:
        a.axvline(target.offered, color="grey", ls=":", label="target rate")
    a.set_yscale("log")
    a.set_xlabel("offered GET feed requests/s (open loop)")
    a.set_ylabel("latency from scheduled send (ms)")
    a.set_title("feed-read latency vs offered rate")
    a.legend(fontsize=8)
    if target is not None:
        latency_cdf(
            b,
            target.latency_ms,
            "latency from scheduled send (ms)",
            "feed-read latency CDFs",
            marks=((TARGET_P99_MS, "r", f"p99 target {TARGET_P99_MS:g} ms"),),
            label=f"pushrec GET feed, {target.offered:,.0f}/s",
            ylabel="fraction of requests",
        )
        if best is not None and best is not target:
            latency_cdf(
                b,
                best.latency_ms,
                "latency from scheduled send (ms)",
                b.get_title(),
                marks=(),
                label=f"pushrec GET feed, {best.offered:,.0f}/s (meets the target)",
                ylabel="fraction of requests",
            )
        if floor is not None:
            latency_cdf(
                b,
                floor.latency_ms,
                "latency from scheduled send (ms)",
                b.get_title(),
                marks=(),
                label=f"generator floor (trivial server), {floor.offered:,.0f}/s",
                ylabel="fraction of requests",
            )
        b.axhline(0.99, color="grey", lw=0.5)
        b.legend(fontsize=8)
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rates", type=float, nargs="+", default=[500, 1000, 1500, 2000, 2500, 3000, 4000, 5000]
    )
    parser.add_argument("--target-rate", type=float, default=5000)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per rate")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--conns", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--auth", choices=("token", "key"), default="token")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client")
    parser.add_argument(
        "--floor-rates",
        type=float,
        nargs="*",
        default=[1000, 5000],
        help="rates of the generator against a trivial server (none: skip)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the server at the target")
    parser.add_argument("--spy-rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--max-others",
        type=float,
        default=0.25,
        help="repeat a step when other processes used more than this share of a core",
    )
    parser.add_argument("--retries", type=int, default=2, help="repeats of a noisy step")
    parser.add_argument("--retry-pause", type=float, default=20.0, help="seconds before a repeat")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs/benchmarks/feed_read.png")
    args = parser.parse_args()
    args.requests_file = OUT / "feed_read_requests.txt"
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average at start: {', '.join(load)}")
    loadgen = build_loadgen()
    steps: list[Step] = []
    profile = OUT / "feed_read.pyspy.txt" if args.profile else None
    with running_server() as srv:
        users = stored_users(srv.redis_url, args.users)
        write_requests(users, args.auth, args.requests_file, args.seed)
        if not args.no_pin:
            pin(srv.pid, SERVER_CPUS)
            pin(srv.redis_pid, CLIENT_CPUS)
        watch = {"server": srv.pid, "redis": srv.redis_pid}
        print(
            f"{len(users)} visitors with stored home feeds, auth: {args.auth}, {args.conns} "
            f"keep-alive connections, {args.warmup:g} s + {args.duration:g} s per rate; "
            + ("server on CPU 0, Redis + generator on CPU 1" if not args.no_pin else "not pinned")
        )
        for rate in args.rates:
            steps.append(quiet_step(loadgen, srv.address, rate, args, watch))
            print(row(steps[-1], args.max_others), flush=True)
            time.sleep(1)
        spied = None
        if profile is not None:
            spied = run_step(
                loadgen,
                srv.address,
                args.target_rate,
                args,
                watch,
                profile=profile,
                server_pid=srv.pid,
            )
    target = next((s for s in steps if s.offered == args.target_rate), None)
    body = round(steps[-1].body_bytes / max(1, len(steps[-1].latency_ms)))
    floors = floor_steps(loadgen, body, args) if args.floor_rates else []
    print(
        f"\nGET /v1/users/{{u}}/feeds/home, open loop, latency from the scheduled send; "
        f"answers of {body} bytes on average"
    )
    print(
        "| offered req/s | achieved req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms "
        "| errors | server CPU | Redis CPU | generator CPU | other processes' CPU "
        "| generator lag p99 ms |"
    )
    print("|---" * 13 + "|")
    for step in steps:
        print(row(step, args.max_others))
    for floor in floors:
        print(row(floor, args.max_others, f"{floor.offered:,.0f}, trivial server"))
    if any(s.cpu["others"] > args.max_others for s in [*steps, *floors]):
        print(
            f"* other processes used more than {args.max_others:.0%} of a core during the "
            f"window, after {args.retries} repeats"
        )
    best = max((s for s in steps if met(s)), key=lambda s: s.offered, default=None)
    verdict = "not measured" if target is None else "met" if met(target) else "NOT met"
    print(
        f"\ntarget p99 ≤ {TARGET_P99_MS:g} ms at {args.target_rate:,.0f} req/s (all answered, "
        f"≥ 99 % of the rate achieved): {verdict}; highest rate meeting it: "
        + (f"{best.offered:,.0f} req/s" if best else "none")
    )
    if spied is not None and profile is not None and profile.exists():
        print(f"\npy-spy at {args.target_rate:,.0f} req/s offered, {spied.achieved:,.0f} achieved")
        print(f"(a separate step, not in the table; {profile}):\n")
        cpu_us = spied.cpu["server"] * 1e6 / spied.achieved
        print("\n".join(profile_summary(profile, cpu_us)))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "feed_read.json").write_text(
        json.dumps(
            [
                {k: v for k, v in vars(s).items() if k not in ("latency_ms", "lag_ms")}
                | {q: pct(s.latency_ms, float(q)) for q in ("0.5", "0.9", "0.99", "0.999")}
                for s in steps
            ],
            indent=1,
        )
    )
    at_target = next((s for s in floors if s.offered == args.target_rate), None)
    plot(steps, target, best, at_target, args.plot)


if __name__ == "__main__":
    main()
