"""In-process broker: publisher and sockets live in the same process."""

from __future__ import annotations

from collections.abc import Sequence

from sessions.broker import Deliver
from sessions.feeds import FeedUpdate


class MemoryBroker:
    """Delivers each update synchronously to the local hub when the user is watched.

    Order is publish order, trivially. Nothing is buffered: an update for a user nobody watches
    is dropped (the stored version is the truth a new connection starts from).
    """

    def __init__(self) -> None:
        self._deliver: Deliver | None = None
        self._watched: set[str] = set()

    async def start(self, deliver: Deliver) -> None:
        """Begin delivering to ``deliver``."""
        self._deliver = deliver

    async def stop(self) -> None:
        """Stop delivering."""
        self._deliver = None
        self._watched.clear()

    async def publish(self, update: FeedUpdate) -> None:
        """Hand ``update`` to the local hub if the user is watched here."""
        if self._deliver is not None and update.user in self._watched:
            self._deliver(update)

    async def publish_many(self, updates: Sequence[FeedUpdate]) -> None:
        """:meth:`publish` each of ``updates``, in order."""
        for update in updates:
            await self.publish(update)

    async def watch(self, user: str) -> None:
        """Receive ``user``'s updates."""
        self._watched.add(user)

    async def unwatch(self, user: str) -> None:
        """Stop receiving ``user``'s updates."""
        self._watched.discard(user)
