"""The lean path of ``GET /v1/users/{id}/interest``: the user's record, byte for byte the
route's answer, without FastAPI's middleware, routing, parameter solving and response
validation of two vectors (about half of that request's ~1.2-1.4 ms of API CPU in a
py-spy profile: docs/RESULTS.md, issue #15, third pass).

Only plainly valid requests take it: an id of 1-128 characters and, among the route's
parameters, at most ``explain=false|0`` and ``explain_events`` 1..20, each once (other
parameters are ignored, as the route ignores them). Anything else (``explain=true``, a
value FastAPI would refuse or coerce, a repeated parameter) and every error (unknown
user, a store that did not answer) goes through the app, whose answers stay the
reference. The answer is timed under the route's label like every other request.

The body is the route's bytes: FastAPI serializes a ``response_model`` with pydantic-core
(``InterestOut`` of :meth:`UserRecord.to_dict`, unset fields left out), whose spelling of
floats and strings orjson shares (checked at every float32 magnitude by the unit test,
tests/unit/test_fast_interest.py, with the route itself as the reference).
"""

from __future__ import annotations

import re
import time
from typing import Final
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from interest_stream.api.fast_path import plain_get
from interest_stream.api.state import ApiState
from interest_stream.core.records import UserRecord

__all__ = ["ROUTE", "FastInterest", "interest_body", "interest_user"]

_PREFIX: Final = "/v1/users/"
_SUFFIX: Final = "/interest"
ROUTE: Final = "/v1/users/{user_id}/interest"
_EVENTS = re.compile(r"[1-9][0-9]?")
_FALSE: Final = frozenset({"false", "0"})
_KNOWN: Final = frozenset({"explain", "explain_events"})


def interest_user(path: str, query: bytes) -> str | None:
    """The user id of a plainly valid ``/interest`` request without an explanation, else
    ``None`` (the app then answers it)."""
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    user_id = path[len(_PREFIX) : -len(_SUFFIX)]
    if not 1 <= len(user_id) <= 128:
        return None
    if query:
        seen: set[str] = set()
        for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if key not in _KNOWN:
                continue
            if key in seen:
                return None  # a repeated parameter
            seen.add(key)
            if key == "explain":
                if value not in _FALSE:
                    return None
            elif not _EVENTS.fullmatch(value) or int(value) > 20:  # explain_events: 1..20
                return None
    return user_id


def interest_body(rec: UserRecord) -> bytes:
    """The route's JSON body for ``rec`` (the same bytes as FastAPI's answer).

    Raises:
        TypeError: A value orjson cannot write (e.g. a lone surrogate in an id): the
            caller leaves the request to the app.
    """
    return orjson.dumps(rec.to_dict())


class FastInterest:
    """ASGI middleware: answers plain ``/interest`` requests itself (see the module)."""

    def __init__(self, app: ASGIApp, state: ApiState) -> None:
        """Wrap ``app``."""
        self.app = app
        self.state = state
        self.latency = state.metrics.latency.labels("GET", ROUTE, "200")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if plain_get(scope, _SUFFIX):
            start = time.perf_counter()
            user_id = interest_user(scope["path"], scope.get("query_string", b""))
            body = None
            if user_id is not None:
                try:
                    rec = await self.state.users_call(self.state.users.get, user_id)
                    body = interest_body(rec)
                except Exception:  # the app answers it: errors are its job
                    body = None
            if body is not None:
                await send({
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode()),
                                (b"content-type", b"application/json")],
                })  # fmt: skip
                await send({"type": "http.response.body", "body": body})
                self.latency.observe((time.perf_counter() - start) * 1000.0)
                return
        await self.app(scope, receive, send)
