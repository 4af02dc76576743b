"""The operations routes: ``/healthz``, ``/readyz``, ``/v1/stats``, ``/metrics``."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from interest_stream.api.errors import error_body
from interest_stream.api.schemas import ErrorOut
from interest_stream.api.state import ApiState

__all__ = ["ops_router"]


def ops_router(state: ApiState) -> APIRouter:
    """The liveness, readiness, statistics and Prometheus routes over ``state``."""
    router = APIRouter()
    settings = state.settings

    @router.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        c = state.consumer
        return {
            "status": "ok",
            "uptime_s": round(time.time() - state.started_at, 1),
            "consumer": None if c is None else {**c.describe(), "thread_alive": c.alive},
        }

    @router.get("/readyz", tags=["ops"], responses={503: {"model": ErrorOut}})
    async def readyz() -> JSONResponse:
        """Readiness: 200 once the consumer caught up with the topic's end at start-up."""
        ok, info = state.readiness()
        if ok:
            return JSONResponse(info)
        lag = info.get("lag")
        detail = (
            f"catching up with {settings.output_topic}: "
            + ("connecting" if lag is None else f"{lag} messages behind")
            + (f" ({state.consumer.error})" if state.consumer and state.consumer.error else "")
        )
        return JSONResponse(error_body("not_ready", detail, **info), status_code=503)

    @router.get("/v1/stats", tags=["ops"])
    async def stats() -> dict[str, Any]:
        """Live figures for people and tools: users, items, lag, freshness quantiles, and
        the user store's structure (in-process: exact or IVF per horizon, ``nprobe``)."""
        ok, info = state.readiness()
        return {
            "ready": ok,
            "users": state.users.count(),
            "items": 0 if state.items is None else state.items.count(),
            "model_version": None if state.items is None else state.items.model_version,
            "lag": info.get("lag"),
            "freshness": state.metrics.freshness_summary(),
            "user_index": state.users.stats(),
        }

    @router.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus text exposition."""
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router
