"""Lua scripts called by SHA inside pipelines, without redis-py's per-pipeline check.

redis-py's pipelined ``Script`` asks ``SCRIPT EXISTS`` before every pipeline: one more round
trip per batch (measured: 2.5 instead of 2 round trips per event). Here the script is loaded
once, called with ``EVALSHA``, and loaded again only when Redis answers ``NOSCRIPT`` (it was
restarted or flushed) — then only the entries that failed are sent again. A pipeline whose
scripts are all missing has executed none of them, so nothing runs twice.

On Redis Cluster (:mod:`sessions.cluster`) the same calls go through the cluster client's
pipeline: each ``EVALSHA`` is routed to the master owning its first key's slot, the calls of one
node travel in one round trip and the nodes are asked in parallel. Every call's keys must share
one slot: a call that names keys of several slots raises :class:`~sessions.exceptions.CrossSlot`
before anything is sent (on a single Redis too, only when ``strict_slots``), so a slot mistake
fails loudly in the tests instead of as a CROSSSLOT error in production. ``NOSCRIPT`` from a
node (a fresh replica just promoted, a restarted master) loads the script on the masters owning
the failed calls' slots only, and those calls are sent again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError

from sessions import rawpipe
from sessions.cluster import check_one_slot, is_cluster

Call = tuple[Sequence[str], Sequence[Any]]  # (keys, args)

#: How many times calls answered NOSCRIPT are loaded and sent again (a failover between the
#: load and the call can lose the script once more).
_RELOADS = 2


class PipelinedScript:
    """One Lua script, run for many (keys, args) in one pipelined round trip."""

    def __init__(self, redis: Redis, source: str, *, name: str | None = None) -> None:
        self._redis = redis
        #: The script's text (loaded again when Redis answers NOSCRIPT).
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        #: What errors call it (default: the start of its SHA).
        self.name = name or f"script {self.sha[:8]}"

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """Each call's reply (or its error, in place); connection errors raise for all."""
        return await run_scripts(self._redis, [(self, keys, args) for keys, args in calls])


async def run_scripts(
    redis: Redis,
    calls: Sequence[tuple[PipelinedScript, Sequence[str], Sequence[Any]]],
    *,
    strict_slots: bool = False,
    commands: Sequence[Sequence[Any]] = (),
) -> list[Any]:
    """Calls of several scripts in one pipelined round trip, in order (see
    :meth:`PipelinedScript.run_many`); a script Redis lost is loaded and its calls sent again.

    ``commands``: plain one-key commands (``("ZADD", key, …)``) sent first in the same round
    trip, for writes that need no script's atomicity (a script call has a fixed cost several
    times a plain command's); their replies (or errors, in place) come first.

    Raises :class:`~sessions.exceptions.CrossSlot`, having sent nothing, when a call's keys span
    several hash slots on a cluster (or anywhere with ``strict_slots``)."""
    cluster = is_cluster(redis)
    if cluster or strict_slots:
        for script, keys, _ in calls:
            check_one_slot(keys, script.name)
    replies = await _execute(redis, calls, commands)
    plain, replies = replies[: len(commands)], replies[len(commands) :]
    for _ in range(_RELOADS):
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if not missing:
            break
        await _load(redis, [calls[i] for i in missing], cluster)
        again = await _execute(redis, [calls[i] for i in missing])
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
    return [*plain, *replies]


async def _load(
    redis: Redis,
    calls: Sequence[tuple[PipelinedScript, Sequence[str], Sequence[Any]]],
    cluster: bool,
) -> None:
    """Load each script of ``calls``: on a cluster, on the masters owning their keys' slots
    (all masters for a keyless call); a master that is down must not stop the others."""
    if not cluster:
        for script in {c[0].sha: c[0] for c in calls}.values():
            await redis.script_load(script.source)
        return
    client = cast(RedisCluster, redis)  # what is_cluster() found
    wanted: dict[tuple[str, str], tuple[PipelinedScript, ClusterNode]] = {}
    for script, keys, _ in calls:
        if not keys:
            await client.script_load(script.source)  # keyless: any master may run it
            continue
        node = client.get_node_from_key(keys[0])
        if node is None:  # the slot has no master right now: the retry's MOVED will tell
            continue
        wanted[(script.sha, node.name)] = (script, node)
    for script, node in wanted.values():
        await client.execute_command("SCRIPT LOAD", script.source, target_nodes=node)


async def _execute(
    redis: Redis,
    calls: Sequence[tuple[PipelinedScript, Sequence[str], Sequence[Any]]],
    commands: Sequence[Sequence[Any]] = (),
) -> list[Any]:
    # Raw replies under one deadline per round trip (sessions/rawpipe.py): redis-py's pipeline
    # spent more Python per call than the event path's scripts cost Redis.
    return await rawpipe.execute(
        redis,
        [
            *(tuple(command) for command in commands),
            *(("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls),
        ],
    )
