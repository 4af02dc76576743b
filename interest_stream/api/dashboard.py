"""The dashboard for people at ``/``: static page, script and style, and its JSON routes.

The page (``static/index.html`` + ``dashboard.js`` + ``dashboard.css``, no external
resource) polls two JSON answers once a second:

* ``GET /v1/stats`` (the API's own figures: users, items, lag, freshness quantiles);
* ``GET /v1/dashboard/live`` (this module): the consumer's running record counters,
  from which the page derives updates per second;

and, while a user is selected in the explorer,

* ``GET /v1/dashboard/users/{user_id}`` (this module): the user's record metadata,
  recently touched items, the top items of the short- and long-term vectors side by
  side and, when the checkpoint's ``item_meta.json`` knows categories, the top
  categories of each. It carries an ``ETag`` (user version + model version + ``k``),
  so the poll costs a 304 and no search while the user does not change.

The script writes every value with ``textContent`` (never HTML) and the page is
served with a Content-Security-Policy that allows only same-origin scripts, styles
and requests: ids coming from events cannot inject markup.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response

from interest_stream import __version__
from interest_stream.api.state import ApiState
from interest_stream.index.item_index import ItemIndex

__all__ = ["STATIC_DIR", "dashboard_router", "top_categories"]

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
"""The dashboard's files (shipped as package data)."""

_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
CATEGORY_POOL = 50
"""Nearest items looked at to rank a vector's top categories."""
MAX_TOP = 50


def top_categories(
    hits: Sequence[tuple[str, float]], items: ItemIndex, n: int = 5
) -> list[dict[str, Any]] | None:
    """The categories that dominate ranked item hits, with their share.

    Each hit weighs ``1 / log2(rank + 2)`` (as in DCG), so the nearest items count
    most; a category's share is its weight over the weight of all hits with a
    known category.

    Args:
        hits: ``(item_id, score)`` best first.
        items: The catalogue (``category`` per item).
        n: Categories to return.

    Returns:
        ``[{"category", "share"}]`` best first, or ``None`` when no hit has a
        known category (the catalogue has none).
    """
    weights: dict[str, float] = {}
    for rank, (item_id, _score) in enumerate(hits):
        cat = items.category(item_id)
        if cat is not None:
            weights[cat] = weights.get(cat, 0.0) + 1.0 / math.log2(rank + 2)
    if not weights:
        return None
    total = sum(weights.values())
    best = sorted(weights, key=lambda c: -weights[c])[:n]
    return [{"category": c, "share": round(weights[c] / total, 3)} for c in best]


def _scored(hits: Sequence[tuple[str, float]], items: ItemIndex, k: int) -> list[dict[str, Any]]:
    return [
        {"item_id": i, "score": round(s, 4), "category": items.category(i)} for i, s in hits[:k]
    ]


def dashboard_router(state: ApiState) -> APIRouter:
    """The routes of the dashboard (``/``, its assets, ``/v1/dashboard/...``) over ``state``."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def home() -> FileResponse:
        """The dashboard page."""
        return FileResponse(
            STATIC_DIR / "index.html",
            media_type="text/html; charset=utf-8",
            headers=_SECURITY_HEADERS,
        )

    @router.get("/dashboard/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        """The page's script and style (a fixed list: no path from the request reaches disk)."""
        media = _ASSETS.get(name)
        if media is None:
            return JSONResponse(
                {"error": "not_found", "detail": f"no dashboard file {name!r}"}, status_code=404
            )
        return FileResponse(STATIC_DIR / name, media_type=media, headers=_SECURITY_HEADERS)

    @router.get("/v1/dashboard/live", tags=["dashboard"])
    async def live() -> dict[str, Any]:
        """Running totals of the output-topic records this replica applied (for rates)."""
        c = state.consumer
        totals = None if c is None else c.totals
        return {
            "version": __version__,
            "topic": state.settings.output_topic,
            "model_version": None if state.items is None else state.items.model_version,
            "consumer": "disabled" if c is None else c.status,
            "records": {
                "applied": 0 if totals is None else totals.applied,
                "stale": 0 if totals is None else totals.stale,
                "malformed": 0 if totals is None else totals.malformed,
                "tombstones": 0 if totals is None else totals.tombstones,
            },
        }

    # ``:path``: an id may contain "/" (the event contract allows it); the page sends it
    # percent-encoded and the route sees it decoded.
    @router.get("/v1/dashboard/users/{user_id:path}", tags=["dashboard"])
    async def explore(
        request: Request,
        user_id: Annotated[str, PathParam(min_length=1, max_length=128)],
        k: Annotated[int, Query(ge=1, le=MAX_TOP, description="Top items per horizon.")] = 10,
    ) -> Response:
        """One user for the explorer: record metadata, recent items, short/long top items."""
        return _explore(state, request, user_id, k)

    return router


def _explore(state: ApiState, request: Request, user_id: str, k: int) -> Response:
    rec = state.users.get(user_id)  # UnknownId -> 404 JSON
    items = state.items
    model = None if items is None else items.model_version
    etag = f'W/"{rec.version}-{rec.model_version}-{model}-{k}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": "no-cache"})
    body: dict[str, Any] = {
        "user_id": rec.user_id,
        "version": rec.version,
        "event_time": rec.event_time,
        "updated_at": rec.updated_at,
        "model_version": rec.model_version,
        "recent": [
            {"item_id": i, "category": None if items is None else items.category(i)}
            for i in reversed(rec.recent_items)
        ],
        "purchased": list(rec.purchased),
        "catalogue": items is not None,
        "short": None,
        "long": None,
    }
    if items is not None:
        for horizon, vec in (("short", rec.short), ("long", rec.long)):
            hits = items.search(vec, max(k, CATEGORY_POOL))
            body[horizon] = {
                "items": _scored(hits, items, k),
                "categories": top_categories(hits, items),
            }
    return JSONResponse(body, headers={"ETag": etag, "Cache-Control": "no-cache"})
