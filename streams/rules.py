"""Business rules: a typed model, a strict validator with line numbers, and their application.

Rules are declarative (YAML, or JSON, which is read by the same YAML parser): filters (exclude,
include_only), boost and bury (multiply the candidate's score), and pins (an item at a slot).
Nothing of the rule text is evaluated or templated: category patterns are globs compiled with
:func:`fnmatch.translate`, everything else is compared as data. The schema and the order of
application are in ``docs/RULES.md``.

Guarantees: :func:`parse_rules` returns a :class:`RuleSet` or raises :class:`InvalidRules` naming
the line of the first error and the reason (``rules.yaml:12: boost.factor must be a number >
0``); unknown keys, wrong types, out-of-range values, duplicate names and two pins on one slot (or
one item pinned twice) are errors. Applying rules never shows an item twice, never shows an item
the catalog does not know or has out of stock, and never reorders the repeat slot.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from streams.catalog import Item
from streams.yamldoc import (
    BOOL_TAG,
    INT_TAG,
    STR_TAG,
    DocumentReader,
    InvalidDocument,
    is_null,
    line_of,
)

ACTIONS = ("exclude", "include_only", "boost", "bury", "pin")
FILTERS = frozenset({"exclude", "include_only"})
WEIGHTS = frozenset({"boost", "bury"})
#: The feeds a rule may name (``feeds:``); a rule without ``feeds`` applies to all of them.
KNOWN_FEEDS: tuple[str, ...] = ("home", "similar", "cart")
MAX_RULES = 500
MAX_TEXT_BYTES = 256 * 1024
MAX_SLOT = 100
MAX_FACTOR = 1e6
MAX_PRICE = 1e12
MAX_MATCH_ITEMS = 1000
#: Triggers (``triggers:``, docs/RULES.md): the feeds an offer may go to, and bounds.
OFFER_FEEDS: tuple[str, ...] = ("offers",)
TRIGGER_EVENTS = ("view", "click", "add_to_cart", "remove_from_cart", "purchase")
MAX_TRIGGERS = 50
MAX_WINDOW_MS = 7 * 86_400_000
MAX_OFFER_TTL_MS = 30 * 86_400_000
MAX_AT_LEAST = 16
MAX_BADGE = 120
_DURATION = re.compile(r"([1-9][0-9]{0,8})(s|m|h|d)")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_TRIGGER_KEYS = ("name", "on", "count", "after", "unless", "offer")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_RULE_KEYS = ("name", "when", "action", "factor", "item", "slot", "feeds")
_WHEN_KEYS = ("category", "price", "in_stock", "items")
#: Per action: the keys it requires and the ones it takes (name/action/feeds always allowed).
_NEEDS: dict[str, tuple[str, ...]] = {
    "exclude": ("when",),
    "include_only": ("when",),
    "boost": ("when", "factor"),
    "bury": ("when", "factor"),
    "pin": ("item", "slot"),
}


class InvalidRules(InvalidDocument):
    """Rules failed validation: ``line`` (1-based, None when unknown) and ``reason``."""


@dataclass(frozen=True, slots=True)
class Matcher:
    """Which items a rule is about: every given condition must hold (an AND)."""

    #: Globs on the category (``*``, ``?``, ``[...]``; case-sensitive); any one may match.
    categories: tuple[str, ...] = ()
    price_min: float | None = None
    price_max: float | None = None
    in_stock: bool | None = None
    items: frozenset[str] = frozenset()
    _patterns: tuple[re.Pattern[str], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        compiled = tuple(re.compile(fnmatch.translate(c)) for c in self.categories)
        object.__setattr__(self, "_patterns", compiled)

    def matches(self, item: Item) -> bool:
        """True when ``item`` meets every condition."""
        if self.items and item.item_id not in self.items:
            return False
        if self._patterns and not any(p.match(item.category) for p in self._patterns):
            return False
        if self.price_min is not None or self.price_max is not None:
            price = item.price
            if price is None:
                return False
            if self.price_min is not None and price < self.price_min:
                return False
            if self.price_max is not None and price > self.price_max:
                return False
        return self.in_stock is None or item.in_stock == self.in_stock

    def to_dict(self) -> dict[str, Any]:
        """The normalized form (only the conditions given)."""
        out: dict[str, Any] = {}
        if self.categories:
            out["category"] = list(self.categories)
        if self.price_min is not None or self.price_max is not None:
            price: dict[str, float] = {}
            if self.price_min is not None:
                price["min"] = self.price_min
            if self.price_max is not None:
                price["max"] = self.price_max
            out["price"] = price
        if self.in_stock is not None:
            out["in_stock"] = self.in_stock
        if self.items:
            out["items"] = sorted(self.items)
        return out


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated rule. Which fields are set depends on ``action`` (see ``_NEEDS``)."""

    name: str
    action: str
    when: Matcher | None = None
    factor: float | None = None
    item: str | None = None
    slot: int | None = None
    #: The feeds it applies to; None: every feed.
    feeds: tuple[str, ...] | None = None
    #: Where it starts in its source text (0 when built in code).
    line: int = field(default=0, compare=False)

    def applies_to(self, feed: str) -> bool:
        return self.feeds is None or feed in self.feeds

    def to_dict(self) -> dict[str, Any]:
        """The normalized form: the keys given, in schema order, lists for list-like values."""
        out: dict[str, Any] = {"name": self.name, "action": self.action}
        if self.when is not None:
            out["when"] = self.when.to_dict()
        if self.factor is not None:
            out["factor"] = self.factor
        if self.item is not None:
            out["item"] = self.item
        if self.slot is not None:
            out["slot"] = self.slot
        if self.feeds is not None:
            out["feeds"] = list(self.feeds)
        return out


