"""``bench serve --ef-sweep``: OpenSearch audience recall@k and latency per ``ef_search``.

Queries go straight to the cluster (no API in between), one at a time, per horizon,
against exact inner-product search over the same synthetic users.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from interest_stream.index.opensearch_store import OpenSearchStore

__all__ = ["ef_sweep", "segments", "wait_merges"]


def segments(store: OpenSearchStore) -> int:
    """Searchable segments of the index's primaries (recall depends on it)."""
    stats = store.client.indices.stats(index=store.index, metric="segments")
    return int(stats["_all"]["primaries"]["segments"]["count"])


def wait_merges(store: OpenSearchStore, timeout_s: float = 300.0) -> float:
    """Wait until the index runs no merge (after a bulk load); returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        stats = store.client.indices.stats(index=store.index, metric="merge")
        if int(stats["_all"]["primaries"]["merges"]["current"]) == 0:
            break
        time.sleep(1.0)
    return round(time.perf_counter() - t0, 1)


def ef_sweep(
    store: OpenSearchStore,
    mats: Mapping[str, np.ndarray],
    queries: np.ndarray,
    efs: Sequence[int],
    k: int,
    *,
    max_queries: int = 100,
) -> list[dict[str, Any]]:
    """Recall@k (mean, min) and p50/p99 per ``ef_search`` in ``efs`` and horizon in ``mats``.

    At most ``max_queries`` of ``queries`` (the first ones) per setting.
    """
    out: list[dict[str, Any]] = []
    queries = queries[:max_queries]
    exact = {h: np.argsort(-(queries @ m.T), axis=1)[:, :k] for h, m in mats.items()}
    before = store.ef_search
    try:
        for ef in efs:
            store.ef_search = ef
            for horizon, top in exact.items():
                store.audience(queries[0], k, horizon)  # warm this ef's path
                lat: list[float] = []
                recall: list[float] = []
                for j in range(queries.shape[0]):
                    t = time.perf_counter()
                    got = store.audience(queries[j], k, horizon)
                    lat.append((time.perf_counter() - t) * 1000)
                    ids = {int(u[1:]) for u, _ in got if u.startswith("u")}
                    recall.append(len(ids & set(top[j].tolist())) / k)
                q = np.percentile(lat, [50, 99])
                out.append(
                    {
                        "ef_search": ef,
                        "horizon": horizon,
                        "queries": len(lat),
                        "recall_at_k": round(float(np.mean(recall)), 4),
                        "recall_min": round(float(np.min(recall)), 4),
                        "p50_ms": round(float(q[0]), 1),
                        "p99_ms": round(float(q[1]), 1),
                    }
                )
    finally:
        store.ef_search = before
    return out
