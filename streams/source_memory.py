"""The in-process event bus of the embedded default: producer and source in one object.

Events are spread over ``partitions`` bounded queues by a hash of the user id, like Kafka's keyed
partitions, and each partition is consumed by one task, so one user's events are processed in
order while different users proceed in parallel.

Caveat: the queues live in memory. Events accepted but not yet processed are lost if the process
dies; on a clean stop they are drained (up to ``drain_timeout_s``). Use Kafka where that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Sequence

import structlog

from sessions.backoff import Backoff
from streams.events import Event
from streams.exceptions import SourceUnavailable
from streams.source import BatchHandler

log = structlog.get_logger(__name__)


class MemoryBus:
    """Keyed, bounded, in-process event bus."""

    def __init__(
        self, *, partitions: int = 4, capacity: int = 10_000, max_batch: int = 100
    ) -> None:
        self._queues = [asyncio.Queue[Event](capacity) for _ in range(partitions)]
        self._capacity = capacity
        self._max_batch = max_batch
        self._tasks: list[asyncio.Task[None]] = []
        self._handler: BatchHandler | None = None

    def partition_of(self, user_id: str) -> int:
        """The partition that owns ``user_id`` (stable across runs)."""
        return zlib.crc32(user_id.encode()) % len(self._queues)

    async def send(self, events: Sequence[Event]) -> None:
        """Enqueue all of ``events`` or none of them (SourceUnavailable when a queue is full)."""
        need = [0] * len(self._queues)
        for event in events:
            need[self.partition_of(event.user_id)] += 1
        for queue, n in zip(self._queues, need, strict=True):
            if queue.qsize() + n > self._capacity:
                raise SourceUnavailable("event bus is full; retry shortly", retry_after_s=1)
        for event in events:
            self._queues[self.partition_of(event.user_id)].put_nowait(event)

    async def start(self, handler: BatchHandler) -> None:
        """Start one consumer task per partition."""
        self._handler = handler
        self._tasks = [
            asyncio.create_task(self._consume(q), name=f"bus-partition-{i}")
            for i, q in enumerate(self._queues)
        ]

    @property
    def running(self) -> bool:
        """True while every partition consumer is alive."""
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    @property
    def backlog(self) -> int:
        """Events waiting in all partitions."""
        return sum(q.qsize() for q in self._queues)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every queued event has been handled; False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                for queue in self._queues:
                    await queue.join()
        except TimeoutError:
            return False
        return True

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Drain what was accepted (bounded by ``drain_timeout_s``), then stop the consumers."""
        if self._tasks and not await self.drain(drain_timeout_s):
            log.warning("bus_drain_timeout", backlog=self.backlog)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _consume(self, queue: asyncio.Queue[Event]) -> None:
        handler = self._handler
        if handler is None:
            return
        while True:
            batch = [await queue.get()]
            while len(batch) < self._max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            backoff = Backoff(0.05, 5.0)
            while True:
                try:
                    await handler(batch)
                    break
                except Exception as exc:
                    # The handler owns per-event errors, so this is Redis being away (or a bug).
                    # Retry the same batch: dedup on event_id makes the replay harmless, and
                    # dropping it would lose accepted events.
                    log.warning("batch_retry", size=len(batch), error=type(exc).__name__)
                    await asyncio.sleep(backoff.next())
            for _ in batch:
                queue.task_done()
