"""Index benchmark: audience queries over synthetic users, and user-index upserts.

Called by ``interest-stream bench index --json`` and ``bench/bench_index.py``.

What is measured, in one run on one machine:

* **audience query** - top-100 users for one item vector (one query per call,
  as the API issues it) through :meth:`FaissIndex.search`: latency p50/p99 and
  recall@100 against exact search over the same users, plus the latency of that
  exact search (``IndexFlatIP``, one query per call) as the baseline;
* **upserts** - :meth:`UserIndex.upsert_many` users/s: the initial fill (new
  users, batches of 10,000, including the exact -> IVF rebuilds on the way) and
  updates of existing users in batches of 1, 100 and 10,000.

Synthetic users are *clustered* by default: each user mixes two of
``n_topics`` random unit "interest topics" plus noise, and each query item is a
topic plus noise - the shape of real interest vectors. ``distribution="uniform"``
gives isotropic Gaussian vectors, the worst case for IVF (no cluster structure,
so IVF must probe a large share of its lists to reach the recall target).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from interest_stream.index.faiss_backend import (
    FaissConfig,
    FaissIndex,
    _faiss,
    get_threads,
    set_threads,
)
from interest_stream.index.user_index import UserIndex, UserRecord

__all__ = ["bench_index", "latency_summary", "synthetic_users"]

logger = logging.getLogger(__name__)

Distribution = Literal["clustered", "uniform"]


def _normalize(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def synthetic_users(
    n: int,
    dim: int,
    *,
    n_queries: int = 1000,
    distribution: Distribution = "clustered",
    n_topics: int = 1000,
    noise: float = 0.5,
    seed: int = 0,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Unit user vectors ``[n, dim]`` and unit query (item) vectors ``[n_queries, dim]``.

    Args:
        n: Users.
        dim: Dimension.
        n_queries: Query vectors.
        distribution: ``clustered`` (two-topic mixtures + noise) or ``uniform``.
        n_topics: Topics of the clustered distribution.
        noise: Noise norm relative to a unit topic.
        seed: Random seed.
    """
    rng = np.random.default_rng(seed)
    users = np.empty((n, dim), dtype=np.float32)
    chunk = 100_000
    if distribution == "uniform":
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            users[s:e] = rng.standard_normal((e - s, dim), dtype=np.float32)
        queries = rng.standard_normal((n_queries, dim), dtype=np.float32)
        return _normalize(users), _normalize(queries)
    topics = _normalize(rng.standard_normal((n_topics, dim), dtype=np.float32))
    scale = np.float32(noise / np.sqrt(dim))
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        m = e - s
        w = rng.uniform(0.5, 1.0, (m, 1)).astype(np.float32)
        a = topics[rng.integers(0, n_topics, m)]
        b = topics[rng.integers(0, n_topics, m)]
        users[s:e] = w * a + (1 - w) * b + scale * rng.standard_normal((m, dim), dtype=np.float32)
    q = topics[rng.integers(0, n_topics, n_queries)]
    q = q + scale * rng.standard_normal((n_queries, dim), dtype=np.float32)
    return _normalize(users), _normalize(q.astype(np.float32))


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean latency in ms and calls per second of a list of durations."""
    arr = np.asarray(seconds, dtype=np.float64) * 1000.0
    if arr.size == 0:
        return {"n": 0}
    return {
        "n": int(arr.size),
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p90_ms": round(float(np.percentile(arr, 90)), 3),
        "p99_ms": round(float(np.percentile(arr, 99)), 3),
        "max_ms": round(float(arr.max()), 3),
        "mean_ms": round(float(arr.mean()), 3),
        "per_s": round(float(1000.0 / arr.mean()), 1),
    }


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[bench index] {msg}", file=sys.stderr, flush=True)
    logger.info(msg)


def _machine() -> dict[str, Any]:
    faiss = _faiss()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "faiss_omp_threads": faiss.omp_get_max_threads(),
        "gpus": int(faiss.get_num_gpus()),
        "loadavg_1m_at_start": None if load[0] is None else round(load[0], 2),
    }


def _audience(
    users: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    *,
    k: int,
    config: FaissConfig,
    exact_queries: int,
    progress: bool,
    threads: int | None,
    build_threads: int | None,
) -> dict[str, Any]:
    faiss = _faiss()
    n, dim = users.shape
    ids = [f"u{i}" for i in range(n)]
    _say(progress, f"building the user index over {n:,} x {dim} vectors ...")
    set_threads(build_threads or threads)
    t0 = time.perf_counter()
    index = FaissIndex(dim, config=config)
    index.build(ids, users)
    build_s = time.perf_counter() - t0
    _, truth = faiss.knn(queries, users, k, metric=faiss.METRIC_INNER_PRODUCT)
    set_threads(threads)
    _say(progress, f"built {index.stats()['kind']} in {build_s:.1f}s: {index.stats()}")
    for q in queries[:20]:  # warm-up
        index.search(q, k)
    lat: list[float] = []
    found: list[list[str]] = []
    for q in queries:
        t = time.perf_counter()
        got, _ = index.search(q, k)
        lat.append(time.perf_counter() - t)
        found.append(got[0])
    recalls = [
        len({int(s[1:]) for s in f} & set(t.tolist())) / k
        for f, t in zip(found, truth, strict=True)
    ]
    _say(progress, f"exact baseline on {exact_queries} queries ...")
    flat = faiss.IndexFlatIP(dim)
    flat.add(users)
    exact_lat: list[float] = []
    for q in queries[:exact_queries]:
        t = time.perf_counter()
        flat.search(q[None, :], k)
        exact_lat.append(time.perf_counter() - t)
    del flat
    st = index.stats()
    return {
        "k": k,
        "build_s": round(build_s, 2),
        "build_threads": build_threads or threads,
        "query_threads": get_threads(),
        "structure": st,
        "index": latency_summary(lat),
        "recall_at_k": round(float(np.mean(recalls)), 4),
        "recall_at_k_p10": round(float(np.percentile(recalls, 10)), 4),
        "exact": latency_summary(exact_lat),
    }


def _upserts(
    users: npt.NDArray[np.float32],
    *,
    batches: Sequence[int],
    config: FaissConfig,
    budget_s: float,
    progress: bool,
    label: str,
) -> dict[str, Any]:
    n, dim = users.shape
    ids = [f"u{i}" for i in range(n)]
    rng = np.random.default_rng(1)
    idx = UserIndex(dim, config=config)
    fill_batch = 10_000
    _say(progress, f"[{label}] filling a user index with {n:,} new users (batch {fill_batch}) ...")
    t0 = time.perf_counter()
    longs = np.roll(users, 1, axis=0)
    for s in range(0, n, fill_batch):
        e = min(n, s + fill_batch)
        idx.upsert_many([UserRecord(ids[j], 1, users[j], longs[j]) for j in range(s, e)])
    fill_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "users": n,
        "fill": {
            "batch": fill_batch,
            "seconds": round(fill_s, 2),
            "users_per_s": round(n / fill_s),
        },
        "structure": {h: st.get("kind") for h, st in idx.stats()["sets"].items()},
        "update": [],
    }
    version = 2
    for batch in batches:
        _say(progress, f"[{label}] updates of existing users, batch {batch} ...")
        done, t_start, calls = 0, time.perf_counter(), 0
        while True:
            sel = rng.integers(0, n, batch)
            noise = rng.standard_normal((batch, dim), dtype=np.float32) * np.float32(0.05)
            short = users[sel] + noise
            recs = [UserRecord(ids[j], version, short[i], longs[j]) for i, j in enumerate(sel)]
            version += 1
            idx.upsert_many(recs)
            done += batch
            calls += 1
            elapsed = time.perf_counter() - t_start
            if elapsed >= budget_s and calls >= 3:
                break
        out["update"].append({
            "batch": batch,
            "users": done,
            "seconds": round(elapsed, 3),
            "users_per_s": round(done / elapsed),
            "ms_per_batch": round(1000 * elapsed / calls, 3),
        })  # fmt: skip
    idx.close()
    return out


def bench_index(
    n_users: int = 1_000_000,
    dim: int = 64,
    *,
    n_queries: int = 1000,
    exact_queries: int = 200,
    k: int = 100,
    distribution: Distribution = "clustered",
    batches: Sequence[int] = (1, 100, 10_000),
    small_users: int = 50_000,
    budget_s: float = 3.0,
    config: FaissConfig | None = None,
    threads: int | None = 1,
    build_threads: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the index benchmark and return its figures (JSON-able).

    Args:
        n_users: Synthetic users in the audience index.
        dim: Vector dimension.
        n_queries: Audience queries timed (one per call).
        exact_queries: Queries timed against the exact baseline.
        k: Users per audience query (recall@k is reported).
        distribution: ``clustered`` (default) or ``uniform`` synthetic vectors.
        batches: Update batch sizes timed.
        small_users: Also time updates on a user index of this many users (still
            exact search); 0 skips it.
        budget_s: Seconds spent per update batch size (at least 3 batches).
        config: FAISS knobs (defaults: :class:`FaissConfig()`).
        threads: FAISS OpenMP threads for queries and upserts (1, as the API
            serves; ``None`` keeps FAISS' default of one per core).
        build_threads: Threads for the audience index build (default: ``threads``).
        seed: Random seed.
        progress: Print progress to stderr.

    Returns:
        ``{"machine", "params", "audience", "upsert", "targets"}``.
    """
    cfg = config or FaissConfig()
    threads_before = get_threads()
    try:
        return _run(n_users, dim, n_queries, exact_queries, k, distribution, batches,
                    small_users, budget_s, cfg, threads, build_threads, seed, progress)  # fmt: skip
    finally:
        set_threads(threads_before)


