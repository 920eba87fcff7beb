"""The kernel side of a push socket's flow control: a fixed send buffer.

A push connection's backlog is bounded in user space (the transport's high-water mark pauses the
session, which then conflates and, behind for ``send_timeout_s``, closes with 4001). That only
works if writes stop draining when the client stops reading. With Linux's autotuning the kernel
send buffer grows to ``net.ipv4.tcp_wmem`` max (4 MiB here; on loopback a socket starts near
that): every write is taken, nothing ever pauses, and a never-reading socket holds MiBs of kernel
memory and costs a write per update forever. A fixed ``SO_SNDBUF`` caps what the kernel queues
per socket (Linux doubles the value for its bookkeeping) and hands the backlog back to the
transport, where the session sees it.

The cap must not slow a reading client: it bounds bytes in flight to about twice the value per
round trip (32 KiB → ~640 KB/s at 100 ms), far above a feed's frames (diffs of hundreds of bytes,
snapshots of a few KB).
"""

from __future__ import annotations

import asyncio
import socket
import struct

import structlog

log = structlog.get_logger(__name__)


def bound_send_buffer(transport: asyncio.BaseTransport, size: int) -> bool:
    """Fix the kernel send buffer of ``transport``'s socket to ``size`` bytes (no autotuning).

    ``size`` 0 leaves the kernel's default. Returns False when it could not be set (no socket,
    e.g. a test transport, or the option refused): the connection works on, unbounded as before.
    """
    if size <= 0:
        return False
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except OSError as exc:
        log.warning("sndbuf_not_set", error=type(exc).__name__)
        return False
    return True


def reset(transport: asyncio.Transport) -> None:
    """Cut the connection off now: a TCP reset that drops what the kernel still queues.

    ``transport.abort()`` alone closes the descriptor, but Linux then keeps the socket as an
    orphan that goes on offering its unsent bytes to a peer that does not read (zero-window
    probes, minutes). ``SO_LINGER`` on with a zero timeout makes the close a reset that frees
    the queue at once.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError as exc:
            log.warning("linger_not_set", error=type(exc).__name__)
    transport.abort()
