"""The broker: carries feed updates to whichever node holds the user's sockets.

Implementations: :mod:`sessions.broker_memory` (one process) and, for several nodes,
:mod:`sessions.broker_redis` (Redis pub/sub, sharded pub/sub on Redis >= 7).

Guarantees every implementation gives:

- Updates of one user reach a watching node in the order they were published by one publisher.
- A node receives a user's updates only while it watches that user (holds at least one socket).
- Delivery is at most once; a node that missed an update (disconnect from the broker) finds out
  from the version chain, and its connections recover with a snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from sessions.feeds import FeedUpdate

Deliver = Callable[[FeedUpdate], None]


class Broker(Protocol):
    """Publish/subscribe of feed updates keyed by user."""

    async def start(self, deliver: Deliver) -> None:
        """Begin delivering watched users' updates to ``deliver`` (a plain call: must not block)."""

    async def stop(self) -> None:
        """Stop delivering and release resources."""

    async def publish(self, update: FeedUpdate) -> None:
        """Send ``update`` to every node watching ``update.user``."""

    async def publish_many(self, updates: Sequence[FeedUpdate]) -> None:
        """Send each of ``updates``, in order (implementations batch the round trips)."""

    async def watch(self, user: str) -> None:
        """Start receiving ``user``'s updates on this node."""

    async def unwatch(self, user: str) -> None:
        """Stop receiving ``user``'s updates on this node."""
