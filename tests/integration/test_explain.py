"""Explanations end to end: real broker, ``interest-stream worker`` with a small trained
model (its encoder in the default child process), ``interest-stream serve`` with
``INTEREST_WORKER_URLS``, and the dashboard in a real Chromium.

* ``explain=true`` on recommendations, interest and audience answers events that are
  really in the user's window (read from the worker's ``/windows/`` view), with shares
  whose absolute values (all events + prior) sum to at most 1;
* the user's partition is the producers' (murmur2) one the worker holds;
* unknown and forgotten users answer 404, a worker that is gone 503;
* the dashboard shows "because of …" under recommended items and audience members.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import TAOBAO_HISTORIES

from interest_stream.api.errors import ApiError
from interest_stream.api.explain import WorkerDirectory, partition_of
from interest_stream.client import InterestClient
from interest_stream.core.checkpoint import load_item_vectors
from interest_stream.core.eventfile import read_events
from interest_stream.core.rerank import FEATURES, Reranker, item_stats, write_reranker
from interest_stream.core.settings import Settings
from interest_stream.procs import Service, http_get_json, wait_http
from interest_stream.streams.kafka_local.broker import free_port
from interest_stream.streams.replay import replay_events
from interest_stream.streams.topics import ensure_topics

pytestmark = pytest.mark.integration

N_USERS = 12
TOKEN = "explain-admin"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str
) -> Iterator[dict[str, Any]]:
    from model_helpers import tiny_train_config

    from interest_stream.models import train

    root = tmp_path_factory.mktemp("explain")
    df = read_events(TAOBAO_HISTORIES)
    model_dir = root / "model"
    train(df.head(20_000), model_dir, tiny_train_config(seed=3), progress=False)
    _write_reranker(model_dir, df.head(20_000))
    users = sorted(df["user_id"].unique())[:N_USERS]
    events = df[df["user_id"].isin(users)].reset_index(drop=True)
    ns = f"t{uuid.uuid4().hex[:10]}"
    port = free_port()
    types = ("view", "click", "cart", "fav", "purchase")
    s = Settings(
        kafka_bootstrap=kafka_bootstrap,
        event_topics=tuple(f"{ns}.events.{t}" for t in types),
        dlq_topic=f"{ns}.events.dlq", output_topic=f"{ns}.user-interest", app_id=f"{ns}-app",
        state_dir=root / "state", model_dir=model_dir, flush_ms=10, long_refresh_s=0.0,
        api_port=free_port(), worker_web_port=port, worker_urls=f"http://127.0.0.1:{port}",
        admin_token=TOKEN,
    )  # fmt: skip
    ensure_topics(s)
    logs = root / "logs"
    worker = Service.cli("worker", ["worker"], s, logs).start()
    api = Service.cli("api", ["serve"], s, logs).start()
    url = f"http://127.0.0.1:{s.api_port}"
    try:
        wait_http(f"{url}/readyz", timeout=120)
        wait_http(f"{s.worker_urls}/healthz/", timeout=120)
        replay_events(events, s)
        expected = events.groupby("user_id").size().to_dict()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            got = {u: http_get_json(f"{url}/v1/users/{u}/interest")[1] for u in expected}
            if all(isinstance(b, dict) and b.get("version") == n for u, b in got.items()
                   for n in [expected[u]]):  # fmt: skip
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the API did not get every user's final version")
        worker.check()
        api.check()
        yield {"settings": s, "api": url, "worker": s.worker_urls, "users": users,
               "model_dir": model_dir, "worker_service": worker}  # fmt: skip
    finally:
        api.stop()
        worker.stop(60)


def _write_reranker(model_dir: Path, events: Any) -> None:
    """A re-ranker with set weights (not fit: the fit's own tests are test_rerank.py) and
    the training events' item statistics: the API ranks /recommendations with it."""
    ids, _vecs, _cfg = load_item_vectors(model_dir)
    row = {i: r for r, i in enumerate(ids)}
    rows = np.array([row.get(str(i), -1) for i in events["item_id"]])
    ts = events["ts"].to_numpy()
    stats = item_stats(rows, ts, len(ids), int(ts.max()) + 1)
    w = {"s_blend": 1.0, "z_blend": 0.5, "in_recent": 0.8, "pos_decay": 0.6,
         "n_purchase": 0.4, "log_pop": 0.2, "log_trend_7d": 0.1}  # fmt: skip
    f = len(FEATURES)
    weights = np.array([w.get(name, 0.0) for name in FEATURES])
    write_reranker(model_dir, Reranker(FEATURES, np.zeros(f), np.ones(f), weights, 30), stats)


def _window(stack: dict[str, Any], user: str) -> dict[str, Any]:
    status, body = http_get_json(f"{stack['worker']}/windows/{user}/")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def _check(because: dict[str, Any], window: dict[str, Any]) -> None:
    """Every listed event is one of the window's, ranked by delta, shares consistent."""
    events = {(e["item_id"], e["event_type"], e["ts"]) for e in window["long"]}
    listed = because["events"]
    assert listed, because
    for e in listed:
        if e.get("group") == "older":
            assert 0 < e["events"] < len(window["long"])
        else:
            assert (e["item_id"], e["event_type"], e["ts"]) in events
    deltas = [e["delta"] for e in listed]
    assert deltas == sorted(deltas, reverse=True)
    assert sum(abs(e["share"]) for e in listed) + abs(because["prior_share"]) <= 1.0 + 1e-9
    for e in listed:
        assert e["share"] * e["delta"] >= 0  # signed like the delta


def test_recommendations_interest_and_audience_explained(stack: dict[str, Any]) -> None:
    api, user = stack["api"], stack["users"][0]
    window = _window(stack, user)
    # the API finds the worker by the producers' partition of the user
    parts = {int(k.rsplit(":", 1)[1]) for k in window["offsets"]}
    _, assignment = http_get_json(f"{stack['worker']}/assignment/")
    assert parts == {partition_of(user, assignment["partition_count"])}

    r = httpx.get(f"{api}/v1/users/{user}/recommendations",
                  params={"k": 10, "explain": "true", "explain_events": 4}, timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 10
    assert body["explain"]["method"] == "occlusion"
    # ranked by the re-ranker: its score is explained, feature by feature
    assert body["ranking"] == "rerank" and body["explain"]["scorer"] == "rerank"
    for it in body["items"]:
        b = it["because"]
        assert sum(f["value"] for f in b["features"]) == pytest.approx(b["score"], abs=1e-6)
        assert set(b["terms"]) == {f["name"] for f in b["features"] if f["kind"] == "item"}
        assert all(sum(e["by_kind"].values()) == pytest.approx(e["delta"]) for e in b["events"])
    # explain=yes goes through FastAPI's route and validation, explain=true through the
    # lean path (api/explain_fast.py): the same answer (the worker's cache: same variants)
    again = httpx.get(
        f"{api}/v1/users/{user}/recommendations",
        params={"k": 10, "explain": "yes", "explain_events": 4},
        timeout=30,
    )
    assert again.status_code == 200 and again.json() == body
    params = {"k": 3, "explain": "true", "rank": "vector"}
    vec = httpx.get(f"{api}/v1/users/{user}/recommendations", params=params, timeout=30).json()
    params["explain"] = "on"
    assert httpx.get(f"{api}/v1/users/{user}/recommendations", params=params,
                     timeout=30).json() == vec  # fmt: skip
    assert vec["explain"]["scorer"] == "vector" and "features" not in vec["items"][0]["because"]
    assert body["explain"]["version"] == window["version"]
    assert body["explain"]["history_events"] == len(window["long"])
    for it in body["items"]:
        _check(it["because"], window)
        assert len(it["because"]["events"]) <= 4
        # the worker re-encodes the same window: its score is the API's (long refresh 0 s)
        assert it["because"]["score"] == pytest.approx(it["score"], abs=1e-3)
    plain = httpx.get(f"{api}/v1/users/{user}/recommendations", params={"k": 10}).json()
    assert "explain" not in plain and all("because" not in it for it in plain["items"])
    assert [it["item_id"] for it in plain["items"]] == [it["item_id"] for it in body["items"]]

    r = httpx.get(f"{api}/v1/users/{user}/interest", params={"explain": "true"}, timeout=30)
    assert r.status_code == 200, r.text
    ex = r.json()["explain"]
    for horizon in ("short", "long"):
        assert ex[horizon]["items"], ex[horizon]
        for it in ex[horizon]["items"]:
            _check(it["because"], window)
        for cat in ex[horizon]["categories"]:
            _check(cat["because"], window)
    assert "explain" not in httpx.get(f"{api}/v1/users/{user}/interest").json()

    # the Python client wraps the same answers
    client = InterestClient(api, timeout=30)
    try:
        got = client.recommendations(user, 10, explain=True)
        assert [it.item_id for it in got] == [it["item_id"] for it in body["items"]]
        assert all(it.because is not None and it.because.events for it in got)
        ex_client = client.interest(user, explain=True).explain
        assert ex_client is not None and set(ex_client) == {"short", "long"}
        members = client.audience(item_id=body["items"][0]["item_id"], k=3, explain=True)
        assert all(m.because is not None for m in members)
    finally:
        client.close()

    item = body["items"][0]["item_id"]
    r = httpx.post(f"{api}/v1/audience",
                   json={"item_id": item, "k": 5, "explain": True}, timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    members = r.json()["users"]
    assert members
    for m in members:
        _check(m["because"], _window(stack, m["user_id"]))
        assert m["explain"]["method"] == "occlusion"
    print(f"\ntop reason for {item!r}: {body['items'][0]['because']['events'][0]}; "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip


def test_unknown_and_forgotten_users_404_and_no_worker_503(stack: dict[str, Any]) -> None:
    api, user = stack["api"], stack["users"][-1]
    r = httpx.get(f"{api}/v1/users/nobody-{uuid.uuid4().hex}/recommendations",
                  params={"explain": "true"})  # fmt: skip
    assert r.status_code == 404 and r.json()["error"] == "unknown_user"
    # the worker itself: a user it never saw
    r = httpx.post(f"{stack['worker']}/explain/", json={"user_id": "nobody", "targets": [[0.0]]})
    assert r.status_code == 404

    r = httpx.delete(f"{api}/v1/users/{user}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the worker applies the forget command
        if httpx.get(f"{stack['worker']}/windows/{user}/").status_code == 404:
            break
        time.sleep(0.2)
    for path in ("recommendations", "interest"):
        r = httpx.get(f"{api}/v1/users/{user}/{path}", params={"explain": "true"})
        assert r.status_code == 404, r.text
    dim = len(httpx.get(f"{api}/v1/users/{stack['users'][0]}/interest").json()["short"])
    r = httpx.post(f"{stack['worker']}/explain/", json={"user_id": user, "targets": [[0.0] * dim]})
    assert r.status_code == 404  # forgotten: nothing to explain

    # no worker at the configured address: 503 explain_unavailable
    gone = WorkerDirectory([f"http://127.0.0.1:{free_port()}"], timeout_s=2.0)
    with pytest.raises(ApiError) as err:
        asyncio.run(gone.explain(stack["users"][0], np.zeros((1, dim)), horizon="blend",
                                 weight=0.5, top=3))  # fmt: skip
    assert err.value.status == 503 and err.value.code == "explain_unavailable"
    none = WorkerDirectory([])
    with pytest.raises(ApiError) as err:
        asyncio.run(none.explain("u", np.zeros((1, dim)), horizon="blend", weight=0.5, top=3))
    assert err.value.status == 503


def test_dashboard_shows_because_of(stack: dict[str, Any]) -> None:
    from integration.test_dashboard_browser import CHROMIUM, _browser_or_fail

    sync_playwright = _browser_or_fail()
    api, user = stack["api"], stack["users"][1]
    item = httpx.get(f"{api}/v1/users/{user}/recommendations", params={"k": 1}).json()["items"][0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.goto(f"{api}/#user={user}")
            recs = page.get_by_test_id("recs")
            recs.locator("li").first.wait_for(timeout=30_000)
            first = recs.locator("li").first.inner_text()
            assert "because of" in first and "prior" in first, first
            page.fill("#audience-item", item["item_id"])
            page.click("#audience-form button")
            members = page.get_by_test_id("audience")
            members.locator("li").first.wait_for(timeout=30_000)
            text = members.locator("li").first.inner_text()
            assert "because of" in text, text
            print(f"\ndashboard: {first!r} / {text!r}")
        finally:
            browser.close()
