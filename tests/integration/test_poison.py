"""Poison records on the Kafka path — real broker, real Redis, real pushrec processes.

Each poison record must be dead-lettered with its reason, leave stored state untouched, and the
partition must keep moving: a normal event produced after it, on the same partition, is applied.
A consumer loop that keeps failing must fail ``/healthz``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import httpx
import msgpack
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from sessions.keys import trend_bucket, trend_key, trend_meta_key
from streams.events import MAX_PROPS_DEPTH, Event
from streams.profile import ProfileStore, ProfileTuning, ScoringTuning, user_keys
from tests.integration.conftest import redis_client
from tests.integration.harness import SCALE, Server, metric, new_id
from tests.integration.kafka_cluster import Cluster, cluster

YEAR_2100 = 4_102_444_800_000
#: (key, value, headers): produced in this order to one partition.
Raw = tuple[bytes | None, bytes, Sequence[tuple[str, bytes]]]


async def _until(predicate: Any, within_s: float = 20.0) -> None:
    """Poll state held in other processes (there is no event to await across them)."""
    async with asyncio.timeout(within_s * SCALE):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def _produce(c: Cluster, records: Sequence[Raw], partition: int = 0) -> None:
    """Produce ``records`` to one partition of the cluster's topic, as an outside producer
    would (big records allowed: the broker's own limit is what counts)."""
    producer = AIOKafkaProducer(bootstrap_servers=c.bootstrap, max_request_size=2_000_000)
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(
                c.topic, value=value, key=key, headers=list(headers), partition=partition
            )
    finally:
        await producer.stop()


async def _dead_letters(c: Cluster, count: int) -> list[Any]:
    """The first ``count`` records of the cluster's dead-letter topic."""
    consumer = AIOKafkaConsumer(
        f"{c.topic}.dlq",
        bootstrap_servers=c.bootstrap,
        auto_offset_reset="earliest",
        fetch_max_bytes=4_000_000,
        max_partition_fetch_bytes=4_000_000,
    )
    await consumer.start()
    try:
        got: list[Any] = []
        async with asyncio.timeout(30 * SCALE):
            while len(got) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend(records)
        return got
    finally:
        await consumer.stop()


def _recent(c: Cluster, user: str) -> list[str]:
    members = c.redis().zrevrange(user_keys(user)[1], 0, -1)
    return [m.decode() if isinstance(m, bytes) else str(m) for m in members]


def _view(user: str, item: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": new_id("e"), "user_id": user, "type": "view", "item_id": item, **fields}


def _headers(record: Any) -> dict[str, str]:
    return {name: value.decode() for name, value in record.headers}


def _json(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def test_deeply_nested_props_are_dead_lettered_and_the_partition_moves_on() -> None:
    with cluster() as c:
        node = c.start("a")
        node.load_catalog()
        user = new_id("u")
        props: dict[str, Any] = {}
        for _ in range(999):
            props = {"a": props}
        poison = msgpack.packb(_view(user, "books-1", props=props, ts=int(time.time() * 1000)))
        assert len(poison) < 4096  # 3 KB
        good = _view(user, "books-2")
        asyncio.run(
            _produce(
                c,
                [
                    (user.encode(), poison, [("content-type", b"application/msgpack")]),
                    (user.encode(), _json(good), []),
                ],
            )
        )
        asyncio.run(_until(lambda: _recent(c, user) == ["books-2"]))
        [letter] = asyncio.run(_dead_letters(c, 1))
        assert _headers(letter)["x-pushrec-reason"] == "bad_props"
        assert letter.value == poison
        assert httpx.get(f"{node.http}/healthz").status_code == 200


def test_a_record_too_large_to_copy_is_dead_lettered_truncated() -> None:
    with cluster() as c:
        node = c.start("a")
        node.load_catalog()
        user = new_id("u")
        huge = b"{" + b"x" * 1_048_499  # the broker takes it; with the DLQ headers it is too big
        good = _view(user, "shoes-2")
        asyncio.run(_produce(c, [(user.encode(), huge, []), (user.encode(), _json(good), [])]))
        asyncio.run(_until(lambda: _recent(c, user) == ["shoes-2"], within_s=30.0))
        [letter] = asyncio.run(_dead_letters(c, 1))
        headers = _headers(letter)
        assert headers["x-pushrec-reason"] == "too_large"
        assert headers["x-pushrec-size"] == str(len(huge))
        assert headers["x-pushrec-truncated"] == "1"
        assert headers["x-pushrec-topic"] == c.topic
        assert headers["x-pushrec-partition"] == "0"
        assert headers["x-pushrec-offset"] == "0"
        assert 0 < len(letter.value) < len(huge)
        assert huge.startswith(letter.value)
        assert letter.key == user.encode()


def test_a_far_future_event_is_dead_lettered_and_trending_is_untouched() -> None:
    with cluster() as c:
        node = c.start("a")
        node.load_catalog()
        user, other = new_id("u"), new_id("u")
        asyncio.run(_produce(c, [(other.encode(), _json(_view(other, "phones-1")), [])]))
        asyncio.run(_until(lambda: _recent(c, other) == ["phones-1"]))
        store = c.redis()
        meta = trend_meta_key(trend_bucket("phones-1"))
        # Trending is written by the item-side round trip, after the user lane's.
        asyncio.run(_until(lambda: store.hget(meta, "t0") is not None))
        t0 = store.hget(meta, "t0")
        trend = store.zscore(trend_key(trend_bucket("phones-1")), "phones-1")
        assert t0 is not None and trend is not None and trend > 0
        future = _view(user, "phones-2", ts=YEAR_2100)
        good = _view(user, "phones-3")
        asyncio.run(
            _produce(c, [(user.encode(), _json(future), []), (user.encode(), _json(good), [])])
        )
        asyncio.run(_until(lambda: _recent(c, user) == ["phones-3"]))
        [letter] = asyncio.run(_dead_letters(c, 1))
        assert _headers(letter)["x-pushrec-reason"] == "bad_ts"
        assert store.hget(meta, "t0") == t0
        assert store.zscore(trend_key(trend_bucket("phones-1")), "phones-1") == trend
        assert store.zscore(trend_key(trend_bucket("phones-2")), "phones-2") is None


def test_one_event_cannot_move_the_decay_origins_past_now() -> None:
    """Whatever gets past validation (a replay, a skewed clock), the script itself bounds how
    far one event moves the decay origins: never beyond Redis's own clock."""
    with cluster() as c:

        async def scenario() -> None:
            r = redis_client(c.redis_url)
            try:
                store = ProfileStore(r, ProfileTuning(), ScoringTuning())
                now = int(time.time() * 1000)
                await store.apply(Event("e1", "u1", "view", "i1", now), ["cat"])
                before = float(await r.zscore(trend_key(trend_bucket("i1")), "i1") or 0)
                assert before > 0
                await store.apply(Event("e2", "u2", "view", "i2", YEAR_2100), ["cat"])
                seconds, micros = await r.time()
                redis_now = seconds * 1000 + micros // 1000
                t0 = int(await r.hget(trend_meta_key(trend_bucket("i2")), "t0") or 0)
                a0 = int(await r.hget(user_keys("u2")[5], "a0") or 0)
                assert now <= t0 <= redis_now
                assert 0 < a0 <= redis_now
                # Trending kept its meaning: the old item still counts, the new one counts once.
                assert float(await r.zscore(trend_key(trend_bucket("i1")), "i1") or 0) > 0
                i2 = float(await r.zscore(trend_key(trend_bucket("i2")), "i2") or 0)
                assert i2 <= 2 * before
            finally:
                await r.aclose()

        asyncio.run(scenario())


def test_records_not_keyed_by_their_user_are_dead_lettered() -> None:
    with cluster() as c:
        node = c.start("a")
        node.load_catalog()
        user, victim = new_id("u"), new_id("u")
        no_key = _view(victim, "books-3")
        wrong_key = _view(victim, "books-4")
        good = _view(user, "books-5")
        asyncio.run(
            _produce(
                c,
                [
                    (None, _json(no_key), []),
                    (user.encode(), _json(wrong_key), []),
                    (user.encode(), _json(good), []),
                ],
            )
        )
        asyncio.run(_until(lambda: _recent(c, user) == ["books-5"]))
        letters = asyncio.run(_dead_letters(c, 2))
        reasons = {json.loads(r.value)["item_id"]: _headers(r)["x-pushrec-reason"] for r in letters}
        assert reasons == {"books-3": "no_key", "books-4": "key_mismatch"}
        assert _recent(c, victim) == []
        assert c.redis().exists(user_keys(victim)[0]) == 0

        async def counted() -> float:
            return await metric(node, "pushrec_dead_letters_total", reason="key_mismatch")

        assert asyncio.run(counted()) == 1


async def _set_dlq_limit(c: Cluster, max_bytes: int | None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=c.bootstrap)
    await admin.start()
    try:
        configs = {"max.message.bytes": str(max_bytes)} if max_bytes else {}
        if max_bytes is None:  # back to the broker's default
            configs = {"max.message.bytes": "1048588"}
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, f"{c.topic}.dlq", configs=configs)]
        )
    finally:
        await admin.close()


