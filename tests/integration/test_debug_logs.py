"""With ``PUSHREC_LOG_LEVEL=debug`` the logs still hold no personal data (issue 12, defect 8:
aiokafka logged every produced record, user ids and search queries included).

A real server on real Kafka and Redis, at debug level: a visitor connects (WebSocket with
``?token=``), posts events (one a search) with the header and as a beacon, gets a feed pushed,
disconnects. Then the whole server log is searched for the user id, the query and the token.
Our own debug lines are there (the level took effect); the libraries' are not, unless asked for
with ``PUSHREC_LOG_LEVEL_LIBS``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from push.config import Settings
from push.exceptions import ConfigError
from tests.integration.conftest import ROOT, start_server, stop_server
from tests.integration.harness import Server, api, new_id, processed_events, settle, ws_client
from tests.integration.kafka_cluster import Cluster, cluster


def _log(server: Server) -> Path:
    """The server's stdout and stderr (see conftest.start_server)."""
    return ROOT / ".pytest_cache" / f"server-{server.address.rsplit(':', 1)[1]}.log"


def _session(c: Cluster, extra: dict[str, str]) -> tuple[str, str, str, str]:
    """Run one visitor's session on a debug-level node; (log text, user, query, token)."""
    proc, node = start_server({**c.env, "PUSHREC_LOG_LEVEL": "debug", **extra})
    user = f"private-user-{uuid.uuid4().hex[:10]}"
    query = f"private-query-{uuid.uuid4().hex[:10]}"
    token = node.token(user)
    try:
        node.load_catalog()

        async def scenario() -> None:
            async with api(node) as client:
                before = await processed_events(node, client)
                async with ws_client(node, user) as tab:
                    held = len(tab.frames)
                    events = [
                        {"event_id": new_id("e"), "type": "view", "item_id": "phones-1"},
                        {"event_id": new_id("e"), "type": "view", "item_id": "phones-2"},
                        {"event_id": new_id("e"), "type": "search", "props": {"query": query}},
                    ]
                    r = await client.post(
                        "/v1/events",
                        json=events[:2],
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    assert r.status_code == 202, r.text
                    r = await client.post(
                        "/v1/events", params={"token": token}, content=json.dumps(events[2:])
                    )
                    assert r.status_code == 202, r.text
                    await settle(node, before, 3, client)
                    await tab.wait(lambda s: len(s.frames) > held, 15)

        asyncio.run(scenario())
    finally:
        stop_server(proc)
    return _log(node).read_text(errors="replace"), user, query, token


def test_debug_logs_hold_no_user_id_query_or_token() -> None:
    with cluster() as c:
        text, user, query, token = _session(c, {})
    for secret in (user, query, token):
        assert secret not in text, f"{secret[:20]}… is in the debug log"
    assert '"level": "debug"' in text  # our own debug lines: the level took effect
    # Library records are "LEVEL logger message" lines (push/logs.py): none at debug.
    assert [line for line in text.splitlines() if line.startswith("DEBUG ")] == []


def test_library_debug_logs_come_only_when_asked_for() -> None:
    with cluster() as c:
        text, *_ = _session(c, {"PUSHREC_LOG_LEVEL_LIBS": "debug"})
    assert "DEBUG aiokafka" in text


def test_an_unknown_library_level_is_refused() -> None:
    with pytest.raises(ConfigError, match="PUSHREC_LOG_LEVEL_LIBS"):
        Settings.from_env({"PUSHREC_LOG_LEVEL_LIBS": "loud"})
    assert Settings.from_env({"PUSHREC_LOG_LEVEL_LIBS": "DEBUG"}).log_level_libs == "DEBUG"
