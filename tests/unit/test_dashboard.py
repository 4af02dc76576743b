"""The dashboard's routes with FastAPI's TestClient (the browser test drives the page itself)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from interest_stream.api import create_app, get_state
from interest_stream.api.dashboard import HISTORY_S, STATIC_DIR, LiveHistory, top_categories
from interest_stream.api.metrics import ApiMetrics
from interest_stream.core.settings import Settings
from interest_stream.index import ItemIndex

DIM = 8


def _catalogue(categories: bool) -> ItemIndex:
    rng = np.random.default_rng(5)
    ids = [f"i{j}" for j in range(120)]
    meta = {i: {"category": f"c{j % 4}"} for j, i in enumerate(ids)} if categories else None
    return ItemIndex(ids, rng.standard_normal((120, DIM)), model_version="m9",
                     backend="numpy", meta=meta)  # fmt: skip


def _client(items: ItemIndex | None) -> Iterator[tuple[Any, TestClient]]:
    app = create_app(Settings(), item_index=items, start_consumer=False, forget_hooks=[])
    state = get_state(app)
    rng = np.random.default_rng(6)
    for uid in ("u1", "a/b c"):
        state.users.upsert(uid, 2, rng.standard_normal(DIM).astype(np.float32),
                           rng.standard_normal(DIM).astype(np.float32),
                           {"recent_items": ["i1", "i2", "i3"], "purchased": ["i2"],
                            "model_version": "m9", "event_time": 1_700_000_000_000})  # fmt: skip
    with TestClient(app) as client:
        yield state, client


@pytest.fixture
def dash() -> Iterator[tuple[Any, TestClient]]:
    yield from _client(_catalogue(categories=True))


def test_page_and_assets(dash: tuple[Any, TestClient]) -> None:
    _, client = dash
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text == (STATIC_DIR / "index.html").read_text()
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    for name, kind in (("dashboard.js", "javascript"), ("dashboard.css", "css")):
        r = client.get(f"/dashboard/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    assert "innerHTML" not in client.get("/dashboard/dashboard.js").text  # text nodes only
    for bad in ("index.html", "..%2Fdashboard.py", "x.js"):
        r = client.get(f"/dashboard/{bad}")
        assert r.status_code == 404 and r.json()["error"] == "not_found", bad


def test_explorer_answer(dash: tuple[Any, TestClient]) -> None:
    state, client = dash
    r = client.get("/v1/dashboard/users/u1", params={"k": 4})
    assert r.status_code == 200
    body = r.json()
    assert body["version"] == 2 and body["model_version"] == "m9" and body["catalogue"] is True
    assert [e["item_id"] for e in body["recent"]] == ["i3", "i2", "i1"]  # newest first
    assert body["recent"][0]["category"] == "c3" and body["purchased"] == ["i2"]
    for horizon in ("short", "long"):
        want = state.items.search(state.users.vector("u1", horizon), 4)
        got = body[horizon]["items"]
        assert [g["item_id"] for g in got] == [i for i, _ in want]
        assert all(g["category"] == f"c{int(g['item_id'][1:]) % 4}" for g in got)
        shares = [c["share"] for c in body[horizon]["categories"]]
        assert shares == sorted(shares, reverse=True) and 0.99 <= sum(shares) <= 1.01
    # ids with "/" and spaces reach the route percent-encoded
    assert client.get("/v1/dashboard/users/a%2Fb%20c").json()["user_id"] == "a/b c"
    missing = client.get("/v1/dashboard/users/nobody")
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_user"
    assert client.get("/v1/dashboard/users/u1", params={"k": 0}).status_code == 422


def test_explorer_etag_follows_the_version(dash: tuple[Any, TestClient]) -> None:
    state, client = dash
    first = client.get("/v1/dashboard/users/u1")
    etag = first.headers["etag"]
    same = client.get("/v1/dashboard/users/u1", headers={"If-None-Match": etag})
    assert same.status_code == 304 and same.content == b""
    other_k = client.get("/v1/dashboard/users/u1?k=3", headers={"If-None-Match": etag})
    assert other_k.status_code == 200
    state.users.upsert("u1", 3, np.ones(DIM, np.float32), np.ones(DIM, np.float32))
    changed = client.get("/v1/dashboard/users/u1", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["version"] == 3


def test_live_counters_without_consumer(dash: tuple[Any, TestClient]) -> None:
    _, client = dash
    live = client.get("/v1/dashboard/live").json()
    assert live["consumer"] == "disabled" and live["model_version"] == "m9"
    assert live["records"] == {"applied": 0, "stale": 0, "malformed": 0, "tombstones": 0}
    # no INTEREST_WORKER_URLS: the page must not ask for explanations (they would be 503s)
    assert live["explain"] is False


def test_without_categories_or_model() -> None:
    for _, client in _client(_catalogue(categories=False)):
        body = client.get("/v1/dashboard/users/u1").json()
        assert body["short"]["categories"] is None and len(body["short"]["items"]) == 10
        assert body["recent"][0] == {"item_id": "i3", "category": None}
    for _, client in _client(None):
        body = client.get("/v1/dashboard/users/u1").json()
        assert body["catalogue"] is False and body["short"] is None and body["long"] is None


def test_top_categories_weighs_rank() -> None:
    items = _catalogue(categories=True)  # category of iN = c(N % 4)
    hits = [("i1", 9.0), ("i5", 8.0), ("i2", 7.0), ("i6", 6.0), ("i10", 5.0)]
    cats = top_categories(hits, items, n=5)
    assert cats is not None and [c["category"] for c in cats] == ["c1", "c2"]
    w = [1 / np.log2(r + 2) for r in range(5)]
    assert cats[0]["share"] == pytest.approx((w[0] + w[1]) / sum(w), abs=1e-3)
    assert top_categories([("unknown", 1.0)], items) is None
    assert top_categories(hits, items, n=1) == [cats[0]]


def test_live_history_for_the_time_charts(dash: tuple[Any, TestClient]) -> None:
    state, client = dash
    history = LiveHistory(state, seconds=5, every_s=1.0)
    state.metrics.observe_freshness([10.0, 20.0, 30.0, 40.0, 50.0])
    first = history.sample()
    assert first["rate"] is None  # no previous sample to take a rate from
    assert first["p50_ms"] == 30.0 and first["p99_ms"] == pytest.approx(49.6)
    assert first["model_version"] == "m9" and first["lag"] is None
    second = history.sample()
    assert second["rate"] == 0.0 and second["p50_ms"] is None  # nothing applied in between
    state.metrics.observe_freshness([500.0])
    assert history.sample()["p99_ms"] == 500.0  # only that interval's samples
    for _ in range(10):
        history.sample()
    assert len(history.samples) == 6  # bounded to the window
    assert history.since(history.samples[-2]["t"] - 1)[-1] is history.samples[-1]
    # the app samples from its start (lifespan task); ?since= returns only newer samples
    deadline = time.monotonic() + 30
    live = client.get("/v1/dashboard/live").json()
    while not live["history"] and time.monotonic() < deadline:
        time.sleep(0.1)
        live = client.get("/v1/dashboard/live").json()
    assert live["history_s"] == HISTORY_S and len(live["history"]) >= 1
    newest = live["history"][-1]
    assert set(newest) == {"t", "rate", "p50_ms", "p99_ms", "lag", "model_version"}
    later = client.get("/v1/dashboard/live", params={"since": newest["t"]}).json()["history"]
    assert all(s["t"] > newest["t"] for s in later)
    assert client.get("/v1/dashboard/live", params={"since": -1}).status_code == 422


def test_freshness_since_returns_one_interval() -> None:
    m = ApiMetrics()
    mark, tail = m.freshness_since(0)
    assert mark == 0 and tail.size == 0
    m.observe_freshness([1.0, 2.0])
    mark, tail = m.freshness_since(mark)
    assert mark == 2 and sorted(tail.tolist()) == [1.0, 2.0]
    m.observe_freshness([3.0])
    mark, tail = m.freshness_since(mark)
    assert mark == 3 and tail.tolist() == [3.0]


def test_page_has_the_time_charts() -> None:
    page = (STATIC_DIR / "index.html").read_text()
    for chart in ("chart-rate", "chart-fresh", "chart-lag"):
        assert f'<svg id="{chart}"' in page
    script = (STATIC_DIR / "dashboard.js").read_text()
    assert "createElementNS" in script and "innerHTML" not in script
