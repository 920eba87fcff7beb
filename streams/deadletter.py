"""Dead letters: records that cannot become events go to ``<topic>.dlq``, with why.

The dead-lettered record keeps the original key, value and headers, and gains headers naming the
reason, the message, and where it came from (topic, partition, offset). The source commits past a
bad record only after the dead-letter topic acknowledged it, so nothing is lost silently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer

REASON = "x-pushrec-reason"
ERROR = "x-pushrec-error"
ORIGIN_TOPIC = "x-pushrec-topic"
ORIGIN_PARTITION = "x-pushrec-partition"
ORIGIN_OFFSET = "x-pushrec-offset"


class DeadLetters:
    """Sends refused records to the dead-letter topic and counts them."""

    def __init__(
        self, producer: AIOKafkaProducer, topic: str, on_dead: Callable[[str], None]
    ) -> None:
        self._producer = producer
        self.topic = topic
        self._on_dead = on_dead

    async def send(
        self,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None,
        origin: tuple[str, int, int],
        reason: str,
        error: str,
    ) -> None:
        """Produce one dead letter and wait for its acknowledgement."""
        topic, partition, offset = origin
        marks = [
            (REASON, reason.encode()),
            (ERROR, error.encode()[:1000]),
            (ORIGIN_TOPIC, topic.encode()),
            (ORIGIN_PARTITION, str(partition).encode()),
            (ORIGIN_OFFSET, str(offset).encode()),
        ]
        await self._producer.send_and_wait(
            self.topic, value=value, key=key, headers=[*(headers or ()), *marks]
        )
        self._on_dead(reason)