def test_a_consumer_loop_that_keeps_failing_fails_healthz_and_recovers() -> None:
    """A dead-letter topic that refuses every letter (a real broker-side limit) means the bad
    record can neither be dead-lettered nor skipped: the loop fails, restarts, fails again.
    Liveness must say so; once the topic takes letters again, all is well."""
    with cluster() as c:
        asyncio.run(_set_dlq_limit(c, 100))
        node = c.start("a")
        node.load_catalog()
        user = new_id("u")
        good = _view(user, "shoes-3")
        asyncio.run(
            _produce(c, [(user.encode(), b"{not json", []), (user.encode(), _json(good), [])])
        )

        async def healthz() -> int:
            async with httpx.AsyncClient(base_url=node.http) as client:
                return (await client.get("/healthz")).status_code

        async def until_health(status: int) -> None:
            async with asyncio.timeout(60 * SCALE):
                while await healthz() != status:  # noqa: ASYNC110 - another process
                    await asyncio.sleep(0.2)

        asyncio.run(until_health(503))
        assert _recent(c, user) == []
        restarts = asyncio.run(metric(node, "pushrec_kafka_consumer_restarts_total"))
        assert restarts >= 3
        asyncio.run(_set_dlq_limit(c, None))
        asyncio.run(_until(lambda: _recent(c, user) == ["shoes-3"], within_s=60.0))
        asyncio.run(until_health(200))
        [letter] = asyncio.run(_dead_letters(c, 1))
        assert _headers(letter)["x-pushrec-reason"] == "undecodable"


def test_the_collector_refuses_props_nested_beyond_the_bound(server: Server) -> None:
    """The same props bounds on the HTTP path: refused with bad_props, the rest accepted."""
    user = new_id("u")
    props: dict[str, Any] = {"leaf": 1}
    for _ in range(MAX_PROPS_DEPTH):
        props = {"a": props}
    events = [_view(user, "books-6", props=props), _view(user, "books-7")]

    async def post() -> httpx.Response:
        return await server.post(events)

    r = asyncio.run(post())
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 1
    assert [(x["index"], x["reason"]) for x in body["rejected"]] == [(0, "bad_props")]
