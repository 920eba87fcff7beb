"""Unit tests of streams/rules.py: validation (every error with its line) and the semantics of
rules inside the recommender (filters, boost/bury, pins, with the repeat slot and category cap)."""

from __future__ import annotations

import json
import textwrap

import pytest

from streams.catalog import Catalog, Item
from streams.profile import ProfileView, Scored
from streams.recommender import Recommender, RecommenderTuning
from streams.rules import EMPTY, MAX_RULES, MAX_TEXT_BYTES, InvalidRules, RuleSet, parse_rules


def _doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def _error(text: str, **kw: object) -> InvalidRules:
    with pytest.raises(InvalidRules) as info:
        parse_rules(_doc(text), **kw)  # type: ignore[arg-type]
    return info.value


# -- validation: the good documents ------------------------------------------------------------

GOOD = """
rules:
  - name: no-shoes            # line 2
    when: {category: "shoes*"}
    action: exclude
  - name: only-cheap
    when:
      price: {min: 0, max: 100}
      in_stock: true
    action: include_only
    feeds: [home]
  - name: books-up
    when: {category: [books, "magazines.*"], items: [b1, 0123]}
    action: boost
    factor: 2
  - name: phones-down
    when: {category: phones}
    action: bury
    factor: 4.5
  - name: hero
    action: pin
    item: 1004767
    slot: 1
"""


def test_a_good_document_is_normalized() -> None:
    rules = parse_rules(_doc(GOOD))
    assert rules.version == 0
    assert [r.line for r in rules.rules] == [2, 5, 11, 15, 19]
    assert rules.to_dict() == {
        "rules": [
            {"name": "no-shoes", "action": "exclude", "when": {"category": ["shoes*"]}},
            {
                "name": "only-cheap",
                "action": "include_only",
                "when": {"price": {"min": 0.0, "max": 100.0}, "in_stock": True},
                "feeds": ["home"],
            },
            {
                "name": "books-up",
                "action": "boost",
                # An unquoted id is taken as written (YAML would read 0123 as octal 83).
                "when": {"category": ["books", "magazines.*"], "items": ["0123", "b1"]},
                "factor": 2.0,
            },
            {
                "name": "phones-down",
                "action": "bury",
                "when": {"category": ["phones"]},
                "factor": 4.5,
            },
            {"name": "hero", "action": "pin", "item": "1004767", "slot": 1},
        ]
    }


def test_the_normalized_form_reads_back_as_yaml_and_json() -> None:
    rules = parse_rules(_doc(GOOD))
    assert parse_rules(rules.body()).body() == rules.body()
    assert parse_rules(json.dumps(rules.to_dict(), indent=2)).body() == rules.body()


def test_json_errors_name_the_line_of_the_body() -> None:
    body = json.dumps({"rules": [{"name": "a", "action": "boost", "when": {"category": "x"},
                                  "factor": -1}]}, indent=2)  # fmt: skip
    with pytest.raises(InvalidRules) as info:
        parse_rules(body)
    line = next(n for n, text in enumerate(body.splitlines(), 1) if '"factor"' in text)
    assert info.value.line == line
    assert "boost.factor must be a number > 0" in str(info.value)


@pytest.mark.parametrize("text", ["", "# nothing\n", "rules:\n", "rules: []\n"])
def test_empty_documents_mean_no_rules(text: str) -> None:
    assert len(parse_rules(text)) == 0


# -- validation: every error, with its line ----------------------------------------------------

