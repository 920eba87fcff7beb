"""What scoring hands the processor: a user's ranked candidates with their stored feeds.

Built by :class:`streams.profile.ProfileStore` after an event; read by the recommender
(:mod:`streams.recommender`) and the processor, which writes the next versions on the stored
states (compare-and-set, :mod:`sessions.feeds`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sessions.feeds import FeedState
from streams.rules import OFFER_FEEDS

#: Ranked candidates: (item id, score), best first.
Scored = list[tuple[str, float]]

#: The context feeds the worker can score (see :mod:`streams.scoring`): ``similar``, the
#: neighbours of the item being looked at, and ``cart``, the complements of the cart.
CONTEXT_FEEDS = ("similar", "cart")
#: Every feed a user can have (what a withdrawal of consent unindexes, erases and rebuilds).
USER_FEEDS = ("home", *CONTEXT_FEEDS, *OFFER_FEEDS)


@dataclass(frozen=True, slots=True)
class ContextView:
    """A context feed's ranked candidates and its stored state (the base of its next version)."""

    candidates: Scored
    feed: FeedState | None


@dataclass(frozen=True, slots=True)
class ProfileView:
    """What the recommender sees of a user right after an event: ranked candidates, and the
    currently stored feed (the base of the next version); ``context`` the same per context feed
    the user has (or that was asked for)."""

    candidates: Scored
    feed: FeedState | None
    context: dict[str, ContextView] = field(default_factory=dict)
    #: False: the user has no personalization consent; the candidates are those of a visitor
    #: with no profile, and the lists made of them are stored without index or experiment tag.
    personal: bool = True


__all__ = ["CONTEXT_FEEDS", "USER_FEEDS", "ContextView", "ProfileView", "Scored"]
