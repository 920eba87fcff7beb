"""Unit tests of streams/evaluation: readers, metrics, baselines, the protocol, progress, report.

The baseline figures on the tiny log below are computed by hand in the comments; the engine's
replay on a real Redis is tests/integration/test_eval.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from push.cli import _parser
from push.config import Settings
from push.eval_cli import command_line
from streams.evaluation.baselines import ItemToItem, Popular, Recent, cooccurrence, make_baseline
from streams.evaluation.harness import Prequential, micro_batches, run_baseline
from streams.evaluation.metrics import (
    Tally,
    coverage,
    hit,
    percentile,
    rank_of,
    reciprocal_rank,
)
from streams.evaluation.progress import Progress
from streams.evaluation.readers import (
    Dataset,
    Interaction,
    load_dataset,
    make_dataset,
    read_generic,
    read_rees46,
    read_yoochoose,
    split_by_fraction,
)
from streams.evaluation.report import markdown_table, repeats_table, to_json


def ev(user: str, item: str, ts: int, kind: str = "view") -> Interaction:
    return Interaction(user, item, ts, kind)


# A tiny log. Train: u1 a, u1 b, u2 a, u2 c, u3 b. Test: u1 a, u4 b (u4's first event: not
# scored), u4 a, u2 b, u2 b (a repeat of u2's previous item). Four scored events.
TRAIN = [ev("u1", "a", 1), ev("u1", "b", 2), ev("u2", "a", 3), ev("u2", "c", 4), ev("u3", "b", 5)]
TEST = [ev("u1", "a", 6), ev("u4", "b", 7), ev("u4", "a", 8), ev("u2", "b", 9), ev("u2", "b", 10)]
TINY = make_dataset("tiny", TRAIN, TEST)
KS = (1, 2)


# --- readers -------------------------------------------------------------------------------


def test_yoochoose_directory_gives_its_split_in_time_order(tmp_path: Path) -> None:
    head = "SessionId\tItemId\tTime\n"
    (tmp_path / "x_train_full.txt").write_text(head + "1\t10\t100.5\n1\t11\t99\n2\t10\t101\n")
    (tmp_path / "x_test.txt").write_text(head + "3\t10\t200\n3\t99\t201\n3\t11\t202\n")
    data = load_dataset("yoochoose", tmp_path)
    assert [(e.user, e.item, e.ts_ms) for e in data.train] == [
        ("1", "11", 99_000),
        ("1", "10", 100_500),
        ("2", "10", 101_000),
    ]
    # Item 99 never occurs in training: dropped, as session-rec does.
    assert [e.item for e in data.test] == ["10", "11"]
    assert data.unknown_dropped == 1
    assert data.catalogue() == {"10": "", "11": ""}
    assert all(e.session == e.user for e in data.train)
    with pytest.raises(ValueError, match="own train/test split"):
        load_dataset("yoochoose", tmp_path, split=0.5)


def test_yoochoose_rejects_another_header(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("a\tb\tc\n1\t2\t3\n")
    with pytest.raises(ValueError, match="header"):
        read_yoochoose(path)


REES_HEAD = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
)


def test_rees46_maps_types_drops_the_cut_off_line_and_picks_the_user(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(
        REES_HEAD
        + "2019-10-01 00:00:01 UTC,view,1,100,electronics.phone,x,1.0,7,s1\n"
        + "2019-10-01 00:00:01 UTC,cart,2,200,,y,2.0,7,s2\n"
        + "2019-10-01 00:00:02 UTC,purchase,2,200,,y,2.0,8,s3\n"
        + "2019-10-01 00:00:03 UTC,remove_from_cart,2,200,,y,2.0,8,s3\n"
        + "2019-10-01 00:00:04 UTC,view,3,300,,z,3.0,9,s4"  # cut off: no newline
    )
    events, skipped = read_rees46(path)
    assert [(e.user, e.item, e.type, e.category, e.session) for e in events] == [
        ("7", "1", "view", "electronics.phone", "s1"),
        ("7", "2", "add_to_cart", "200", "s2"),  # no category_code: the category_id
        ("8", "2", "purchase", "200", "s3"),
    ]
    assert events[0].ts_ms == 1_569_888_001_000
    assert skipped == 2  # the removal (not a scored type) and the cut-off line
    by_session, _ = read_rees46(path, user_key="user_session")
    assert [e.user for e in by_session] == ["s1", "s2", "s3"]
    with pytest.raises(ValueError, match="user_key"):
        read_rees46(path, user_key="brand")


def test_generic_csv_and_jsonl_read_every_timestamp_form(tmp_path: Path) -> None:
    csv_path = tmp_path / "g.csv"
    csv_path.write_text(
        "user,item,ts,type,category\n"
        "u,i1,1700000000,view,c\n"
        "u,i2,1700000000123,cart,\n"
        "u,i3,2023-11-14T22:13:21Z,purchase,\n"
        "u,i4,2023-11-14 22:13:22,,\n"
    )
    got = read_generic(csv_path, "csv")
    assert [(e.item, e.ts_ms, e.type, e.category) for e in got] == [
        ("i1", 1_700_000_000_000, "view", "c"),
        ("i2", 1_700_000_000_123, "add_to_cart", ""),
        ("i3", 1_700_000_001_000, "purchase", ""),
        ("i4", 1_700_000_002_000, "view", ""),  # no zone: UTC; no type: view
    ]
    jsonl = tmp_path / "g.jsonl"
    jsonl.write_text(
        '{"user": "u", "item": 5, "ts": 1.5, "session": "s"}\n\n{"user": "v", "item": "x", '
        '"ts": "2"}\n'
    )
    assert [(e.user, e.item, e.ts_ms, e.session) for e in read_generic(jsonl, "jsonl")] == [
        ("u", "5", 1500, "s"),
        ("v", "x", 2000, ""),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"user": "u", "item": "i"}', "ts is required"),
        ('{"user": "", "item": "i", "ts": 1}', "user must be"),
        ('{"user": "u", "item": "i", "ts": "soon"}', "no timestamp"),
        ('{"user": "u", "item": "i", "ts": 1, "type": "search"}', "type must be"),
        ("[1, 2]", "JSON object"),
        ("{", "not valid JSON"),
    ],
)
def test_generic_errors_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"user": "u", "item": "i", "ts": 1}\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as info:
        read_generic(path, "jsonl")
    assert "bad.jsonl:2" in str(info.value)


def test_generic_csv_needs_the_three_columns(tmp_path: Path) -> None:
    path = tmp_path / "g.csv"
    path.write_text("user,item\nu,i\n")
    with pytest.raises(ValueError, match="lacks ts"):
        read_generic(path, "csv")


def test_split_is_by_time_and_stable_for_ties() -> None:
    events = [ev("u", "x", 5), ev("u", "a", 1), ev("v", "b", 1), ev("u", "c", 3)]
    train, test = split_by_fraction(events, 0.5)
    assert [e.item for e in train] == ["a", "b"]  # equal timestamps keep file order
    assert [e.item for e in test] == ["c", "x"]
    with pytest.raises(ValueError):
        split_by_fraction(events, 1.0)


def test_single_file_defaults_to_an_80_20_split(tmp_path: Path) -> None:
    path = tmp_path / "g.csv"
    path.write_text("user,item,ts\n" + "".join(f"u{n % 3},i{n % 4},{n}\n" for n in range(10)))
    data = load_dataset("csv", path)
    assert len(data.train) == 8 and len(data.test) == 2


# --- metrics -------------------------------------------------------------------------------


def test_metric_functions() -> None:
    screen = ["a", "b", "c"]
    assert rank_of(screen, "c") == 3 and rank_of(screen, "z") is None
    assert hit(screen, "b", 2) == 1.0 and hit(screen, "c", 2) == 0.0
    assert reciprocal_rank(screen, "b", 3) == 0.5 and reciprocal_rank(screen, "c", 2) == 0.0
    assert coverage(["a", "b", "a"], 4) == 0.5 and coverage([], 0) == 0.0


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0
    with pytest.raises(ValueError):
        percentile(values, 0)


def test_tally_sums_hits_ranks_and_shown_items() -> None:
    tally = Tally((2, 1))
    assert tally.ks == (1, 2)
    tally.add(["a", "b", "c"], "b")  # rank 2
    tally.add(["a", "d"], "a")  # rank 1
    tally.add([], "a")  # nothing shown: a miss
    assert tally.scored == 3
    assert tally.hit_rate(1) == pytest.approx(1 / 3)
    assert tally.hit_rate(2) == pytest.approx(2 / 3)
    assert tally.mrr(2) == pytest.approx((0.5 + 1) / 3)
    assert tally.coverage(1, 10) == pytest.approx(0.1)  # {a}
    assert tally.coverage(2, 10) == pytest.approx(0.3)  # {a, b, d}
    assert Tally((5,)).hit_rate(5) == 0.0
    with pytest.raises(ValueError):
        Tally((0,))


# --- baselines -----------------------------------------------------------------------------


def test_popular_keeps_the_exact_top_with_ties_by_id() -> None:
    popular = Popular(2, depth=3)
    for item in "cbaab":
        popular.update(ev("u", item, 0))
    assert popular.ranked() == ["a", "b", "c"]  # a 2, b 2, c 1
    for item in "ddd":
        popular.update(ev("u", item, 0))
    assert popular.ranked() == ["d", "a", "b"]
    assert popular.screen("anyone") == ["d", "a"]


def test_popular_matches_a_full_sort_on_a_random_stream() -> None:
    import random

    rng = random.Random(7)  # noqa: S311 - a reproducible test stream
    popular = Popular(5, depth=5)
    counts: dict[str, int] = {}
    for _ in range(2000):
        item = f"i{int(rng.paretovariate(1.2)) % 40}"
        counts[item] = counts.get(item, 0) + 1
        popular.update(ev("u", item, 0))
        assert popular.ranked() == sorted(counts, key=lambda i: (-counts[i], i))[:5]


def test_recent_shows_own_items_first_then_popular() -> None:
    recent = Recent(3)
    for user, item in [("u", "a"), ("v", "z"), ("v", "z"), ("u", "b"), ("u", "a")]:
        recent.update(ev(user, item, 0))
    assert recent.screen("u") == ["a", "b", "z"]
    assert recent.screen("new") == ["a", "z", "b"]  # a 2, z 2 (ties by id), b 1


def test_cooccurrence_counts_sessions_not_events() -> None:
    events = [
        Interaction("u", "a", 1, session="s1"),
        Interaction("u", "b", 2, session="s1"),
        Interaction("u", "a", 3, session="s1"),
        Interaction("u", "a", 4, session="s2"),
        Interaction("u", "b", 5, session="s2"),
        Interaction("v", "c", 6),  # no session: the user
        Interaction("v", "a", 7),
    ]
    table = cooccurrence(events, keep=5)
    assert table["a"] == [("b", 2.0), ("c", 1.0)]
    assert table["c"] == [("a", 1.0)]
    assert cooccurrence(events, keep=1)["a"] == [("b", 2.0)]


def test_item_to_item_never_learns_after_training() -> None:
    model = ItemToItem(TRAIN, 2)
    before = model.screen("u1")
    for n in range(50):
        model.update(ev("x", "c", 100 + n))
        model.update(ev("x", "b", 200 + n))
    assert model.screen("u1") == before == ["a", "b"]


def test_make_baseline_names() -> None:
    assert make_baseline("recent", TRAIN, 3).name == "recent"
    with pytest.raises(ValueError):
        make_baseline("vstan", TRAIN, 3)


# --- the protocol, by hand on TINY ---------------------------------------------------------


def test_popular_on_the_tiny_log() -> None:
    # Before e6 counts are a 2, b 2, c 1: screen [a, b]. e6 u1→a: rank 1. e7: u4's first, not
    # scored. e8 u4→a: a 3, b 3 → [a, b]: rank 1. e9 u2→b: a 4, b 3: rank 2. e10 u2→b: a 4,
    # b 4 → [a, b]: rank 2.
    r = run_baseline(Popular(2), TINY, KS)
    assert r.scored == 4
    assert r.hit_rate == {1: 0.5, 2: 1.0}
    assert r.mrr == {1: 0.5, 2: pytest.approx((1 + 1 + 0.5 + 0.5) / 4)}
    assert r.coverage == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3)}
    assert r.repeats == 1  # e10
    assert r.hit_rate_fresh == {1: pytest.approx(2 / 3), 2: 1.0}
    assert r.events == 10 and r.catalogue == 3


def test_recent_on_the_tiny_log() -> None:
    # e6 u1: [b, a] → a rank 2. e8 u4: [b] + popular (a 3, b 3, c 1) → [b, a]: rank 2.
    # e9 u2: [c, a] → b missed. e10 u2: [b, c] → rank 1.
    r = run_baseline(Recent(2), TINY, KS)
    assert r.scored == 4
    assert r.hit_rate == {1: 0.25, 2: 0.75}
    assert r.mrr == {1: 0.25, 2: pytest.approx((0.5 + 0.5 + 0 + 1) / 4)}
    assert r.coverage == {1: pytest.approx(2 / 3), 2: 1.0}  # shown first {b, c}; all


def test_item_to_item_on_the_tiny_log() -> None:
    # Sessions u1 {a, b}, u2 {a, c}, u3 {b}: a-b 1, a-c 1. e6 u1 [b, a]: a 1 (from b), b and c
    # 0.5 (from a, decayed) → [a, b]: rank 1. e8 u4 [b]: a 1, padded → [a, b]: rank 1.
    # e9 u2 [c, a]: a 1, b 0.5, c 0.5 → [a, b]: rank 2. e10 u2 [b, c, a]: a 1.5, b and c 0.25
    # → [a, b]: rank 2.
    r = run_baseline(ItemToItem(TRAIN, 2), TINY, KS)
    assert r.hit_rate == {1: 0.5, 2: 1.0}
    assert r.mrr[2] == pytest.approx(0.75)


def test_prequential_scores_only_users_seen_before() -> None:
    judge = Prequential((1,))
    judge.warm(ev("u", "a", 1))
    assert judge.will_score("u") and not judge.will_score("v")
    judge.score(ev("v", "a", 2), ["a"])  # v's first event: not scored
    judge.score(ev("u", "a", 3), ["a"])  # a repeat of u's previous item, shown first
    judge.score(ev("v", "b", 4), ["a"])
    assert judge.tally.scored == 2 and judge.tally.hit_rate(1) == 0.5
    assert judge.repeats == 1 and judge.fresh.scored == 1 and judge.fresh.hit_rate(1) == 0.0


def test_micro_batches_never_repeat_a_user_and_keep_order() -> None:
    users = "abacbbcda"
    events = [ev(u, "i", n) for n, u in enumerate(users)]
    runs = list(micro_batches(events, 3))
    assert ["".join(e.user for e in run) for run in runs] == ["ab", "acb", "bcd", "a"]
    assert [e for run in runs for e in run] == events
    assert ["".join(e.user for e in r) for r in micro_batches(events, 1)] == list(users)
    assert list(micro_batches([], 4)) == []
    with pytest.raises(ValueError):
        list(micro_batches(events, 0))


# --- progress, report, command line --------------------------------------------------------


def test_progress_redraws_at_most_every_interval() -> None:
    now = [0.0]
    out = io.StringIO()
    bar = Progress(100, "engine", stream=out, enabled=True, clock=lambda: now[0])
    bar.advance(10)  # within the interval: nothing drawn
    assert out.getvalue() == ""
    now[0] = 1.0
    bar.advance(40)
    assert out.getvalue().startswith("\r") and "50/100" in out.getvalue()
    assert "50 ev/s" in out.getvalue() and "ETA 0:01" in out.getvalue()
    now[0] = 2.0
    bar.advance(50)
    bar.close()
    assert out.getvalue().endswith("\n") and "100/100" in out.getvalue()
    quiet = io.StringIO()
    off = Progress(10, "x", stream=quiet, enabled=False)
    off.advance(10)
    off.close()
    assert quiet.getvalue() == ""


def test_report_table_and_json() -> None:
    results = [run_baseline(Popular(2), TINY, KS), run_baseline(Recent(2), TINY, KS)]
    table = markdown_table(results).splitlines()
    assert table[0].startswith("| algorithm | HR@1 | HR@2 | MRR@1 | MRR@2 | coverage@2 | scored")
    assert table[2].startswith("| popular | 0.5000 | 1.0000 | 0.5000 | 0.7500 | 0.6667 | 4 | —")
    assert len(table) == 4
    assert "| popular | 1 (25.0%) | 0.6667 |" in repeats_table(results)
    doc = json.loads(to_json(TINY, results, "pushrec eval …"))
    assert doc["results"][1]["hit_rate"] == {"1": 0.25, "2": 0.75}
    assert doc["train_events"] == 5 and doc["command"] == "pushrec eval …"
    other = run_baseline(Popular(3), TINY, (3,))
    with pytest.raises(ValueError):
        markdown_table([results[0], other])


def test_eval_command_line_options() -> None:
    args = _parser().parse_args(
        ["eval", "--dataset", "rees46", "--data", "x.csv", "--k", "20,10", "--split", "0.7"]
    )
    assert args.k == (10, 20) and args.algorithms == ("engine", "popular", "recent", "item2item")
    assert command_line(args) == (
        "pushrec eval --dataset rees46 --data x.csv --k 10,20 "
        "--algorithms engine,popular,recent,item2item --split 0.7"
    )
    ablation = Settings().replace(session_weight=0.0)
    assert command_line(args, ablation).startswith("PUSHREC_SESSION_WEIGHT=0.0 pushrec eval ")
    assert command_line(args, Settings()).startswith("pushrec eval ")
    for bad in (["--k", "0"], ["--k", "x"], ["--algorithms", "engine,vstan"]):
        with pytest.raises(SystemExit):
            _parser().parse_args(["eval", "--dataset", "csv", "--data", "x", *bad])


def test_dataset_catalogue_keeps_a_known_category() -> None:
    data = Dataset(
        "d",
        (Interaction("u", "a", 1, category="c"), Interaction("u", "a", 2)),
        (),
    )
    assert data.catalogue() == {"a": "c"}
