"""The lean path of ``GET /v1/users/{id}/recommendations?explain=true`` (issue #16).

Called by :class:`~.explain.ExplainAdmission` for an admitted explanation: a request whose
parameters are plainly valid (those of :func:`~.fast_path.fast_params`, ``explain=true``
or ``1``, ``explain_events`` 1..20) is answered here, the route's own steps
(:func:`~.routes_users.recommend`, then the worker's explanation) without FastAPI's
routing, parameter solving and response validation, which cost the API ~1 ms of CPU
per ten-item answer with its events. Anything else, and an error before the worker is
asked, goes through the app, which answers as before; the worker's errors (503, 404,
422) are answered here with the app's JSON body, so a refused explanation is not asked
twice. Measurements: docs/RESULTS.md ("Latency of explain=true").
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from starlette.types import Scope, Send

from interest_stream.api.errors import ApiError, error_body
from interest_stream.api.fast_path import ROUTE, parse_recommendations, send_json
from interest_stream.api.routes_users import _explain_items, recommend
from interest_stream.api.state import ApiState

__all__ = ["FastExplain", "explain_params"]


def explain_params(path: str, query: bytes, max_k: int) -> tuple[dict[str, Any], int] | None:
    """``(the route's arguments, explain_events)`` of a plainly valid explained
    recommendations request, else ``None`` (the app parses it)."""
    got = parse_recommendations(path, query, max_k)
    return (got[0], got[2]) if got is not None and got[1] else None


class FastExplain:
    """Answers admitted ``/recommendations?explain=true`` requests (see the module)."""

    def __init__(self, state: ApiState) -> None:
        """Serve from ``state`` (the app's)."""
        self.state = state
        self.max_k = int(state.settings.max_k)

    async def __call__(self, scope: Scope, send: Send) -> bool:
        """Answer the request if it takes this path; ``False``: the app must answer it."""
        if scope["method"] != "GET" or scope.get("root_path"):
            return False
        got = explain_params(scope["path"], scope.get("query_string", b""), self.max_k)
        if got is None:
            return False
        params, top = got
        try:
            out, cand = await recommend(self.state, **params)
        except Exception:  # the app answers it: errors are its job
            return False
        scope["route"] = SimpleNamespace(path=ROUTE)  # the timing middleware's label
        try:
            if out["items"]:
                await _explain_items(
                    self.state, params["user_id"], out, params["horizon"], top, cand
                )
        except ApiError as exc:
            body = error_body(exc.code, exc.detail, **exc.extra)
            await send_json(send, exc.status, body, exc.headers)
            return True
        await send_json(send, 200, out)
        return True
