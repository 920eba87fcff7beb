"""The HTTP server: uvicorn, with pushrec's WebSocket protocol and an orderly shutdown.

On SIGTERM uvicorn stops accepting, asks each of its connections to finish, and waits for them.
Push connections never finish by themselves, so :class:`PushServer` first:

1. turns readiness false (``/readyz`` answers 503 with ``accepting: false``) and keeps serving
   for ``PUSHREC_DRAIN_DELAY_S`` (default 0), so a load balancer stops routing new clients here;
2. closes every push connection with the "reconnect" code (4000; SSE streams get their
   ``close`` event), spread evenly over ``PUSHREC_SHUTDOWN_WINDOW_S`` (default 5 s), so the
   clients of a node — and of a fleet rolling node by node — do not reconnect in one instant
   (the SDK adds its own jittered backoff on top);

then lets uvicorn do the rest (at most 10 s more). The runtime stops after that, in the app's
lifespan: consumers finish and commit the poll in flight and leave the consumer group, then
Redis. A pod's grace period must cover drain delay + window + 10 s.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn

from push.protocol import CloseCode
from push.runtime import Runtime


class PushServer(uvicorn.Server):
    """uvicorn's server, closing push connections before waiting for the rest."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self._runtime = runtime

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Drain, close push connections with 4000 over the window, then shut down as uvicorn
        does (see the module docstring)."""
        runtime = self._runtime
        runtime.draining = True
        if runtime.settings.drain_delay_s > 0:
            await asyncio.sleep(runtime.settings.drain_delay_s)
        await runtime.connections.shutdown(
            CloseCode.SHUTDOWN,
            "server shutting down; reconnect",
            window_s=runtime.settings.shutdown_window_s,
        )
        await super().shutdown(sockets)