def _duration(ms: int) -> str:
    for unit in ("d", "h", "m"):
        if ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms // 1000}s"


@dataclass(frozen=True, slots=True)
class Offer:
    """What a trigger puts into an offers feed: the item with ``badge``, for ``ttl_ms``."""

    feed: str
    badge: str
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class Trigger:
    """One validated trigger (docs/RULES.md, "Triggers").

    Immediate (``on`` set): evaluated on each event of type ``on`` for its item: at least
    ``at_least`` events of type ``count_event`` of that item within ``within_ms`` (the current one
    included), and no ``unless_event`` of the item within ``unless_within_ms``. Delayed (``after``
    set): each ``after`` event schedules a durable timer ``delay_ms`` later; when it fires, the
    offer is made unless an ``unless_event`` of the item happened since the ``after`` event.
    """

    name: str
    offer: Offer
    on: str | None = None
    count_event: str | None = None
    at_least: int = 1
    within_ms: int = 0
    after: str | None = None
    delay_ms: int = 0
    unless_event: str | None = None
    #: Immediate triggers only (defaults to ``within_ms``); delayed ones look since the event.
    unless_within_ms: int = 0
    line: int = field(default=0, compare=False)

    @property
    def delayed(self) -> bool:
        return self.after is not None

    def horizon_ms(self) -> int:
        """How far back this trigger looks at event times."""
        return max(self.within_ms, self.unless_within_ms, self.delay_ms)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.on is not None:
            out["on"] = self.on
            out["count"] = {
                "event": self.count_event,
                "at_least": self.at_least,
                "within": _duration(self.within_ms),
            }
        if self.after is not None:
            out["after"] = {"event": self.after, "delay": _duration(self.delay_ms)}
        if self.unless_event is not None:
            unless: dict[str, Any] = {"event": self.unless_event}
            if self.on is not None:
                unless["within"] = _duration(self.unless_within_ms)
            out["unless"] = unless
        out["offer"] = {
            "feed": self.offer.feed,
            "badge": self.offer.badge,
            "ttl": _duration(self.offer.ttl_ms),
        }
        return out


@dataclass(frozen=True, slots=True)
class Pin:
    """A pinned item resolved against the catalog: shown at 1-based ``slot``."""

    slot: int
    item: Item
    rule: str


