"""The API side of ``explain=true`` (api/explain.py): the bound on explanations in flight
(requests beyond it are answered 503 ``explain_unavailable`` with ``Retry-After`` before
reaching the app; plain requests are never counted) and the worker client over real HTTP.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from interest_stream.api.app import create_app
from interest_stream.api.explain import ExplainAdmission, _asks_explain
from interest_stream.api.explain_fast import explain_params


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


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/v1/users/u1/recommendations", "explain=true", ({"k": 10, "horizon": "blend"}, 3)),
        (
            "/v1/users/u1/recommendations",
            "k=5&explain=1&explain_events=7&horizon=short",
            ({"k": 5, "horizon": "short"}, 7),
        ),
        ("/v1/users/u1/recommendations", "explain=yes", None),  # FastAPI's to parse
        ("/v1/users/u1/recommendations", "explain=true&explain_events=21", None),
        ("/v1/users/u1/recommendations", "explain=true&explain=true", None),
        ("/v1/users/u1/recommendations", "explain=true&k=0", None),
        ("/v1/users/u1/interest", "explain=true", None),
    ],
)
def test_which_explanations_take_the_lean_path(path: str, query: str, expected: Any) -> None:
    got = explain_params(path, query.encode(), max_k=100)
    if expected is None:
        assert got is None
        return
    assert got is not None
    params, top = got
    assert (top, params["user_id"]) == (expected[1], "u1")
    assert {k: params[k] for k in expected[0]} == expected[0]


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


def test_worker_directory_over_real_http() -> None:
    """WorkerDirectory against a stub worker (aiohttp server): the owner from
    /assignment/, the targets as base64 float32, 429 -> 503 with Retry-After, a worker
    slower than the timeout -> 503, 404 from every worker -> 404 unknown_user."""
    import base64
    import json

    import numpy as np
    from aiohttp import web

    from interest_stream.api.errors import ApiError
    from interest_stream.api.explain import WorkerDirectory
    from interest_stream.core.kafka import free_port

    seen: list[dict[str, Any]] = []

    async def assignment(request: web.Request) -> web.Response:
        return web.json_response({"partition_count": 4, "partitions": [0, 1, 2, 3]})

    async def explain(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        seen.append(body)
        user = body["user_id"]
        if user == "busy":
            return web.json_response({"error": "busy"}, status=429, headers={"Retry-After": "2"})
        if user == "slow":
            await asyncio.sleep(1.0)
        if user == "nobody":
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response({"user_id": user, "results": [{"score": 1.0}]})

    async def scenario() -> None:
        app = web.Application()
        app.router.add_get("/assignment/", assignment)
        app.router.add_post("/explain/", explain)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        d = WorkerDirectory([f"http://127.0.0.1:{port}"], timeout_s=0.3)
        try:
            t = np.arange(6, dtype=np.float32).reshape(2, 3)
            got = await d.explain("u1", t, horizon="blend", weight=0.5, top=3)
            assert got["results"] == [{"score": 1.0}]
            raw = base64.b64decode(seen[-1]["targets_f32"])
            assert np.array_equal(np.frombuffer(raw, "<f4").reshape(2, 3), t)
            for user, status, code in (
                ("busy", 503, "explain_unavailable"),
                ("slow", 503, "explain_unavailable"),
                ("nobody", 404, "unknown_user"),
            ):
                with pytest.raises(ApiError) as err:
                    await d.explain(user, t, horizon="blend", weight=0.5, top=3)
                assert (err.value.status, err.value.code) == (status, code), user
                if user == "busy":
                    assert err.value.headers == {"Retry-After": "2"}
        finally:
            await d.aclose()
            await runner.cleanup()

    asyncio.run(scenario())
