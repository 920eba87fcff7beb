"""``pushrec train``: compute the offline neighbour model from a log and load it into Redis.

The log is read with the harness's readers (``streams/evaluation/readers.py``). A YOOCHOOSE
directory trains on its ``*_train_full.txt`` only; a single file trains on all of it, or on its
first ``--split`` share (in time order). The model goes to the Redis of ``--redis-url`` /
``PUSHREC_REDIS_URL``, which is required: a model loaded into a throwaway embedded Redis would
serve nobody. Loading is atomic for readers (``streams/train.py``): new version, then swap.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from redis.exceptions import RedisError

from push.config import Settings
from push.redis_client import connect
from streams.evaluation.readers import (
    FORMATS,
    REES46_USER_KEYS,
    Interaction,
    in_time_order,
    load_dataset,
    read_generic,
    read_rees46,
    read_yoochoose,
    split_by_fraction,
)
from streams.train import (
    DEFAULT_NEIGHBOURS,
    LoadReport,
    TrainTuning,
    compute_neighbours,
    describe,
    load_model,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``train`` subcommand on ``sub``."""
    tr = sub.add_parser(
        "train", help="compute item neighbours from a log and load them into Redis (atomically)"
    )
    tr.add_argument("--dataset", required=True, choices=FORMATS, help="log format")
    tr.add_argument(
        "--data",
        required=True,
        type=Path,
        help="the log file, or a YOOCHOOSE directory (its *_train_full.txt is used)",
    )
    tr.add_argument(
        "--neighbours", type=int, default=DEFAULT_NEIGHBOURS, help="kept per item (default 50)"
    )
    tr.add_argument(
        "--split", type=float, help="single-file logs: train on this first share only (in time)"
    )
    tr.add_argument(
        "--user",
        default="user_id",
        choices=REES46_USER_KEYS,
        help="rees46: the column that stands for the user (default user_id)",
    )
    tr.add_argument("--redis-url", help="the Redis to load into (default PUSHREC_REDIS_URL)")


def training_events(
    kind: str, path: Path, *, split: float | None = None, user_key: str = "user_id"
) -> list[Interaction]:
    """The events a model is trained on (see the module docstring), in time order."""
    if kind == "yoochoose" and path.is_dir():
        return list(load_dataset(kind, path, split=split).train)
    if kind == "yoochoose":
        events = read_yoochoose(path)
    elif kind == "rees46":
        events = read_rees46(path, user_key=user_key)[0]
    else:
        events = read_generic(path, kind)
    if split is not None:
        return split_by_fraction(events, split)[0]
    return in_time_order(events)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``pushrec train``; returns the exit code."""
    err = sys.stderr
    url = args.redis_url or settings.redis_url
    if url is None:
        print(
            "pushrec: set PUSHREC_REDIS_URL (or --redis-url): the model is loaded into the "
            "Redis your nodes use",
            file=err,
        )
        return 2
    if args.neighbours < 1:
        print("pushrec: --neighbours must be at least 1", file=err)
        return 2
    started = time.perf_counter()
    try:
        events = training_events(args.dataset, args.data, split=args.split, user_key=args.user)
    except (OSError, ValueError) as exc:
        print(f"pushrec: {exc}", file=err)
        return 2
    read_s = time.perf_counter() - started
    model = compute_neighbours(events, TrainTuning(neighbours=args.neighbours))
    computed_s = time.perf_counter() - started - read_s
    items, edges = describe(model)
    print(
        f"pushrec: {len(events):,} events read in {read_s:.1f} s; {items:,} items, "
        f"{edges:,} edges computed in {computed_s:.1f} s",
        file=err,
    )
    try:
        report = asyncio.run(_load(str(url), model, cluster=settings.redis_cluster))
    except (OSError, RedisError) as exc:
        print(f"pushrec: cannot load into Redis: {exc}", file=err)
        return 1
    print(loaded_line(report))
    return 0


def loaded_line(report: LoadReport) -> str:
    """The one-line summary of a load."""
    replaced = f", replaced {report.previous}" if report.previous else ""
    return (
        f"pushrec: model {report.version} loaded: {report.items:,} items, "
        f"{report.edges:,} edges in {report.seconds:.1f} s{replaced} "
        f"({report.removed_keys:,} old keys removed)"
    )


async def _load(
    url: str, model: dict[str, list[tuple[str, float]]], *, cluster: bool
) -> LoadReport:
    # PUSHREC_REDIS_CLUSTER=1: the URL names one node; the item lists go to every master.
    redis = connect(url, cluster=cluster)
    try:
        return await load_model(redis, model)
    finally:
        await redis.aclose()
