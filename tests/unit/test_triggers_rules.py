"""Validation of triggers (docs/RULES.md, "Triggers"): the schema, its errors with line numbers,
and the normalized form."""

from __future__ import annotations

import pytest

from streams.rules import InvalidRules, parse_rules

GOOD = """\
triggers:
  - name: second-look
    on: view
    count: {event: view, at_least: 2, within: 10m}
    unless: {event: purchase, within: 10m}
    offer: {feed: offers, badge: "Still interested? -10%", ttl: 30m}
  - name: cart-reminder
    after: {event: add_to_cart, delay: 10m}
    unless: {event: purchase}
    offer: {feed: offers, badge: "Your cart misses you", ttl: 1h}
"""


def test_the_example_parses_and_round_trips() -> None:
    rules = parse_rules(GOOD)
    first, second = rules.triggers
    assert (first.on, first.count_event, first.at_least, first.within_ms) == (
        "view",
        "view",
        2,
        600_000,
    )
    assert (first.unless_event, first.unless_within_ms) == ("purchase", 600_000)
    assert (first.offer.feed, first.offer.ttl_ms) == ("offers", 1_800_000)
    assert second.delayed and second.after == "add_to_cart" and second.delay_ms == 600_000
    assert rules.trigger_events() == {"view", "purchase", "add_to_cart"}
    assert rules.trigger_horizon_ms() == 600_000
    assert parse_rules(rules.body()).body() == rules.body()  # JSON form reads back the same
    assert rules.trigger("cart-reminder") is second and rules.trigger("nope") is None


def test_rules_and_triggers_together_and_defaults() -> None:
    text = (
        "rules:\n  - name: no-shoes\n    when: {category: shoes}\n    action: exclude\n"
        "triggers:\n  - name: t\n    on: click\n    count: {within: 1m}\n"
        "    offer: {feed: offers, badge: Hi, ttl: 5s}\n"
    )
    rules = parse_rules(text)
    assert len(rules.rules) == 1 and len(rules.triggers) == 1
    t = rules.triggers[0]
    assert (t.count_event, t.at_least, t.unless_event) == ("click", 1, None)


def test_rules_only_documents_keep_their_body() -> None:
    """A document without triggers normalizes as before (no new version of stored rules)."""
    rules = parse_rules("rules:\n  - name: a\n    when: {category: x}\n    action: exclude\n")
    assert "triggers" not in rules.body()
    assert len(parse_rules("triggers: []\n")) == 0


T = "triggers:\n  - name: t\n"
OFFER = "    offer: {feed: offers, badge: B, ttl: 1h}\n"
ON = "    on: view\n    count: {at_least: 2, within: 10m}\n"


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("triggers: 3\n", 1, "triggers must be a list"),
        (T + OFFER, 2, "needs either on (with count) or after"),
        (T + ON + "    after: {event: view, delay: 1m}\n" + OFFER, 2, "needs either on"),
        (T + ON, 2, "needs an offer"),
        (T + "    on: view\n" + OFFER, 2, "needs count"),
        (T + "    on: look\n    count: {within: 1m}\n" + OFFER, 3, "on must be one of view"),
        (T + "    on: view\n    count: {at_least: 2}\n" + OFFER, 4, "count needs within"),
        (T + "    on: view\n    count: {within: 10}\n" + OFFER, 4, "count.within must be"),
        (T + "    on: view\n    count: {within: 8d}\n" + OFFER, 4, "at most 7d"),
        (T + "    on: view\n    count: {within: 0s}\n" + OFFER, 4, "count.within must be"),
        (T + "    on: view\n    count: {within: 1m, at_least: 0}\n" + OFFER, 4, "at_least"),
        (T + "    on: view\n    count: {within: 1m, at_least: 17}\n" + OFFER, 4, "at_least"),
        (T + "    on: view\n    count: {within: 1m, every: 2}\n" + OFFER, 4, "unknown key 'every'"),
        (T + ON + "    colour: red\n" + OFFER, 5, "unknown key 'colour'"),
        (T + ON + "    unless: {within: 1m}\n" + OFFER, 5, "unless needs event"),
        (T + ON + "    offer: {feed: home, badge: B, ttl: 1h}\n", 5, "unknown feed 'home'"),
        (T + ON + "    offer: {feed: offers, ttl: 1h}\n", 5, "offer needs badge"),
        (T + ON + "    offer: {feed: offers, badge: B, ttl: 31d}\n", 5, "offer.ttl"),
        (
            T + "    after: {event: add_to_cart, delay: 1m}\n    count: {within: 1m}\n" + OFFER,
            4,
            "count does not apply to a delayed trigger",
        ),
        (T + "    after: {event: add_to_cart}\n" + OFFER, 3, "after needs delay"),
        (
            T
            + "    after: {event: add_to_cart, delay: 1m}\n"
            + "    unless: {event: purchase, within: 1m}\n"
            + OFFER,
            4,
            "unless.within does not apply to a delayed trigger",
        ),
        (
            "rules:\n  - name: t\n    when: {category: x}\n    action: exclude\n" + T + ON + OFFER,
            6,
            "name 't' is already used by the rule on line 2",
        ),
    ],
)
def test_errors_name_the_line(text: str, line: int, reason: str) -> None:
    with pytest.raises(InvalidRules) as caught:
        parse_rules(text)
    assert caught.value.line == line, str(caught.value)
    assert reason in caught.value.reason, str(caught.value)
