"""A guard for Redis Cluster readiness (issue 13): every script call, every multi-key command and
every MULTI block touches one hash slot, and a script touches only the keys it was given in KEYS.

It watches a real Redis with ``MONITOR`` (so it sees the server subprocess's commands as well as
the test's own), then checks what it saw:

- ``EVAL``/``EVALSHA``/``FCALL``: the declared KEYS hash to one slot (:func:`redis.crc.key_slot`);
- each command a script ran (``[… lua]`` lines, which Redis prints right after the script's own
  line): its keys (``COMMAND GETKEYS``) are among the script's declared KEYS — a script that
  builds a key name itself is caught even when that name happens to share the slot;
- any other command with several keys (``MGET``, ``DEL a b``, ``ZUNIONSTORE`` …): one slot;
- a ``MULTI`` … ``EXEC`` block of one connection: one slot over all its commands.

Use :func:`watching` around the code under test; ``Violation`` lists what broke a rule.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from redis import Redis as SyncRedis
from redis.crc import key_slot
from redis.exceptions import ResponseError

ROOT = Path(__file__).resolve().parents[2]
_SCRIPTS = ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro")
_LINE = re.compile(rb"^(\d+\.\d+) \[(\d+) ([^\]]+)\] (.*)$")
_ESCAPES = {
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
    ord("a"): b"\a",
    ord("b"): b"\b",
    ord("\\"): b"\\",
    ord('"'): b'"',
}


@dataclass(frozen=True, slots=True)
class Command:
    """One line of ``MONITOR``: who ran it (``lua`` for a script's own commands) and its args."""

    client: str
    args: tuple[bytes, ...]

    @property
    def name(self) -> str:
        return self.args[0].decode("ascii", "replace").lower() if self.args else ""


@dataclass(slots=True)
class Report:
    """What :func:`watching` saw, and which rules it broke (filled in when the block ends)."""

    commands: list[Command] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    #: Script calls checked (a test asserts it checked something).
    scripts: int = 0


def parse_args(text: bytes) -> tuple[bytes, ...]:
    """The arguments of a ``MONITOR`` line (``"a" "b\\x00"`` … as Redis's ``sdscatrepr``)."""
    out: list[bytes] = []
    i = 0
    while i < len(text):
        if text[i] != ord('"'):
            i += 1
            continue
        i += 1
        arg = bytearray()
        while text[i] != ord('"'):
            if text[i] == ord("\\"):
                nxt = text[i + 1]
                if nxt == ord("x"):
                    arg += bytes([int(text[i + 2 : i + 4], 16)])
                    i += 4
                    continue
                arg += _ESCAPES.get(nxt, bytes([nxt]))
                i += 2
                continue
            arg.append(text[i])
            i += 1
        out.append(bytes(arg))
        i += 1
    return tuple(out)


def _script_names() -> dict[str, str]:
    """SHA1 → file of the repository's Lua scripts, to name a script in a violation."""
    names: dict[str, str] = {}
    for path in [*ROOT.glob("sessions/lua/*.lua"), *ROOT.glob("streams/lua/*.lua")]:
        sha = hashlib.sha1(path.read_bytes(), usedforsecurity=False).hexdigest()
        names[sha] = str(path.relative_to(ROOT))
    return names


class _Keys:
    """``COMMAND GETKEYS`` of commands, asked once per distinct command."""

    def __init__(self, client: SyncRedis) -> None:
        self._client = client
        self._known: dict[tuple[bytes, ...], tuple[bytes, ...]] = {}

    def of(self, commands: list[tuple[bytes, ...]]) -> None:
        """Ask Redis for the keys of every command not asked yet (one pipeline)."""
        todo = list(dict.fromkeys(c for c in commands if c not in self._known))
        for start in range(0, len(todo), 1000):
            chunk = todo[start : start + 1000]
            pipe = self._client.pipeline(transaction=False)
            for args in chunk:
                pipe.command_getkeys(*args)
            for args, reply in zip(chunk, pipe.execute(raise_on_error=False), strict=True):
                # No key (TIME, PUBLISH …) or not a command Redis can parse here: no keys.
                keys = () if isinstance(reply, ResponseError | Exception) else _encoded(reply)
                self._known[args] = keys

    def __getitem__(self, args: tuple[bytes, ...]) -> tuple[bytes, ...]:
        return self._known[args]


def _encoded(keys: list[str | bytes]) -> tuple[bytes, ...]:
    return tuple(k.encode("utf-8", "surrogateescape") if isinstance(k, str) else k for k in keys)


def _slots(keys: tuple[bytes, ...] | list[bytes]) -> set[int]:
    return {key_slot(k) for k in keys}


def check(commands: list[Command], client: SyncRedis) -> tuple[list[str], int]:
    """The rules each of ``commands`` (in ``MONITOR`` order) broke, and how many script calls
    were checked."""
    names = _script_names()
    keys = _Keys(client)
    plain = [
        c.args
        for c in commands
        if c.name not in _SCRIPTS and c.name not in ("multi", "exec", "discard", "monitor")
    ]
    keys.of(plain)
    out: list[str] = []
    scripts = 0
    declared: tuple[bytes, ...] | None = None
    script = ""
    blocks: dict[str, list[bytes]] = {}
    for c in commands:
        name = c.name
        if c.client == "lua":
            if declared is None:
                continue  # a script of a connection this guard did not see start
            touched = keys[c.args]
            extra = [k for k in touched if k not in declared]
            if extra:
                out.append(f"{script}: {name} on undeclared key(s) {extra[:3]!r}")
            continue
        declared = None
        if name in _SCRIPTS and len(c.args) >= 3:
            n = int(c.args[2])
            declared = c.args[3 : 3 + n]
            sha = c.args[1].decode("ascii", "replace")
            script = names.get(sha, f"script {sha[:12]}") if "sha" in name else "inline script"
            scripts += 1
            if len(_slots(declared)) > 1:
                out.append(f"{script}: KEYS in {len(_slots(declared))} slots {declared[:4]!r}")
            mine = declared
        elif name in ("multi", "exec", "discard", "monitor"):
            mine = ()
        else:
            mine = keys[c.args]
            if len(_slots(mine)) > 1:
                out.append(f"{name}: keys in {len(_slots(mine))} slots {mine[:4]!r}")
        if name == "multi":
            blocks[c.client] = []
        elif name in ("exec", "discard"):
            block = blocks.pop(c.client, [])
            if name == "exec" and len(_slots(block)) > 1:
                out.append(f"MULTI block: keys in {len(_slots(block))} slots {block[:4]!r}")
        elif c.client in blocks:
            blocks[c.client] += mine
    return out, scripts


class _Monitor(threading.Thread):
    """Reads ``MONITOR`` lines off a raw connection until closed."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(daemon=True)
        self._sock = socket.create_connection((host, port))
        self._sock.sendall(b"MONITOR\r\n")
        self._buf = bytearray()
        while b"\r\n" not in self._buf:  # +OK: watching from here on
            self._buf += self._sock.recv(65536)
        del self._buf[: self._buf.index(b"\r\n") + 2]
        self._stop_at: bytes | None = None

    def run(self) -> None:
        self._sock.settimeout(0.05)
        while self._stop_at is None or self._stop_at not in self._buf:
            try:
                data = self._sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            self._buf += data

    def stop(self, marker: bytes) -> list[bytes]:
        """Stop once ``marker`` (a command sent after the block) was seen; the lines before it."""
        self._stop_at = marker
        self.join(30)
        self._sock.close()
        lines = bytes(self._buf).split(b"\r\n")
        out: list[bytes] = []
        for line in lines:
            if marker in line:
                break
            out.append(line)
        return out


@contextlib.contextmanager
def watching(url: str) -> Iterator[Report]:
    """Watch the Redis at ``url`` (every database) during the block; the report's
    ``violations`` are filled in when it ends (empty: every rule held)."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    report = Report()
    monitor = _Monitor(host, port)
    monitor.start()
    try:
        yield report
    finally:
        marker = f"slot-guard-end-{id(report)}".encode()
        with SyncRedis(host=host, port=port) as client:
            client.echo(marker)
            lines = monitor.stop(marker)
            for raw in lines:
                m = _LINE.match(raw.lstrip(b"+"))
                if m is None:
                    continue
                who = m.group(3).decode("utf-8", "replace")
                report.commands.append(Command(who, parse_args(m.group(4))))
            report.violations, report.scripts = check(report.commands, client)
