"""Graceful shutdown of a web node (push/server.py): on SIGTERM readiness turns false first, the
node keeps serving through its drain delay, then closes every push connection with 4000 spread
over the configured window, and exits cleanly."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from tests.integration.conftest import ROOT, start_server
from tests.integration.harness import SCALE, new_id

SOCKETS = 10
WINDOW_S = 2.0
DRAIN_S = 0.6


def test_sigterm_drains_then_spreads_the_reconnect_closes_over_the_window() -> None:
    proc, srv = start_server(
        {
            "PUSHREC_SHUTDOWN_WINDOW_S": str(WINDOW_S),
            "PUSHREC_DRAIN_DELAY_S": str(DRAIN_S),
            "PUSHREC_LOG_LEVEL": "info",  # to see the runtime stop in the log
        },
        embedded=True,
    )
    log_path = ROOT / ".pytest_cache" / f"server-{srv.address.rsplit(':', 1)[1]}.log"

    async def scenario() -> None:
        sockets = []
        for _ in range(SOCKETS):
            ws = await ws_connect(f"ws://{srv.address}/v1/ws?token={srv.token(new_id('g'))}")
            await ws.recv()  # hello
            sockets.append(ws)

        async def closed_at(ws: object) -> tuple[float, int | None, str | None]:
            assert hasattr(ws, "recv")
            try:
                async with asyncio.timeout(30 * SCALE):
                    while True:
                        await ws.recv()
            except ConnectionClosed:
                pass
            return time.monotonic(), ws.close_code, ws.close_reason  # type: ignore[attr-defined]

        waiting = [asyncio.create_task(closed_at(ws)) for ws in sockets]
        signalled = time.monotonic()
        proc.terminate()
        # Readiness turns false at once, while the node still serves (the drain delay).
        async with httpx.AsyncClient(base_url=srv.http) as client:
            async with asyncio.timeout(DRAIN_S * 0.8 * SCALE + 2):
                while True:
                    r = await client.get("/readyz")
                    if r.status_code == 503:
                        break
                    await asyncio.sleep(0.02)
        assert r.json()["checks"]["accepting"] is False
        results = await asyncio.gather(*waiting)
        times = sorted(t for t, _, _ in results)
        assert {code for _, code, _ in results} == {4000}
        assert all(reason and "reconnect" in reason for _, _, reason in results)
        assert times[0] - signalled >= DRAIN_S * 0.9  # nobody was closed during the drain
        # Spread: the i-th of n closes at about i x window / n after the drain.
        assert times[-1] - times[0] >= WINDOW_S * (SOCKETS - 1) / SOCKETS * 0.7

    try:
        asyncio.run(scenario())
        # uvicorn re-raises the signal after its graceful shutdown, so supervisors see it.
        assert proc.wait(30 * SCALE) in (0, -signal.SIGTERM)
        log = log_path.read_text()
        assert "runtime_stopped" in log and "Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
