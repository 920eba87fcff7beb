"""Lua scripts called by SHA inside pipelines, without redis-py's per-pipeline check.

redis-py's pipelined ``Script`` asks ``SCRIPT EXISTS`` before every pipeline: one more round
trip per batch (measured: 2.5 instead of 2 round trips per event). Here the script is loaded
once, called with ``EVALSHA``, and loaded again only when Redis answers ``NOSCRIPT`` (it was
restarted or flushed) — then only the entries that failed are sent again. A pipeline whose
scripts are all missing has executed none of them, so nothing runs twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

Call = tuple[Sequence[str], Sequence[Any]]  # (keys, args)


class PipelinedScript:
    """One Lua script, run for many (keys, args) in one pipelined round trip."""

    def __init__(self, redis: Redis, source: str) -> None:
        self._redis = redis
        self._source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """Each call's reply (or its error, in place); connection errors raise for all."""
        replies = await self._execute(calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            await self._redis.script_load(self._source)
            again = await self._execute([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _execute(self, calls: Sequence[Call]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(self.sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies
