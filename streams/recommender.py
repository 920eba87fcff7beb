"""The home feed from ranked candidates: catalog filter and payloads, top N.

Candidates arrive scored and ranked by the event script (see
:class:`streams.profile.ScoringTuning` for the sources and weights), bought items already
excluded. Here they meet the catalog: items unknown to it or out of stock are dropped, the rest
keep their rank, and the first ``size`` become the feed's payloads. The order is the script's
(score, then id), so the output is deterministic.

Diversity: with ``max_per_category`` set, an item whose category already fills that many slots
waits; the waiting items fill the list only when the candidates run out (the list stays full, the
cap bends rather than leaving slots empty). Guarantee: never the same item twice in one list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams.catalog import Catalog
from streams.profile import ProfileView


@dataclass(frozen=True, slots=True)
class RecommenderTuning:
    """Size of the home feed, and whether the current item may be in it."""

    size: int = 12
    #: Whether the item being looked at may be in the feed (see ScoringTuning.repeat_w).
    repeat: bool = True
    #: At most this many items of one category before other categories get their turn (0: off).
    max_per_category: int = 0


class Recommender:
    """Turns a :class:`ProfileView` into the payloads of the home feed."""

    def __init__(self, catalog: Catalog, tuning: RecommenderTuning) -> None:
        self._catalog = catalog
        self.tuning = tuning

    def home(self, view: ProfileView, *, current: str | None) -> list[dict[str, Any]]:
        """The home feed for ``view``; ``current`` (the item just interacted with) is only in it
        when the tuning allows repeats."""
        size, cap = self.tuning.size, self.tuning.max_per_category
        out: list[dict[str, Any]] = []
        waiting: list[dict[str, Any]] = []
        seen: set[str] = set()
        per_category: dict[str, int] = {}
        for item_id, _ in view.candidates:
            if item_id in seen or (item_id == current and not self.tuning.repeat):
                continue
            seen.add(item_id)
            item = self._catalog.get(item_id)
            if item is None or not item.in_stock:
                continue
            if cap:
                taken = per_category.get(item.category, 0)
                if taken >= cap:
                    waiting.append(item.payload)
                    continue
                per_category[item.category] = taken + 1
            out.append(item.payload)
            if len(out) == size:
                return out
        return out + waiting[: size - len(out)]