ERRORS: list[tuple[str, int | None, str]] = [
    # (document, line, reason fragment)
    ("rules: [\n", 2, "YAML syntax"),
    ("rules:\n  - name: a\n   action: x\n", 3, "YAML syntax"),
    (
        "rules:\n  - &x {name: a, action: exclude, when: {category: x}}\n  - *x\n",
        3,
        "anchors and aliases are not supported",
    ),
    ("- name: a\n", 1, "the document must be a mapping"),
    ("1: x\n", 1, "keys must be plain words"),
    ("rules: []\nrules: []\n", 2, "rules is given twice"),
    ("rules: []\nversion: 2\n", 2, "unknown key 'version'"),
    ("{}\n", 1, "the document must have a 'rules' list"),
    ("rules: exclude\n", 1, "rules must be a list"),
    ("rules:\n  - exclude\n", 2, "a rule must be a mapping"),
    (
        "rules:\n  - name: a\n    action: exclude\n    when: {category: x}\n    colour: red\n",
        5,
        "unknown key 'colour'",
    ),
    (
        "rules:\n  - name: a\n    action: exclude\n    when: {category: x}\n    active: {}\n",
        5,
        "time windows are not supported yet",
    ),
    ("rules:\n  - action: exclude\n    when: {category: x}\n", 2, "a rule needs a name"),
    ("rules:\n  - name: [a]\n    action: exclude\n", 2, "name must be a string"),
    ("rules:\n  - name: 'a b'\n    action: exclude\n", 2, "name must be 1-64 letters"),
    ("rules:\n  - name: a\n    when: {category: x}\n", 2, "needs an action"),
    ("rules:\n  - name: a\n    action: zap\n", 3, "action must be one of exclude"),
    ("rules:\n  - name: a\n    action: 3\n", 3, "action must be a string"),
    (
        "rules:\n  - name: a\n    action: exclude\n    when: {category: x}\n    factor: 2\n",
        5,
        "factor does not apply to action exclude",
    ),
    (
        "rules:\n  - name: a\n    action: pin\n    item: x\n    slot: 1\n    when: {category: x}\n",
        6,
        "when does not apply to action pin",
    ),
    (
        "rules:\n  - name: a\n    action: boost\n    when: {category: x}\n",
        2,
        "boost rule 'a' needs factor",
    ),
    ("rules:\n  - name: a\n    action: exclude\n", 2, "exclude rule 'a' needs when"),
    ("rules:\n  - name: a\n    action: pin\n    item: x\n", 2, "pin rule 'a' needs slot"),
    (
        "rules:\n  - name: a\n    action: boost\n    when: {category: x}\n    factor: 0\n",
        5,
        "boost.factor must be a number > 0",
    ),
    (
        "rules:\n  - name: a\n    action: bury\n    when: {category: x}\n    factor: -2\n",
        5,
        "bury.factor must be a number > 0",
    ),
    (
        "rules:\n  - name: a\n    action: boost\n    when: {category: x}\n    factor: lots\n",
        5,
        "boost.factor must be a number > 0",
    ),
    (
        "rules:\n  - name: a\n    action: boost\n    when: {category: x}\n    factor: .inf\n",
        5,
        "boost.factor must be a number > 0",
    ),
    (
        "rules:\n  - name: a\n    action: boost\n    when: {category: x}\n    factor: true\n",
        5,
        "boost.factor must be a number > 0",
    ),
    (
        "rules:\n  - name: a\n    action: boost\n    when: {category: x}\n    factor: 10000000.0\n",
        5,
        "boost.factor must be a number > 0",
    ),
    (
        "rules:\n  - name: a\n    action: pin\n    item: x\n    slot: 0\n",
        5,
        "pin.slot must be an integer from 1 to 100",
    ),
    ("rules:\n  - name: a\n    action: pin\n    item: x\n    slot: 101\n", 5, "pin.slot"),
    ("rules:\n  - name: a\n    action: pin\n    item: x\n    slot: 1.5\n", 5, "pin.slot"),
    ("rules:\n  - name: a\n    action: pin\n    item: x\n    slot: '1'\n", 5, "pin.slot"),
    (
        "rules:\n  - name: a\n    action: pin\n    item: [x]\n    slot: 1\n",
        4,
        "pin.item must be a string",
    ),
    (
        "rules:\n  - name: a\n    action: pin\n    item: ''\n    slot: 1\n",
        4,
        "pin.item must be a printable string",
    ),
    ("rules:\n  - name: a\n    action: exclude\n    when: shoes\n", 4, "a.when must be a mapping"),
    ("rules:\n  - name: a\n    action: exclude\n    when: {}\n", 4, "a.when must name at least"),
    (
        "rules:\n  - name: a\n    action: exclude\n    when:\n      brand: x\n",
        5,
        "unknown key 'brand' in when",
    ),
    (
        "rules:\n  - name: a\n    action: exclude\n    when:\n      category: []\n",
        5,
        "when.category must not be an empty list",
    ),
    (
        "rules:\n  - name: a\n    action: exclude\n    when:\n      category: [x, {y: 1}]\n",
        5,
        "when.category must be a string",
    ),
    (
        "rules:\n  - name: a\n    action: exclude\n    when:\n      price: 10\n",
        5,
        "when.price must be a mapping",
    ),
    (
        "rules:\n  - name: a\n    action: exclude\n    when:\n      price: {}\n",
        5,
        "when.price needs min, max or both",
    ),
    (
        "rules:\n  - name: a\n    action: exclude\n    when:\n      price:\n        avg: 1\n",
        6,
        "unknown key 'avg' in when.price",
    ),
    (
        "rules:\n  - name: a\n    action: exclude\n    when:\n      price:\n        min: -1\n",
        6,
        "when.price.min must be a number from 0",
    ),
    (
        "rules:\n  - name: a\n    action: exclude\n    when:\n      price:\n        max: cheap\n",
        6,
        "when.price.max must be a number",
    ),
    (
        "rules:\n  - name: a\n    action: exclude\n    when:\n      price: {min: 5, max: 1}\n",
        5,
        "when.price.min must not be above when.price.max",
    ),
    (
        "rules:\n  - name: a\n    action: exclude\n    when:\n      in_stock: maybe\n",
        5,
        "when.in_stock must be true or false",
    ),
    (
        "rules:\n  - name: a\n    action: exclude\n    when:\n      items: []\n",
        5,
        "when.items must list 1 to",
    ),
    (
        "rules:\n  - name: a\n    action: exclude\n    when:\n      items: x1\n",
        5,
        "when.items must be a list",
    ),
    (
        "rules:\n  - name: a\n    action: exclude\n    when: {category: x}\n    feeds: home\n",
        5,
        "feeds must be a list",
    ),
    (
        "rules:\n  - name: a\n    action: exclude\n    when: {category: x}\n    feeds: []\n",
        5,
        "feeds must list at least one feed",
    ),
    (
        "rules:\n  - name: a\n    action: exclude\n    when: {category: x}\n    feeds:\n"
        "      - home\n      - hom\n",
        7,
        "unknown feed 'hom'",
    ),
    (
        "rules:\n  - name: a\n    action: exclude\n    when: {category: x}\n"
        "    feeds: [home, home]\n",
        5,
        "'home' is listed twice",
    ),
    (
        "rules:\n  - name: a\n    action: exclude\n    when: {category: x}\n"
        "  - name: a\n    action: exclude\n    when: {category: y}\n",
        5,
        "name 'a' is already used by the rule on line 2",
    ),
    (
        "rules:\n  - name: a\n    action: pin\n    item: x\n    slot: 2\n"
        "  - name: b\n    action: pin\n    item: y\n    slot: 2\n",
        9,
        "slot 2 is already pinned by rule 'a' (line 2)",
    ),
    (
        "rules:\n  - name: a\n    action: pin\n    item: x\n    slot: 2\n"
        "  - name: b\n    action: pin\n    item: x\n    slot: 3\n",
        8,
        "item 'x' is already pinned by rule 'a' (line 2)",
    ),
]


