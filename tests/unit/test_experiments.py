"""Unit tests of streams/experiments.py (validation, assignment, arms) and the statistics of
streams/experiment_stats.py (Wilson interval, comparison, report)."""

from __future__ import annotations

import textwrap
from collections import Counter

import pytest

from sessions.feeds import FeedState, parse_rec_id, rec_id
from sessions.versions import Version
from streams.experiment_stats import Rate, compare, current_labels, report
from streams.experiments import (
    MAX_EXPERIMENTS,
    NO_EXPERIMENTS,
    ExperimentSet,
    InvalidExperiments,
    labels_of,
    parse_experiments,
)
from streams.profile import ScoringTuning
from streams.recommender import RecommenderTuning

GOOD = """
experiments:
  - name: ranker
    traffic: 0.5
    variants:
      - name: control
      - name: popular
        weight: 2
        algorithm: popular
  - name: diversity
    variants:
      - {name: control, weight: 1}
      - {name: capped, weight: 1, params: {max_per_category: 3}}
"""


def _doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def _error(text: str) -> InvalidExperiments:
    with pytest.raises(InvalidExperiments) as info:
        parse_experiments(_doc(text))
    return info.value


def test_a_good_document_round_trips_through_its_normalized_body() -> None:
    parsed = parse_experiments(_doc(GOOD))
    assert [e.name for e in parsed] == ["ranker", "diversity"]
    again = parse_experiments(parsed.body())
    assert again.body() == parsed.body()
    assert [e.revision for e in again] == [e.revision for e in parsed]


def test_an_empty_document_or_list_is_no_experiments() -> None:
    assert parse_experiments("") is NO_EXPERIMENTS
    assert parse_experiments("experiments:\n") is NO_EXPERIMENTS
    assert not NO_EXPERIMENTS


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("rules: []", 1, "unknown key 'rules'"),
        ("experiments: {}", 1, "experiments must be a list"),
        ("experiments:\n  - name: a\n    variants: [{name: x}]", 3, "2 to 10 variants"),
        (
            "experiments:\n  - name: a\n    variants:\n      - {name: x}\n      - {name: x}",
            5,
            "named twice",
        ),
        (
            "experiments:\n  - name: a b\n    variants: [{name: x}, {name: y}]",
            2,
            "name must be 1-48 letters",
        ),
        (
            "experiments:\n  - name: a\n    traffic: 2\n    variants: [{name: x}, {name: y}]",
            3,
            "traffic must be a number between 0 and 1",
        ),
        (
            "experiments:\n  - name: a\n    feed: offers\n    variants: [{name: x}, {name: y}]",
            3,
            "feed must be one of home",
        ),
        (
            "experiments:\n  - name: a\n    variants:\n      - {name: x, algorithm: magic}\n"
            "      - {name: y}",
            4,
            "algorithm must be one of",
        ),
        (
            "experiments:\n  - name: a\n    variants:\n      - {name: x, params: {eval: 1}}\n"
            "      - {name: y}",
            4,
            "unknown parameter 'eval'",
        ),
        (
            "experiments:\n  - name: a\n    variants:\n      - name: x\n        params:\n"
            "          session_items: 2.5\n      - {name: y}",
            6,
            "session_items must be a whole number",
        ),
        (
            "experiments:\n  - name: a\n    variants:\n      - {name: x, params: {session_w: -1}}\n"
            "      - {name: y}",
            4,
            "session_w must be a number between 0 and 100",
        ),
        (
            "experiments:\n  - name: a\n    variants:\n      - {name: x, weight: 0}\n"
            "      - {name: y, weight: 0}",
            4,
            "weight above 0",
        ),
        (
            "experiments:\n  - name: a\n    variants: [{name: x}, {name: y}]\n"
            "  - name: a\n    variants: [{name: x}, {name: y}]",
            4,
            "already defined on line 2",
        ),
        (
            "experiments:\n  - name: a\n    variants: [{name: x, algorithm: popular}, {name: y}]\n"
            "  - name: b\n    variants: [{name: x, params: {session_w: 2}}, {name: y}]",
            4,
            "experiments 'a' (line 2) and 'b' both set session_w",
        ),
        ("experiments:\n  - &x {name: a}\n  - *x", 3, "anchors and aliases"),
    ],
)
def test_every_error_names_its_line_and_reason(text: str, line: int, reason: str) -> None:
    error = _error(text)
    assert error.line == line, str(error)
    assert reason in error.reason, str(error)
    assert str(error).startswith(f"experiments.yaml:{line}: ")


