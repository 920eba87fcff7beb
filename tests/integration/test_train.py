"""Integration tests of the offline model hook on a real Redis: streams/train.py's atomic load,
the event script's model source (streams/lua/event.lua) and ``pushrec train`` end to end.

Redis: database 5 of ``PUSHREC_TEST_REDIS_URL``, else a private embedded server; each test
starts from an empty database.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from redis.asyncio import Redis

from sessions.keys import MODEL_KEY
from streams.events import Event
from streams.itemcache import ItemCache
from streams.profile import ProfileStore, ProfileTuning, Scored, ScoringTuning
from streams.train import (
    current_version,
    load_model,
    neighbour_key,
    unload_model,
    versions,
)
from tests.integration.conftest import ROOT, cluster_env, redis_client, redis_database, run

NOW = 1_767_225_600_000
#: Only the classic sources and the model: no session kNN, no repeat slot, no decay in a test.
SCORING = ScoringTuning(session_w=0.0, repeat_w=0.0, category_w=0.0, global_w=0.0, model_w=1.0)
EXACT = ProfileTuning(affinity_halflife_ms=10**22, trending_halflife_ms=10**22)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_database(5) as url:
        yield url


def model(items: int, per_item: int, tag: str = "") -> dict[str, list[tuple[str, float]]]:
    return {
        f"i{n}": [(f"{tag}n{n}-{k}", float(per_item - k)) for k in range(per_item)]
        for n in range(items)
    }


async def keys_of(redis: Redis, version: str) -> list[bytes]:
    return [k async for k in redis.scan_iter(match=f"pr:{{i:*}}:nbm:{version}", count=1000)]


def test_load_writes_the_version_then_points_at_it(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        assert await current_version(redis) is None
        report = await load_model(redis, {"a": [("b", 2.0), ("c", 1.0)], "b": [("a", 2.0)]})
        assert (report.items, report.edges, report.previous) == (2, 3, None)
        assert await current_version(redis) == report.version
        meta = await redis.hgetall(MODEL_KEY)
        assert meta[b"nb_items"] == b"2" and meta[b"nb_edges"] == b"3"
        assert await redis.zrevrange(
            neighbour_key(report.version, "a"), 0, -1, withscores=True
        ) == [(b"b", 2.0), (b"c", 1.0)]
        assert await redis.ttl(neighbour_key(report.version, "a")) == -1  # no key-by-key decay
        assert list(await versions(redis)) == [report.version]

    run(redis_url, body)


def test_reload_swaps_and_removes_the_previous_version(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        first = await load_model(redis, model(300, 5, "old"), chunk=64)
        second = await load_model(redis, model(200, 3, "new"), chunk=64)
        assert second.previous == first.version and second.removed_keys == 300
        assert await current_version(redis) == second.version
        assert await keys_of(redis, first.version) == []
        assert len(await keys_of(redis, second.version)) == 200
        assert list(await versions(redis)) == [second.version]
        # The same version loaded again replaces its own keys and removes nothing.
        again = await load_model(redis, {"i0": [("x", 1.0)]}, version=second.version)
        assert again.previous == second.version and again.removed_keys == 0
        assert await redis.zrange(neighbour_key(second.version, "i0"), 0, -1) == [b"x"]

    run(redis_url, body)


def test_a_reader_never_sees_a_version_with_incomplete_keys(redis_url: str) -> None:
    # The reader does what the workers do: the pointer, then the lists of the version it names
    # (each in its item's slot), pipelined.
    items = 1500

    async def body(redis: Redis) -> None:
        seen: dict[str, set[int]] = {}
        done = asyncio.Event()

        async def reader() -> None:
            client = redis_client(redis_url)
            try:
                while not done.is_set():
                    version = await current_version(client)
                    if version:
                        pipe = client.pipeline(transaction=False)
                        for i in range(items):
                            pipe.exists(neighbour_key(version, f"i{i}"))
                        present = sum(await pipe.execute())
                        seen.setdefault(version, set()).add(int(present))
                    await asyncio.sleep(0)
            finally:
                await client.aclose()

        task = asyncio.create_task(reader())
        reports = []
        for tag in ("a", "b", "c"):
            reports.append(await load_model(redis, model(items, 4, tag), chunk=50, grace_s=0.5))
            await asyncio.sleep(0.01)
        done.set()
        await task
        assert set(seen) <= {r.version for r in reports} and reports[-1].version in seen
        assert all(counts == {items} for counts in seen.values()), seen
        assert [r.removed_keys for r in reports] == [0, items, items]

    run(redis_url, body)


def test_a_crashed_load_is_removed_once_stale_and_never_the_current_model(
    redis_url: str,
) -> None:
    async def body(redis: Redis) -> None:
        live = await load_model(redis, model(10, 2))
        # A load that died half way, long ago: registered, some keys, never current.
        await redis.hset(MODEL_KEY, "v:crashed-1", NOW - 86_400_000)
        await redis.zadd(neighbour_key("crashed-1", "i0"), {"x": 1.0})
        # A load in progress right now (another loader): must be left alone.
        await redis.hset(MODEL_KEY, "v:running-2", 10**13)
        await redis.zadd(neighbour_key("running-2", "i0"), {"y": 1.0})
        report = await load_model(redis, model(10, 2, "n"))
        assert report.removed_keys == 10 + 1
        assert await keys_of(redis, "crashed-1") == [] and await keys_of(redis, live.version) == []
        assert len(await keys_of(redis, "running-2")) == 1
        assert await current_version(redis) == report.version
        assert await unload_model(redis) == 10 + 1
        assert await current_version(redis) is None
        assert [k async for k in redis.scan_iter(match="pr:{i:*}:nbm:*")] == []
        assert await versions(redis) == {}

    run(redis_url, body)


def view(user: str, item: str, n: int) -> Event:
    return Event(f"{user}-{n}", user, "view", item, NOW + n * 1000)


async def candidates(store: ProfileStore, event: Event) -> Scored:
    status, view_ = await store.apply(event, [])
    assert status == "ok" and view_ is not None
    return view_.candidates


def test_the_event_script_adds_the_models_neighbours_of_the_latest_items(redis_url: str) -> None:
    async def body(redis: Redis) -> None:
        # The model is loaded behind the stores' backs: read it fresh (no cache staleness).
        store = ProfileStore(redis, EXACT, SCORING, cache=ItemCache(redis, max_age_s=0))
        off = ProfileStore(
            redis, EXACT, replace(SCORING, model_w=0.0), cache=ItemCache(redis, max_age_s=0)
        )
        # No model: nothing about X is known yet, so no candidates at all.
        assert await candidates(store, view("u1", "X", 1)) == []
        await load_model(redis, {"X": [("A", 4.0), ("B", 2.0)], "W": [("C", 1.0)]})
        # X's offline neighbours, normalised by X's best (A), weighted model_w = 1.
        assert await candidates(store, view("u2", "X", 2)) == [("A", 1.0), ("B", 0.5)]
        # model_w = 0: the pointer is not even read.
        assert await candidates(off, view("u3", "X", 3)) == []
        # Older items count recency_decay less; the real-time co-visitation adds to it.
        got = dict(await candidates(store, view("u2", "W", 4)))
        decay = SCORING.recency_decay
        assert got["C"] == pytest.approx(1.0)  # W's model neighbour, W being the latest
        assert got["A"] == pytest.approx(decay * 1.0)
        assert got["B"] == pytest.approx(decay * 0.5)
        assert got["X"] == pytest.approx(1.0)  # co-visitation W-X (u2 saw X, then W)
        await unload_model(redis)
        got = dict(await candidates(store, view("u2", "W", 5)))
        assert set(got) == {"X"}

    run(redis_url, body)


def test_without_a_model_the_scores_are_those_of_model_w_zero(redis_url: str) -> None:
    default = ScoringTuning()
    stream = [view(f"u{n % 7}", f"i{(n * 5) % 13}", n) for n in range(120)]

    async def replay(redis: Redis, scoring: ScoringTuning) -> list[Scored]:
        await redis.flushdb()
        store = ProfileStore(redis, ProfileTuning(), scoring)
        return [await candidates(store, e) for e in stream]

    async def body(redis: Redis) -> None:
        with_hook = await replay(redis, default)
        without = await replay(redis, replace(default, model_w=0.0))
        assert with_hook == without

    run(redis_url, body)


def _pushrec(*args: str, url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PUSHREC_REDIS_URL"}
    if url is not None:
        env["PUSHREC_REDIS_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "push.cli", *args],
        cwd=ROOT,
        env={**env, **cluster_env(url), "PUSHREC_LOG_LEVEL": "warning"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pushrec_train_end_to_end(redis_url: str, tmp_path: Path) -> None:
    data = tmp_path / "log.csv"
    rows = ["user,item,ts"] + [f"s{n // 4},i{n % 6},{n}" for n in range(40)]
    data.write_text("\n".join(rows) + "\n")
    run(redis_url, lambda redis: asyncio.sleep(0))  # an empty database
    args = ("train", "--dataset", "csv", "--data", str(data), "--neighbours", "2")
    assert _pushrec(*args, url=None).returncode == 2
    first = _pushrec(*args, url=redis_url)
    assert first.returncode == 0, first.stderr
    assert "loaded: 6 items, 12 edges" in first.stdout
    second = _pushrec(*args, url=redis_url)
    assert second.returncode == 0 and "replaced" in second.stdout
    assert "(6 old keys removed)" in second.stdout

    async def check(redis: Redis) -> None:
        version = await current_version(redis)
        assert version is not None and version in second.stdout
        assert len(await keys_of(redis, version)) == 6

    async def main() -> None:
        client = redis_client(redis_url)
        try:
            await check(client)
        finally:
            await client.aclose()

    asyncio.run(main())


def test_pushrec_eval_trains_the_model_on_the_warm_up_part(tmp_path: Path) -> None:
    data = tmp_path / "log.csv"
    rows = ["user,item,ts"] + [f"s{n // 4},i{n % 6},{n}" for n in range(40)]
    data.write_text("\n".join(rows) + "\n")
    done = _pushrec(
        "eval", "--dataset", "csv", "--data", str(data), "--algorithms", "engine",
        "--k", "1,2", "--train-model", url=None,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "loaded: 6 items" in done.stderr and "trained on 32 warm-up events" in done.stderr
