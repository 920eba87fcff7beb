"""The HTTP server: uvicorn, with pushrec's WebSocket protocol and an orderly shutdown.

On SIGTERM uvicorn stops accepting, asks each of its connections to finish, and waits for them.
Push connections never finish by themselves, so :class:`PushServer` first closes every one of
them with the "reconnect" code (4000; SSE streams get their ``close`` event), then lets uvicorn
do the rest. The runtime (consumers, Redis) stops after that, in the app's lifespan.
"""

from __future__ import annotations

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
        """Close push connections with 4000, then shut down as uvicorn does."""
        await self._runtime.connections.shutdown(
            CloseCode.SHUTDOWN, "server shutting down; reconnect"
        )
        await super().shutdown(sockets)
