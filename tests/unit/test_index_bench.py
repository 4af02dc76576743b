"""The index benchmark runs end to end on a small configuration."""

from __future__ import annotations

import numpy as np

from bench.index import bench_index, latency_summary, synthetic_users
from interest_stream.index import FaissConfig


def test_synthetic_users_are_unit_vectors() -> None:
    for dist in ("clustered", "uniform"):
        users, queries = synthetic_users(500, 8, n_queries=20, distribution=dist)  # type: ignore[arg-type]
        assert users.shape == (500, 8) and queries.shape == (20, 8)
        assert users.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(users, axis=1), 1.0, atol=1e-5)


def test_latency_summary() -> None:
    s = latency_summary([0.001] * 99 + [0.010])
    assert s["n"] == 100 and s["p50_ms"] == 1.0 and s["max_ms"] == 10.0
    assert latency_summary([]) == {"n": 0}


def test_bench_index_small() -> None:
    r = bench_index(
        4000, 16, n_queries=50, exact_queries=10, k=20, batches=(1, 100), small_users=500,
        budget_s=0.05, config=FaissConfig(ivf_min_rows=2000), progress=False,
    )  # fmt: skip
    aud = r["audience"]
    assert aud["structure"]["kind"] == "ivf" and aud["recall_at_k"] >= 0.9
    assert aud["index"]["n"] == 50 and aud["exact"]["n"] == 10
    assert {u["batch"] for u in r["upsert"]["large"]["update"]} == {1, 100}
    assert r["upsert"]["small"]["structure"]["blend"] == "flat"
    assert set(r["targets"]) == {"audience_p99_ms", "recall_at_100", "met"}
