"""The collector's Kafka producer: idempotent, acknowledged by all in-sync replicas.

Guarantees: :meth:`KafkaProducer.send` returns only after the broker acknowledged every event
of the batch (key = user id, so one user's events share a partition and keep their order). On
any failure it raises :class:`~streams.exceptions.SourceUnavailable`: the caller answers 503 and
the client retries the whole batch; events the broker had already taken are then absorbed by
dedup on ``event_id``. Nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from sessions.backoff import Backoff
from streams.events import Event
from streams.exceptions import SourceUnavailable
from streams.records import MSGPACK
from streams.supervise import ThrottledWarning

log = structlog.get_logger(__name__)
HEADERS = [("content-type", MSGPACK.encode())]


class KafkaProducer:
    """Produces events to the events topic; starts (and restarts) its client in the background."""

    def __init__(
        self, *, bootstrap: str, topic: str, client_id: str, timeout_s: float = 5.0
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._client_id = client_id
        self._timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._connecting: asyncio.Task[None] | None = None
        # During an outage every reconnect attempt and every refused batch fails alike: the
        # first says it, then one line per interval with how many more there were.
        self._unavailable = ThrottledWarning(log, "kafka_producer_unavailable")
        self._failed = ThrottledWarning(log, "kafka_produce_failed")

    @property
    def ready(self) -> bool:
        """True once the producer is connected (readiness)."""
        return self._producer is not None

    async def start(self) -> None:
        """Try to connect now; keep trying in the background when Kafka is not reachable yet."""
        if not await self._connect():
            self._connecting = asyncio.create_task(self._keep_connecting())

    async def _connect(self) -> bool:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=1,
            request_timeout_ms=int(self._timeout_s * 1000),
        )
        try:
            await producer.start()
        except KafkaError as exc:
            self._unavailable.warn(error=type(exc).__name__)
            with contextlib.suppress(Exception):
                await producer.stop()
            return False
        self._producer = producer
        self._unavailable.recovered()
        return True

    async def _keep_connecting(self) -> None:
        backoff = Backoff(0.5, 10.0)
        while not await self._connect():  # noqa: ASYNC110 - a retry loop, nothing to wait on
            await asyncio.sleep(backoff.next())

    async def send(self, events: Sequence[Event]) -> None:
        """Produce ``events`` and wait for the broker's acknowledgement of every one."""
        producer = self._producer
        if producer is None:
            raise SourceUnavailable(
                "event log (Kafka) not reachable; retry shortly", retry_after_s=2
            )
        try:
            async with asyncio.timeout(self._timeout_s):
                pending = [
                    await producer.send(
                        self._topic,
                        value=e.pack(),
                        key=e.user_id.encode(),
                        headers=HEADERS,
                        # The accept time, so the event→push latency includes the produce.
                        timestamp_ms=e.entered_ms or None,
                    )
                    for e in events
                ]
                await asyncio.gather(*pending)
        except (KafkaError, TimeoutError) as exc:
            self._failed.warn(error=type(exc).__name__)
            if isinstance(exc, KafkaError) and not exc.retriable:
                # E.g. OutOfOrderSequenceNumber after a broker restart cut batches mid-flight:
                # this producer's idempotence state is broken for good and every later send
                # would fail the same way. A new producer starts a new sequence (and dedup on
                # event_id absorbs what the old one may have delivered).
                self._replace(producer)
            raise SourceUnavailable(
                "event log (Kafka) did not acknowledge; retry the batch", retry_after_s=1
            ) from None
        self._failed.recovered()

    def _replace(self, broken: AIOKafkaProducer) -> None:
        if self._producer is not broken:
            return  # another send already replaced it
        self._producer = None

        self._connecting = asyncio.create_task(self._renew(broken))

    async def _renew(self, broken: AIOKafkaProducer) -> None:
        with contextlib.suppress(Exception):
            await broken.stop()
        await self._keep_connecting()

    async def stop(self) -> None:
        """Flush and close."""
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
