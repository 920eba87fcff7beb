"""``pushrec eval``: the relevance harness (``streams/evaluation``) from the command line.

This module is the glue ``streams`` may not hold: it reads the options, starts the embedded
Redis (or connects to ``--redis-url`` / ``PUSHREC_REDIS_URL``), hands the client to the harness,
and prints the markdown table on stdout (progress and the summary go to stderr). An external
Redis must hold no keys (the replay writes profiles, neighbours, trending and a catalog into
it) unless ``--flush`` allows emptying its database first.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from pathlib import Path

from redis.asyncio import Redis

from push.config import Settings
from push.exceptions import ConfigError, PushError
from push.logs import configure_logging
from push.redis_client import connect
from push.redis_server import EmbeddedRedis
from push.runtime import engine_tunings
from push.train_cli import loaded_line
from sessions.cluster import dbsize
from streams.evaluation.baselines import BASELINES, make_baseline
from streams.evaluation.engine import Engine
from streams.evaluation.harness import Result, run_baseline, run_engine
from streams.evaluation.progress import Progress
from streams.evaluation.readers import (
    DEFAULT_SPLIT,
    FORMATS,
    REES46_USER_KEYS,
    Dataset,
    load_dataset,
)
from streams.evaluation.report import markdown_table, repeats_table, summary, to_json
from streams.profile import CONTEXT_FEEDS
from streams.train import compute_neighbours, load_model

ALGORITHMS = ("engine", *BASELINES)


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError("K values are comma-separated integers") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError("K values must be positive integers")
    return ks


def _algorithms(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(a.strip() for a in text.split(",") if a.strip()))
    unknown = [a for a in names if a not in ALGORITHMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"algorithms are among {','.join(ALGORITHMS)}")
    return names


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``eval`` subcommand on ``sub``."""
    ev = sub.add_parser(
        "eval",
        help="replay an interaction log and score the engine and baselines (docs/relevance.md)",
    )
    ev.add_argument("--dataset", required=True, choices=FORMATS, help="log format")
    ev.add_argument(
        "--data",
        required=True,
        type=Path,
        help="the log file, or a YOOCHOOSE directory with *_train_full.txt and *_test.txt",
    )
    ev.add_argument(
        "--feed",
        default="home",
        choices=("home", *CONTEXT_FEEDS),
        help="feed to evaluate: home, or a context feed (similar: neighbours of the item looked"
        " at; cart: complements of the cart)",
    )
    ev.add_argument("--k", type=_ks, default=(10, 20), help="cut-offs, e.g. 10,20 (default)")
    ev.add_argument(
        "--split",
        type=float,
        help=f"single-file logs: share of events (in time order) to warm up on "
        f"(default {DEFAULT_SPLIT})",
    )
    ev.add_argument(
        "--user",
        default="user_id",
        choices=REES46_USER_KEYS,
        help="rees46: the column that stands for the user (default user_id)",
    )
    ev.add_argument(
        "--algorithms",
        type=_algorithms,
        default=ALGORITHMS,
        help=f"rows to run (default {','.join(ALGORITHMS)})",
    )
    ev.add_argument(
        "--batch", type=int, default=256, help="engine: largest scored micro-batch (default 256)"
    )
    ev.add_argument(
        "--warmup-batch", type=int, default=1000, help="engine: warm-up batch (default 1000)"
    )
    ev.add_argument(
        "--train-model",
        action="store_true",
        help="engine: train the offline neighbour model (pushrec train) on the warm-up part "
        "and load it before the replay",
    )
    ev.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    ev.add_argument("--redis-url", help="an external, empty Redis instead of an embedded one")
    ev.add_argument("--flush", action="store_true", help="empty the external Redis's database")
    ev.add_argument(
        "--progress", action="store_true", help="draw the progress bar even when not on a TTY"
    )


#: Settings that change the engine's results, as environment variables.
_ENGINE_ENV = {
    "session_weight": "PUSHREC_SESSION_WEIGHT",
    "repeat_weight": "PUSHREC_REPEAT_WEIGHT",
    "model_weight": "PUSHREC_MODEL_WEIGHT",
    "item_cache_s": "PUSHREC_ITEM_CACHE_S",
}