class FeedRules:
    """The rules of one feed, grouped by phase. Falsy when there are none."""

    __slots__ = ("excludes", "includes", "pins", "weights")

    def __init__(self, rules: Iterable[Rule]) -> None:
        rules = list(rules)
        self.excludes = tuple(r.when for r in rules if r.action == "exclude" and r.when)
        self.includes = tuple(r.when for r in rules if r.action == "include_only" and r.when)
        self.weights = tuple(
            (r.when, r.factor if r.action == "boost" else 1.0 / r.factor, r.action)
            for r in rules
            if r.action in WEIGHTS and r.when and r.factor
        )
        self.pins = tuple(sorted((r for r in rules if r.action == "pin"), key=_slot))

    def __bool__(self) -> bool:
        return bool(self.excludes or self.includes or self.weights or self.pins)

    def resolve_pins(self, get: Callable[[str], Item | None], size: int) -> list[Pin]:
        """The pins that can be shown in a list of ``size``: item known and in stock, slot in
        range. Validation already made slots and items unique per feed."""
        out: list[Pin] = []
        for rule in self.pins:
            assert rule.item is not None and rule.slot is not None
            item = get(rule.item)
            if item is not None and item.in_stock and rule.slot <= size:
                out.append(Pin(rule.slot, item, rule.name))
        return out

    def arrange(
        self, ranked: Sequence[tuple[Item, float]], *, head: str | None, hits: set[str]
    ) -> list[Item]:
        """Filters, then boost/bury and a stable re-sort by the adjusted score.

        ``head``: the repeat slot's item; when it leads ``ranked`` and passes the filters it stays
        first, whatever the weights. ``hits`` collects the actions that changed something.
        """
        kept: list[tuple[Item, float]] = []
        for item, score in ranked:
            if any(m.matches(item) for m in self.excludes):
                hits.add("exclude")
                continue
            if not all(m.matches(item) for m in self.includes):
                hits.add("include_only")
                continue
            kept.append((item, score))
        if not self.weights or not kept:
            return [item for item, _ in kept]
        lead: list[Item] = []
        if head is not None and ranked[0][0].item_id == head and kept[0][0].item_id == head:
            lead = [kept.pop(0)[0]]
        adjusted: list[tuple[Item, float]] = []
        for item, score in kept:
            for matcher, factor, action in self.weights:
                if matcher.matches(item):
                    score *= factor
                    hits.add(action)
            adjusted.append((item, score))
        adjusted.sort(key=_score, reverse=True)  # stable: ties keep the script's order
        return lead + [item for item, _ in adjusted]


def place_pins(items: list[Item], pins: Sequence[Pin]) -> list[Item]:
    """``items`` (pinned ones already removed) with each pin at its slot, in slot order; a pin
    beyond the end of a short list goes to its end."""
    out: list[Item] = []
    rest = iter(items)
    queue = list(pins)  # sorted by slot
    while True:
        if queue and queue[0].slot == len(out) + 1:
            out.append(queue.pop(0).item)
            continue
        nxt = next(rest, None)
        if nxt is None:
            break
        out.append(nxt)
    return out + [p.item for p in queue]