def test_too_many_experiments_are_refused() -> None:
    entries = "".join(
        f"  - name: e{i}\n    variants: [{{name: x}}, {{name: y}}]\n"
        for i in range(MAX_EXPERIMENTS + 1)
    )
    assert "at most" in _error("experiments:\n" + entries).reason


def test_assignment_is_deterministic_and_follows_traffic_and_weights() -> None:
    experiment = parse_experiments(_doc(GOOD)).experiments[0]
    users = [f"user-{i}" for i in range(20_000)]
    first = [experiment.variant_for(u) for u in users]
    assert first == [experiment.variant_for(u) for u in users]  # no state, same answer
    counts = Counter(v.name if v else None for v in first)
    assert abs(counts[None] / len(users) - 0.5) < 0.02  # traffic 0.5
    enrolled = counts["control"] + counts["popular"]
    assert abs(counts["popular"] / enrolled - 2 / 3) < 0.02  # weights 1:2


def test_growing_the_traffic_keeps_enrolled_users_where_they_were() -> None:
    small = parse_experiments(_doc(GOOD)).experiments[0]
    big = parse_experiments(_doc(GOOD.replace("traffic: 0.5", "traffic: 0.9"))).experiments[0]
    assert small.revision != big.revision
    users = [f"user-{i}" for i in range(5_000)]
    for user in users:
        before = small.variant_for(user)
        if before is not None:
            after = big.variant_for(user)
            assert after is not None


def test_experiments_split_users_independently() -> None:
    ranker, diversity = parse_experiments(_doc(GOOD)).experiments
    users = [f"user-{i}" for i in range(20_000)]
    both = Counter(
        (ranker.variant_for(u) is not None, diversity.variant_for(u).name)  # type: ignore[union-attr]
        for u in users
    )
    # Being in the ranker experiment says nothing about the diversity variant.
    inside = both[(True, "capped")] / (both[(True, "capped")] + both[(True, "control")])
    outside = both[(False, "capped")] / (both[(False, "capped")] + both[(False, "control")])
    assert abs(inside - outside) < 0.03


def test_an_arm_combines_the_variants_of_every_experiment_the_user_is_in() -> None:
    experiments = parse_experiments(_doc(GOOD))
    scoring, tuning = ScoringTuning(), RecommenderTuning(max_per_category=0)
    ranker, diversity = experiments.experiments
    user = next(
        u
        for u in (f"u{i}" for i in range(10_000))
        if (v := ranker.variant_for(u)) is not None
        and v.name == "popular"
        and diversity.variant_for(u).name == "capped"  # type: ignore[union-attr]
    )
    arm = experiments.arm(user, scoring, tuning)
    assert arm is not None
    assert arm.tag == f"ranker:{ranker.revision}:popular,diversity:{diversity.revision}:capped"
    assert arm.scoring.session_w == 0 and arm.scoring.global_w == 1
    assert arm.scoring.neighbour_w == 0 and arm.scoring.repeat_w == 0
    assert arm.feed.max_per_category == 3 and arm.feed.repeat is False
    assert isinstance(arm.feed.max_per_category, int)
    assert experiments.arm(user, scoring, tuning) is arm  # cached
    outside = next(
        u
        for u in (f"u{i}" for i in range(10_000))
        if ranker.variant_for(u) is None and diversity.variant_for(u).name == "control"  # type: ignore[union-attr]
    )
    plain = experiments.arm(outside, scoring, tuning)
    assert plain is not None and plain.scoring == scoring and plain.feed == tuning
    assert NO_EXPERIMENTS.arm(user, scoring, tuning) is None


