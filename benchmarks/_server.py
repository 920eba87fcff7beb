"""Shared benchmark plumbing: a private Redis, the real server as a subprocess, readiness."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from push.redis_server import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
SECRET = "benchmark-secret-0123456789abcdef"  # noqa: S105 - a throwaway local server
ADMIN_KEY = "benchmark-admin-key-0123456789ab"


@dataclass(frozen=True)
class Running:
    """A server under measurement and the Redis it uses."""

    address: str
    redis_url: str
    pid: int = 0  # the server process, for /proc readings
    redis_pid: int = 0  # the embedded redis-server (running_server only)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def metrics_text(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
        return text


def processed_total(address: str) -> float:
    """Sum of pushrec_events_processed_total over all labels."""
    total = 0.0
    for line in metrics_text(address).splitlines():
        if line.startswith("pushrec_events_processed_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def websocket_connections(address: str) -> int:
    """Open WebSocket connections counted by the server's gauge (pushrec_connections)."""
    for line in metrics_text(address).splitlines():
        if line.startswith('pushrec_connections{transport="websocket"}'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def seed_events(address: str, events: int) -> None:
    """Post the first ``events`` REES46 events (users prefixed ``seed-``) and wait until they are
    processed, so that trending and neighbours exist and visitors' snapshots are full."""
    lines = (ROOT / "examples/catalog/rees46-events.tsv").read_text().splitlines()[1 : events + 1]
    batch = []
    for line in lines:
        _ts, user, kind, item = line.split("\t")
        batch.append(
            {"event_id": uuid.uuid4().hex, "user_id": f"seed-{user}", "type": kind, "item_id": item}
        )
    request = urllib.request.Request(
        f"http://{address}/v1/events",
        data=json.dumps(batch).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "X-API-Key": ADMIN_KEY},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - our own server
        if resp.status != 202:
            raise RuntimeError(f"seed events refused: {resp.status}")
    while processed_total(address) < len(batch):
        time.sleep(0.1)


@contextlib.contextmanager
def running_server(*, warmup: bool = True, env: dict[str, str] | None = None) -> Iterator[Running]:
    """Start Redis and the server (demo catalog, optional warm-up replay); stop both after."""
    with EmbeddedRedis() as redis_server:
        port = _free_port()
        server_env = {
            **os.environ,
            "PUSHREC_PORT": str(port),
            "PUSHREC_REDIS_URL": redis_server.url,
            "PUSHREC_SECRET": SECRET,
            "PUSHREC_ADMIN_KEY": ADMIN_KEY,
            "PUSHREC_LOG_LEVEL": "warning",
            "PUSHREC_CATALOG_FILE": str(ROOT / "examples/catalog/rees46.jsonl"),
            **(
                {"PUSHREC_WARMUP_FILE": str(ROOT / "examples/catalog/rees46-events.tsv")}
                if warmup
                else {}
            ),
            **(env or {}),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "push.cli", "serve"],
            cwd=ROOT,
            env=server_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        address = f"127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("server did not start")
                try:
                    with urllib.request.urlopen(f"http://{address}/readyz", timeout=1) as r:
                        if json.load(r)["ready"]:
                            break
                except OSError:
                    time.sleep(0.1)
            if warmup:  # wait for the warm-up replay to be processed
                lines = sum(1 for _ in (ROOT / "examples/catalog/rees46-events.tsv").open()) - 1
                while processed_total(address) < lines:
                    time.sleep(0.2)
            yield Running(address, redis_server.url, proc.pid, redis_server.pid)
        finally:
            proc.terminate()
            proc.wait(30)  # a graceful stop closing thousands of sockets (5 s window) and more


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin(pid: int, cpus: set[int]) -> None:
    """Restrict every thread of process ``pid`` to ``cpus`` (as ``taskset -a -p``); threads it
    starts later inherit the mask."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(int(task), cpus)


@contextlib.contextmanager
def node_process(
    bootstrap: str,
    redis_url: str,
    command: tuple[str, ...],
    env: dict[str, str],
    log: Path | None = None,
) -> Iterator[Running]:
    """One pushrec process on Kafka and ``redis_url``; yields its address and pid once it
    answers. Its output goes to ``log`` (appended) when given."""
    with _node(bootstrap, redis_url, command, env, log) as (address, pid):
        yield Running(address, redis_url, pid)


@contextlib.contextmanager
def worker_process(
    bootstrap: str, topic: str, redis_url: str
) -> Iterator[tuple[str, Callable[[], float]]]:
    """One `pushrec worker` on ``topic``; yields its address and a CPU-seconds reader."""
    env = {"PUSHREC_KAFKA_TOPIC": topic, "PUSHREC_KAFKA_GROUP": f"g-{topic}"}
    with _node(bootstrap, redis_url, ("worker",), env) as (address, pid):
        yield address, lambda: cpu_seconds(pid)


@contextlib.contextmanager
def _node(
    bootstrap: str,
    redis_url: str,
    command: tuple[str, ...],
    extra: dict[str, str],
    log: Path | None = None,
    module: str = "push.cli",
) -> Iterator[tuple[str, int]]:
    """A node running ``python -m module *command`` on Kafka and Redis; yields its address and
    pid once ``/readyz`` says ready, and terminates it afterwards."""
    port = _free_port()
    env = {
        **os.environ,
        "PUSHREC_PORT": str(port),
        "PUSHREC_REDIS_URL": redis_url,
        "PUSHREC_KAFKA_BOOTSTRAP": bootstrap,
        "PUSHREC_SECRET": SECRET,
        "PUSHREC_ADMIN_KEY": ADMIN_KEY,
        "PUSHREC_LOG_LEVEL": "warning",
        "PUSHREC_CATALOG_FILE": str(ROOT / "examples/catalog/rees46.jsonl"),
        **extra,
    }
    output = log.open("ab") if log is not None else None
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *command],
        cwd=ROOT,
        env=env,
        stdout=output or subprocess.DEVNULL,
        stderr=output or subprocess.DEVNULL,
    )
    if output is not None:
        output.close()  # the child holds its own descriptor

    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{address}/readyz", timeout=1) as r:
                    if json.load(r)["ready"]:
                        break
            except OSError:
                pass
            time.sleep(0.1)
        yield address, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)
