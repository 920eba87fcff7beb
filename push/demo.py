"""The demo shop: static page and an endpoint minting anonymous visitor tokens.

Only mounted by ``pushrec demo``. In production the shop's backend signs visitor tokens itself
(see README: "Tokens"); this endpoint stands in for it so the demo needs no backend.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from pathlib import Path

import structlog
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from push.exceptions import HTTPProblem
from push.runtime import Runtime
from sessions.tokens import ANON_PREFIX, MAX_SUBJECT_LEN
from streams.events import Event

log = structlog.get_logger(__name__)

SHOP_DIR = Path(__file__).resolve().parent.parent / "examples" / "shop"
CATALOG_FILE = Path(__file__).resolve().parent.parent / "examples" / "catalog" / "rees46.jsonl"
WARMUP_FILE = Path(__file__).resolve().parent.parent / "examples" / "catalog" / "rees46-events.tsv"
#: The SDK's browser bundles (``make sdk`` builds them; they are not committed).
SDK_DIST = Path(__file__).resolve().parent.parent / "client-sdk-js" / "dist"


#: Lifetimes a demo session token may ask for (``ttl_s``): 5 s (to watch a refresh) to 1 day.
DEMO_TTL_MIN_S = 5
DEMO_TTL_MAX_S = 86_400
DEMO_BODY_LIMIT = 4096


async def demo_session(request: Request) -> Response:
    """A visitor token, standing in for the shop backend that signs them in production.

    The JSON body is optional: ``{"user_id": "...", "ttl_s": n}``. Without ``user_id`` the visitor
    is a fresh ``v-…`` id; ``ttl_s`` (default one day) is clamped to 5 s … 1 day. Demo only: any
    id is signed, so the page can keep its visitor across reloads and tabs.
    """
    runtime: Runtime = request.app.state.runtime
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > DEMO_BODY_LIMIT:
            raise HTTPProblem(413, "too_large", f"body exceeds {DEMO_BODY_LIMIT} bytes")
    try:
        params = json.loads(body) if body.strip() else {}
    except (ValueError, RecursionError):
        raise HTTPProblem(400, "bad_json", "body is not valid JSON") from None
    if not isinstance(params, dict):
        raise HTTPProblem(400, "bad_request", "body must be a JSON object")
    unknown = set(params) - {"user_id", "ttl_s"}
    if unknown:
        raise HTTPProblem(400, "bad_request", f"unknown field {sorted(unknown)[0][:40]!r}")
    user = params.get("user_id")
    if user is None:
        user = "v-" + secrets.token_hex(6)
    elif (
        not isinstance(user, str)
        or not 1 <= len(user) <= MAX_SUBJECT_LEN
        or not user.isprintable()
        or user.startswith(ANON_PREFIX)
    ):
        raise HTTPProblem(
            400,
            "bad_user_id",
            f"user_id must be 1-{MAX_SUBJECT_LEN} printable characters, not starting with "
            f"{ANON_PREFIX!r}",
        )
    ttl = params.get("ttl_s", DEMO_TTL_MAX_S)
    # (math.isfinite only for floats: it cannot convert a 400-digit int.)
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | float)
        or (isinstance(ttl, float) and not math.isfinite(ttl))
    ):
        raise HTTPProblem(400, "bad_ttl", "ttl_s must be a number of seconds")
    ttl_s = int(min(max(ttl, DEMO_TTL_MIN_S), DEMO_TTL_MAX_S))
    return JSONResponse({"user_id": user, "token": runtime.verifier.mint(user, ttl_s=ttl_s)})


async def index(request: Request) -> Response:
    """The shop page."""
    return FileResponse(SHOP_DIR / "index.html")


def demo_routes() -> list[Route | Mount]:
    """Routes of the demo shop."""
    if not (SDK_DIST / "pushrec.min.js").is_file():
        log.warning("sdk_not_built", hint="run `make sdk`: the shop page loads the SDK bundle")
    return [
        Route("/", index),
        Route("/v1/demo/session", demo_session, methods=["POST"]),
        Mount("/shop", StaticFiles(directory=SHOP_DIR), name="shop"),
        Mount("/sdk", StaticFiles(directory=SDK_DIST, check_dir=False), name="sdk"),
    ]


def read_warmup(path: Path, now_ms: int) -> list[Event]:
    """The warm-up log (TSV ``ts_ms user type item``), shifted so its last event is ``now_ms``.

    Shifting keeps the real gaps between events while making the decayed trending counters as
    fresh as the visitor's own clicks; user ids get an ``r46-`` prefix so no visitor collides.
    """
    rows: list[tuple[int, str, str, str]] = []
    with path.open(encoding="utf-8") as fh:
        next(fh, None)  # header
        for line in fh:
            ts, user, etype, item = line.rstrip("\n").split("\t")
            rows.append((int(ts), user, etype, item))
    if not rows:
        return []
    shift = now_ms - max(r[0] for r in rows)
    return [
        Event(f"warm-{n}", f"r46-{user}", etype, item, ts + shift)
        for n, (ts, user, etype, item) in enumerate(rows)
    ]


async def warm_up(runtime: Runtime, path: Path) -> None:
    """Replay the warm-up log through the real pipeline (producer → bus → processor)."""
    events = read_warmup(path, int(time.time() * 1000))
    started = time.perf_counter()
    for start in range(0, len(events), 500):
        if runtime.producer is None:
            return
        await runtime.producer.send(events[start : start + 500])
        if runtime.bus is not None:  # keep the in-process bus within its capacity
            await runtime.bus.drain(60.0)
    log.info("warmup_done", events=len(events), seconds=round(time.perf_counter() - started, 2))
