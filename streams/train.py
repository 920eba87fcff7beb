"""The offline model hook: item neighbours computed from a log, loaded into Redis atomically.

``pushrec train`` (``push/train_cli.py``) and ``pushrec eval --train-model`` call the two halves:

- :func:`compute_neighbours` — session co-occurrence, sequence-aware. Each session (the
  interaction's ``session``, else its user) is reduced to its items in time order with immediate
  repeats collapsed. Every ordered pair ``a … b`` at most ``window`` positions apart counts once
  per session, by its closest occurrence: ``forward_w / distance`` towards the item that came
  *after* (``a → b``), ``backward_w / distance`` the other way. The sum over sessions is then
  divided by ``support(b) ** popularity_exponent`` (support = the sessions holding ``b``), a
  cosine-like damping of items that co-occur with everything, and each item keeps its best
  ``neighbours``, best first, ties by id.
- :func:`load_model` — writes the neighbours under a new version (``pr:{i:<item>}:nbm:<version>``
  zsets, :func:`~sessions.keys.model_neighbours_key`, in the item's slot; pipelined in chunks),
  then points ``pr:model`` field ``nb`` at it in one script, then removes the previous version's
  keys (SCAN by pattern, UNLINK one key at a time) :data:`RETIRE_GRACE_S` later. Readers read
  the pointer first and then the lists of the version it names (each list in its item's slot:
  no script can read them with the pointer), so a version is complete before the pointer names
  it, and its lists stay for a grace period after the pointer moved on, longer than a reader
  keeps the pointer: no reader sees a version whose keys are incomplete or being deleted.

Keys: ``pr:model`` (:data:`~sessions.keys.MODEL_KEY`, hash: ``nb`` = current version,
``nb_items``, ``nb_edges``, ``nb_loaded_ms``, and one field ``v:<version>`` = load start (ms)
per version written and not yet removed: one key, so the pointer's scripts touch one slot),
``pr:{i:<item>}:nbm:<version>`` (zset neighbour → score). Model keys carry no TTL (a model must
not decay key by key); cleanup is explicit: each load removes the version it replaced and any
version that never became current and started more than ``stale_s`` ago (a crashed load).
:func:`unload_model` removes the pointer and every version.
"""

from __future__ import annotations

import asyncio
import heapq
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

from redis.asyncio import Redis

from sessions.keys import MODEL_KEY, model_neighbours_key
from streams.evaluation.readers import Interaction

#: How long a replaced version's lists stay after the pointer moved on (s): longer than a
#: reader keeps the pointer (the workers' item cache holds it at most 1 s).
RETIRE_GRACE_S = 2.0
#: The field of :data:`MODEL_KEY` registering a version (``v:<version>`` → load start, ms).
VERSION_FIELD = "v:"
#: Neighbours kept per item by default (``pushrec train --neighbours``).
DEFAULT_NEIGHBOURS = 50
_VERSION = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

Neighbours = dict[str, list[tuple[str, float]]]

# Swap the pointer to a fully written version, in one step; refuse a version no longer
# registered (removed as stale by another loader meanwhile). Returns the previous version.
_SWAP = resources.files("streams").joinpath("lua/model_swap.lua").read_text()
# Claim a version for removal: never the current one. Returns 1 when it may be deleted.
_CLAIM = resources.files("streams").joinpath("lua/model_claim.lua").read_text()


@dataclass(frozen=True, slots=True)
class TrainTuning:
    """How :func:`compute_neighbours` weighs co-occurrences (see the module docstring)."""

    neighbours: int = DEFAULT_NEIGHBOURS
    window: int = 8
    forward_w: float = 1.0
    backward_w: float = 0.75
    popularity_exponent: float = 0.0
    #: A session's pairs weigh ``1 / len(session) ** session_exponent``.
    session_exponent: float = 0.0


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What :func:`load_model` did."""

    version: str
    items: int
    edges: int
    previous: str | None
    removed_keys: int
    seconds: float


def sessions_of(events: Iterable[Interaction]) -> list[list[str]]:
    """Each session's items in time order (ties in given order), immediate repeats collapsed."""
    grouped: dict[str, list[Interaction]] = defaultdict(list)
    for event in events:
        grouped[event.session or event.user].append(event)
    out: list[list[str]] = []
    for key in sorted(grouped):
        seq: list[str] = []
        for event in sorted(grouped[key], key=lambda e: e.ts_ms):
            if not seq or seq[-1] != event.item:
                seq.append(event.item)
        out.append(seq)
    return out


def compute_neighbours(
    events: Iterable[Interaction], tuning: TrainTuning | None = None
) -> Neighbours:
    """Each item's best ``tuning.neighbours`` neighbours with their scores, best first, ties by
    id; items without any neighbour are absent. Deterministic for a given log."""
    t = tuning or TrainTuning()
    if t.neighbours < 1 or t.window < 1:
        raise ValueError("neighbours and window must be at least 1")
    counts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    support: dict[str, int] = defaultdict(int)
    for seq in sessions_of(events):
        for item in set(seq):
            support[item] += 1
        best: dict[tuple[str, str], float] = {}
        for i, a in enumerate(seq):
            for d in range(1, min(t.window, len(seq) - 1 - i) + 1):
                b = seq[i + d]
                if a == b:
                    continue
                for pair, w in (((a, b), t.forward_w / d), ((b, a), t.backward_w / d)):
                    if w > best.get(pair, 0.0):
                        best[pair] = w
        scale = 1.0 / len(seq) ** t.session_exponent if seq else 1.0
        for (a, b), w in best.items():
            counts[a][b] += w * scale
    out: Neighbours = {}
    damp = {item: n**t.popularity_exponent for item, n in support.items()}
    for item, row in counts.items():
        scored = ((b, c / damp[b]) for b, c in row.items() if c > 0)
        top = heapq.nsmallest(t.neighbours, scored, key=lambda s: (-s[1], s[0]))
        if top:
            out[item] = top
    return out


