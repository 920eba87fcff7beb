"""Where the time goes over a benchmark window: Redis (SLOWLOG sample) and the worker (py-spy).

Both samplers cost CPU (Redis logs every command; py-spy reads the worker's memory 250 times a
second), so a profiled window is for the split, not for the cost figures of the same run.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._cpu import CommandStats, RedisNodes, slowlog_split
from benchmarks._server import ROOT

#: Packages whose functions are listed by inclusive time (the event loop's frames hold all).
OWN_PACKAGES = ("push", "streams", "sessions")


def py_spy() -> str | None:
    """The py-spy binary: on PATH, or beside this Python (a venv's ``pip install py-spy``)."""
    found = shutil.which("py-spy")
    beside = Path(sys.executable).parent / "py-spy"
    return found or (str(beside) if beside.exists() else None)


@dataclass
class Profile:
    """A profiled window: start it, stop it, print what it found."""

    nodes: RedisNodes
    slowlog: int  # entries kept per Redis node: enough for several of the worker's batches
    spy_out: Path | None  # py-spy's collapsed stacks of the worker; None: no py-spy
    sample: list[tuple[str, int, int]] = field(default_factory=list)
    _spy: subprocess.Popen[bytes] | None = None

    def start(self, worker_pid: int) -> None:
        """Log every Redis command from now on, and start py-spy on the worker."""
        self.nodes.slowlog_start(self.slowlog)
        binary = py_spy()
        if self.spy_out is None:
            return
        if binary is None:
            print("py-spy not found: no worker profile (pip install py-spy)", flush=True)
            return
        self.spy_out.parent.mkdir(parents=True, exist_ok=True)
        self._spy = subprocess.Popen(
            # --function: one line per function (not per line); raw: collapsed stacks
            [
                *(binary, "record", "--pid", str(worker_pid), "--format", "raw", "--function"),
                *("--rate", "250", "--nonblocking", "--output", str(self.spy_out)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        """Stop both samplers and keep the Redis sample."""
        self.sample = slowlog_split(self.nodes.slowlog_stop(self.slowlog))
        if self._spy is not None:
            self._spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            self._spy.wait(120)

    def print(self, top: int, window: CommandStats, events: float, worker_us: float) -> None:
        """The tables: Redis's commands and scripts per event, then the worker's functions.
        ``window`` (INFO commandstats over the ``events`` of the window) scales the Redis sample
        to events; ``worker_us`` (the worker's CPU µs per event) scales py-spy's shares."""
        print_redis_sample(self.sample, client_calls_per_event(self.sample, window, events), top)
        if self.spy_out is not None and self.spy_out.exists():
            print_py_spy(self.spy_out, worker_us, top)


def client_calls_per_event(
    sample: list[tuple[str, int, int]], window: CommandStats, events: float
) -> tuple[int, float]:
    """(calls in the sample, calls per event over the window) of the commands that only clients
    sent in the sample (EVALSHA, FCALL, EXEC…: never run by a script): commandstats counts them
    exactly, so their ratio is the number of events the sample covers."""
    in_scripts = {label.split()[-1] for label, _c, _u in sample if label.startswith("(in a")}
    sampled = Counter[str]()
    for label, calls, _usec in sample:
        if not label.startswith("(in a"):
            sampled[label.split()[0]] += calls
    names = [n for n in sampled if n not in in_scripts and n in window]
    return sum(sampled[n] for n in names), sum(window[n][0] for n in names) / max(1.0, events)


def print_redis_sample(
    sample: list[tuple[str, int, int]], scale: tuple[int, float], top: int
) -> None:
    client = [row for row in sample if not row[0].startswith("(in a script)")]
    calls = sum(c for _l, c, _u in client)
    usec = sum(u for _l, _c, u in client)
    if not calls:
        return
    sampled, per_event = scale
    events = sampled / per_event if per_event else float("nan")
    print(
        f"\nwhere Redis's time goes: SLOWLOG sample of the window's last {calls:,} client "
        f"commands ({usec / 1e6:.2f} s of execution, about {events:,.0f} events; threshold 0); "
        "scripts named by file, or by sha and first key when templated; commands run inside a "
        "script are marked (their time is also in the script's)"
    )
    print(
        "| command / script | calls per event | µs per call | µs per event "
        "| share of client commands' µs |\n|---|---|---|---|---|"
    )
    for label, c, u in sample[:top]:
        share = "" if label.startswith("(in a script)") else f"{u / usec:.1%}"
        print(f"| {label} | {c / events:.2f} | {u / c:.1f} | {u / events:.1f} | {share} |")


def print_py_spy(path: Path, worker_us: float, top: int) -> None:
    total, rows = py_spy_summary(path, top)
    if not total:
        return
    print(
        f"\nwhere the worker's time goes: py-spy, {total:,} samples over the window (idle "
        "threads left out); µs per event = share of samples times the worker's CPU µs per event "
        f"({worker_us:,.0f}); first the functions by own time, then pushrec's by inclusive time"
    )
    print(
        "| function | own % | inclusive % | own µs/event | incl µs/event |\n|---|---|---|---|---|"
    )
    for name, own, incl in rows:
        print(
            f"| `{name}` | {own / total:.1%} | {incl / total:.1%} "
            f"| {own / total * worker_us:,.0f} | {incl / total * worker_us:,.0f} |"
        )


def py_spy_summary(path: Path, top: int) -> tuple[int, list[tuple[str, int, int]]]:
    """(samples, [(function, own samples, inclusive samples)]) of a collapsed-stack file: the
    ``top`` functions by own samples, then the ``top`` of :data:`OWN_PACKAGES` by inclusive."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [short_frame(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    rows = [(f, own[f], inclusive[f]) for f in inclusive]
    by_own = sorted(rows, key=lambda r: -r[1])[:top]
    ours = [
        r
        for r in rows
        if any(f"({pkg}/" in r[0] for pkg in OWN_PACKAGES) and r[2] < 0.9 * total  # not main()
    ]
    by_incl = [r for r in sorted(ours, key=lambda r: -r[2]) if r not in by_own][:top]
    return total, by_own + by_incl


def short_frame(frame: str) -> str:
    """``func (/path/to/site-packages/pkg/mod.py:12)`` → ``func (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", str(ROOT) + "/"):  # py-spy shortens most paths itself
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if where else name