def command_line(args: argparse.Namespace, settings: Settings | None = None) -> str:
    """The ``pushrec eval`` command equivalent to ``args`` (every option spelled out), preceded
    by the engine settings of ``settings`` that differ from their defaults."""
    defaults = Settings()
    env = [
        f"{var}={getattr(settings, name)}"
        for name, var in _ENGINE_ENV.items()
        if settings is not None and getattr(settings, name) != getattr(defaults, name)
    ]
    parts = [
        *env,
        "pushrec",
        "eval",
        "--dataset",
        args.dataset,
        "--data",
        str(args.data),
        "--k",
        ",".join(map(str, args.k)),
        "--algorithms",
        ",".join(args.algorithms),
    ]
    if args.split is not None:
        parts += ["--split", str(args.split)]
    if args.dataset == "rees46" and args.user != "user_id":
        parts += ["--user", args.user]
    if args.batch != 256:
        parts += ["--batch", str(args.batch)]
    if getattr(args, "train_model", False):
        parts.append("--train-model")
    return shlex.join(parts)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``pushrec eval``; returns the exit code."""
    err = sys.stderr
    try:
        settings.validate()
    except ConfigError as exc:
        print(f"pushrec: {exc}", file=err)
        return 2
    configure_logging(settings.log_level, settings.log_format, settings.log_level_libs)
    if args.batch < 1 or args.warmup_batch < 1:
        print("pushrec: --batch and --warmup-batch must be positive", file=err)
        return 2
    try:
        dataset = load_dataset(args.dataset, args.data, split=args.split, user_key=args.user)
    except (OSError, ValueError) as exc:
        print(f"pushrec: {exc}", file=err)
        return 2
    print(summary(dataset), file=err)
    show = args.progress or err.isatty()
    size = max(args.k)
    results: list[Result] = []
    for name in args.algorithms:
        total = len(dataset.train) + len(dataset.test)
        bar = Progress(total, name, stream=err, enabled=show)
        if name == "engine":
            try:
                results.append(_run_engine(settings, args, dataset, bar))
            except _NotEmpty as exc:
                print(f"pushrec: {exc}", file=err)
                return 2
        else:
            screener = make_baseline(name, dataset.train, size)
            results.append(run_baseline(screener, dataset, args.k, bar))
    print(markdown_table(results))
    print()
    print(repeats_table(results))
    for r in results:
        if r.failed:
            print(f"pushrec: {r.failed} events failed in the engine (see the log)", file=err)
        print(
            f"{r.algorithm}: {r.events:,} events in {r.seconds:.1f} s "
            f"(warm-up {r.warmup_seconds:.1f} s, test {r.test_seconds:.1f} s), "
            f"{r.events_per_s:,.0f} events/s",
            file=err,
        )
    if args.json is not None:
        engine = {name: getattr(settings, name) for name in _ENGINE_ENV} | {
            "feed_size": size,
            "train_model": bool(args.train_model),
        }
        doc = to_json(dataset, results, command_line(args, settings), engine=engine)
        args.json.write_text(doc + "\n", encoding="utf-8")
    return 1 if any(r.failed for r in results) else 0


class _NotEmpty(PushError):
    """The external Redis holds data and ``--flush`` was not given."""


def _run_engine(
    settings: Settings, args: argparse.Namespace, dataset: Dataset, bar: Progress
) -> Result:
    url = args.redis_url or settings.redis_url
    embedded = EmbeddedRedis().start() if url is None else None
    try:
        target = embedded.url if embedded else str(url)
        return asyncio.run(_engine(settings, target, args, dataset, bar))
    finally:
        if embedded is not None:
            embedded.stop()


def _engine_for(settings: Settings, redis: Redis, *, size: int, feed: str) -> Engine:
    """The engine with the tunings a node built from ``settings`` uses, showing ``size`` items."""
    profile, scoring, feed_tuning = engine_tunings(settings, size=size)
    return Engine(
        redis,
        size=size,
        feed=feed,
        history_len=settings.history_len,
        profile=profile,
        scoring=scoring,
        recommender=feed_tuning,
        item_cache_s=settings.item_cache_s,
        trend_buckets=settings.trend_buckets,
    )


async def _engine(
    settings: Settings, url: str, args: argparse.Namespace, dataset: Dataset, bar: Progress
) -> Result:
    redis = connect(url, cluster=settings.redis_cluster)
    try:
        if await dbsize(redis):  # every master's, on a cluster
            if not args.flush:
                raise _NotEmpty(
                    "the Redis database is not empty; the replay needs an empty one "
                    "(--flush empties it)"
                )
            await redis.flushdb()
        if args.train_model:
            # The nightly model, as a node would have it: trained on the warm-up part only
            # and loaded (new version, then swap) before any event is replayed.
            started = time.perf_counter()
            model = compute_neighbours(dataset.train)
            report = await load_model(redis, model)
            print(
                f"{loaded_line(report)}; trained on {len(dataset.train):,} warm-up events "
                f"in {time.perf_counter() - started:.1f} s",
                file=sys.stderr,
            )
        engine = _engine_for(settings, redis, size=max(args.k), feed=args.feed)
        return await run_engine(
            engine,
            dataset,
            args.k,
            batch=args.batch,
            warmup_batch=args.warmup_batch,
            progress=bar,
        )
    finally:
        await redis.aclose()
