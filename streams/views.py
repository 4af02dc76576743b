"""The worker's HTTP views, on Faust's web server (``127.0.0.1:INTEREST_WORKER_WEB_PORT``).

* ``GET /windows/{user_id}/`` -- the window (404 when unknown or on a partition
  this worker does not hold; 500 when the stored bytes are corrupt);
* ``POST /explain/`` -- which of the user's events drive the scores of given
  target vectors (occlusion, :mod:`.explain`; 404 as above, 503 without a model);
* ``GET /assignment/`` -- partitions held, standbys, rebalancing;
* ``GET /healthz/`` -- pid, app state, partitions held;
* ``GET /metrics`` -- Prometheus text (:class:`~interest_stream.streams.metrics.WorkerMetrics`).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import TYPE_CHECKING, Any

import faust
import numpy as np
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST

from interest_stream.streams.explain import DEFAULT_LONG_EVENTS, ExplainBusy, ExplainError
from interest_stream.streams.explain_rerank import rerank_scorer
from interest_stream.streams.window import StateCodecError

if TYPE_CHECKING:
    from interest_stream.streams.worker import WindowWorker

__all__ = ["add_views"]

_METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST.split(";charset")[0].split("; charset")[0]


def add_views(app: faust.App, worker: WindowWorker) -> None:
    """Register the worker's views on ``app`` (the worker's Faust app)."""

    @app.page("/windows/{user_id}/")
    async def window_view(view: View, request: Request, user_id: str) -> Response:
        try:
            window = worker.read_window(user_id)
        except StateCodecError as exc:
            return view.json({"error": "corrupt state", "detail": str(exc)}, status=500)
        if window is None:
            return view.json(
                {
                    "error": "not found",
                    "detail": f"user {user_id!r} has no window on a partition of this worker",
                },
                status=404,
            )
        return view.json(window.to_dict())

    @app.page("/explain/")
    class ExplainView(View):
        async def post(self, request: Request) -> Response:
            return await _explain(self, request, worker)

    @app.page("/assignment/")
    async def assignment_view(view: View, request: Request) -> Response:
        held = sorted(worker.held_partitions())
        worker.metrics.assigned.set(len(held))
        try:
            standbys = sorted({tp.partition for tp in app.assignor.assigned_standbys()})
        except Exception:
            standbys = []
        return view.json(
            {
                "app_id": worker.settings.app_id,
                "partitions": held,
                "standby_partitions": standbys,
                "partition_count": worker.partitions,
                "topics": sorted(worker.event_topics),
                "rebalancing": bool(app.rebalancing),
            }
        )

    @app.page("/healthz/")
    async def health_view(view: View, request: Request) -> Response:
        return view.json(
            {
                "status": "ok",
                "pid": os.getpid(),
                "state": app.state,
                "rebalancing": bool(app.rebalancing),
                "partitions": len(worker.held_partitions()),
            }
        )

    @app.page("/metrics")
    async def metrics_view(view: View, request: Request) -> Response:
        worker.metrics.assigned.set(len(worker.held_partitions()))
        # aiohttp wants the charset apart from the content type
        return view.bytes(worker.metrics.render(), content_type=_METRICS_CONTENT_TYPE)

    del window_view, ExplainView, assignment_view, health_view, metrics_view


def _not_found(view: View, user_id: str) -> Response:
    return view.json(
        {
            "error": "not found",
            "detail": f"user {user_id!r} has no window on a partition of this worker",
        },
        status=404,
    )


async def _explain(view: View, request: Request, worker: WindowWorker) -> Response:
    """``POST /explain/`` with ``{"user_id", "targets": [[...]] (or "targets_f32": base64
    float32 and "n_targets"), "horizon", "weight", "long_events", "top"}``
    (docs/CONTRACTS.md, section 6)."""
    explainer = getattr(worker, "explainer", None)  # set by the service with a model
    if explainer is None:
        return view.json({"error": "no model", "detail": "the worker has no model"}, status=503)
    try:
        body: Any = json.loads(await view.read_request_content(request))
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        long_events = int(body.get("long_events", DEFAULT_LONG_EVENTS))
        top = int(body.get("top", 5))
        if not (1 <= long_events <= 100_000 and 0 <= top <= 1000):
            raise ValueError("long_events must be >= 1 and top within 0..1000")
        user_id = body["user_id"]
        if not isinstance(user_id, str) or not user_id:
            raise ValueError("user_id must be a non-empty string")
        if "targets_f32" in body:  # base64 of little-endian float32, row-major
            raw = np.frombuffer(base64.b64decode(body["targets_f32"], validate=True), "<f4")
            targets = raw.reshape(int(body["n_targets"]), -1)
        else:
            targets = np.asarray(body["targets"], dtype=np.float32)
        horizon = str(body.get("horizon", "blend"))
        weight = float(body.get("weight", 0.5))
        scorer = None
        if body.get("rerank") is not None:  # the re-ranker's score (explain_rerank.py)
            if horizon != "blend":
                raise ValueError("rerank explains horizon blend only")
            scorer, targets = rerank_scorer(body["rerank"], weight, targets.shape[1])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        return view.json({"error": "bad request", "detail": str(exc)}, status=400)
    try:
        window = worker.read_window(user_id)
    except StateCodecError as exc:
        return view.json({"error": "corrupt state", "detail": str(exc)}, status=500)
    if window is None or not window.times:
        return _not_found(view, user_id)
    try:
        answer = await explainer.explain(
            window.view(), targets, horizon=horizon, weight=weight,
            long_events=long_events, top=top, scorer=scorer,
        )  # fmt: skip
    except ExplainError as exc:
        return view.json({"error": "bad request", "detail": str(exc)}, status=400)
    except ExplainBusy as exc:  # admission control: refuse now rather than answer late
        return view.json({"error": "busy", "detail": str(exc)}, status=429,
                         headers={"Retry-After": "1"})  # fmt: skip
    answer["scorer"] = "vector" if scorer is None else "rerank"
    return view.json(answer)