@pytest.mark.parametrize(("text", "line", "reason"), ERRORS)
def test_every_error_names_its_line_and_reason(text: str, line: int | None, reason: str) -> None:
    with pytest.raises(InvalidRules) as info:
        parse_rules(text)
    error = info.value
    assert error.line == line, str(error)
    assert reason in error.reason, str(error)
    assert str(error) == f"rules.yaml:{line}: {error.reason}"


def test_errors_name_the_source() -> None:
    error = _error("rules: 3\n", source="shop-rules.yaml")
    assert str(error) == "shop-rules.yaml:1: rules must be a list"


def test_pin_of_an_unknown_item_is_refused_when_the_catalog_is_asked() -> None:
    text = "rules:\n  - name: a\n    action: pin\n    item: ghost\n    slot: 1\n"
    error = _error(text, known_item=lambda item_id: item_id != "ghost")
    assert (error.line, error.reason) == (4, "pin.item 'ghost' is not in the catalog")
    assert len(parse_rules(text)) == 1  # without the catalog (stored rules) it is accepted


def test_size_limits() -> None:
    error = _error("#" * (MAX_TEXT_BYTES + 1))
    assert error.line is None and str(error).startswith("rules.yaml: rules must be at most")
    many = "rules:\n" + "".join(
        f"  - {{name: r{n}, action: exclude, when: {{category: x}}}}\n"
        for n in range(MAX_RULES + 1)
    )
    assert _error(many).reason == f"at most {MAX_RULES} rules"


