"""The API's bound on ``explain=true`` requests in flight (api/explain.py ExplainAdmission).

Requests beyond the bound are answered 503 ``explain_unavailable`` with ``Retry-After``
before reaching the app; plain requests and other routes are never counted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from interest_stream.api.app import create_app
from interest_stream.api.explain import ExplainAdmission, _asks_explain


class _Gate:
    """An ASGI app that holds every request until released, counting what reached it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.reached: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.reached.append(scope["path"] + "?" + scope["query_string"].decode())
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


@pytest.mark.parametrize(
    ("path", "query", "asks"),
    [
        ("/v1/users/u1/recommendations", "k=10&explain=true", True),
        ("/v1/users/a/b/interest", "explain=1", True),
        ("/v1/users/u1/recommendations", "explain=false", False),
        ("/v1/users/u1/recommendations", "k=10", False),
        ("/v1/items/i1/similar", "explain=true", False),
    ],
)
def test_which_requests_are_explanations(path: str, query: str, asks: bool) -> None:
    scope = {"type": "http", "path": path, "query_string": query.encode()}
    assert _asks_explain(scope) is asks


def test_requests_over_the_bound_are_refused_at_once_and_plain_ones_pass() -> None:
    async def scenario() -> None:
        gate = _Gate()
        mw = ExplainAdmission(gate, limit=2)
        transport = httpx.ASGITransport(app=mw)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            url = "/v1/users/u{}/recommendations"
            held = [
                asyncio.create_task(c.get(url.format(i), params={"explain": "true"}))
                for i in range(2)
            ]
            while len(gate.reached) < 2:
                await asyncio.sleep(0.001)
            refused = await c.get(url.format(9), params={"explain": "true", "k": 5})
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"] == "explain_unavailable"
            assert len(gate.reached) == 2 and mw.refused == 1  # never reached the app
            plain = asyncio.create_task(c.get(url.format(3), params={"k": 5}))
            while len(gate.reached) < 3:  # a plain request is not bounded
                await asyncio.sleep(0.001)
            gate.release.set()
            assert [r.status_code for r in await asyncio.gather(*held, plain)] == [200] * 3
            assert mw.inflight == 0
            again = await c.get(url.format(9), params={"explain": "true"})
            assert again.status_code == 200

    asyncio.run(scenario())


def test_create_app_installs_the_bound_from_the_settings() -> None:
    from interest_stream.core.settings import Settings

    app = create_app(Settings(explain_max_inflight=3), start_consumer=False, forget_hooks=[])
    found = [m for m in app.user_middleware if m.cls is ExplainAdmission]
    assert len(found) == 1 and found[0].kwargs["limit"] == 3
