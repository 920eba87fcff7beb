"""The first recommender: candidates from the profile, scored, filtered, top N.

Candidates come from three sources, each normalised to [0, 1] by its best score so that no source
drowns the others by scale:

- co-visitation neighbours of the user's latest items (weight ``neighbour_w``, the newest item
  counting most: ``recency_decay`` per step back);
- trending items of the user's preferred categories (``category_w`` times the category's share of
  the user's affinity);
- global trending (``global_w``), which alone fills the list of a cold user.

Filtered out: items the user bought, items out of stock or unknown to the catalog, and the item the
user is looking at right now. Ties break by item id, so the output is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from streams.catalog import Catalog
from streams.profile import ProfileView, Scored


@dataclass(frozen=True, slots=True)
class RecommenderTuning:
    """Weights and size of the home feed."""

    size: int = 12
    neighbour_w: float = 1.0
    recency_decay: float = 0.6
    category_w: float = 0.35
    global_w: float = 0.1


def _add(scores: dict[str, float], scored: Scored, weight: float) -> None:
    if not scored or weight <= 0:
        return
    top = max(s for _, s in scored)
    if top <= 0:
        return
    for item_id, s in scored:
        if s > 0:
            scores[item_id] = scores.get(item_id, 0.0) + weight * s / top


class Recommender:
    """Turns a :class:`ProfileView` into the payloads of the home feed."""

    def __init__(self, catalog: Catalog, tuning: RecommenderTuning) -> None:
        self._catalog = catalog
        self.tuning = tuning

    def home(self, view: ProfileView, *, current: str | None) -> list[dict[str, Any]]:
        """The home feed for ``view``; ``current`` is the item just interacted with."""
        t = self.tuning
        scores: dict[str, float] = {}
        for i, neighbours in enumerate(view.neighbours):
            _add(scores, neighbours, t.neighbour_w * t.recency_decay**i)
        total_aff = sum(max(s, 0.0) for _, s in view.categories) or 1.0
        for (_, affinity), trending in zip(view.categories, view.category_trending, strict=False):
            _add(scores, trending, t.category_w * max(affinity, 0.0) / total_aff)
        _add(scores, view.global_trending, t.global_w)
        excluded = view.bought | ({current} if current else frozenset())
        return self._top(scores.items(), excluded)

    def _top(
        self, scored: Iterable[tuple[str, float]], excluded: frozenset[str]
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for item_id, _ in sorted(scored, key=lambda p: (-p[1], p[0])):
            if item_id in excluded:
                continue
            item = self._catalog.get(item_id)
            if item is None or not item.in_stock:
                continue
            out.append(item.payload)
            if len(out) == self.tuning.size:
                break
        return out
