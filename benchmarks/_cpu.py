"""CPU readings for the cost-per-event benchmarks: processes, Redis nodes, the Kafka broker.

Every reading is a counter to difference over a window (CPU seconds so far, command calls so far),
taken only through interfaces every version of pushrec has: /proc, Redis ``INFO``, ``CLUSTER
NODES`` and ``SLOWLOG``, and the broker's pid file. Nothing here talks to pushrec itself.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis._parsers.helpers import parse_cluster_nodes

from benchmarks._server import ROOT, cpu_seconds


def machine_ticks() -> tuple[int, int]:
    """(idle, total) CPU time of the machine so far, in clock ticks (/proc/stat)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return ticks[3] + ticks[4], sum(ticks)  # guest time is already in user time: not summed


def busy_seconds(before: tuple[int, int], after: tuple[int, int]) -> float:
    """CPU seconds the whole machine was busy between two :func:`machine_ticks` readings."""
    idle, total = (b - a for a, b in zip(before, after, strict=True))
    return (total - idle) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, as printed beside the figures."""
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def kafka_pid() -> int | None:
    """The broker of scripts/kafka.sh: its pid file under ``PUSHREC_TEST_KAFKA_DIR`` (default
    ``.cache/kafka``), else ``pgrep``; None when neither finds one (its CPU is then not shown)."""
    pidfile = Path(os.environ.get("PUSHREC_TEST_KAFKA_DIR", ROOT / ".cache/kafka")) / "kafka.pid"
    if pidfile.exists():
        return int(pidfile.read_text().split()[0])
    found = subprocess.run(
        ["pgrep", "-f", "kafka.Kafka"], capture_output=True, text=True, check=False
    ).stdout.split()
    return int(found[0]) if found else None


def process_cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process (/proc/<pid>/stat utime + stime)."""
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


#: Command statistics: command name → (calls, µs), summed over nodes.
CommandStats = dict[str, tuple[int, int]]


@dataclass
class RedisNodes:
    """Every Redis process of a deployment: the one server, or each master and replica of a
    cluster (from ``CLUSTER NODES``), each read through its own connection."""

    nodes: dict[str, redis.Redis]  # "host:port role" → a plain (non-cluster) client
    cluster: bool

    @classmethod
    def connect(cls, url: str, *, cluster: bool) -> RedisNodes:
        """The single server at ``url``, or (``cluster``) every node of the cluster that the node
        at ``url`` knows (failed and address-less nodes left out)."""
        first = redis.Redis.from_url(url)
        if not cluster:
            return cls({f"{first.connection_pool.connection_kwargs['port']} single": first}, False)
        known: Any = first.execute_command("CLUSTER NODES")  # type: ignore[no-untyped-call]
        if isinstance(known, (bytes, str)):  # a client without the parsing callback
            known = parse_cluster_nodes(known)  # type: ignore[no-untyped-call]
        nodes: dict[str, redis.Redis] = {}
        for address, node in sorted(known.items()):
            flags = str(node["flags"])
            if "fail" in flags or "noaddr" in flags:
                continue
            host, port = address.split("@", 1)[0].rsplit(":", 1)
            role = "master" if "master" in flags else "replica"
            nodes[f"{host}:{port} {role}"] = redis.Redis(host=host, port=int(port))
        return cls(nodes, True)

    def flush(self) -> None:
        """Empty the deployment: the URL's database (single), or every master (cluster)."""
        for name, node in self.nodes.items():
            if not self.cluster:
                node.flushdb()
            elif name.endswith("master"):
                node.flushall()

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each node (INFO ``used_cpu_user`` + ``used_cpu_sys``: the
        whole process, main thread and background threads)."""
        out = {}
        for name, node in self.nodes.items():
            info = node.info("cpu")
            out[name] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        return out

    def commandstats(self) -> CommandStats:
        """Calls and µs so far per command (INFO commandstats), summed over the nodes."""
        total: dict[str, tuple[int, int]] = {}
        for node in self.nodes.values():
            for key, stat in node.info("commandstats").items():
                name = key.removeprefix("cmdstat_")
                calls, usec = total.get(name, (0, 0))
                total[name] = (calls + int(stat["calls"]), usec + int(stat["usec"]))
        return total

    def slowlog_start(self, entries: int) -> None:
        """Log every command (threshold 0) into a ring of ``entries`` per node: a sample of the
        latest commands, with their arguments (script sha) and execution time. It costs Redis
        CPU: for a profiling pass, not for the measured one."""
        for node in self.nodes.values():
            node.config_set("slowlog-max-len", entries)
            node.config_set("slowlog-log-slower-than", 0)
            node.slowlog_reset()

    def slowlog_stop(self, entries: int) -> list[dict[str, Any]]:
        """Stop logging and return the sample (every node's latest ``entries`` commands)."""
        sample: list[dict[str, Any]] = []
        for node in self.nodes.values():
            node.config_set("slowlog-log-slower-than", 10_000)
            sample.extend(node.slowlog_get(entries))
            node.slowlog_reset()
        return sample


#: Commands the benchmarks send themselves (subcommands are ``slowlog|get`` in commandstats).
OWN_READINGS = frozenset({"info", "config", "slowlog", "cluster"})


def commandstats_delta(after: CommandStats, before: CommandStats) -> CommandStats:
    """The commands run between two readings (commands with no new calls, and the benchmark's
    own readings: INFO, CONFIG, SLOWLOG, CLUSTER, left out)."""
    out = {}
    for name, (calls, usec) in after.items():
        c0, u0 = before.get(name, (0, 0))
        if calls > c0 and name.split("|", 1)[0] not in OWN_READINGS:
            out[name] = (calls - c0, usec - u0)
    return out


def script_names() -> dict[str, str]:
    """sha1 → file of every Lua script in the tree (as EVALSHA names it), to label a sample."""
    names = {}
    for path in ROOT.rglob("*.lua"):
        if ".venv" in path.parts or "node_modules" in path.parts:
            continue
        names[hashlib.sha1(path.read_bytes()).hexdigest()] = str(path.relative_to(ROOT))  # noqa: S324 - Redis's script id
    return names


def unnamed(sha: str, rest: list[bytes]) -> str:
    """A script not found in the tree as a file (a templated one): its sha and its first key,
    hash tags masked (``pr:{…}:profile``), which tells the family."""
    first = rest[1].decode(errors="replace") if len(rest) > 1 and rest[0] != b"0" else ""
    return f"{sha[:8]} ({re.sub(r'[{][^}]*[}]', '{…}', first) or 'no keys'})"


def slowlog_split(sample: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(label, calls, µs) per command of a SLOWLOG sample, scripts told apart by their sha
    (named after their file when it is in the tree), the most expensive first."""
    names = script_names()
    calls: Counter[str] = Counter()
    usec: Counter[str] = Counter()
    for entry in sample:
        words = entry["command"].split()
        if not words:
            continue
        label = words[0].decode(errors="replace").lower()
        if label in ("evalsha", "evalsha_ro") and len(words) > 1:
            sha = words[1].decode(errors="replace").lower()
            label = f"{label} {names.get(sha) or unnamed(sha, words[2:])}"
        elif label in OWN_READINGS:
            continue
        if entry.get("client_address") in (b"?:0", "?:0", b"", ""):
            label = f"(in a script) {label}"  # run by a script: inside that script's time
        calls[label] += 1
        usec[label] += int(entry["duration"])
    return sorted(((k, calls[k], usec[k]) for k in calls), key=lambda row: -row[2])
