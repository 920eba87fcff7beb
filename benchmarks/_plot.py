"""Plot helpers shared by the benchmark scripts (matplotlib, imported only when plotting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def figure(columns: int = 1) -> tuple[Any, list[Any]]:
    """A figure with ``columns`` side-by-side axes, on the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=(5.5 * columns, 4), squeeze=False)
    return fig, list(axes[0])


def latency_cdf(ax: Any, latencies_ms: list[float], xlabel: str, title: str) -> None:
    """A log-scale CDF of latencies with the project's p50/p99 targets marked."""
    ordered = sorted(latencies_ms)
    ax.plot(ordered, [i / len(ordered) for i in range(len(ordered))])
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of events")
    ax.axvline(3, color="g", ls="--", label="p50 target 3 ms")
    ax.axvline(15, color="r", ls="--", label="p99 target 15 ms")
    ax.set_title(title)
    ax.legend()


def save(fig: Any, path: Path) -> None:
    """Write the figure as PNG and say where."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"\nplot: {path}")
