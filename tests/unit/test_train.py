"""Unit tests of the offline neighbour computation (streams/train.py) and ``pushrec train``'s
input handling (push/train_cli.py). Loading into Redis: tests/integration/test_train.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from push.cli import _parser, main
from push.eval_cli import command_line
from push.train_cli import training_events
from streams.evaluation.readers import Interaction
from streams.train import (
    TrainTuning,
    compute_neighbours,
    describe,
    neighbour_key,
    new_version,
    sessions_of,
)

# Plain counts: forward 1/d, backward 1/d, no damping, so the expected scores are sums of 1/d.
PLAIN = TrainTuning(forward_w=1.0, backward_w=1.0, popularity_exponent=0.0)


def ev(session: str, item: str, ts: int) -> Interaction:
    return Interaction(session, item, ts, "view", "", session)


def test_sessions_are_in_time_order_with_immediate_repeats_collapsed() -> None:
    events = [ev("s1", "b", 2), ev("s1", "a", 1), ev("s1", "a", 1), ev("s2", "c", 5)]
    events += [ev("s1", "b", 3), ev("s1", "a", 4)]
    assert sessions_of(events) == [["a", "b", "a"], ["c"]]


def test_session_falls_back_to_the_user() -> None:
    events = [Interaction("u", "a", 1), Interaction("u", "b", 2), Interaction("v", "a", 3)]
    assert sessions_of(events) == [["a", "b"], ["a"]]


def test_scores_weigh_by_distance_and_direction() -> None:
    # One session a b c: a→b 1, a→c 1/2, b→c 1 forward; the same backward, times backward_w.
    tuning = TrainTuning(forward_w=1.0, backward_w=0.5, popularity_exponent=0.0)
    model = compute_neighbours([ev("s", "a", 1), ev("s", "b", 2), ev("s", "c", 3)], tuning)
    assert model["a"] == [("b", 1.0), ("c", 0.5)]
    assert model["b"] == [("c", 1.0), ("a", 0.5)]
    assert model["c"] == [("b", 0.5), ("a", 0.25)]


def test_a_pair_counts_once_per_session_by_its_closest_occurrence() -> None:
    # a b x y z a b: a→b at distance 1 twice in one session still counts 1 (not 2, and not
    # 1 + 1/6 + 1/4 for the farther occurrences).
    seq = ["a", "b", "x", "y", "z", "a", "b"]
    model = compute_neighbours([ev("s", item, t) for t, item in enumerate(seq)], PLAIN)
    assert dict(model["a"])["b"] == 1.0
    # Two sessions add up.
    model = compute_neighbours(
        [ev("s", "a", 1), ev("s", "b", 2), ev("t", "a", 3), ev("t", "b", 4)], PLAIN
    )
    assert model["a"] == [("b", 2.0)] and model["b"] == [("a", 2.0)]


def test_window_limits_the_distance() -> None:
    seq = ["a", "b", "c", "d"]
    model = compute_neighbours(
        [ev("s", item, t) for t, item in enumerate(seq)], TrainTuning(window=2)
    )
    assert "d" not in dict(model["a"]) and "c" in dict(model["a"])


def test_popularity_damping_divides_by_the_neighbours_support() -> None:
    # b occurs in 4 sessions, c in 1; each co-occurs once with a at distance 1.
    events = [ev("s0", "a", 0), ev("s0", "b", 1), ev("s1", "a", 2), ev("s1", "c", 3)]
    events += [ev(f"o{i}", "b", 10 + i) for i in range(3)]
    plain = compute_neighbours(events, PLAIN)
    assert plain["a"] == [("b", 1.0), ("c", 1.0)]
    damped = compute_neighbours(
        events, TrainTuning(forward_w=1.0, backward_w=1.0, popularity_exponent=0.5)
    )
    assert damped["a"] == [("c", 1.0), ("b", 0.5)]


def test_top_n_per_item_best_first_ties_by_id_and_items_without_neighbours_absent() -> None:
    events = [ev(f"s{i}", "a", 2 * i) for i in range(5)]
    events += [ev(f"s{i}", item, 2 * i + 1) for i, item in enumerate("edcba")]  # s4: a a
    events.append(ev("lonely", "z", 99))
    model = compute_neighbours(events, TrainTuning(neighbours=2))
    assert [nb for nb, _ in model["a"]] == ["b", "c"]  # b, c, d, e tie: ids break it
    assert "z" not in model
    assert describe(model) == (len(model), sum(len(r) for r in model.values()))


def test_deterministic_whatever_the_input_order() -> None:
    events = [ev(f"s{i % 7}", f"i{(i * 13) % 11}", i) for i in range(200)]
    assert compute_neighbours(events) == compute_neighbours(list(reversed(events)))


def test_rejects_empty_sizes() -> None:
    with pytest.raises(ValueError):
        compute_neighbours([], TrainTuning(neighbours=0))


def test_versions_and_keys() -> None:
    version = new_version(1_767_225_600_000)
    assert re.fullmatch(r"20260101T000000-[0-9a-f]{6}", version)
    assert new_version() != new_version()
    assert neighbour_key("v1", "it:em") == "pr:{i:it:em}:nbm:v1"


def test_training_events_use_only_the_training_part_of_a_yoochoose_directory(
    tmp_path: Path,
) -> None:
    head = "SessionId\tItemId\tTime\n"
    (tmp_path / "x_train_full.txt").write_text(head + "1\t10\t100\n1\t11\t101\n")
    (tmp_path / "x_test.txt").write_text(head + "2\t10\t200\n2\t12\t201\n")
    events = training_events("yoochoose", tmp_path)
    assert [e.item for e in events] == ["10", "11"]
    single = tmp_path / "one.tsv"
    single.write_text(head + "1\t10\t100\n1\t11\t101\n2\t12\t102\n2\t13\t103\n")
    assert len(training_events("yoochoose", single)) == 4  # a whole file by default
    assert [e.item for e in training_events("yoochoose", single, split=0.5)] == ["10", "11"]


def test_train_requires_an_external_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PUSHREC_REDIS_URL", raising=False)
    data = tmp_path / "log.csv"
    data.write_text("user,item,ts\nu,a,1\nu,b,2\n")
    assert main(["train", "--dataset", "csv", "--data", str(data)]) == 2
    assert "PUSHREC_REDIS_URL" in capsys.readouterr().err


def test_train_options_and_the_eval_flag() -> None:
    args = _parser().parse_args(["train", "--dataset", "rees46", "--data", "x.csv"])
    assert args.neighbours == 50 and args.split is None and args.redis_url is None
    ev_args = _parser().parse_args(["eval", "--dataset", "csv", "--data", "x.csv", "--train-model"])
    assert ev_args.train_model
    assert command_line(ev_args).endswith(" --train-model")