def test_yaml_tags_cannot_build_objects() -> None:
    # The safe loader knows no python/* tags: refused as YAML, never constructed.
    error = _error("rules:\n  - name: !!python/object/apply:os.system ['true']\n    action: x\n")
    assert error.line == 2


def test_pins_on_one_slot_in_different_feeds_would_be_fine() -> None:
    text = (
        "rules:\n  - {name: a, action: pin, item: x, slot: 1, feeds: [home]}\n"
        "  - {name: b, action: pin, item: y, slot: 1, feeds: [other]}\n"
    )
    assert len(parse_rules(text, feeds=("home", "other"))) == 2


# -- semantics ---------------------------------------------------------------------------------


def _catalog(items: list[Item]) -> Catalog:
    catalog = Catalog(redis=None)  # type: ignore[arg-type]
    catalog._items = {item.item_id: item for item in items}
    catalog._changed()
    return catalog


def _shop() -> Catalog:
    items = [
        Item(f"{cat}{n}", f"{cat} {n}", 10.0 + n, cat, "", True, {})
        for cat in ("phones", "shoes", "books")
        for n in range(6)
    ]
    items.append(Item("gone", "Gone", 1.0, "books", "", False, {}))
    items.append(Item("free", "Free", None, "books", "", True, {}))
    return _catalog(items)


SHOP = _shop()


def _feed(
    rules: str,
    candidates: Scored,
    *,
    current: str | None = None,
    size: int = 6,
    repeat: bool = False,
    cap: int = 0,
    hits: list[str] | None = None,
) -> list[str]:
    recommender = Recommender(
        SHOP,
        RecommenderTuning(size=size, repeat=repeat, max_per_category=cap),
        parse_rules(_doc(rules)) if rules else EMPTY,
    )
    if hits is not None:
        recommender.observe_rule = hits.append
    view = ProfileView(candidates=candidates, feed=None)
    return [p["id"] for p in recommender.home(view, current=current)]


def _ranked(*ids: str) -> Scored:
    """Candidates in rank order with falling scores 10, 9, 8, …"""
    return [(item_id, float(10 - n)) for n, item_id in enumerate(ids)]


MIXED = _ranked("phones0", "shoes0", "books0", "phones1", "shoes1", "books1", "phones2", "books2")


def test_no_rules_keeps_the_plain_path() -> None:
    assert _feed("", MIXED) == ["phones0", "shoes0", "books0", "phones1", "shoes1", "books1"]


def test_exclude_by_category_glob() -> None:
    rules = "rules:\n  - {name: x, action: exclude, when: {category: 'sho*'}}\n"
    hits: list[str] = []
    out = _feed(rules, MIXED, hits=hits)
    assert out == ["phones0", "books0", "phones1", "books1", "phones2", "books2"]
    assert hits == ["exclude"]


