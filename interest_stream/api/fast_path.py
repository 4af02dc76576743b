"""The lean path of the hottest request: ``GET /v1/users/{id}/recommendations`` without
``explain``, answered before FastAPI's middleware, routing, parameter solving and
response validation (~29% of that request's server time in a py-spy profile: docs/RESULTS.md,
issue #13 "API latency").

Only requests whose parameters are plainly valid take it; anything else (other routes,
``explain``, a value FastAPI would refuse or coerce, a repeated parameter) and any error
(unknown user, no model, a bad ``exclude`` token) goes through the app, which answers as
before. The answer is the route's (:func:`~.routes_users.recommend`), timed under the
route's label like every other request.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from interest_stream.api.routes_users import recommend
from interest_stream.api.state import ApiState
from interest_stream.core.records import HORIZONS

__all__ = [
    "ROUTE",
    "FastRecommendations",
    "fast_params",
    "parse_recommendations",
    "plain_get",
    "send_json",
]

Parsed = tuple[dict[str, Any], bool, int]
"""(the route's arguments, explain, explain_events)"""

_PREFIX: Final = "/v1/users/"
_SUFFIX: Final = "/recommendations"
ROUTE: Final = "/v1/users/{user_id}/recommendations"
_INT = re.compile(r"[1-9][0-9]{0,5}")
_BOOL: Final = {"true": True, "1": True, "false": False, "0": False}
_KNOWN: Final = frozenset({"k", "horizon", "exclude", "rank", "explain", "explain_events"})


def parse_recommendations(path: str, query: bytes, max_k: int) -> Parsed | None:
    """The route's arguments, ``explain`` and ``explain_events`` (default 3) of a plainly
    valid ``/recommendations`` request, else ``None`` (the app then parses it: its answers,
    422s included, stay the reference)."""
    user_id = path[len(_PREFIX) : -len(_SUFFIX)]
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)) or not 1 <= len(user_id) <= 128:
        return None
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True) if query else []
    got = {key: value for key, value in pairs if key in _KNOWN}
    if len(got) != sum(1 for key, _ in pairs if key in _KNOWN):
        return None  # a repeated parameter
    out: dict[str, Any] = {"user_id": user_id, "k": 10, "horizon": "blend", "exclude": None,
                           "rank": None}  # fmt: skip
    explain, events = False, 3
    for key, value in got.items():
        if key == "k":
            if not _INT.fullmatch(value) or int(value) > max_k:
                return None
            out["k"] = int(value)
        elif key == "horizon":
            if value not in HORIZONS:
                return None
            out["horizon"] = value
        elif key == "rank":
            if value not in ("rerank", "vector"):
                return None
            out["rank"] = value
        elif key == "exclude":
            out["exclude"] = value
        elif key == "explain":
            if value not in _BOOL:
                return None
            explain = _BOOL[value]
        elif not _INT.fullmatch(value) or int(value) > 20:  # explain_events: 1..20
            return None
        else:
            events = int(value)
    return out, explain, events


def plain_get(scope: Scope, suffix: str) -> bool:
    """Whether ``scope`` is an HTTP GET of a path ending in ``suffix``, served at the root
    (the request a lean path may answer)."""
    return (
        scope["type"] == "http"
        and scope["method"] == "GET"
        and scope["path"].endswith(suffix)
        and not scope.get("root_path")
    )


def fast_params(path: str, query: bytes, max_k: int) -> dict[str, Any] | None:
    """The route's arguments of a plainly valid request without an explanation, else
    ``None`` (see :func:`parse_recommendations`)."""
    got = parse_recommendations(path, query, max_k)
    return got[0] if got is not None and not got[1] else None


async def send_json(
    send: Send, status: int, body: Any, headers: Mapping[str, str] | None = None
) -> None:
    """Send a whole JSON answer (the lean paths' response, without Starlette's)."""
    raw = orjson.dumps(body)
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-length", str(len(raw)).encode()),
                    (b"content-type", b"application/json"), *extra],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": raw})


class FastRecommendations:
    """ASGI middleware: answers plain ``/recommendations`` requests itself (see the module)."""

    def __init__(self, app: ASGIApp, state: ApiState) -> None:
        """Wrap ``app``."""
        self.app = app
        self.state = state
        self.max_k = int(state.settings.max_k)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if plain_get(scope, _SUFFIX):
            start = time.perf_counter()
            params = fast_params(scope["path"], scope.get("query_string", b""), self.max_k)
            if params is not None:
                try:
                    out, _cand = await recommend(self.state, **params)
                except Exception:  # the app answers it: errors are its job
                    out = None
                if out is not None:
                    await self._answer(send, out, start)
                    return
        await self.app(scope, receive, send)

    async def _answer(self, send: Send, out: dict[str, Any], start: float) -> None:
        await send_json(send, 200, out)
        ms = (time.perf_counter() - start) * 1000.0
        self.state.metrics.latency.labels("GET", ROUTE, "200").observe(ms)
