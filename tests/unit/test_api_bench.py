"""The API benchmark runs end to end (tiny: server and load generator as child processes)."""

from __future__ import annotations

from interest_stream.api.bench import bench_api


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