def test_exclude_by_price_and_items() -> None:
    rules = """
    rules:
      - {name: dear, action: exclude, when: {price: {min: 11}}}
      - {name: one, action: exclude, when: {items: [books0]}}
    """
    # phones1/shoes1/books1/phones2/books2 cost 11+; books0 is named; an unpriced item never
    # matches a price range.
    assert _feed(rules, [*MIXED, ("free", 0.1)]) == ["phones0", "shoes0", "free"]


def test_include_only_rules_must_all_hold() -> None:
    rules = """
    rules:
      - {name: p-or-b, action: include_only, when: {category: [phones, books]}}
      - {name: cheap, action: include_only, when: {price: {max: 11}}}
    """
    hits: list[str] = []
    assert _feed(rules, MIXED, hits=hits) == ["phones0", "books0", "phones1", "books1"]
    assert hits == ["include_only"]


def test_stock_matcher_sees_only_items_in_stock() -> None:
    # Out-of-stock items never reach the rules (the catalog filter comes first).
    rules = "rules:\n  - {name: s, action: include_only, when: {in_stock: true}}\n"
    assert _feed(rules, _ranked("gone", "books0")) == ["books0"]


def test_boost_and_bury_multiply_the_score_and_re_sort_stably() -> None:
    rules = """
    rules:
      - {name: up, action: boost, when: {category: books}, factor: 3}
      - {name: down, action: bury, when: {category: phones}, factor: 10}
    """
    # books: 8*3=24, 5*3=15, 3*3=9; shoes 9, 6 unchanged; phones 10/10=1, 7/10, 4/10.
    # books2 (9) and shoes0 (9) tie: the script's order (shoes0 first) is kept.
    hits: list[str] = []
    out = _feed(rules, MIXED, size=8, hits=hits)
    assert out == [
        "books0",
        "books1",
        "shoes0",
        "books2",
        "shoes1",
        "phones0",
        "phones1",
        "phones2",
    ]
    assert sorted(hits) == ["boost", "bury"]


def test_factors_of_several_rules_multiply() -> None:
    rules = """
    rules:
      - {name: a, action: boost, when: {category: books}, factor: 2}
      - {name: b, action: boost, when: {items: [books1]}, factor: 2}
    """
    # books1: 5*4=20 beats books0 8*2=16 and phones0 10.
    assert _feed(rules, MIXED, size=3) == ["books1", "books0", "phones0"]


def test_filters_come_before_boosts() -> None:
    rules = """
    rules:
      - {name: up, action: boost, when: {category: shoes}, factor: 100}
      - {name: no, action: exclude, when: {items: [shoes0]}}  # "no" is a name, not false
    """
    assert _feed(rules, MIXED, size=3) == ["shoes1", "phones0", "books0"]


def test_pin_places_an_item_at_its_slot_without_duplicates() -> None:
    rules = "rules:\n  - {name: hero, action: pin, item: books1, slot: 2}\n"
    hits: list[str] = []
    out = _feed(rules, MIXED, size=4, hits=hits)
    assert out == ["phones0", "books1", "shoes0", "books0"]
    assert hits == ["pin"]


def test_pins_in_slot_order_and_beyond_a_short_list() -> None:
    rules = """
    rules:
      - {name: far, action: pin, item: shoes5, slot: 5}
      - {name: first, action: pin, item: books5, slot: 1}
    """
    assert _feed(rules, _ranked("phones0", "phones1")) == ["books5", "phones0", "phones1", "shoes5"]
    assert _feed(rules, _ranked("phones0", "phones1", "phones2", "phones3", "phones4")) == [
        "books5",
        "phones0",
        "phones1",
        "phones2",
        "shoes5",
        "phones3",
    ]


