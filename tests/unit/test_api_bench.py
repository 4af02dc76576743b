"""The API benchmark runs end to end (tiny: server and load generator as child processes)."""

from __future__ import annotations

from bench.api import bench_api


def test_bench_api_small() -> None:
    r = bench_api(300, None, rate=50, duration=0.5, n_items=400, dim=8, concurrency=4,
                  progress=False)  # fmt: skip
    assert r["server"]["users"] == 300 and r["server"]["items"] == 400
    for ep in ("interest", "recommendations"):
        fixed, top = r[ep]["fixed_rate"], r[ep]["max_throughput"]
        assert fixed["errors"] == 0 and fixed["requests"] == 25
        assert top["requests"] > 0 and top["errors"] == 0
        assert fixed["p99_ms"] > 0 and "server_cpu_ms_per_request" in top
    assert "met" in r["targets"]
    # the server's garbage collections, per phase (a full collection is a tail-latency pause)
    assert len(r["server_gc"]["count"]) == 3 and r["server_gc"]["count"][0] > 0
    assert r["recommendations"]["fixed_rate"]["server_full_gc"]["full_collections"] >= 0


def test_bench_api_mixed_routes_all_answer() -> None:
    """The mixed load (GETs and audience POSTs) gets no error from a real server."""
    r = bench_api(200, None, rate=40, duration=1.0, n_items=300, dim=8, concurrency=4,
                  endpoints=("mixed",), progress=False)  # fmt: skip
    fixed = r["mixed"]["fixed_rate"]
    assert fixed["requests"] == 40 and fixed["errors"] == 0
    assert r["mixed"]["max_throughput"]["errors"] == 0


def test_mixed_requests_shares_and_quoting() -> None:
    import json
    import random

    from bench.api import MIX, mixed_requests

    reqs = mixed_requests(["a b/é", "u2"], ["i/1", "i2"], 20_000, random.Random(3))
    interest = sum(1 for m, p, _ in reqs if m == "GET" and p.endswith("/interest"))
    assert abs(interest / 20_000 - dict(MIX)["GET /v1/users/{user}/interest"]) < 0.015
    posts = [b for m, _, b in reqs if m == "POST"]
    share = dict(MIX)["POST /v1/audience"]
    assert abs(len(posts) / 20_000 - share) < 0.015
    assert all(json.loads(b)["item_id"] in ("i/1", "i2") for b in posts if b)
    paths = [p for m, p, _ in reqs if m == "GET"]
    assert all(" " not in p and "é" not in p for p in paths)
    assert any("/v1/users/a%20b%2F%C3%A9/" in p for p in paths)
    assert any("/v1/items/i%2F1/similar" in p for p in paths)
