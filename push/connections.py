"""This node's live push connections: one sweep for all of them, and their background work.

Idle connections hold no task, no timer and no buffer of their own (memory per idle socket is a
product goal): a single sweep, once a second, sends each connection's heartbeat ping when it is
due and closes the ones that went silent, stayed behind, or outlived their token. Short-lived
work a connection starts (reading a snapshot, taking tracked events) runs as tasks kept here so
nothing is garbage-collected half way.

Guarantee: :meth:`Connections.shutdown` closes every connection with the given code and waits
for their background work, so a stopping node leaves no connection without its close frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import Any, Protocol

import structlog

log = structlog.get_logger(__name__)

SWEEP_INTERVAL_S = 1.0


class Swept(Protocol):
    """What the sweep needs of a connection."""

    conn: str

    def tick(self, now: float, wall: float) -> None:
        """Send a due ping or close the connection when one of its deadlines passed."""

    def close(self, code: int, reason: str) -> None:
        """Close with ``code`` (see docs/PROTOCOL.md) and ``reason``."""


class Connections:
    """Registry of this node's connections, by connection id."""

    def __init__(self) -> None:
        self._by_conn: dict[str, Swept] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def add(self, conn: Swept) -> None:
        """Register ``conn`` (swept from now on)."""
        self._by_conn[conn.conn] = conn

    def discard(self, conn: Swept) -> None:
        """Forget ``conn`` (it closed)."""
        if self._by_conn.get(conn.conn) is conn:
            del self._by_conn[conn.conn]

    def get(self, conn: str) -> Swept | None:
        """The connection with id ``conn``, if it lives on this node."""
        return self._by_conn.get(conn)

    def __len__(self) -> int:
        return len(self._by_conn)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task held until it ends; an exception it ends with is logged."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("connection_task_failed", error=type(task.exception()).__name__)

    def start(self) -> None:
        """Start the sweep."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="sweep")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            now, wall = time.monotonic(), time.time()
            for conn in list(self._by_conn.values()):
                conn.tick(now, wall)

    async def shutdown(self, code: int, reason: str, *, window_s: float = 0.0) -> None:
        """Close every connection with ``code`` and wait for their background work.

        With ``window_s`` the closes are spread evenly over that window (the i-th of n at about
        i x window / n), so their clients' reconnects spread over the fleet too; connections
        opened meanwhile are closed at its end.
        """
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        conns = list(self._by_conn.values())
        for i, conn in enumerate(conns):
            if window_s > 0 and i > 0:
                await asyncio.sleep(window_s / len(conns))
            conn.close(code, reason)
        for conn in list(self._by_conn.values()):  # arrived during the window
            conn.close(code, reason)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
