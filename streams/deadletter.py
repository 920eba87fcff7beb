"""Dead letters: records that cannot become events go to ``<topic>.dlq``, with why.

The dead-lettered record keeps the original key, value and headers, and gains headers naming the
reason, the message, and where it came from (topic, partition, offset). The source commits past a
bad record only after the dead-letter topic acknowledged it, so nothing is lost silently.

A record the broker took may still be too large to copy (its value near the broker's limit, plus
these headers): such a letter carries the first :data:`KEEP_BYTES` of the value instead, with
``x-pushrec-truncated: 1`` and the original size in ``x-pushrec-size``; without the original
headers when they are large too. If the dead-letter topic refuses even that (a smaller
``max.message.bytes`` on it), a letter with no body is tried last; only then does the send fail,
and the record stays uncommitted (the source restarts and retries: see streams/source_kafka.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

REASON = "x-pushrec-reason"
ERROR = "x-pushrec-error"
ORIGIN_TOPIC = "x-pushrec-topic"
ORIGIN_PARTITION = "x-pushrec-partition"
ORIGIN_OFFSET = "x-pushrec-offset"
TRUNCATED = "x-pushrec-truncated"
SIZE = "x-pushrec-size"
#: A letter larger than this is truncated before sending: under the producer's default
#: ``max_request_size`` (1 MiB), with room for the batch's own overhead.
MAX_LETTER_BYTES = 1_000_000
#: What a truncated letter keeps of the value: the decoder's own limit (streams/records.py),
#: enough to see what the record was.
KEEP_BYTES = 65_536
#: Original headers (or key) larger than this are not copied into a truncated letter.
KEEP_HEADER_BYTES = 16_384

Headers = list[tuple[str, bytes]]


def _size(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> int:
    return len(key or b"") + len(value or b"") + sum(len(n) + len(v) for n, v in headers)


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
        """Produce one dead letter and wait for its acknowledgement (truncated when too large
        to copy); raises only when the topic refuses even an empty-bodied letter."""
        topic, partition, offset = origin
        marks: Headers = [
            (REASON, reason.encode()),
            (ERROR, error.encode()[:1000]),
            (ORIGIN_TOPIC, topic.encode()),
            (ORIGIN_PARTITION, str(partition).encode()),
            (ORIGIN_OFFSET, str(offset).encode()),
        ]
        original = list(headers or ())
        size = len(value or b"")
        cut: Headers = [(TRUNCATED, b"1"), (SIZE, str(size).encode())]
        small_key = key if len(key or b"") <= KEEP_HEADER_BYTES else None
        kept = original if _size(None, None, original) <= KEEP_HEADER_BYTES else []
        attempts: list[tuple[bytes | None, bytes | None, Headers]] = []
        if _size(key, value, [*original, *marks]) <= MAX_LETTER_BYTES:
            attempts.append((key, value, [*original, *marks]))
        attempts.append((small_key, (value or b"")[:KEEP_BYTES], [*kept, *marks, *cut]))
        attempts.append((small_key, b"", [*marks, *cut]))
        for i, (k, v, h) in enumerate(attempts):
            try:
                await self._producer.send_and_wait(self.topic, value=v, key=k, headers=h)
                break
            except MessageSizeTooLargeError:  # ours (max_request_size) or the topic's limit
                if i == len(attempts) - 1:
                    raise
        self._on_dead(reason)
