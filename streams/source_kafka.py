"""The Kafka event source: a consumer group over the events topic, committing after the work.

Guarantees:

- Per-user order: events are keyed by user id, a partition is consumed by one member at a time,
  and a poll's records are handled in partition order, one poll at a time.
- Effectively once: offsets are committed only after the poll's events were applied, stored and
  published (and its bad records dead-lettered); a crash or rebalance before the commit replays
  them, and the processor's dedup on ``event_id`` plus the feed's compare-and-set absorb the replay.
- Nothing lost silently: an undecodable or invalid record (whatever the error: one record never
  stops a partition), or one not keyed by its user id, goes to ``<topic>.dlq`` with its reason
  before its offset is committed; consumption continues.
- The loop survives: an unexpected error after connecting is logged (its type and where, not the
  record), counted (``on_restart``) and the loop restarts after a growing delay, replaying the
  uncommitted poll. Crashes in a row with no progress between them (a poll handled, or
  :data:`STABLE_S` of a quiet session) make :attr:`healthy` false (``/healthz`` fails) until
  then; a broker outage only affects :attr:`running`, and its warnings are throttled.
- Rebalances: when partitions are revoked, the poll in flight is finished and committed first; if
  it cannot finish (Redis away), it is abandoned uncommitted and the next owner replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections.abc import Callable
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from sessions.backoff import Backoff
from streams.deadletter import DeadLetters
from streams.events import Event
from streams.exceptions import InvalidEvent, StreamsError
from streams.records import check_key, decode_record
from streams.source import BatchHandler
from streams.supervise import Restarts, ThrottledWarning

log = structlog.get_logger(__name__)

#: (topic, partition, lag in records, or None when the partition is no longer owned).
LagObserver = Callable[[str, int, int | None], None]
#: How often the lag is reported (it costs a position lookup per owned partition).
LAG_EVERY_S = 1.0
#: A session idle (nothing to poll) this long without crashing counts as healthy again.
STABLE_S = 30.0


class _Abandoned(StreamsError):
    """The poll in flight was given up because its partitions are moving."""


class _Unreachable(StreamsError):
    """Connecting to the broker failed (an outage, not a crash)."""


def _where(exc: BaseException) -> str:
    """``file:line`` where ``exc`` was raised: enough to find a bug, and no record content."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Wait for the poll in flight to finish and commit (or be abandoned) before letting the
        # partitions go, so the next owner starts exactly after what we completed.
        self._source.revoking = True
        try:
            async with self._source.in_flight:
                pass
        finally:
            self._source.revoking = False
        for tp in revoked:  # another node reports these now
            self._source.on_lag(tp.topic, tp.partition, None)
        log.info("partitions_revoked", partitions=len(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned))


