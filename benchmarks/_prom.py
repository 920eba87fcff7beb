"""Reading a pushrec node's own histograms from /metrics, to set beside client-side figures."""

from __future__ import annotations

import re
import urllib.request

_BUCKET = re.compile(r"^(\w+)_bucket\{(.*)\} (\S+)$")


def histogram(address: str, name: str, **labels: str) -> dict[float, float]:
    """Cumulative bucket counts (upper bound → count) of ``name`` whose labels include
    ``labels``, summed over the other labels."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    want = [f'{k}="{v}"' for k, v in labels.items()]
    out: dict[float, float] = {}
    for line in text.splitlines():
        m = _BUCKET.match(line)
        if m is None or m.group(1) != name or not all(w in m.group(2) for w in want):
            continue
        le = re.search(r'le="([^"]+)"', m.group(2))
        assert le is not None
        bound = float(le.group(1))
        out[bound] = out.get(bound, 0.0) + float(m.group(3))
    return out


def delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    """The observations made between two readings."""
    return {le: n - before.get(le, 0.0) for le, n in after.items()}


def quantile(buckets: dict[float, float], q: float) -> float:
    """Prometheus' ``histogram_quantile``: linear within the bucket holding the q-th rank."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if le == float("inf"):
                return lower
            width = count - below
            return lower + (le - lower) * ((rank - below) / width if width else 1.0)
        lower, below = le, count
    return lower
