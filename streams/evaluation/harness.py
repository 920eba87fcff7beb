"""The prequential replay: the same protocol for the engine and for every baseline.

Protocol (docs/relevance.md): the training part is replayed first, unscored (warm-up); then,
for each event of the test part in order, the list on that user's screen *before* the event
is scored against the event's item, and only then is the event applied. A user's screen is what
the algorithm showed after that user's previous event (in either part); a user's first event has
no screen and is not scored. Every algorithm sees the same events in the same order and is
scored by the same :class:`~streams.evaluation.metrics.Tally`.

The engine handles batches: the test part goes through it in *micro-batches* in which each user
appears at most once (:func:`micro_batches`), so every screen read before a micro-batch is the
feed after that user's previous event. The warm-up uses large batches: per-user order holds in
any batch, and nothing is scored there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from streams.evaluation.baselines import Screener
from streams.evaluation.engine import Engine
from streams.evaluation.metrics import Tally, percentile
from streams.evaluation.progress import Progress
from streams.evaluation.readers import Dataset, Interaction

#: Makes the progress bar of one algorithm's run: (label, total events) → Progress.
ProgressFactory = Callable[[str, int], Progress]


@dataclass(frozen=True, slots=True)
class Result:
    """One algorithm's figures on one dataset."""

    algorithm: str
    dataset: str
    ks: tuple[int, ...]
    scored: int
    hit_rate: dict[int, float]
    mrr: dict[int, float]
    coverage: dict[int, float]
    catalogue: int
    #: Events replayed (warm-up + test) and the wall time of each part, in seconds.
    events: int
    warmup_seconds: float
    test_seconds: float
    #: Per-event recompute latency over the test part, in ms (engine only).
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    #: Events the engine reported as failed (should be 0).
    failed: int = 0
    #: Scored events whose item is the one the user touched just before (a repeat), and HR@K /
    #: MRR@K over the other scored events only.
    repeats: int = 0
    hit_rate_fresh: dict[int, float] | None = None
    mrr_fresh: dict[int, float] | None = None
    #: Micro-batches the test part went through (engine only).
    test_batches: int | None = None

    @property
    def seconds(self) -> float:
        """Wall time of the whole replay."""
        return self.warmup_seconds + self.test_seconds

    @property
    def events_per_s(self) -> float:
        """Replay throughput over warm-up and test together."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (K values as string keys)."""
        return {
            "algorithm": self.algorithm,
            "dataset": self.dataset,
            "ks": list(self.ks),
            "scored": self.scored,
            "hit_rate": {str(k): v for k, v in self.hit_rate.items()},
            "mrr": {str(k): v for k, v in self.mrr.items()},
            "coverage": {str(k): v for k, v in self.coverage.items()},
            "catalogue": self.catalogue,
            "events": self.events,
            "seconds": self.seconds,
            "warmup_seconds": self.warmup_seconds,
            "test_seconds": self.test_seconds,
            "events_per_s": self.events_per_s,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p99_ms": self.latency_p99_ms,
            "failed": self.failed,
            "repeats": self.repeats,
            "hit_rate_fresh": _keyed(self.hit_rate_fresh),
            "mrr_fresh": _keyed(self.mrr_fresh),
            "test_batches": self.test_batches,
        }


def _keyed(values: dict[int, float] | None) -> dict[str, float] | None:
    return None if values is None else {str(k): v for k, v in values.items()}


class Prequential:
    """Decides which events are scored and tallies them: the protocol's one source of truth.

    ``tally`` holds every scored event; ``fresh`` only those whose item differs from the item
    the user touched just before (``repeats`` counts the others).
    """

    def __init__(self, ks: Sequence[int]) -> None:
        self.tally = Tally(tuple(ks))
        self.fresh = Tally(tuple(ks))
        self.repeats = 0
        self._last: dict[str, str] = {}

    def will_score(self, user: str) -> bool:
        """Whether ``user``'s next event is scored (the user had an earlier event)."""
        return user in self._last

    def warm(self, event: Interaction) -> None:
        """Note a warm-up event (never scored)."""
        self._last[event.user] = event.item

    def score(self, event: Interaction, screen: Sequence[str]) -> None:
        """Score ``screen`` (the user's list before ``event``) against ``event``'s item when the
        user had an earlier event; then note the event."""
        last = self._last.get(event.user)
        if last is not None:
            self.tally.add(screen, event.item)
            if last == event.item:
                self.repeats += 1
            else:
                self.fresh.add(screen, event.item)
        self._last[event.user] = event.item