class KafkaSource:
    """Consumes events from Kafka in a consumer group and hands them to the processor."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        group: str,
        client_id: str,
        max_batch: int = 500,
        on_dead: Callable[[str], None] = lambda _reason: None,
        on_lag: LagObserver = lambda _topic, _partition, _lag: None,
        on_restart: Callable[[str], None] = lambda _error: None,
        restarts: Restarts | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._group = group
        self._client_id = client_id
        self._max_batch = max_batch
        self._on_dead = on_dead
        self._on_restart = on_restart
        self._restarts = restarts or Restarts()
        self._unreachable = ThrottledWarning(log, "kafka_consumer_unavailable")
        #: Told each owned partition's lag after polls (at most once per LAG_EVERY_S), and None
        #: for a partition that is no longer owned.
        self.on_lag = on_lag
        self._lag_at = 0.0
        self._handler: BatchHandler | None = None
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self.in_flight = asyncio.Lock()
        self.revoking = False
        self._stopping = False

    @property
    def running(self) -> bool:
        """True while the consumer is connected and its loop alive (readiness)."""
        return self._consumer is not None and self._task is not None and not self._task.done()

    @property
    def healthy(self) -> bool:
        """Liveness: false when the loop keeps crashing without completing a poll, or ended
        while not asked to stop. A broker outage leaves it true (see :attr:`running`)."""
        if self._task is not None and self._task.done() and not self._stopping:
            return False
        return self._restarts.healthy

    async def start(self, handler: BatchHandler) -> None:
        """Start consuming in the background (connecting, and reconnecting, as needed)."""
        self._handler = handler
        self._task = asyncio.create_task(self._run(), name="kafka-source")

    async def stop(self) -> None:
        """Finish and commit the poll in flight, then leave the group."""
        self._stopping = True
        async with self.in_flight:
            if self._task is not None:
                self._task.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        outage_delay = 0.5
        while not self._stopping:
            try:
                await self._session()
                return  # cancelled by stop()
            except _Unreachable as exc:
                self._unreachable.warn(error=type(exc.__cause__).__name__)
                delay, outage_delay = outage_delay, min(outage_delay * 2, 10.0)
            except Exception as exc:
                # Whatever it is, the loop goes on: the uncommitted poll is replayed on restart.
                outage_delay = 0.5
                delay = self._restarts.crashed()
                # A Kafka error mid-run is operational (a broker failing over); anything else is
                # a bug. Both count towards liveness.
                report = log.warning if isinstance(exc, KafkaError) else log.error
                report(
                    "kafka_consumer_failed",
                    error=type(exc).__name__,
                    where=_where(exc),
                    in_a_row=self._restarts.in_a_row,
                    restart_in_s=delay,
                )
                self._on_restart(type(exc).__name__)
            if not self._stopping:
                await asyncio.sleep(delay)

    async def _session(self) -> None:
        """Connect, then consume until an error; always leaves the group on the way out."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self._group,
            client_id=self._client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._max_batch,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
        )
        dlq = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=f"{self._client_id}-dlq",
            enable_idempotence=True,
            acks="all",
        )
        try:
            try:
                consumer.subscribe([self._topic], listener=_Listener(self))
                await consumer.start()
                await dlq.start()
            except KafkaError as exc:
                raise _Unreachable from exc
            self._consumer = consumer
            self._unreachable.recovered()
            log.info("kafka_consumer_started", topic=self._topic, group=self._group)
            await self._consume(consumer, DeadLetters(dlq, f"{self._topic}.dlq", self._on_dead))
        finally:
            self._consumer = None
            with contextlib.suppress(Exception):
                await consumer.stop()  # leaves the group: partitions move at once
            with contextlib.suppress(Exception):
                await dlq.stop()

    async def _consume(self, consumer: AIOKafkaConsumer, dlq: DeadLetters) -> None:
        started = time.monotonic()
        while True:
            polled = await consumer.getmany(timeout_ms=200, max_records=self._max_batch)
            await self._report_lag(consumer)
            if not polled:
                # Idle counts as progress only once the session has lasted: right after a
                # (re)join, polls come back empty while fetching starts, and a record that
                # crashes the loop is fetched again just after.
                if time.monotonic() - started >= STABLE_S:
                    self._restarts.progressed()
                continue
            async with self.in_flight:
                try:
                    await self._process(polled, dlq)
                except _Abandoned:
                    log.warning("poll_abandoned", records=sum(len(r) for r in polled.values()))
                    continue
                try:
                    await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in polled.items()})
                except CommitFailedError:
                    # The group moved on (we were too slow); the new owner replays, dedup absorbs.
                    log.warning("commit_failed_rebalanced")
                self._restarts.progressed()

    async def _report_lag(self, consumer: AIOKafkaConsumer) -> None:
        """Report high watermark - position of every owned partition whose high watermark the
        last fetch told (position is local once fetching; bounded wait in case it is not)."""
        now = time.monotonic()
        if now - self._lag_at < LAG_EVERY_S:
            return
        self._lag_at = now
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                async with asyncio.timeout(0.05):
                    position = await consumer.position(tp)
            except (TimeoutError, KafkaError, IllegalStateError):
                continue
            self.on_lag(tp.topic, tp.partition, max(0, high - position))

    async def _process(self, polled: dict[TopicPartition, list[Any]], dlq: DeadLetters) -> None:
        events: list[Event] = []
        for tp, records in polled.items():
            for record in records:
                try:
                    event = decode_record(
                        record.value, record.headers, record_ts_ms=record.timestamp
                    )
                    check_key(record.key, event)
                    events.append(event)
                except InvalidEvent as exc:
                    await dlq.send(
                        key=record.key,
                        value=record.value,
                        headers=record.headers,
                        origin=(tp.topic, tp.partition, record.offset),
                        reason=exc.reason,
                        error=str(exc),
                    )
        await self._handle(events)

    async def _handle(self, events: list[Event]) -> None:
        handler = self._handler
        if handler is None or not events:
            return
        backoff = Backoff(0.05, 5.0)
        while True:
            try:
                await handler(events)
                return
            except Exception as exc:
                # Redis away (the processor handles per-event failures itself). Retrying is safe
                # (dedup); giving up is safe only uncommitted, when the partitions move anyway.
                if self.revoking or self._stopping:
                    raise _Abandoned from exc
                log.warning("batch_retry", size=len(events), error=type(exc).__name__)
                await asyncio.sleep(backoff.next())