def _run(
    n_users: int,
    dim: int,
    n_queries: int,
    exact_queries: int,
    k: int,
    distribution: Distribution,
    batches: Sequence[int],
    small_users: int,
    budget_s: float,
    cfg: FaissConfig,
    threads: int | None,
    build_threads: int | None,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    _say(progress, f"generating {n_users:,} {distribution} users of dim {dim} ...")
    users, queries = synthetic_users(
        n_users, dim, n_queries=n_queries, distribution=distribution, seed=seed
    )
    result: dict[str, Any] = {
        "machine": _machine(),
        "params": {
            "n_users": n_users,
            "dim": dim,
            "k": k,
            "distribution": distribution,
            "n_queries": n_queries,
            "exact_queries": exact_queries,
            "threads": threads,
            "build_threads": build_threads or threads,
            "config": {
                "ivf_min_rows": cfg.ivf_min_rows,
                "nlist_factor": cfg.nlist_factor,
                "nprobe": cfg.nprobe,
                "target_recall": cfg.target_recall,
            },
        },
    }
    result["audience"] = _audience(
        users, queries, k=k, config=cfg, exact_queries=exact_queries, progress=progress,
        threads=threads, build_threads=build_threads,
    )  # fmt: skip
    set_threads(threads)
    upserts = {
        "large": _upserts(
            users, batches=batches, config=cfg, budget_s=budget_s, progress=progress, label="large"
        )
    }
    if small_users and small_users < n_users:
        upserts["small"] = _upserts(
            users[:small_users], batches=batches, config=cfg, budget_s=budget_s,
            progress=progress, label="small",
        )  # fmt: skip
    result["upsert"] = upserts
    aud = result["audience"]
    result["targets"] = {
        "audience_p99_ms": 50.0,
        "recall_at_100": 0.95,
        "met": bool(aud["index"]["p99_ms"] < 50.0 and aud["recall_at_k"] >= 0.95),
    }
    return result
