"""Catalog endpoints: ``PUT /v1/items`` (admin) and ``GET /v1/items`` (public listing)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from push.exceptions import HTTPProblem
from push.http import read_json, require_admin
from push.runtime import Runtime
from streams.catalog import InvalidItem, Item, parse_item
from streams.propagate import PropagationIncomplete

MAX_ITEMS_PER_PUT = 1000


async def put_items(request: Request) -> Response:
    """Upsert a batch of items; all or nothing (400 names the first bad item).

    Then the changed items reach every stored feed showing them (dropped when out of stock,
    payload updated otherwise), published to open connections (:mod:`streams.propagate`), before
    the answer. 503 ``propagation_incomplete``: the items are stored but not every feed was
    updated; the same PUT again finishes the job.
    """
    runtime: Runtime = request.app.state.runtime
    require_admin(request, runtime, surface="items")
    body = await read_json(request, runtime.settings.max_body_bytes)
    batch = body if isinstance(body, list) else [body]
    if not batch or len(batch) > MAX_ITEMS_PER_PUT:
        raise HTTPProblem(
            413 if batch else 400, "batch_size", f"send 1 to {MAX_ITEMS_PER_PUT} items"
        )
    items: list[Item] = []
    for index, obj in enumerate(batch):
        try:
            items.append(parse_item(obj))
        except InvalidItem as exc:
            raise HTTPProblem(400, "bad_item", f"item {index}: {exc}") from None
    try:
        result = await runtime.propagator.upsert(items)
    except PropagationIncomplete as exc:
        raise HTTPProblem(
            503, "propagation_incomplete", f"{exc}: retry", {"Retry-After": "1"}
        ) from None
    return JSONResponse({"upserted": len(items), "feeds_updated": result.edited})


async def get_items(request: Request) -> Response:
    """A page of the catalog: ``?offset=&limit=&category=&sort=id|trending`` (limit ≤ 200).

    ``sort=trending`` lists the currently trending items first, then the rest by id.
    """
    runtime: Runtime = request.app.state.runtime
    try:
        offset = int(request.query_params.get("offset", "0"))
        limit = int(request.query_params.get("limit", "48"))
    except ValueError:
        raise HTTPProblem(400, "bad_query", "offset and limit must be integers") from None
    if offset < 0 or not 1 <= limit <= 200:
        raise HTTPProblem(400, "bad_query", "offset must be ≥ 0 and limit between 1 and 200")
    category = request.query_params.get("category") or None
    sort = request.query_params.get("sort", "id")
    if sort not in {"id", "trending"}:
        raise HTTPProblem(400, "bad_query", "sort must be id or trending")
    trending = await runtime.catalog.trending_ids() if sort == "trending" else None
    items, total = runtime.catalog.page(
        offset=offset, limit=limit, category=category, first=trending
    )
    return JSONResponse({"items": [i.to_dict() for i in items], "total": total})


async def get_categories(request: Request) -> Response:
    """Every category in the catalog."""
    runtime: Runtime = request.app.state.runtime
    return JSONResponse({"categories": runtime.catalog.categories()})