def micro_batches(events: Sequence[Interaction], limit: int) -> Iterator[Sequence[Interaction]]:
    """Consecutive runs of ``events``, at most ``limit`` long, cut before a user would repeat.

    Concatenated they give ``events`` back in order; no run holds two events of one user.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    start = 0
    users: set[str] = set()
    for i, event in enumerate(events):
        if event.user in users or i - start >= limit:
            yield events[start:i]
            start, users = i, set()
        users.add(event.user)
    if start < len(events):
        yield events[start:]


def _result(
    name: str,
    dataset: Dataset,
    judge: Prequential,
    warmup_s: float,
    test_s: float,
    **extra: Any,
) -> Result:
    tally, fresh = judge.tally, judge.fresh
    size = len(dataset.catalogue())
    return Result(
        algorithm=name,
        dataset=dataset.name,
        ks=tally.ks,
        scored=tally.scored,
        hit_rate={k: tally.hit_rate(k) for k in tally.ks},
        mrr={k: tally.mrr(k) for k in tally.ks},
        coverage={k: tally.coverage(k, size) for k in tally.ks},
        catalogue=size,
        events=len(dataset.train) + len(dataset.test),
        warmup_seconds=warmup_s,
        test_seconds=test_s,
        repeats=judge.repeats,
        hit_rate_fresh={k: fresh.hit_rate(k) for k in fresh.ks},
        mrr_fresh={k: fresh.mrr(k) for k in fresh.ks},
        **extra,
    )


def run_baseline(
    screener: Screener, dataset: Dataset, ks: Sequence[int], progress: Progress | None = None
) -> Result:
    """Replay ``dataset`` through ``screener``: warm up on train, score test event by event."""
    judge = Prequential(ks)
    started = time.perf_counter()
    for n, event in enumerate(dataset.train, 1):
        screener.update(event)
        judge.warm(event)
        if progress is not None and n % 256 == 0:
            progress.advance(256)
    if progress is not None:
        progress.advance(len(dataset.train) % 256)
    warmed = time.perf_counter()
    for event in dataset.test:
        screen = screener.screen(event.user) if judge.will_score(event.user) else []
        judge.score(event, screen)
        screener.update(event)
        if progress is not None:
            progress.advance()
    done = time.perf_counter()
    if progress is not None:
        progress.close()
    return _result(screener.name, dataset, judge, warmed - started, done - warmed)


async def run_engine(
    engine: Engine,
    dataset: Dataset,
    ks: Sequence[int],
    *,
    batch: int = 256,
    warmup_batch: int = 1000,
    progress: Progress | None = None,
) -> Result:
    """Replay ``dataset`` through the real pipeline (``engine``, on an empty Redis).

    Loads the catalogue (every training item, in stock), warms up in batches of
    ``warmup_batch``, then scores the test part in micro-batches of at most ``batch`` events
    (each user at most once per micro-batch): screens are read before each micro-batch, then it
    is applied. Latency percentiles are over the test part's events.
    """
    if engine.size < max(ks):
        raise ValueError(f"the engine shows {engine.size} items; K goes up to {max(ks)}")
    judge = Prequential(ks)
    started = time.perf_counter()
    await engine.load_catalogue(dataset.catalogue())
    train = dataset.train
    for start in range(0, len(train), warmup_batch):
        chunk = train[start : start + warmup_batch]
        await engine.apply(chunk, timed=False)
        for event in chunk:
            judge.warm(event)
        if progress is not None:
            progress.advance(len(chunk))
    warmed = time.perf_counter()
    batches = 0
    for run in micro_batches(dataset.test, batch):
        batches += 1
        for event in run:
            judge.score(event, engine.screen(event.user))
        await engine.apply(run, timed=True)
        if progress is not None:
            progress.advance(len(run))
    done = time.perf_counter()
    if progress is not None:
        progress.close()
    latencies = engine.latencies
    return _result(
        "engine",
        dataset,
        judge,
        warmed - started,
        done - warmed,
        latency_p50_ms=percentile(latencies, 50) * 1000 if latencies else None,
        latency_p99_ms=percentile(latencies, 99) * 1000 if latencies else None,
        failed=engine.outcomes["failed"],
        test_batches=batches,
    )
