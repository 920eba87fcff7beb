"""Event sources and producers: the seam between the collector, the bus and the processor.

Implementations: :mod:`streams.source_memory` (in-process, the embedded default) and
``source_kafka`` (added with the Kafka work).

Guarantees every implementation gives:

- Per-user order: events of one user are handed to the handler in the order they were produced,
  one batch at a time, never concurrently with another batch holding the same user.
- :meth:`EventProducer.send` returns only once the bus has taken every event of the batch, or
  raises :class:`~streams.exceptions.SourceUnavailable`; the in-memory bus then has taken none.
- The handler is called with events in batches; a batch is done when the handler returns, and a
  batch whose handler raised is handed over again (the processor's dedup absorbs the repeat).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from streams.events import Event

BatchHandler = Callable[[Sequence[Event]], Awaitable[None]]


class EventProducer(Protocol):
    """Where the collector puts accepted events."""

    async def send(self, events: Sequence[Event]) -> None:
        """Hand ``events`` to the bus; raises SourceUnavailable when it cannot take them."""


class EventSource(Protocol):
    """Where the worker takes events from."""

    async def start(self, handler: BatchHandler) -> None:
        """Begin calling ``handler`` with batches of events."""

    async def stop(self) -> None:
        """Stop consuming; waits for the batch in flight to finish."""

    @property
    def running(self) -> bool:
        """True while consumption is running (readiness)."""
