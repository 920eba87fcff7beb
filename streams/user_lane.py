"""The user lane's contract with ``lua/user_event.lua`` (its header documents it field by field):
the script's source with the profile constants filled in, its KEYS, and its request and reply.

One event is one script call whose ARGV[1] is a msgpack map (:class:`UserLaneRequest`) and whose
reply is another (:class:`UserLaneReply`). Both are packed and read once per event on the
worker's hot path, so they are plain slotted classes filled straight from the map (no per-field
validation pass; the script is ours): what a malformed reply raises fails that event alone
(:meth:`streams.profile.ProfileStore.apply_many`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from string import Template
from typing import TYPE_CHECKING, Any

import msgpack

from sessions.keys import user_tag

if TYPE_CHECKING:
    from streams.profile import ProfileTuning, ScoringTuning

_USER_LUA = resources.files("streams").joinpath("lua/user_event.lua").read_text()

_packb = msgpack.Packer(use_bin_type=True).pack
_EMPTY: frozenset[str] = frozenset()


def user_keys(user: str) -> list[str]:
    """The per-user profile keys the user lane touches, in its KEYS order."""
    tag = user_tag(user)
    return [tag + k for k in ("dedup", "recent", "aff", "cart", "bought", "p")]


def script_source(profile: ProfileTuning, _scoring: ScoringTuning | None = None) -> str:
    """The user-lane script with the profile constants filled in (numbers only, from typed
    settings). Scoring runs in the worker: its tuning is no part of the script."""
    values: dict[str, int | float] = {}
    for f in fields(profile):
        value = getattr(profile, f.name)
        if isinstance(value, bool):  # a flag is 1 or 0 in Lua ("true" would not compile)
            value = int(value)
        if not isinstance(value, int | float):
            raise TypeError(f"tuning {f.name} must be a number")
        values[f.name.upper()] = value
    return Template(_USER_LUA).substitute(values)


@dataclass(slots=True)
class UserLaneRequest:
    """One event for the user lane (``lua/user_event.lua``, ARGV[1] as a msgpack map)."""

    event_id: str
    type: str
    item: str
    categories: Sequence[str]
    ts: int
    w_aff: float
    w_cov: float
    #: False: applied only, a later event of the user in the same batch scores.
    score: bool
    user: str
    #: The home feed version the caller holds ('' / 0: none): then no body comes back.
    known_epoch: str
    known_n: int
    #: Context feeds to report even when the user has none stored yet.
    context: Sequence[str]
    #: How many recent items and top categories scoring reads.
    recent_n: int
    cats_n: int
    #: How many of the user's latest items to return with their times (0: none): the worker's
    #: item cache keeps them as a fresh read of the user's recent list.
    seq_n: int = 0
    #: Consent events: the decision and its source.
    decision: str = ""
    source: str = ""

    def pack(self) -> bytes:
        """The msgpack map the script reads."""
        req: dict[str, Any] = {
            "id": self.event_id,
            "type": self.type,
            "item": self.item,
            "cats": list(self.categories),
            "ts": self.ts,
            "w_aff": self.w_aff,
            "w_cov": self.w_cov,
            "score": self.score,
            "user": self.user,
            "e": self.known_epoch,
            "n": self.known_n,
            "context": list(self.context),
            "recent_n": self.recent_n,
            "cats_n": self.cats_n,
        }
        if self.seq_n:
            req["seq_n"] = self.seq_n
        if self.decision:
            req["decision"] = self.decision
            req["source"] = self.source
        packed: bytes = _packb(req)
        return packed


@dataclass(frozen=True, slots=True)
class FeedReply:
    """A stored feed's state as the user lane saw it; ``same``: the caller's copy is current
    (no body was sent)."""

    epoch: str
    n: int
    body: bytes
    same: bool = False


@dataclass(slots=True)
class UserLaneReply:
    """The user lane's answer for one event (the script's msgpack map). Not frozen: one is
    built per event, and a frozen dataclass pays a guarded assignment per field."""

    #: ``duplicate``, ``applied``, ``coalesced``, ``noop`` or ``no_consent``.
    outcome: str
    personal: bool
    #: The user's latest distinct items before the event, newest first (co-visitation).
    prev: Sequence[str] = ()
    #: The event started the user's recent list (the users count).
    new_user: bool = False
    #: Cart sample and items bought within the hour (complements).
    partners: Sequence[str] = ()
    #: Scored entries: recent items newest first, top categories, bought, cart sample.
    recent: Sequence[str] = ()
    #: When asked (``seq_n``): the user's latest items and their times, flat and oldest first
    #: (``ZRANGE … WITHSCORES``), read atomically after the event.
    seq: Sequence[Any] = ()
    categories: Sequence[tuple[str, float]] = ()
    bought: frozenset[str] = _EMPTY
    cart: Sequence[str] = ()
    #: Scored entries: the home feed and each context feed reported (None: not scored).
    feeds: dict[str, FeedReply] | None = None
    #: Consent: a withdrawal's pending erasure marker, what recording a decision did, the
    #: record's time, and the stored lists to take out of the shown index.
    marker: str = ""
    change: str = ""
    at: str = ""
    unindex: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def unpack(cls, raw: bytes) -> UserLaneReply:
        """Decode the script's reply (feed bodies are binary: kept as bytes). The lists are the
        decoded ones (msgpack gives lists; nobody writes to them)."""
        m = msgpack.unpackb(raw, raw=False, unicode_errors="surrogateescape")
        get = m.get
        feeds = None
        stored = get("feeds")
        if stored is not None:
            feeds = {
                name: FeedReply(
                    str(st.get("e") or ""),
                    int(st.get("n") or 0),
                    _bytes(st.get("b")),
                    bool(st.get("same")),
                )
                for name, st in stored.items()
            }
        reply = cls(m["outcome"], bool(get("personal")), get("prev") or ())
        reply.feeds = feeds
        if get("new_user"):
            reply.new_user = True
        partners = get("partners")
        if partners:
            reply.partners = partners
        recent = get("recent")
        if recent:
            reply.recent = recent
        seq = get("seq")
        if seq:
            reply.seq = seq
        cats = get("cats")
        if cats:
            it = iter(cats)
            reply.categories = [(c, float(s)) for c, s in zip(it, it, strict=True)]
        bought = get("bought")
        if bought:
            reply.bought = frozenset(bought)
        cart = get("cart")
        if cart:
            reply.cart = cart
        # Consent only (rare): a withdrawal's marker, what recording a decision did …
        marker, change, at, unindex = get("marker"), get("change"), get("at"), get("unindex")
        if marker:
            reply.marker = str(marker)
        if change:
            reply.change = str(change)
        if at:
            reply.at = str(at)
        if isinstance(unindex, dict) and unindex:
            reply.unindex = {k: _bytes(v) for k, v in unindex.items()}
        return reply


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return b""


__all__ = ["FeedReply", "UserLaneReply", "UserLaneRequest", "script_source", "user_keys"]
