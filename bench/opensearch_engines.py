"""Which k-NN engine for the user index: faiss or lucene HNSW, recall@100 and latency.

Writes the same users (real-looking vectors: a low-rank mixture with a spread of norms,
as the encoder's inner-product vectors have) into one index per engine on a running
cluster, then runs the same audience queries against both and against exact search.

    python bench/opensearch_engines.py --url http://127.0.0.1:9200 --users 20000 --dim 64

``faiss`` needs the plugin's JNI libraries, which the Maven Central zip lacks: on the
local cluster only ``lucene`` runs (a ``faiss`` mapping kills the node).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from interest_stream.core.records import UserRecord
from interest_stream.index.opensearch_store import OpenSearchStore, Upsert


def _users(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((32, dim)).astype(np.float32)
    pick = rng.integers(0, 32, n)
    vecs = centres[pick] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    norms = rng.lognormal(0.0, 0.3, (n, 1)).astype(np.float32)
    out: np.ndarray = vecs / np.linalg.norm(vecs, axis=1, keepdims=True) * norms
    return out.astype(np.float32)


def run(url: str, n: int, dim: int, queries: int, k: int, engines: list[str]) -> dict[str, object]:
    """Fill one index per engine and measure recall@k and query latency."""
    vecs = _users(n, dim, 1)
    qs = _users(queries, dim, 2)
    exact = np.argsort(-(qs @ vecs.T), axis=1)[:, :k]
    out: dict[str, object] = {"users": n, "dim": dim, "queries": queries, "k": k}
    for engine in engines:
        store = OpenSearchStore(url, f"bench-engine-{engine}", engine=engine)  # type: ignore[arg-type]
        store.client.indices.delete(index=store.index, ignore_unavailable=True)
        store.ensure_index(dim)
        t0 = time.perf_counter()
        for lo in range(0, n, 2000):
            ups = [
                Upsert(UserRecord(str(i), 1, vecs[i], vecs[i]), 0, i)
                for i in range(lo, min(n, lo + 2000))
            ]
            assert all(o.result == "applied" for o in store.write(ups))
        store.refresh()
        store.client.indices.forcemerge(index=store.index, max_num_segments=1)
        load_s = time.perf_counter() - t0
        store.audience(qs[0], k, "short")  # warm the graph into memory
        lat, recall = [], []
        for j in range(queries):
            t = time.perf_counter()
            got = store.audience(qs[j], k, "short")
            lat.append((time.perf_counter() - t) * 1000)
            recall.append(len({int(u) for u, _ in got} & set(exact[j].tolist())) / k)
        out[engine] = {
            "recall_at_k": round(float(np.mean(recall)), 4),
            "recall_min": round(float(np.min(recall)), 4),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "load_s": round(load_s, 1),
        }
        store.client.indices.delete(index=store.index, ignore_unavailable=True)
        store.close()
    return out


def main() -> None:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", default="http://127.0.0.1:9200")
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--engines", default="lucene", help="comma-separated: lucene,faiss")
    a = ap.parse_args()
    out = run(a.url, a.users, a.dim, a.queries, a.k, a.engines.split(","))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
