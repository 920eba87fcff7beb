"""The relevance harness on a real Redis: slices of both real logs through the real pipeline,
screens that are the stored feeds, and ``pushrec eval`` end to end on a tiny log whose baseline
figures are computed by hand (tests/unit/test_evaluation.py explains them)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessions.feeds import FeedStore
from streams.evaluation.baselines import BASELINES, make_baseline
from streams.evaluation.engine import Engine
from streams.evaluation.harness import Prequential, Result, micro_batches, run_baseline, run_engine
from streams.evaluation.readers import Dataset, load_dataset
from tests.integration.conftest import ROOT, cluster_env, redis_client, redis_database

#: Slices of the two public logs, committed (tests/data/README.md says where they come from).
DATA = ROOT / "tests" / "data"
YOOCHOOSE = DATA / "yoochoose-slice"
REES46 = DATA / "rees46-head.csv"
KS = (10, 20)


@pytest.fixture
def redis_url() -> Iterator[str]:
    with redis_database(9) as url:
        yield url


def _yoochoose_slice(tmp_path: Path) -> Dataset:
    return load_dataset("yoochoose", YOOCHOOSE)


def _rees46_slice(tmp_path: Path) -> Dataset:
    return load_dataset("rees46", REES46)


async def _engine_result(url: str, dataset: Dataset) -> tuple[Result, dict[str, list[str]]]:
    """The engine's result, and every user's stored feed ids after the replay."""
    redis = redis_client(url)
    await redis.flushdb()
    try:
        engine = Engine(redis, size=max(KS))
        result = await run_engine(engine, dataset, KS, batch=64, warmup_batch=100)
        feeds = FeedStore(redis, ttl_s=3600, history_len=10)
        users = {e.user for e in dataset.train} | {e.user for e in dataset.test}
        stored: dict[str, list[str]] = {}
        for user in sorted(users):
            state = await feeds.read(user, "home")
            stored[user] = [] if state is None else [str(p["id"]) for p in state.items]
            assert engine.screen(user) == stored[user], user  # the screen is the stored feed
        return result, stored
    finally:
        await redis.aclose()


def _consistent(result: Result, dataset: Dataset) -> None:
    assert result.failed == 0
    assert result.scored > 0
    assert 0.0 <= result.hit_rate[10] <= result.hit_rate[20] <= 1.0
    for k in KS:
        assert 0.0 <= result.mrr[k] <= result.hit_rate[k]
        assert 0.0 < result.coverage[k] <= 1.0
    assert result.mrr[10] <= result.mrr[20]
    assert result.events == len(dataset.train) + len(dataset.test)
    assert result.latency_p50_ms is not None and result.latency_p99_ms is not None
    assert 0.0 < result.latency_p50_ms <= result.latency_p99_ms
    assert result.test_batches is not None and result.test_batches >= 1


@pytest.mark.parametrize("log", ["yoochoose", "rees46"])
def test_engine_on_a_slice_of_each_real_log(redis_url: str, tmp_path: Path, log: str) -> None:
    dataset = _yoochoose_slice(tmp_path) if log == "yoochoose" else _rees46_slice(tmp_path)
    assert 300 <= len(dataset.train) + len(dataset.test) <= 800
    if log == "rees46":
        assert dataset.skipped >= 1  # the cut-off last line
    result, stored = asyncio.run(_engine_result(redis_url, dataset))
    _consistent(result, dataset)
    assert all(len(ids) <= max(KS) for ids in stored.values())
    assert any(len(ids) == max(KS) for ids in stored.values())  # the feed is max(K) long
    catalogue = dataset.catalogue()
    assert all(i in catalogue for ids in stored.values() for i in ids)
    for name in BASELINES:  # the same protocol: the same events are scored
        baseline = run_baseline(make_baseline(name, dataset.train, max(KS)), dataset, KS)
        assert baseline.scored == result.scored
        assert baseline.repeats == result.repeats


async def _screens_follow_the_stored_feed(url: str, dataset: Dataset) -> int:
    """Replay like run_engine, checking before each micro-batch that every screen about to be
    scored is the feed stored in Redis at that moment. Returns the number of checks."""
    redis = redis_client(url)
    await redis.flushdb()
    try:
        engine = Engine(redis, size=max(KS))
        feeds = FeedStore(redis, ttl_s=3600, history_len=10)
        await engine.load_catalogue(dataset.catalogue())
        await engine.apply(dataset.train, timed=False)
        judge = Prequential(KS)
        for event in dataset.train:
            judge.warm(event)
        checks = 0
        for run in micro_batches(dataset.test, 32):
            for event in run:
                if judge.will_score(event.user):
                    state = await feeds.read(event.user, "home")
                    stored = [] if state is None else [str(p["id"]) for p in state.items]
                    assert engine.screen(event.user) == stored
                    checks += 1
                judge.score(event, engine.screen(event.user))
            await engine.apply(run, timed=True)
        # One recompute time per processor lane (a lane holds one or more events of the run).
        assert 0 < len(engine.latencies) <= len(dataset.test)
        assert sum(engine.outcomes.values()) == len(dataset.train) + len(dataset.test)
        return checks
    finally:
        await redis.aclose()


def test_each_scored_screen_is_the_feed_stored_after_the_previous_event(
    redis_url: str, tmp_path: Path
) -> None:
    dataset = _rees46_slice(tmp_path)
    assert asyncio.run(_screens_follow_the_stored_feed(redis_url, dataset)) > 10


# The tiny log of tests/unit/test_evaluation.py: five training events, then five test events.
TINY_EVENTS = ["u1 a", "u1 b", "u2 a", "u2 c", "u3 b", "u1 a", "u4 b", "u4 a", "u2 b", "u2 b"]
TINY_CSV = "user,item,ts\n" + "".join(
    f"{e.replace(' ', ',')},{n}\n" for n, e in enumerate(TINY_EVENTS, 1)
)


def _pushrec(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    """``pushrec eval ARGS``; ``url``: the ``--redis-url`` among ``args``, if any."""
    env = {k: v for k, v in os.environ.items() if k != "PUSHREC_REDIS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "push.cli", "eval", *args],
        cwd=ROOT,
        env={**env, **cluster_env(url), "PUSHREC_LOG_LEVEL": "warning"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pushrec_eval_end_to_end_on_a_tiny_log(tmp_path: Path) -> None:
    data = tmp_path / "tiny.csv"
    data.write_text(TINY_CSV)
    out = tmp_path / "out.json"
    done = _pushrec(
        "--dataset", "csv", "--data", str(data), "--split", "0.5", "--k", "1,2",
        "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("| algorithm | HR@1 | HR@2 |")
    doc = json.loads(out.read_text())
    assert doc["train_events"] == 5 and doc["test_events"] == 5
    assert doc["command"].startswith("pushrec eval --dataset csv --data ")
    rows = {r["algorithm"]: r for r in doc["results"]}
    assert list(rows) == ["engine", "popular", "recent", "item2item"]
    assert rows["popular"]["hit_rate"] == {"1": 0.5, "2": 1.0}
    assert rows["popular"]["mrr"]["2"] == pytest.approx(0.75)
    assert rows["recent"]["hit_rate"] == {"1": 0.25, "2": 0.75}
    assert rows["recent"]["mrr"]["2"] == pytest.approx(0.5)
    assert rows["item2item"]["hit_rate"] == {"1": 0.5, "2": 1.0}
    engine = rows["engine"]
    assert engine["scored"] == 4 and engine["failed"] == 0
    assert 0.0 <= engine["hit_rate"]["1"] <= engine["hit_rate"]["2"] <= 1.0
    assert 0.0 < engine["coverage"]["2"] <= 1.0
    assert engine["latency_p50_ms"] > 0


def test_pushrec_eval_refuses_a_redis_that_holds_data(redis_url: str, tmp_path: Path) -> None:
    client = redis_client(redis_url)

    async def seed() -> None:
        await client.set("someone-else", "1")
        await client.aclose()

    asyncio.run(seed())
    data = tmp_path / "tiny.csv"
    data.write_text(TINY_CSV)
    args = ("--dataset", "csv", "--data", str(data), "--split", "0.5", "--redis-url", redis_url)
    done = _pushrec(*args, "--algorithms", "engine", url=redis_url)
    assert done.returncode == 2 and "not empty" in done.stderr
    done = _pushrec(*args, "--algorithms", "engine", "--flush", url=redis_url)
    assert done.returncode == 0, done.stderr
