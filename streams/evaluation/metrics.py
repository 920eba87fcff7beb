"""Next-item metrics: pure functions, and a tally that sums them over scored events.

Definitions (``screen`` is the list on the user's screen, best first; ``target`` the item the
user touched next; ranks start at 1):

- HR@K (hit rate): 1 when ``target`` is among the first K items of ``screen``, else 0.
- MRR@K: 1 / rank of ``target`` when that rank is at most K, else 0.
- coverage@K: distinct items ever shown among the first K, over all scored events, divided by
  the catalogue size.
- latency percentiles: nearest-rank (the smallest value with at least q % of the values at or
  below it), so a reported p99 is a latency that was actually observed.

Averages are over scored events; with none scored every rate is 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


def rank_of(screen: Sequence[str], target: str) -> int | None:
    """1-based position of ``target`` in ``screen`` (its first occurrence), None when absent."""
    for i, item in enumerate(screen):
        if item == target:
            return i + 1
    return None


def hit(screen: Sequence[str], target: str, k: int) -> float:
    """HR@k of one event: 1.0 when ``target`` is in the first ``k`` of ``screen``, else 0.0."""
    rank = rank_of(screen[:k], target)
    return 0.0 if rank is None else 1.0


def reciprocal_rank(screen: Sequence[str], target: str, k: int) -> float:
    """MRR@k of one event: 1 / rank of ``target`` within the first ``k``, else 0.0."""
    rank = rank_of(screen[:k], target)
    return 0.0 if rank is None else 1.0 / rank


def coverage(shown: Iterable[str], catalogue_size: int) -> float:
    """Share of the catalogue among ``shown`` (distinct ids; ids outside it still count)."""
    if catalogue_size <= 0:
        return 0.0
    return len(set(shown)) / catalogue_size


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank ``q``-th percentile (0 < q ≤ 100) of ``values``; 0.0 for no values."""
    if not 0 < q <= 100:
        raise ValueError("q must be in (0, 100]")
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)), 1) - 1]


@dataclass
class Tally:
    """Sums of HR@K and MRR@K over scored events, and the items shown in the first K."""

    ks: tuple[int, ...]
    scored: int = 0
    hits: dict[int, float] = field(default_factory=dict)
    rr: dict[int, float] = field(default_factory=dict)
    shown: dict[int, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.ks or any(k <= 0 for k in self.ks):
            raise ValueError("K values must be positive")
        self.ks = tuple(sorted(set(self.ks)))
        for k in self.ks:
            self.hits.setdefault(k, 0.0)
            self.rr.setdefault(k, 0.0)
            self.shown.setdefault(k, set())

    def add(self, screen: Sequence[str], target: str) -> None:
        """Score one event: ``screen`` as it was before the user touched ``target``."""
        self.scored += 1
        rank = rank_of(screen[: self.ks[-1]], target)
        for k in self.ks:
            self.shown[k].update(screen[:k])
            if rank is not None and rank <= k:
                self.hits[k] += 1.0
                self.rr[k] += 1.0 / rank

    def hit_rate(self, k: int) -> float:
        """Mean HR@k over the scored events."""
        return self.hits[k] / self.scored if self.scored else 0.0

    def mrr(self, k: int) -> float:
        """Mean MRR@k over the scored events."""
        return self.rr[k] / self.scored if self.scored else 0.0

    def coverage(self, k: int, catalogue_size: int) -> float:
        """Coverage@k: distinct items shown in the first k / ``catalogue_size``."""
        return coverage(self.shown[k], catalogue_size)
