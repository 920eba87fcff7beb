"""The home feed from ranked candidates: catalog filter and payloads, top N.

Candidates arrive scored and ranked by the event script (see
:class:`streams.profile.ScoringTuning` for the sources and weights), bought items already
excluded. Here they meet the catalog: items unknown to it or out of stock are dropped, the rest
keep their rank, and the first ``size`` become the feed's payloads. The order is the script's
(score, then id), so the output is deterministic.

Diversity: with ``max_per_category`` set, an item whose category already fills that many slots
waits; the waiting items fill the list only when the candidates run out (the list stays full, the
cap bends rather than leaving slots empty). Guarantee: never the same item twice in one list.

Business rules (:mod:`streams.rules`, ``docs/RULES.md``) filter, re-weight and pin on top; with
no rule for the feed the path above is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from sessions.feeds import HOME
from streams.catalog import Catalog, Item
from streams.profile import ProfileView, Scored
from streams.rules import EMPTY, RuleSet, place_pins


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

    def __init__(self, catalog: Catalog, tuning: RecommenderTuning, rules: RuleSet = EMPTY) -> None:
        self._catalog = catalog
        self.tuning = tuning
        #: The business rules in force (:mod:`streams.rules`): replaced whole, by assignment, so
        #: every feed is computed with one complete rule set.
        self.rules = rules
        #: Called once per computed feed with each rule action that changed it (metrics).
        self.observe_rule: Callable[[str], None] = _ignore

    def home(
        self,
        view: ProfileView,
        *,
        current: str | None,
        tuning: RecommenderTuning | None = None,
    ) -> list[dict[str, Any]]:
        """The home feed for ``view``; ``current`` (the item just interacted with) is only in it
        when the tuning allows repeats (or a rule pins it). ``tuning`` replaces the
        recommender's own for this feed (an experiment arm's).

        With rules (docs/RULES.md): catalog filter → exclude / include_only → boost / bury and a
        stable re-sort (the repeat slot stays first) → per-category cap → pins at their slots.
        """
        return self._compose(HOME, view.candidates, current, tuning or self.tuning)

    def context(self, feed: str, candidates: Scored) -> list[dict[str, Any]]:
        """A context feed (``similar``, ``cart``; see :data:`streams.profile.CONTEXT_FEEDS`) from
        its candidates, which the event script ranked and already cleared of the items they are
        about (the item looked at, the cart's, the bought ones): the catalog filter, the rules of
        that feed and the home feed's size and category cap."""
        return self._compose(feed, candidates, None, replace(self.tuning, repeat=False))

    def _compose(
        self, feed: str, candidates: Scored, current: str | None, tuning: RecommenderTuning
    ) -> list[dict[str, Any]]:
        size = tuning.size
        rules = self.rules.for_feed(feed)
        if not rules:
            eligible = (
                item for item, _ in self._eligible(candidates, current, frozenset(), tuning)
            )
            return [item.payload for item in self._fill(eligible, size, tuning)]
        hits: set[str] = set()
        pins = rules.resolve_pins(self._catalog.get, size)
        pinned = frozenset(p.item.item_id for p in pins)
        ranked = list(self._eligible(candidates, current, pinned, tuning))
        head = current if tuning.repeat else None
        items = self._fill(rules.arrange(ranked, head=head, hits=hits), size - len(pins), tuning)
        if pins:
            items = place_pins(items, pins)
            hits.add("pin")
        for action in hits:
            self.observe_rule(action)
        return [item.payload for item in items]

    def _eligible(
        self,
        candidates: Scored,
        current: str | None,
        pinned: frozenset[str],
        tuning: RecommenderTuning,
    ) -> Iterator[tuple[Item, float]]:
        """The candidates the catalog can show, in rank order, each once (pinned ones aside)."""
        seen: set[str] = set()
        for item_id, score in candidates:
            if item_id in seen or (item_id == current and not tuning.repeat):
                continue
            seen.add(item_id)
            item = self._catalog.get(item_id)
            if item is None or not item.in_stock or item_id in pinned:
                continue
            yield item, score

    @staticmethod
    def _fill(items: Iterable[Item], size: int, tuning: RecommenderTuning) -> list[Item]:
        """The first ``size`` of ``items`` under the per-category cap (which bends when the
        items run out)."""
        cap = tuning.max_per_category
        out: list[Item] = []
        waiting: list[Item] = []
        per_category: dict[str, int] = {}
        if size <= 0:
            return out
        for item in items:
            if cap:
                taken = per_category.get(item.category, 0)
                if taken >= cap:
                    waiting.append(item)
                    continue
                per_category[item.category] = taken + 1
            out.append(item)
            if len(out) == size:
                return out
        return out + waiting[: size - len(out)]


def _ignore(_action: str) -> None:
    return None
