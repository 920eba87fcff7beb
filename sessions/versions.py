"""Feed versions: ``(epoch, n)``.

``n`` grows by one with every change of a feed. ``epoch`` is a random token chosen when a feed is
first written after its previous state was lost (first visit, Redis flushed, key expired): a client
holding a version of another epoch can never apply a diff and must take a snapshot. Versions of
the same epoch are totally ordered by ``n``.
"""

from __future__ import annotations

import secrets
from typing import NamedTuple


class Version(NamedTuple):
    """A feed version; hashable, comparable within one epoch."""

    epoch: str
    n: int

    def to_wire(self) -> list[str | int]:
        """The JSON/msgpack form: ``[epoch, n]``."""
        return [self.epoch, self.n]

    @classmethod
    def from_wire(cls, value: object) -> Version | None:
        """Parse ``[epoch, n]``; None when the value is not a well-formed version."""
        if (
            isinstance(value, list | tuple)
            and len(value) == 2
            and isinstance(value[0], str)
            and isinstance(value[1], int)
            and not isinstance(value[1], bool)
            and 0 < len(value[0]) <= 32
            and value[1] >= 0
        ):
            return cls(value[0], value[1])
        return None


def new_epoch() -> str:
    """A fresh epoch token: 8 URL-safe characters, unlikely to repeat."""
    return secrets.token_urlsafe(6)
