"""Consent to personalization (GDPR / CCPA) as recorded state, one record per user.

**The record** is ``pr:{u:<id>}:consent``, a hash under the user's hash tag (so export shows it
and ``DELETE /v1/users/{id}`` removes it): ``state`` (``granted`` or ``denied``), ``at`` (when
the decision was made, epoch ms), ``source`` (``event``: a ``consent`` event; ``api``:
``PUT /v1/users/{id}/consent``) and, while a withdrawal's erasure is pending, ``erase`` (a marker
unique to that withdrawal). It has no TTL, except for anonymous visitors (``anon:…``), whose
record lives as long as their profile would (``ProfileTuning.ttl_s``, renewed by each of their
events): their ids die with their tokens, and the records of visitors who deny would pile up.

**The policy** (``PUSHREC_CONSENT``): ``implied`` personalizes a user unless they denied;
``required`` personalizes only users with a recorded grant. "Personal" below means: personalized
under the policy.

**Where it is enforced**: inside the user lane's script (``lua/user_event.lua``), which reads the
record in the same atomic step as the profile it would update: no extra round trip, and no event can
slip between the check and its write. For a user who is not personal an event stores nothing: not
its id (no dedup: every event of such a user only scores, so a repeat changes nothing), no profile
key, no item-side index naming the user (``pr:{i:<item>}:is``), and none of the aggregates either
(co-visitation, complements, trending, users seen): they are computed from personal data the user
did not allow to be processed. Their feeds are scored as for a visitor with no profile (global
trending, then the business rules) and stored and pushed like any other version, but without the
shown index (``pr:{i:<item>}:shown:<feed>``; catalog edits then reach those lists at the user's
next event) and outside experiments (no tag, no exposure). The processor records no trigger
times, timers or experiment counts for their events.

**Recording a decision** runs the event script too (a ``consent`` event, or
:meth:`~streams.profile.ProfileStore.record_consent` for the API), so both paths share one
implementation. A grant older than the recorded decision is ``stale`` and changes nothing (a
replayed or late grant cannot undo a newer denial); a denial always takes effect, its time never
earlier than the recorded one (so no older grant can follow it): a client's wrong clock can only
err on the private side. A decision stamped in the future counts as made now (Redis's clock);
the same decision again is ``unchanged`` and keeps the first time and source. Outcomes:
``granted``, ``denied``, ``withdrawn`` (denied, and the user had personal data), ``unchanged``,
``stale``.

**A withdrawal** (a denial of a user who has a profile, trigger times or a dedup window) deletes
those keys at once in the same script, unindexes the user's stored feeds from the shown index, and
sets the ``erase`` marker. The processor lane that sees the marker (the user's next event; the API
sends a ``consent`` event for that purpose) then erases everything else
(:func:`streams.privacy.erase_user`: item-side indexes, timers, experiment marks, feeds and their
histories — everything but this record), stores fresh non-personal versions of the feeds the user
had (a new epoch: the old history is gone, clients take a snapshot) and publishes them, and clears
the marker if no newer withdrawal replaced it. Sockets stay open. A denial of a user with only
feeds (a visitor who denies before any event of theirs was processed) costs the unindexing
alone, no keyspace scan, unless one of those feeds left shown-index entries behind (field ``g``,
:mod:`sessions.feeds`: entries no stored list names): then it is a withdrawal, erased by scan.
A grant after a withdrawal starts from an empty profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis

from sessions.keys import feed_key, user_tag
from sessions.scripts import PipelinedScript
from sessions.text import text
from streams.events import ITEM_TYPES
from streams.privacy import erase_user
from streams.triggers import events_key

IMPLIED = "implied"
REQUIRED = "required"
#: The values of ``PUSHREC_CONSENT``.
POLICIES = (IMPLIED, REQUIRED)
GRANTED = "granted"
DENIED = "denied"
#: What recording a decision did (see the module docstring).
OUTCOMES = (GRANTED, DENIED, "withdrawn", "unchanged", "stale")
#: The processor's outcome for an event of a user without personalization consent.
NO_CONSENT = "no_consent"

# Clears a withdrawal's marker only if it is still the one the erasure was for: a newer
# withdrawal that arrived meanwhile keeps its own, and its own erasure.
_CLEAR_LUA = resources.files("streams").joinpath("lua/consent_clear.lua").read_text()


def consent_key(user: str) -> str:
    """The hash holding ``user``'s consent record."""
    return f"{user_tag(user)}consent"


