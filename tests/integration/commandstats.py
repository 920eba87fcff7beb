"""Redis commands counted on a real server (``INFO commandstats``): the cost tests' measure.

Counts, not times: a test takes :func:`calls` before and after the code under test and asserts on
the :func:`delta`. The server must be private to the module (commandstats counts every client).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis


async def calls(r: Redis) -> dict[str, int]:
    """Calls so far per command (INFO commandstats)."""
    stats: dict[str, Any] = await r.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The commands whose count moved between two :func:`calls`, and by how much."""
    return {c: n - before.get(c, 0) for c, n in after.items() if n != before.get(c, 0)}
