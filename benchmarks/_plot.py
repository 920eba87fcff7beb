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


#: The event → frame latency targets, marked on latency CDFs unless told otherwise.
EVENT_TARGETS = ((3.0, "g", "p50 target 3 ms"), (15.0, "r", "p99 target 15 ms"))


def latency_cdf(
    ax: Any,
    latencies_ms: list[float],
    xlabel: str,
    title: str,
    *,
    marks: tuple[tuple[float, str, str], ...] = EVENT_TARGETS,
    label: str | None = None,
    ylabel: str = "fraction of events",
) -> None:
    """A log-scale CDF of latencies with ``marks`` (``(ms, colour, label)``) drawn as vertical
    lines; call again with ``marks=()`` to add another curve to the same axes."""
    ordered = sorted(latencies_ms)
    ax.plot(ordered, [i / len(ordered) for i in range(len(ordered))], label=label)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for ms, colour, text in marks:
        ax.axvline(ms, color=colour, ls="--", label=text)
    ax.set_title(title)
    ax.legend()


def save(fig: Any, path: Path) -> None:
    """Write the figure as PNG and say where."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"\nplot: {path}")