def withdrawal_keys(user: str) -> list[str]:
    """Per-user keys besides the profile's that a withdrawal deletes at once (the event script
    derives none of them): the trigger event times of every type an event can be recorded
    under."""
    return [events_key(user, etype) for etype in sorted(ITEM_TYPES)]


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """A user's recorded decision."""

    granted: bool
    #: When the decision was made (epoch ms).
    at_ms: int
    #: ``event`` or ``api``.
    source: str
    #: A withdrawal's erasure has not been completed yet.
    pending_erase: bool = False

    def to_json(self) -> dict[str, Any]:
        """The record as the API shows it."""
        return {
            "personalization": self.granted,
            "recorded_at": self.at_ms,
            "source": self.source,
            "pending_erase": self.pending_erase,
        }


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """What recording one decision did: its outcome (see :data:`OUTCOMES`) and the record now."""

    outcome: str
    record: ConsentRecord | None
    #: The withdrawal marker now set (an erasure awaits the user's lane), if any.
    marker: str | None = None


def parse_record(fields: Sequence[Any]) -> ConsentRecord | None:
    """A record from ``HMGET state at source erase``; None when there is none."""
    state, at, source, erase = (text(f) if f is not None else None for f in fields)
    if state not in (GRANTED, DENIED):
        return None
    return ConsentRecord(state == GRANTED, int(at or 0), source or "", bool(erase))


class ConsentStore:
    """Reads of consent records, and the erasure that completes a withdrawal."""

    def __init__(self, redis: Redis, *, required: bool) -> None:
        self._redis = redis
        #: The policy: personalize only after a recorded grant (else unless denied).
        self.required = required
        self._clear = PipelinedScript(redis, _CLEAR_LUA)

    @property
    def policy(self) -> str:
        """``implied`` or ``required``."""
        return REQUIRED if self.required else IMPLIED

    def personal(self, record: ConsentRecord | None) -> bool:
        """Whether a user with ``record`` is personalized under the policy."""
        return record.granted if record is not None else not self.required

    async def read(self, user: str) -> ConsentRecord | None:
        """``user``'s record (None: no decision recorded)."""
        fields = await self._redis.hmget(consent_key(user), ["state", "at", "source", "erase"])
        return parse_record(list(fields))

    async def erase_for_withdrawal(self, user: str, feeds: Sequence[str]) -> list[str]:
        """Erase everything stored about ``user`` but the consent record; returns which of
        ``feeds`` existed before, for the caller to store fresh versions of.

        Costs what :func:`streams.privacy.erase_user` costs (keyspace scans): only for users who
        had personal data. Idempotent; the marker stays until :meth:`clear_withdrawal`, so after
        a crash the user's next event does it again."""
        pipe = self._redis.pipeline(transaction=False)
        for feed in feeds:
            pipe.exists(feed_key(user, feed))
        existed = [f for f, n in zip(feeds, await pipe.execute(), strict=True) if int(n)]
        await erase_user(self._redis, user, keep={consent_key(user)})
        return existed

    async def clear_withdrawal(self, user: str, marker: str) -> bool:
        """Mark the withdrawal ``marker`` done, unless a newer withdrawal replaced it (that one
        keeps its marker and gets its own erasure); whether it was cleared."""
        [cleared] = await self._clear.run_many([([consent_key(user)], [marker])])
        if isinstance(cleared, Exception):
            raise cleared
        return bool(cleared)