class RuleSet:
    """A validated, immutable set of rules and its version (0: never stored)."""

    __slots__ = ("_by_feed", "rules", "triggers", "version")

    def __init__(
        self, rules: Sequence[Rule] = (), version: int = 0, triggers: Sequence[Trigger] = ()
    ) -> None:
        self.rules = tuple(rules)
        self.version = version
        self.triggers = tuple(triggers)
        self._by_feed: dict[str, FeedRules] = {}

    def trigger(self, name: str) -> Trigger | None:
        """The trigger called ``name``, if any."""
        return next((t for t in self.triggers if t.name == name), None)

    def trigger_events(self) -> frozenset[str]:
        """Every event type a trigger looks at (the ones whose times are recorded)."""
        out: set[str] = set()
        for t in self.triggers:
            out.update(e for e in (t.on, t.count_event, t.after, t.unless_event) if e)
        return frozenset(out)

    def trigger_horizon_ms(self) -> int:
        """How far back any trigger looks (0 without triggers)."""
        return max((t.horizon_ms() for t in self.triggers), default=0)

    def for_feed(self, feed: str) -> FeedRules:
        """The rules of ``feed`` (cached)."""
        found = self._by_feed.get(feed)
        if found is None:
            found = FeedRules(r for r in self.rules if r.applies_to(feed))
            self._by_feed[feed] = found
        return found

    def with_version(self, version: int) -> RuleSet:
        return RuleSet(self.rules, version, self.triggers)

    def to_dict(self) -> dict[str, Any]:
        """The normalized document ``{"rules": [...]}`` (and ``triggers`` when there are any)."""
        out: dict[str, Any] = {"rules": [r.to_dict() for r in self.rules]}
        if self.triggers:
            out["triggers"] = [t.to_dict() for t in self.triggers]
        return out

    def body(self) -> str:
        """The normalized document as compact JSON (what is stored; equal rules, equal body)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    def __len__(self) -> int:
        return len(self.rules) + len(self.triggers)


EMPTY = RuleSet()


def _slot(rule: Rule) -> int:
    return rule.slot or 0


def _score(entry: tuple[Item, float]) -> float:
    return entry[1]


# -- validation --------------------------------------------------------------------------------


def parse_rules(
    text: str,
    *,
    source: str = "rules.yaml",
    feeds: Sequence[str] = KNOWN_FEEDS,
    known_item: Callable[[str], bool] | None = None,
) -> RuleSet:
    """Validate a rules document (YAML, or JSON) into a :class:`RuleSet` (version 0).

    ``known_item``: when given, a pin of an item it does not know is an error. Raises
    :class:`InvalidRules` at the first error, naming ``source``, the line and the reason.
    """
    return _Parser(source, tuple(feeds), known_item).parse(text)


class _Parser(DocumentReader["RuleSet"]):
    error = InvalidRules
    noun = "rules"

    def __init__(
        self, source: str, feeds: tuple[str, ...], known_item: Callable[[str], bool] | None
    ) -> None:
        super().__init__(source, MAX_TEXT_BYTES)
        self.feeds = feeds
        self.known_item = known_item

    def fail(self, node: yaml.Node | int | None, reason: str) -> InvalidRules:
        error = super().fail(node, reason)
        assert isinstance(error, InvalidRules)
        return error

    def _claim(self, names: dict[str, int], name: str, line: int, node: yaml.Node) -> None:
        """Record ``name`` (rules and triggers share one name space); a repeat is an error."""
        if name in names:
            raise self.fail(
                node, f"name {name!r} is already used by the rule on line {names[name]}"
            )
        names[name] = line

    def parse(self, text: str) -> RuleSet:
        return self.read(text, EMPTY)

    # - the document -

    def document(self, root: yaml.Node) -> RuleSet:
        top = self.mapping(root, "the document")
        for key, (knode, _) in top.items():
            if key not in ("rules", "triggers"):
                raise self.fail(
                    knode, f"unknown key {key!r} (the document holds 'rules' and 'triggers')"
                )
        if "rules" not in top and "triggers" not in top:
            raise self.fail(root, "the document must have a 'rules' list (or 'triggers')")
        rules: list[Rule] = []
        names: dict[str, int] = {}
        rules_node = top["rules"][1] if "rules" in top else None
        if rules_node is not None and not is_null(rules_node):  # `rules:` alone: none
            entries = self.sequence(rules_node, "rules")
            if len(entries) > MAX_RULES:
                raise self.fail(rules_node, f"at most {MAX_RULES} rules")
            for entry in entries:
                rule, name_node = self._rule(entry)
                self._claim(names, rule.name, rule.line, name_node)
                rules.append(rule)
            self._check_pins(rules, {id(r): e for r, e in zip(rules, entries, strict=True)})
        triggers: list[Trigger] = []
        trig_node = top["triggers"][1] if "triggers" in top else None
        if trig_node is not None and not is_null(trig_node):
            entries = self.sequence(trig_node, "triggers")
            if len(entries) > MAX_TRIGGERS:
                raise self.fail(trig_node, f"at most {MAX_TRIGGERS} triggers")
            for entry in entries:
                trigger, name_node = self._trigger(entry)
                self._claim(names, trigger.name, trigger.line, name_node)
                triggers.append(trigger)
        if not rules and not triggers:
            return EMPTY
        return RuleSet(rules, triggers=triggers)

    def _name(self, node: yaml.Node) -> str:
        name = self.text(node, "name", ids=True, limit=64)
        if not _NAME.fullmatch(name):
            raise self.fail(
                node,
                "name must be 1-64 letters, digits, '_', '.', ':' or '-' (a letter or digit first)",
            )
        return name

    def _event_type(self, node: yaml.Node, what: str) -> str:
        value = self.text(node, what)
        if value not in TRIGGER_EVENTS:
            raise self.fail(node, f"{what} must be one of {', '.join(TRIGGER_EVENTS)}")
        return value

    def _duration(self, node: yaml.Node, what: str, *, high_ms: int) -> int:
        """A duration: a positive integer and a unit, ``s``, ``m``, ``h`` or ``d`` (``10m``)."""
        rule = f"a duration like 30s, 10m, 2h or 1d (at most {_duration(high_ms)})"
        if not isinstance(node, yaml.ScalarNode) or node.tag != STR_TAG:
            raise self.fail(node, f"{what} must be {rule}")
        found = _DURATION.fullmatch(str(node.value))
        if found is None:
            raise self.fail(node, f"{what} must be {rule}")
        ms = int(found.group(1)) * _UNIT_MS[found.group(2)]
        if ms > high_ms:
            raise self.fail(node, f"{what} must be {rule}")
        return ms

    def _trigger(self, node: yaml.Node) -> tuple[Trigger, yaml.Node]:
        fields_ = self.mapping(node, "a trigger")
        for key, (knode, _) in fields_.items():
            if key not in _TRIGGER_KEYS:
                raise self.fail(
                    knode, f"unknown key {key!r} (a trigger takes {', '.join(_TRIGGER_KEYS)})"
                )
        if "name" not in fields_:
            raise self.fail(node, "a trigger needs a name")
        name_node = fields_["name"][1]
        name = self._name(name_node)
        if ("on" in fields_) == ("after" in fields_):
            raise self.fail(node, f"trigger {name!r} needs either on (with count) or after")
        if "offer" not in fields_:
            raise self.fail(node, f"trigger {name!r} needs an offer")
        on = count_event = after = unless_event = None
        at_least, within_ms, delay_ms, unless_within_ms = 1, 0, 0, 0
        if "on" in fields_:
            on = self._event_type(fields_["on"][1], "on")
            if "count" not in fields_:
                raise self.fail(node, f"trigger {name!r} needs count (with on)")
            count = self.keys(
                fields_["count"][1], "count", ("event", "at_least", "within"), ("within",)
            )
            count_event = (
                self._event_type(count["event"][1], "count.event") if "event" in count else on
            )
            if "at_least" in count:
                anode = count["at_least"][1]
                rule = f"an integer from 1 to {MAX_AT_LEAST}"
                value = self.scalar(anode, "count.at_least", rule)
                if anode.tag != INT_TAG or not isinstance(value, int):
                    raise self.fail(anode, f"count.at_least must be {rule}")
                if not 1 <= value <= MAX_AT_LEAST:
                    raise self.fail(anode, f"count.at_least must be {rule}")
                at_least = value
            within_ms = self._duration(count["within"][1], "count.within", high_ms=MAX_WINDOW_MS)
            unless_within_ms = within_ms
        else:
            if "count" in fields_:
                raise self.fail(fields_["count"][0], "count does not apply to a delayed trigger")
            after_map = self.keys(fields_["after"][1], "after", ("event", "delay"), ("event",))
            after = self._event_type(after_map["event"][1], "after.event")
            if "delay" not in after_map:
                raise self.fail(fields_["after"][1], "after needs delay")
            delay_ms = self._duration(after_map["delay"][1], "after.delay", high_ms=MAX_WINDOW_MS)
        if "unless" in fields_:
            unode = fields_["unless"][1]
            unless = self.keys(unode, "unless", ("event", "within"), ("event",))
            unless_event = self._event_type(unless["event"][1], "unless.event")
            if "within" in unless:
                if after is not None:
                    raise self.fail(
                        unless["within"][0],
                        "unless.within does not apply to a delayed trigger "
                        "(it looks from its after event on)",
                    )
                unless_within_ms = self._duration(
                    unless["within"][1], "unless.within", high_ms=MAX_WINDOW_MS
                )
        offer_map = self.keys(
            fields_["offer"][1], "offer", ("feed", "badge", "ttl"), ("feed", "badge", "ttl")
        )
        feed_node = offer_map["feed"][1]
        feed = self.text(feed_node, "offer.feed")
        if feed not in OFFER_FEEDS:
            raise self.fail(
                feed_node, f"offer.feed: unknown feed {feed!r} (known: {', '.join(OFFER_FEEDS)})"
            )
        badge = self.text(offer_map["badge"][1], "offer.badge", ids=True, limit=MAX_BADGE)
        ttl_ms = self._duration(offer_map["ttl"][1], "offer.ttl", high_ms=MAX_OFFER_TTL_MS)
        trigger = Trigger(
            name,
            Offer(feed, badge, ttl_ms),
            on=on,
            count_event=count_event,
            at_least=at_least,
            within_ms=within_ms,
            after=after,
            delay_ms=delay_ms,
            unless_event=unless_event,
            unless_within_ms=unless_within_ms,
            line=line_of(node),
        )
        return trigger, name_node

    def _rule(self, node: yaml.Node) -> tuple[Rule, yaml.Node]:
        fields_ = self.mapping(node, "a rule")
        for key, (knode, _) in fields_.items():
            if key == "active":
                raise self.fail(knode, "active: time windows are not supported yet")
            if key not in _RULE_KEYS:
                raise self.fail(
                    knode, f"unknown key {key!r} (a rule takes {', '.join(_RULE_KEYS)})"
                )
        if "name" not in fields_:
            raise self.fail(node, "a rule needs a name")
        name_node = fields_["name"][1]
        name = self._name(name_node)
        if "action" not in fields_:
            raise self.fail(node, f"rule {name!r} needs an action ({' | '.join(ACTIONS)})")
        action_node = fields_["action"][1]
        action = self.text(action_node, "action")
        if action not in ACTIONS:
            raise self.fail(action_node, f"action must be one of {', '.join(ACTIONS)}")
        needs = _NEEDS[action]
        for key in ("when", "factor", "item", "slot"):
            if key in fields_ and key not in needs:
                raise self.fail(fields_[key][0], f"{key} does not apply to action {action}")
        for key in needs:
            if key not in fields_:
                raise self.fail(node, f"{action} rule {name!r} needs {key}")
        when = self._when(fields_["when"][1], name) if "when" in fields_ else None
        factor = None
        if "factor" in fields_:
            factor = self.number(
                fields_["factor"][1],
                f"{action}.factor",
                low=0.0,
                high=MAX_FACTOR,
                rule=f"> 0 (at most {MAX_FACTOR:.0e})",
            )
            if factor == 0:
                raise self.fail(fields_["factor"][1], f"{action}.factor must be a number > 0")
        item = (
            self.text(fields_["item"][1], "pin.item", ids=True, limit=128)
            if ("item" in fields_)
            else None
        )
        if item is not None and self.known_item is not None and not self.known_item(item):
            raise self.fail(fields_["item"][1], f"pin.item {item!r} is not in the catalog")
        slot = None
        if "slot" in fields_:
            snode = fields_["slot"][1]
            value = self.scalar(snode, "pin.slot", f"an integer from 1 to {MAX_SLOT}")
            if snode.tag != INT_TAG or not isinstance(value, int) or not 1 <= value <= MAX_SLOT:
                raise self.fail(snode, f"pin.slot must be an integer from 1 to {MAX_SLOT}")
            slot = value
        feeds = self._feeds(fields_["feeds"][1]) if "feeds" in fields_ else None
        rule = Rule(name, action, when, factor, item, slot, feeds, line=line_of(node))
        return rule, name_node

    def _when(self, node: yaml.Node, name: str) -> Matcher:
        entries = self.mapping(node, f"{name}.when")
        if not entries:
            raise self.fail(node, f"{name}.when must name at least one of {', '.join(_WHEN_KEYS)}")
        for key, (knode, _) in entries.items():
            if key not in _WHEN_KEYS:
                raise self.fail(
                    knode, f"unknown key {key!r} in when (it takes {', '.join(_WHEN_KEYS)})"
                )
        categories: tuple[str, ...] = ()
        if "category" in entries:
            cnode = entries["category"][1]
            values = (
                self.sequence(cnode, "when.category")
                if isinstance(cnode, yaml.SequenceNode)
                else [cnode]
            )
            if not values:
                raise self.fail(cnode, "when.category must not be an empty list")
            categories = tuple(self.text(v, "when.category", ids=True) for v in values)
        price_min = price_max = None
        if "price" in entries:
            pnode = entries["price"][1]
            price = self.mapping(pnode, "when.price")
            for key, (knode, _) in price.items():
                if key not in ("min", "max"):
                    raise self.fail(knode, f"unknown key {key!r} in when.price (min, max)")
            if not price:
                raise self.fail(pnode, "when.price needs min, max or both")
            rule = f"from 0 to {MAX_PRICE:.0e}"
            if "min" in price:
                price_min = self.number(
                    price["min"][1], "when.price.min", low=0, high=MAX_PRICE, rule=rule
                )
            if "max" in price:
                price_max = self.number(
                    price["max"][1], "when.price.max", low=0, high=MAX_PRICE, rule=rule
                )
            if price_min is not None and price_max is not None and price_min > price_max:
                raise self.fail(pnode, "when.price.min must not be above when.price.max")
        in_stock = None
        if "in_stock" in entries:
            snode = entries["in_stock"][1]
            if not isinstance(snode, yaml.ScalarNode) or snode.tag != BOOL_TAG:
                raise self.fail(snode, "when.in_stock must be true or false")
            in_stock = bool(self.scalar(snode, "when.in_stock", "true or false"))
        items: frozenset[str] = frozenset()
        if "items" in entries:
            inode = entries["items"][1]
            values = self.sequence(inode, "when.items")
            if not values or len(values) > MAX_MATCH_ITEMS:
                raise self.fail(inode, f"when.items must list 1 to {MAX_MATCH_ITEMS} item ids")
            items = frozenset(self.text(v, "when.items", ids=True, limit=128) for v in values)
        return Matcher(categories, price_min, price_max, in_stock, items)

    def _feeds(self, node: yaml.Node) -> tuple[str, ...]:
        values = self.sequence(node, "feeds")
        if not values:
            raise self.fail(node, "feeds must list at least one feed (omit it for all feeds)")
        out: list[str] = []
        for value in values:
            feed = self.text(value, "feeds")
            if feed not in self.feeds:
                raise self.fail(
                    value, f"feeds: unknown feed {feed!r} (known: {', '.join(self.feeds)})"
                )
            if feed in out:
                raise self.fail(value, f"feeds: {feed!r} is listed twice")
            out.append(feed)
        return tuple(out)

    def _check_pins(self, rules: list[Rule], nodes: dict[int, yaml.Node]) -> None:
        """No two pins of a feed on one slot, no item pinned twice in a feed."""
        pins = [r for r in rules if r.action == "pin"]
        for i, rule in enumerate(pins):
            for other in pins[:i]:
                shared = [f for f in self.feeds if rule.applies_to(f) and other.applies_to(f)]
                if not shared:
                    continue
                fields_ = self.mapping_entries(nodes[id(rule)])
                if rule.slot == other.slot:
                    raise self.fail(
                        fields_["slot"],
                        f"slot {rule.slot} is already pinned by rule {other.name!r} "
                        f"(line {other.line}) in feed {shared[0]!r}",
                    )
                if rule.item == other.item:
                    raise self.fail(
                        fields_["item"],
                        f"item {rule.item!r} is already pinned by rule {other.name!r} "
                        f"(line {other.line}) in feed {shared[0]!r}",
                    )

    @staticmethod
    def mapping_entries(node: yaml.Node) -> dict[str, yaml.Node]:
        assert isinstance(node, yaml.MappingNode)
        return {k.value: v for k, v in node.value}
