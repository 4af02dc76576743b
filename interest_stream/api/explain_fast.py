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

import json
import re
from types import SimpleNamespace
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

from starlette.types import Scope, Send

from interest_stream.api.errors import ApiError, error_body
from interest_stream.api.fast_path import fast_params
from interest_stream.api.routes_users import _explain_items, recommend
from interest_stream.api.state import ApiState

__all__ = ["FastExplain", "explain_params"]

_SUFFIX: Final = "/recommendations"
_ROUTE: Final = "/v1/users/{user_id:path}/recommendations"
_EVENTS = re.compile(r"[1-9][0-9]?")


def explain_params(path: str, query: bytes, max_k: int) -> tuple[dict[str, Any], int] | None:
    """``(the route's arguments, explain_events)`` of a plainly valid explained
    recommendations request, else ``None`` (the app parses it)."""
    if not path.endswith(_SUFFIX):
        return None
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    explain = [v for k, v in pairs if k == "explain"]
    events = [v for k, v in pairs if k == "explain_events"]
    if explain not in (["true"], ["1"]) or len(events) > 1:
        return None
    top = 3
    if events:
        if not _EVENTS.fullmatch(events[0]) or int(events[0]) > 20:
            return None
        top = int(events[0])
    rest = urlencode([(k, v) for k, v in pairs if k not in ("explain", "explain_events")])
    params = fast_params(path, rest.encode("latin-1"), max_k)
    return None if params is None else (params, top)


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
        scope["route"] = SimpleNamespace(path=_ROUTE)  # the timing middleware's label
        try:
            if out["items"]:
                await _explain_items(
                    self.state, params["user_id"], out, params["horizon"], top, cand
                )
        except ApiError as exc:
            body = error_body(exc.code, exc.detail, **exc.extra)
            await _send(send, exc.status, body, exc.headers)
            return True
        await _send(send, 200, out, None)
        return True


async def _send(send: Send, status: int, body: Any, headers: dict[str, str] | None) -> None:
    raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-length", str(len(raw)).encode()),
                    (b"content-type", b"application/json"), *extra],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": raw})