def test_rec_ids_round_trip_and_name_their_labels() -> None:
    state = FeedState("u", "home", Version("Zx_9-a", 17), ({"id": "a"},), "ab:0a1b2c3d:b")
    assert state.rec_id == "Zx_9-a.17~ab:0a1b2c3d:b"
    assert parse_rec_id(state.rec_id) == (Version("Zx_9-a", 17), "ab:0a1b2c3d:b")
    assert rec_id(Version("e", 1), "") == ""
    assert labels_of("a:1:b,c:2:d") is not None
    assert labels_of("a:1") is None and labels_of("a:1:b,") is None


def test_only_labels_of_the_users_current_variant_count() -> None:
    experiments = parse_experiments(_doc(GOOD))
    diversity = experiments.experiments[1]
    user = "user-7"
    mine = diversity.variant_for(user)
    assert mine is not None
    other = "capped" if mine.name == "control" else "control"
    ok = f"E.3~diversity:{diversity.revision}:{mine.name}"
    assert [str(x) for x in current_labels(user, ok, experiments)] == [ok.split("~")[1]]
    assert current_labels(user, f"E.3~diversity:{diversity.revision}:{other}", experiments) == []
    assert current_labels(user, f"E.3~diversity:00000000:{mine.name}", experiments) == []
    assert current_labels(user, f"E.3~gone:{diversity.revision}:{mine.name}", experiments) == []
    assert current_labels(user, "not-a-rec", experiments) == []
    assert current_labels(user, ok, ExperimentSet()) == []


def test_wilson_interval_is_sound_at_the_edges() -> None:
    assert Rate(0, 0).interval() is None and Rate(0, 0).value is None
    low, high = Rate(0, 10).interval()  # type: ignore[misc]
    assert low == 0 and 0.2 < high < 0.35  # the normal approximation would give [0, 0]
    low, high = Rate(50, 100).interval()  # type: ignore[misc]
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)


def test_compare_reports_difference_interval_and_p_value() -> None:
    result = compare(Rate(150, 1000), Rate(100, 1000))
    assert result is not None
    assert result["difference"] == pytest.approx(0.05)
    low, high = result["ci95"]
    assert 0 < low < 0.05 < high
    assert result["lift"] == pytest.approx(0.5)
    assert result["p_value"] < 0.01 and result["significant"]
    same = compare(Rate(100, 1000), Rate(100, 1000))
    assert same is not None and same["p_value"] == pytest.approx(1.0)
    assert not same["significant"] and same["ci95"][0] < 0 < same["ci95"][1]
    assert compare(Rate(1, 10), Rate(0, 0)) is None


def test_report_lists_every_variant_with_rates_and_the_comparison() -> None:
    experiment = parse_experiments(_doc(GOOD)).experiments[1]
    counts = {"control:i": 200, "control:c": 20, "control:u": 50, "capped:i": 100, "capped:c": 5}
    out = report("diversity", experiment.revision, experiment, counts, ["01234567"])
    assert out["running"] and out["control"] == "control"
    control, capped = out["variants"]
    assert control["ctr"] == pytest.approx(0.1) and control["users"] == 50
    assert capped["impressions"] == 100 and capped["clicks"] == 5 and capped["users"] == 0
    assert capped["vs_control"]["difference"] == pytest.approx(-0.05)
    assert capped["share"] == 0.5 and out["other_revisions"] == ["01234567"]
    empty = report("diversity", experiment.revision, experiment, {})
    assert [v["impressions"] for v in empty["variants"]] == [0, 0]
    assert empty["variants"][1]["vs_control"] is None
    stopped = report("diversity", "01234567", None, {"a:i": 3, "b:i": 4, "b:c": 1})
    assert not stopped["running"] and [v["name"] for v in stopped["variants"]] == ["a", "b"]
