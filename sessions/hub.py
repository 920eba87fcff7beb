"""The local hub: which of this node's connections belong to which user.

The hub watches a user on the broker while it holds at least one of that user's connections, and
hands every delivered update to each of them. It only ever delivers an update to the receivers
registered under ``update.user``: a connection is registered under its verified subject, so it
never sees another user's feed.
"""

from __future__ import annotations

from typing import Protocol

from sessions.broker import Broker
from sessions.feeds import FeedUpdate


class Receiver(Protocol):
    """A connection as the hub sees it."""

    def offer(self, update: FeedUpdate) -> None:
        """Take one update of the connection's user; must not block."""

    def resync(self) -> None:
        """Updates may have been missed: recover (resume or snapshot) every feed."""

    def close(self, code: int, reason: str) -> None:
        """End the connection with a close code of docs/PROTOCOL.md and its reason."""


class Hub:
    """Registry of live receivers by user; the broker's delivery target."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._by_user: dict[str, set[Receiver]] = {}

    async def attach(self, user: str, receiver: Receiver) -> None:
        """Register ``receiver`` under ``user``; watch the user when it is the first one.

        When the watch fails (:class:`~sessions.exceptions.SubscribeFailed`, or anything else) the
        receiver is not registered and the error propagates: the caller closes the connection.
        """
        conns = self._by_user.get(user)
        if conns is None:
            self._by_user[user] = {receiver}
            try:
                await self._broker.watch(user)
            except BaseException:
                await self.detach(user, receiver)  # unwatches unless another receiver came
                raise
        else:
            conns.add(receiver)

    async def detach(self, user: str, receiver: Receiver) -> None:
        """Forget ``receiver``; unwatch the user after the last one leaves."""
        conns = self._by_user.get(user)
        if conns is None:
            return
        conns.discard(receiver)
        if not conns:
            del self._by_user[user]
            await self._broker.unwatch(user)

    def deliver(self, update: FeedUpdate) -> None:
        """Offer ``update`` to every receiver of its user (never blocks)."""
        for receiver in self._by_user.get(update.user, ()):
            receiver.offer(update)

    def resync(self, users: frozenset[str]) -> None:
        """The broker may have lost updates of ``users``: their connections take snapshots."""
        for user in users:
            for receiver in self._by_user.get(user, ()):
                receiver.resync()

    def close_user(self, user: str, code: int, reason: str) -> int:
        """Close every connection of ``user`` on this node; returns how many."""
        receivers = list(self._by_user.get(user, ()))
        for receiver in receivers:
            receiver.close(code, reason)
        return len(receivers)

    @property
    def users(self) -> int:
        """How many users have at least one connection here."""
        return len(self._by_user)

    @property
    def connections(self) -> int:
        """How many receivers are registered here."""
        return sum(len(b) for b in self._by_user.values())
