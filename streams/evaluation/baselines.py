"""Baselines, in pure Python, replayed by the same harness as the engine.

Each implements :class:`Screener`: ``update(event)`` learns from one interaction (called for
every event, warm-up and scored, in replay order) and ``screen(user)`` is the list the user
would see now, best first, at most ``size`` long. All are deterministic: ties break by item id.

- :class:`Popular` — most interactions so far (the training part included).
- :class:`Recent` — the user's own distinct items, most recent first (the current one first of
  all), padded with :class:`Popular`.
- :class:`ItemToItem` — a static model, as a nightly batch would give: co-occurrence counts
  within the training part's sessions, computed once and never updated. The screen scores the
  neighbours of the user's latest distinct items (live), weighting each item's neighbours by
  ``decay`` per step back, padded with the training part's most popular items.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Protocol

from streams.evaluation.readers import Interaction

#: ``--algorithms`` names of the baselines.
BASELINES = ("popular", "recent", "item2item")


class Screener(Protocol):
    """Anything the harness can replay: learns from events, shows a list per user."""

    name: str

    def update(self, event: Interaction) -> None:
        """Learn from ``event`` (called once per event, in replay order)."""

    def screen(self, user: str) -> list[str]:
        """What ``user`` sees now, best first."""


class Popular:
    """The most interacted-with items so far; ties by item id.

    Keeps the first ``depth`` (≥ ``size``) exactly: counts only grow, so an item outside the
    kept ranking can only enter it when its own count grows, which is when it is checked.
    """

    name = "popular"

    def __init__(self, size: int, depth: int | None = None) -> None:
        self.size = size
        self._depth = max(depth or size, size)
        self._counts: dict[str, int] = defaultdict(int)
        self._top: list[str] = []
        self._in_top: set[str] = set()

    def _key(self, item: str) -> tuple[int, str]:
        return (-self._counts[item], item)

    def update(self, event: Interaction) -> None:
        """Count ``event``'s item."""
        item = event.item
        self._counts[item] += 1
        if item not in self._in_top:
            if len(self._top) >= self._depth:
                if self._key(item) >= self._key(self._top[-1]):
                    return
                self._in_top.discard(self._top.pop())
            self._top.append(item)
            self._in_top.add(item)
        self._top.sort(key=self._key)

    def ranked(self) -> list[str]:
        """The kept ranking (``depth`` items at most), best first."""
        return list(self._top)

    def screen(self, user: str) -> list[str]:
        """The same list for everyone: the first ``size`` of :meth:`ranked`."""
        return self._top[: self.size]


def _padded(head: Sequence[str], padding: Iterable[str], size: int) -> list[str]:
    """``head`` followed by the items of ``padding`` not already in it, ``size`` at most."""
    out = list(head[:size])
    seen = set(out)
    for item in padding:
        if len(out) >= size:
            break
        if item not in seen:
            out.append(item)
            seen.add(item)
    return out


class _RecentItems:
    """Each user's latest distinct items, most recent first, ``keep`` at most."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._items: dict[str, list[str]] = {}

    def add(self, user: str, item: str) -> None:
        items = self._items.setdefault(user, [])
        if item in items:
            items.remove(item)
        items.insert(0, item)
        del items[self._keep :]

    def of(self, user: str) -> list[str]:
        return self._items.get(user, [])


class Recent:
    """The user's own recent distinct items, most recent first, padded with :class:`Popular`."""

    name = "recent"

    def __init__(self, size: int) -> None:
        self.size = size
        self._recent = _RecentItems(size)
        self._popular = Popular(size, depth=2 * size)

    def update(self, event: Interaction) -> None:
        """Remember the item for its user and count it."""
        self._recent.add(event.user, event.item)
        self._popular.update(event)

    def screen(self, user: str) -> list[str]:
        """Recent items first, then the most popular ones not among them."""
        return _padded(self._recent.of(user), self._popular.ranked(), self.size)


def cooccurrence(train: Iterable[Interaction], keep: int) -> dict[str, list[tuple[str, float]]]:
    """For each item, its ``keep`` best neighbours: the number of training sessions holding
    both items (a session counts once per pair), best first, ties by id.

    Sessions are ``Interaction.session``, or the user when it is empty.
    """
    sessions: dict[str, dict[str, None]] = defaultdict(dict)
    for event in train:
        sessions[event.session or event.user][event.item] = None
    counts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for items in sessions.values():
        distinct = list(items)
        for a in distinct:
            row = counts[a]
            for b in distinct:
                if a != b:
                    row[b] += 1.0
    return {
        item: heapq.nsmallest(keep, row.items(), key=lambda nb: (-nb[1], nb[0]))
        for item, row in counts.items()
    }


class ItemToItem:
    """Static session co-occurrence model trained once on ``train``; never updated.

    ``update`` only tracks each user's latest distinct items (what the page knows live); the
    model itself stays as trained.
    """

    name = "item2item"

    def __init__(
        self,
        train: Sequence[Interaction],
        size: int,
        *,
        recent: int = 3,
        decay: float = 0.5,
        neighbours: int = 100,
    ) -> None:
        self.size = size
        self._decay = decay
        self._neighbours = cooccurrence(train, neighbours)
        self._recent = _RecentItems(recent)
        popular = Popular(size, depth=2 * size)
        for event in train:
            popular.update(event)
        self._fallback = popular.ranked()

    def update(self, event: Interaction) -> None:
        """Remember the item for its user (the model does not change)."""
        self._recent.add(event.user, event.item)

    def screen(self, user: str) -> list[str]:
        """Neighbours of the user's latest items, each source normalised by its best count and
        weighted ``decay`` per step back; then the training part's most popular items."""
        scores: dict[str, float] = defaultdict(float)
        weight = 1.0
        for item in self._recent.of(user):
            row = self._neighbours.get(item, [])
            if row:
                top = row[0][1]
                for other, count in row:
                    scores[other] += weight * count / top
            weight *= self._decay
        ranked = heapq.nsmallest(self.size, scores.items(), key=lambda s: (-s[1], s[0]))
        return _padded([item for item, _ in ranked], self._fallback, self.size)


def make_baseline(name: str, train: Sequence[Interaction], size: int) -> Screener:
    """The baseline called ``name`` (one of :data:`BASELINES`), showing ``size`` items."""
    if name == "popular":
        return Popular(size)
    if name == "recent":
        return Recent(size)
    if name == "item2item":
        return ItemToItem(train, size)
    raise ValueError(f"unknown baseline {name!r}; one of {', '.join(BASELINES)}")
