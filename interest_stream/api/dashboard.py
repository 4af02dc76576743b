"""The dashboard for people at ``/``: static page, script and style, and its JSON routes.

The page (``static/index.html`` + ``dashboard.js`` + ``dashboard.css``, no external
resource) polls two JSON answers once a second:

* ``GET /v1/stats`` (the API's own figures: users, items, lag, freshness quantiles);
* ``GET /v1/dashboard/live?since=<t>`` (this module): the consumer's running record
  counters, from which the page derives updates per second, and the samples of
  :class:`LiveHistory` newer than ``t``: one per second over the last
  :data:`HISTORY_S` seconds (updates/s, freshness p50/p99 of that second, consumer lag,
  model version), which the page draws as time charts; the replica samples from its
  start, so a page opened late still shows the last minutes;

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

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response

from interest_stream import __version__
from interest_stream.api.state import ApiState
from interest_stream.index.item_index import ItemIndex

__all__ = ["HISTORY_S", "STATIC_DIR", "LiveHistory", "dashboard_router", "top_categories"]

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
HISTORY_S = 300
"""Seconds of live history the replica keeps for the page's time charts."""


class LiveHistory:
    """One sample of the live figures per ``every_s`` seconds over the last ``seconds``.

    Each sample: ``t`` (epoch ms), ``rate`` (output records applied per second since
    the previous sample), ``p50_ms`` / ``p99_ms`` (freshness of the records applied
    in that interval; ``None`` when there were none), ``lag`` and ``model_version``.
    """

    def __init__(self, state: ApiState, seconds: float = HISTORY_S, every_s: float = 1.0) -> None:
        self.state = state
        self.every_s = every_s
        self.samples: deque[dict[str, Any]] = deque(maxlen=int(seconds / every_s) + 1)
        self._prev: tuple[float, int] | None = None
        self._mark = 0

    def sample(self) -> dict[str, Any]:
        """Take one sample now and keep it."""
        now = time.monotonic()
        c = self.state.consumer
        applied = 0 if c is None else c.totals.applied
        rate = None
        if self._prev is not None and now > self._prev[0]:
            rate = round(max(applied - self._prev[1], 0) / (now - self._prev[0]), 1)
        self._prev = (now, applied)
        self._mark, fresh = self.state.metrics.freshness_since(self._mark)
        p50: float | None = None
        p99: float | None = None
        if fresh.size:
            p50, p99 = (round(float(v), 1) for v in np.percentile(fresh, [50, 99]))
        items = self.state.items
        sample = {
            "t": int(time.time() * 1000), "rate": rate, "p50_ms": p50, "p99_ms": p99,
            "lag": None if c is None else c.lag,
            "model_version": None if items is None else items.model_version,
        }  # fmt: skip
        self.samples.append(sample)
        return sample

    def since(self, t: int | None) -> list[dict[str, Any]]:
        """The samples newer than ``t`` (epoch ms; ``None``: all), oldest first."""
        return [s for s in self.samples if t is None or s["t"] > t]

    async def run(self) -> None:
        """Sample every ``every_s`` seconds until cancelled (a lifespan task)."""
        while True:
            try:
                self.sample()
            except Exception:  # the charts miss a point; the sampler lives on
                logger.exception("live history sample failed")
            await asyncio.sleep(self.every_s)


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


def dashboard_router(state: ApiState, history: LiveHistory | None = None) -> APIRouter:
    """The routes of the dashboard (``/``, its assets, ``/v1/dashboard/...``) over ``state``.

    ``history`` feeds the time charts (sampled by the app's lifespan task); without
    it ``/v1/dashboard/live`` answers an empty history.
    """
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
    async def live(
        since: Annotated[
            int | None, Query(ge=0, description="Only history samples after this epoch ms.")
        ] = None,
    ) -> dict[str, Any]:
        """Running totals of the records this replica applied, and the recent history."""
        c = state.consumer
        totals = None if c is None else c.totals
        return {
            "version": __version__,
            "topic": state.settings.output_topic,
            "model_version": None if state.items is None else state.items.model_version,
            "consumer": "disabled" if c is None else c.status,
            # explanations need a worker to ask (INTEREST_WORKER_URLS); without one the page
            # shows recommendations and audiences without "because of"
            "explain": bool(state.workers.urls),
            "records": {
                "applied": 0 if totals is None else totals.applied,
                "stale": 0 if totals is None else totals.stale,
                "malformed": 0 if totals is None else totals.malformed,
                "tombstones": 0 if totals is None else totals.tombstones,
            },
            "history_s": HISTORY_S,
            "history": [] if history is None else history.since(since),
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
        return await state.users_call(_explore, state, request, user_id, k)

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
        "catalogue_model_version": model,
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