def test_a_pin_beyond_the_feed_size_or_out_of_stock_or_unknown_is_skipped() -> None:
    rules = """
    rules:
      - {name: far, action: pin, item: books5, slot: 9}
      - {name: gone, action: pin, item: gone, slot: 1}
      - {name: ghost, action: pin, item: ghost, slot: 2}
    """
    hits: list[str] = []
    out = _feed(rules, _ranked("phones0", "books5", "phones1"), size=3, hits=hits)
    assert out == ["phones0", "books5", "phones1"]
    assert hits == []


def test_pins_beat_filters_and_the_category_cap() -> None:
    rules = """
    rules:
      - {name: no-books, action: exclude, when: {category: books}}
      - {name: hero, action: pin, item: books3, slot: 1}
    """
    assert _feed(rules, MIXED, size=3) == ["books3", "phones0", "shoes0"]
    cap = "rules:\n  - {name: hero, action: pin, item: phones5, slot: 1}\n"
    # The pinned phone does not use up phones' one place under the cap.
    assert _feed(cap, MIXED, size=4, cap=1) == ["phones5", "phones0", "shoes0", "books0"]


def test_the_repeat_slot_stays_first_through_boosts_and_after_a_pin() -> None:
    boost = "rules:\n  - {name: up, action: boost, when: {category: books}, factor: 100}\n"
    candidates = _ranked("shoes3", *[c for c, _ in MIXED])
    assert _feed(boost, candidates, current="shoes3", repeat=True, size=3) == [
        "shoes3",
        "books0",
        "books1",
    ]
    # Without the repeat tuning the current item is not in the feed at all.
    assert _feed(boost, candidates, current="shoes3", size=2) == ["books0", "books1"]
    pin = "rules:\n  - {name: hero, action: pin, item: books5, slot: 1}\n"
    assert _feed(pin, candidates, current="shoes3", repeat=True, size=3) == [
        "books5",
        "shoes3",
        "phones0",
    ]


def test_an_excluded_current_item_leaves_the_repeat_slot() -> None:
    rules = "rules:\n  - {name: x, action: exclude, when: {category: shoes}}\n"
    candidates = _ranked("shoes3", "phones0", "books0")
    assert _feed(rules, candidates, current="shoes3", repeat=True) == ["phones0", "books0"]


def test_the_cap_applies_after_boosts() -> None:
    rules = "rules:\n  - {name: up, action: boost, when: {category: books}, factor: 100}\n"
    # Books lead after the boost; the cap of 2 then lets the others in and backfills.
    out = _feed(rules, MIXED, size=5, cap=2)
    assert out == ["books0", "books1", "phones0", "shoes0", "phones1"]


def test_rules_of_other_feeds_do_not_apply() -> None:
    text = "rules:\n  - {name: x, action: exclude, when: {category: phones}, feeds: [other]}\n"
    rules = parse_rules(text, feeds=("home", "other"))
    recommender = Recommender(SHOP, RecommenderTuning(size=2), rules)
    view = ProfileView(candidates=MIXED, feed=None)
    assert [p["id"] for p in recommender.home(view, current=None)] == ["phones0", "shoes0"]


def test_a_rule_set_is_swapped_whole() -> None:
    recommender = Recommender(SHOP, RecommenderTuning(size=2))
    view = ProfileView(candidates=MIXED, feed=None)
    assert [p["id"] for p in recommender.home(view, current=None)] == ["phones0", "shoes0"]
    recommender.rules = parse_rules(
        "rules:\n  - {name: x, action: exclude, when: {category: phones}}\n"
    )
    assert [p["id"] for p in recommender.home(view, current=None)] == ["shoes0", "books0"]
    recommender.rules = RuleSet()
    assert [p["id"] for p in recommender.home(view, current=None)] == ["phones0", "shoes0"]


def test_the_repeat_slot_is_held_only_when_the_current_item_leads() -> None:
    boost = "rules:\n  - {name: up, action: boost, when: {category: books}, factor: 100}\n"
    candidates = _ranked("phones0", "shoes3", "books0")
    out = _feed(boost, candidates, current="shoes3", repeat=True, size=3)
    assert out == ["books0", "phones0", "shoes3"]
