"""The ``pushrec`` command line.

``pushrec serve``        run a node (embedded Redis and in-process bus unless configured)
``pushrec worker``       consume events only (a Kafka deployment's worker process)
``pushrec demo``         the same, plus the demo catalog, warm-up traffic and the shop page
``pushrec token USER``   mint a visitor token with ``PUSHREC_SECRET``
``pushrec catalog load`` upsert a JSONL catalog through a running server's API
``pushrec eval``         replay an interaction log, score the engine and baselines
``pushrec train``        compute item neighbours from a log, load them into Redis atomically
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from push import eval_cli, train_cli
from push.app import build_app
from push.config import Settings
from push.demo import CATALOG_FILE, WARMUP_FILE
from push.exceptions import ConfigError
from push.logs import configure_logging
from push.runtime import Runtime, resolve_credentials
from push.server import PushServer
from push.ws_server import protocol_for
from sessions.tokens import TokenVerifier


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pushrec", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "run a node"), ("demo", "run a node with the demo shop")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--host", help="listen address (PUSHREC_HOST, default 127.0.0.1)")
        p.add_argument("--port", type=int, help="listen port (PUSHREC_PORT, default 8080)")
        p.add_argument(
            "--data-dir", type=Path, help="embedded Redis data directory (default: temporary)"
        )
        p.add_argument("--redis-url", help="external Redis instead of the embedded one")
        p.add_argument(
            "--no-worker",
            action="store_true",
            help="serve sockets and the API only; `pushrec worker` consumes (needs Kafka)",
        )
    wk = sub.add_parser("worker", help="consume events only (needs PUSHREC_KAFKA_BOOTSTRAP)")
    wk.add_argument("--host", help="probe/metrics listen address (default 127.0.0.1)")
    wk.add_argument("--port", type=int, help="probe/metrics port (PUSHREC_PORT, default 8080)")
    wk.add_argument("--redis-url", help="Redis shared with the web nodes")
    tok = sub.add_parser("token", help="mint a visitor token (needs PUSHREC_SECRET)")
    tok.add_argument("user")
    tok.add_argument("--ttl", type=int, default=86_400, help="validity in seconds (default 86400)")
    cat = sub.add_parser("catalog", help="catalog operations")
    cat_sub = cat.add_subparsers(dest="catalog_command", required=True)
    load = cat_sub.add_parser("load", help="upsert items from a JSONL file via the API")
    load.add_argument("file", type=Path)
    load.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL")
    eval_cli.add_parser(sub)
    train_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pushrec`` console script."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"pushrec: {exc}", file=sys.stderr)
        return 2
    if args.command in {"serve", "demo", "worker"}:
        return _serve(settings, args)
    if args.command == "token":
        return _token(settings, args)
    if args.command == "eval":
        return eval_cli.run(settings, args)
    if args.command == "train":
        return train_cli.run(settings, args)
    return _catalog_load(settings, args)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    changes = {
        k: v
        for k, v in (
            ("host", args.host),
            ("port", args.port),
            ("data_dir", getattr(args, "data_dir", None)),
            ("redis_url", args.redis_url),
        )
        if v is not None
    }
    if getattr(args, "no_worker", False):
        changes["worker"] = False
    if args.command == "worker":
        changes["web"] = False
    if args.command == "demo":
        changes["demo"] = True
        changes.setdefault("catalog_file", settings.catalog_file or CATALOG_FILE)
        changes.setdefault("warmup_file", settings.warmup_file or WARMUP_FILE)
        if "PUSHREC_REPEAT_WEIGHT" not in os.environ:
            # The shop's strip sits beside the product being looked at: it need not repeat it.
            changes["repeat_weight"] = 0.0
    try:
        settings = settings.replace(**changes)
        settings.validate()
    except ConfigError as exc:
        print(f"pushrec: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format, settings.log_level_libs)
    creds = resolve_credentials(settings)
    runtime = Runtime(settings, creds)
    out = sys.stderr
    if settings.redis_url is None:
        print("pushrec: embedded mode — private Redis and an in-process event bus", file=out)
    if creds.generated:
        print(
            "pushrec: generated for this run (export them to keep them across restarts):", file=out
        )
        if "secret" in creds.generated:
            print(f"  export PUSHREC_SECRET={creds.secret}", file=out)
        if "admin_key" in creds.generated:
            print(f"  export PUSHREC_ADMIN_KEY={creds.admin_key}", file=out)
    print("pushrec: mint a visitor token with: pushrec token USER  (uses PUSHREC_SECRET)", file=out)
    base = f"http://{settings.host}:{settings.port}"
    if settings.demo:
        print(f"pushrec: demo shop at {base}/", file=out)
    config = uvicorn.Config(
        build_app(runtime),
        host=settings.host,
        port=settings.port,
        ws=protocol_for(runtime),  # our own WebSocket protocol: see push/ws_server.py
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    asyncio.run(PushServer(config, runtime).serve())
    return 0


def _token(settings: Settings, args: argparse.Namespace) -> int:
    if settings.secret is None:
        print(
            "pushrec: set PUSHREC_SECRET (the server prints it in embedded mode)", file=sys.stderr
        )
        return 2
    try:
        print(TokenVerifier(settings.secret).mint(args.user, ttl_s=args.ttl))
    except ValueError as exc:  # e.g. an "anon:" id: only POST /v1/anonymous mints those
        print(f"pushrec: {exc}", file=sys.stderr)
        return 2
    return 0


def _catalog_load(settings: Settings, args: argparse.Namespace) -> int:
    if settings.admin_key is None:
        print(
            "pushrec: set PUSHREC_ADMIN_KEY (the server prints it in embedded mode)",
            file=sys.stderr,
        )
        return 2
    items = []
    with args.file.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except ValueError:
                    print(f"pushrec: {args.file}:{n}: not valid JSON", file=sys.stderr)
                    return 1
    total = 0
    for start in range(0, len(items), 500):
        chunk = items[start : start + 500]
        req = urllib.request.Request(  # noqa: S310 - the operator names the URL
            args.url.rstrip("/") + "/v1/items",
            data=json.dumps(chunk).encode(),
            method="PUT",
            headers={"Content-Type": "application/json", "X-API-Key": settings.admin_key},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
                total += json.load(resp)["upserted"]
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            print(
                f"pushrec: items {start}..{start + len(chunk) - 1}: HTTP {exc.code}: {detail}",
                file=sys.stderr,
            )
            return 1
        except urllib.error.URLError as exc:
            print(f"pushrec: cannot reach {args.url}: {exc.reason}", file=sys.stderr)
            return 1
    print(f"pushrec: upserted {total} items")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
