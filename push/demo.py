"""The demo shop: static page and an endpoint minting anonymous visitor tokens.

Only mounted by ``pushrec demo``. In production the shop's backend signs visitor tokens itself
(see README: "Tokens"); this endpoint stands in for it so the demo needs no backend.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from push.runtime import Runtime

SHOP_DIR = Path(__file__).resolve().parent.parent / "examples" / "shop"
CATALOG_FILE = Path(__file__).resolve().parent.parent / "examples" / "catalog" / "rees46.jsonl"


async def demo_session(request: Request) -> Response:
    """A fresh anonymous visitor id and its token (valid one day)."""
    runtime: Runtime = request.app.state.runtime
    user = "v-" + secrets.token_hex(6)
    return JSONResponse({"user_id": user, "token": runtime.verifier.mint(user)})


async def index(request: Request) -> Response:
    """The shop page."""
    return FileResponse(SHOP_DIR / "index.html")


def demo_routes() -> list[Route | Mount]:
    """Routes of the demo shop."""
    return [
        Route("/", index),
        Route("/v1/demo/session", demo_session, methods=["POST"]),
        Mount("/shop", StaticFiles(directory=SHOP_DIR), name="shop"),
    ]
