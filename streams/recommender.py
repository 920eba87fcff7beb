"""The home feed from ranked candidates: catalog filter and payloads, top N.

Candidates arrive scored and ranked by the event script (see
:class:`streams.profile.ScoringTuning` for the sources and weights), bought and current items
already excluded. Here they meet the catalog: items unknown to it or out of stock are dropped,
the rest keep their rank, and the first ``size`` become the feed's payloads. The order is the
script's (score, then id), so the output is deterministic.
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


class Recommender:
    """Turns a :class:`ProfileView` into the payloads of the home feed."""

    def __init__(self, catalog: Catalog, tuning: RecommenderTuning) -> None:
        self._catalog = catalog
        self.tuning = tuning

    def home(self, view: ProfileView, *, current: str | None) -> list[dict[str, Any]]:
        """The home feed for ``view``; ``current`` (the item just interacted with) never in it."""
        out: list[dict[str, Any]] = []
        for item_id, _ in view.candidates:
            if item_id == current and not self.tuning.repeat:
                continue
            item = self._catalog.get(item_id)
            if item is None or not item.in_stock:
                continue
            out.append(item.payload)
            if len(out) == self.tuning.size:
                break
        return out
