"""Results → a markdown table (one row per algorithm) and a JSON document."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from streams.evaluation.harness import Result
from streams.evaluation.readers import Dataset


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def markdown_table(results: Sequence[Result]) -> str:
    """HR@K and MRR@K for every K, coverage at the largest K, scored events, the engine's
    p50/p99 recompute ms and the replay's events/s, one row per result (same K values)."""
    if not results:
        return ""
    ks = results[0].ks
    if any(r.ks != ks for r in results):
        raise ValueError("every result of one table must use the same K values")
    top = ks[-1]
    head = [
        "algorithm",
        *(f"HR@{k}" for k in ks),
        *(f"MRR@{k}" for k in ks),
        f"coverage@{top}",
        "scored",
        "p50 ms",
        "p99 ms",
        "events/s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in results:
        cells = [
            r.algorithm,
            *(f"{r.hit_rate[k]:.4f}" for k in ks),
            *(f"{r.mrr[k]:.4f}" for k in ks),
            f"{r.coverage[top]:.4f}",
            f"{r.scored:,}",
            _ms(r.latency_p50_ms),
            _ms(r.latency_p99_ms),
            f"{r.events_per_s:,.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def repeats_table(results: Sequence[Result]) -> str:
    """Per result: the share of scored events that repeat the user's previous item, and HR@K /
    MRR@K over the other scored events only (what a list that never shows the current item can
    reach)."""
    if not results:
        return ""
    ks = results[0].ks
    head = [
        "algorithm",
        "repeats of the previous item",
        *(f"HR@{k} other events" for k in ks),
        *(f"MRR@{k} other events" for k in ks),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in results:
        hr, mrr = r.hit_rate_fresh or {}, r.mrr_fresh or {}
        share = r.repeats / r.scored if r.scored else 0.0
        cells = [
            r.algorithm,
            f"{r.repeats:,} ({share:.1%})",
            *(f"{hr.get(k, 0.0):.4f}" for k in ks),
            *(f"{mrr.get(k, 0.0):.4f}" for k in ks),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(dataset: Dataset) -> str:
    """One line on what is replayed: parts, users, catalogue, dropped rows."""
    users = len({e.user for e in dataset.train} | {e.user for e in dataset.test})
    return (
        f"{dataset.name}: {len(dataset.train):,} warm-up + {len(dataset.test):,} test events, "
        f"{users:,} users, {len(dataset.catalogue()):,} catalogue items; "
        f"{dataset.unknown_dropped:,} test events on items unseen in training dropped, "
        f"{dataset.skipped:,} rows skipped"
    )


def to_json(
    dataset: Dataset,
    results: Sequence[Result],
    command: str,
    *,
    engine: dict[str, Any] | None = None,
) -> str:
    """The results with the dataset's figures, the command that produced them and the engine's
    settings (when given)."""
    doc: dict[str, Any] = {
        "command": command,
        "engine": engine,
        "dataset": dataset.name,
        "train_events": len(dataset.train),
        "test_events": len(dataset.test),
        "unknown_dropped": dataset.unknown_dropped,
        "skipped_rows": dataset.skipped,
        "results": [r.to_dict() for r in results],
    }
    return json.dumps(doc, indent=2)
