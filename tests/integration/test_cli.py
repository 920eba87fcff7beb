"""The ``pushrec`` command line against a running server, and the embedded Redis's data dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.integration.conftest import ADMIN_KEY, ROOT, SECRET, start_server, stop_server
from tests.integration.harness import Server, new_id


def pushrec(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "push.cli", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_token_command_mints_a_token_the_server_accepts(server: Server) -> None:
    user = new_id("cli")
    done = pushrec("token", user, PUSHREC_SECRET=SECRET)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    r = httpx.get(
        f"{server.http}/v1/users/{user}/feeds/home", headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200 and r.json()["user"] == user


def test_token_command_explains_a_missing_secret() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PUSHREC_SECRET"}
    done = subprocess.run(
        [sys.executable, "-m", "push.cli", "token", "x"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "PUSHREC_SECRET" in done.stderr


def test_catalog_load_upserts_through_the_api(server: Server, tmp_path: Path) -> None:
    category = new_id("cat")
    items = [
        {"item_id": f"{category}-{n}", "title": f"T{n}", "category": category} for n in range(3)
    ]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    done = pushrec("catalog", "load", str(path), "--url", server.http, PUSHREC_ADMIN_KEY=ADMIN_KEY)
    assert done.returncode == 0, done.stderr
    assert "upserted 3 items" in done.stdout
    listed = httpx.get(f"{server.http}/v1/items", params={"category": category}).json()
    assert [i["item_id"] for i in listed["items"]] == [i["item_id"] for i in items]


def test_catalog_load_reports_a_bad_item_and_stores_nothing(server: Server, tmp_path: Path) -> None:
    category = new_id("cat")
    path = tmp_path / "items.jsonl"
    path.write_text(
        json.dumps({"item_id": f"{category}-1", "category": category})
        + "\n"
        + json.dumps({"item_id": f"{category}-2", "category": category, "price": "free"})
        + "\n"
    )
    done = pushrec("catalog", "load", str(path), "--url", server.http, PUSHREC_ADMIN_KEY=ADMIN_KEY)
    assert done.returncode == 1 and "HTTP 400" in done.stderr and "price" in done.stderr
    assert httpx.get(f"{server.http}/v1/items", params={"category": category}).json()["total"] == 0


def test_probes_and_metrics(server: Server) -> None:
    assert httpx.get(f"{server.http}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.http}/readyz").json()
    assert ready == {
        "ready": True,
        "checks": {"accepting": True, "consumer": True, "redis": True},
    }
    text = httpx.get(f"{server.http}/metrics").text
    for family in (
        "pushrec_collector_accepted_total",
        "pushrec_events_processed_total",
        "pushrec_recompute_seconds_bucket",
        "pushrec_connections",
        "pushrec_bus_backlog",
    ):
        assert family in text


def test_embedded_redis_keeps_data_in_data_dir(tmp_path: Path) -> None:
    env = {"PUSHREC_DATA_DIR": str(tmp_path / "data")}
    proc, srv = start_server(env, embedded=True)
    try:
        srv.load_catalog()
    finally:
        # uvicorn shuts down gracefully on SIGTERM, then re-raises it: -15 is a clean exit.
        assert stop_server(proc) in (0, -15)
    proc, srv = start_server(env, embedded=True)
    try:
        listed = httpx.get(f"{srv.http}/v1/items", params={"category": "books"}).json()
        assert listed["total"] == 10
    finally:
        stop_server(proc)
    assert any((tmp_path / "data").iterdir())