def new_version(now_ms: int | None = None) -> str:
    """A fresh version name: the UTC load time and a random suffix (sortable, unique)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime((now_ms or _now_ms()) / 1000))
    return f"{stamp}-{secrets.token_hex(3)}"


def neighbour_key(version: str, item: str) -> str:
    """The zset holding ``item``'s neighbours in model ``version`` (in the item's slot)."""
    return model_neighbours_key(version, item)


async def versions(redis: Redis) -> dict[str, int]:
    """Every version written and not yet removed, with its load start (ms)."""
    fields = await redis.hgetall(MODEL_KEY)
    out: dict[str, int] = {}
    for name, value in fields.items():
        text = name.decode() if isinstance(name, bytes) else str(name)
        if text.startswith(VERSION_FIELD):
            out[text[len(VERSION_FIELD) :]] = int(value)
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)


async def current_version(redis: Redis) -> str | None:
    """The version the event script reads now, or None when no model is loaded."""
    value = await redis.hget(MODEL_KEY, "nb")
    return value.decode() if isinstance(value, bytes) else value


async def load_model(
    redis: Redis,
    neighbours: Mapping[str, Sequence[tuple[str, float]]],
    *,
    version: str | None = None,
    chunk: int = 500,
    stale_s: float = 3600.0,
    grace_s: float = RETIRE_GRACE_S,
) -> LoadReport:
    """Write ``neighbours`` as a new version, make it current in one step, then, ``grace_s``
    later, remove the version it replaced (and stale unfinished ones). See the module
    docstring."""
    started = time.perf_counter()
    version = version or new_version()
    if not _VERSION.match(version):
        raise ValueError("a model version is 1-64 characters among A-Z a-z 0-9 _ . -")
    await redis.hsetnx(MODEL_KEY, VERSION_FIELD + version, _now_ms())
    items = [item for item in sorted(neighbours) if neighbours[item]]
    edges = 0
    for start in range(0, len(items), chunk):
        pipe = redis.pipeline(transaction=False)
        for item in items[start : start + chunk]:
            key = neighbour_key(version, item)
            row = neighbours[item]
            pipe.delete(key)  # a retried version starts clean
            pipe.zadd(key, dict(row))
            edges += len(row)
        await pipe.execute()
    previous = await redis.eval(_SWAP, 1, MODEL_KEY, version, len(items), edges, _now_ms())
    old = previous.decode() if isinstance(previous, bytes) else previous
    removed = 0
    if old and old != version:
        # Readers holding the old pointer (a worker's cache, a read in flight) finish first.
        await asyncio.sleep(grace_s)
        removed += await remove_version(redis, old)
    removed += await remove_stale(redis, stale_s, keep=version)
    return LoadReport(version, len(items), edges, old, removed, time.perf_counter() - started)


async def remove_version(redis: Redis, version: str, *, batch: int = 1000) -> int:
    """Delete every key of ``version`` unless it is current; returns the keys deleted."""
    if not _VERSION.match(version):
        raise ValueError(f"not a model version: {version!r}")
    if not await redis.eval(_CLAIM, 1, MODEL_KEY, version):
        return 0
    removed = 0
    pending: list[bytes] = []
    # Each item's list is in its own slot: found by pattern (the version holds no glob special,
    # item ids are encoded), removed one key per command, pipelined.
    pattern = model_neighbours_key(version, "*").replace("{i:%2A}", "{i:*}")
    async for key in redis.scan_iter(match=pattern, count=batch):
        pending.append(key)
        if len(pending) >= batch:
            removed += await _unlink_each(redis, pending)
            pending = []
    if pending:
        removed += await _unlink_each(redis, pending)
    return removed


async def _unlink_each(redis: Redis, keys: Sequence[bytes]) -> int:
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        # Not pipe.unlink(): on redis-py's cluster pipeline that name is the pipeline's own
        # coroutine (never a queued UNLINK), so nothing would be deleted on a cluster.
        pipe.execute_command("UNLINK", key)
    return sum(int(n) for n in await pipe.execute())


async def remove_stale(redis: Redis, stale_s: float, *, keep: str | None = None) -> int:
    """Remove the versions (never the current one, nor ``keep``) registered more than
    ``stale_s`` seconds ago: loads that crashed or were superseded before their cleanup."""
    cutoff = _now_ms() - stale_s * 1000
    removed = 0
    for name, started in sorted((await versions(redis)).items()):
        if started <= cutoff and name != keep:
            removed += await remove_version(redis, name)
    return removed


async def unload_model(redis: Redis) -> int:
    """No model any more: drop the pointer, then every version's keys; returns keys deleted."""
    await redis.hdel(MODEL_KEY, "nb", "nb_items", "nb_edges", "nb_loaded_ms")
    removed = 0
    for name in sorted(await versions(redis)):
        removed += await remove_version(redis, name)
    return removed


def describe(neighbours: Mapping[str, Sequence[tuple[str, float]]]) -> tuple[int, int]:
    """(items with neighbours, edges) of a computed model."""
    rows = [row for row in neighbours.values() if row]
    return len(rows), sum(len(row) for row in rows)
