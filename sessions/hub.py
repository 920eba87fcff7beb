"""The local hub: which of this node's connections belong to which user.

The hub watches a user on the broker while it holds at least one of that user's connections, and
hands every delivered update to each of them. It only ever delivers an update to the outboxes
registered under ``update.user``: a connection is registered under its verified subject, so it
never sees another user's feed.
"""

from __future__ import annotations

from sessions.broker import Broker
from sessions.feeds import FeedUpdate
from sessions.outbox import Outbox


class Hub:
    """Registry of live outboxes by user; the broker's delivery target."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._by_user: dict[str, set[Outbox]] = {}

    async def attach(self, user: str, outbox: Outbox) -> None:
        """Register ``outbox`` under ``user``; watch the user when it is the first one."""
        boxes = self._by_user.get(user)
        if boxes is None:
            self._by_user[user] = {outbox}
            await self._broker.watch(user)
        else:
            boxes.add(outbox)

    async def detach(self, user: str, outbox: Outbox) -> None:
        """Forget ``outbox``; unwatch the user after the last one leaves."""
        boxes = self._by_user.get(user)
        if boxes is None:
            return
        boxes.discard(outbox)
        if not boxes:
            del self._by_user[user]
            await self._broker.unwatch(user)

    def deliver(self, update: FeedUpdate) -> None:
        """Offer ``update`` to every outbox of its user (never blocks)."""
        for outbox in self._by_user.get(update.user, ()):
            outbox.offer(update)

    def resync(self, users: frozenset[str]) -> None:
        """The broker may have lost updates of ``users``: their connections take snapshots."""
        for user in users:
            for outbox in self._by_user.get(user, ()):
                outbox.resync()

    @property
    def users(self) -> int:
        """How many users have at least one connection here."""
        return len(self._by_user)

    @property
    def connections(self) -> int:
        """How many outboxes are registered here."""
        return sum(len(b) for b in self._by_user.values())
