"""``interest-stream bench serve``: the user store in FAISS (in-process) vs OpenSearch, same run.

Synthetic users (random vectors: a low-rank mixture of 32 clusters with log-normal
norms, as in ``bench/opensearch_engines.py``; not a checkpoint's item space) are
produced to a fresh output topic; then, per store:

* ``faiss``: an API replica (``interest-stream serve``) consumes the topic into its
  in-process index: its catch-up rate (upserts/s) and resident memory;
* ``opensearch``: ``--sinks`` sink processes write the topic into a fresh index of the
  running cluster (upserts/s; sink and node CPU per 1,000 upserts) and an API replica in
  opensearch mode serves from it (resident memory: no users in memory).

Both replicas then get the same load: GET interest open-loop at ``--rate`` req/s
(p50/p99), audience queries one at a time (p50/p99, recall@100 against exact search
over the blend vectors), and probes of the write->searchable delay (a new user whose
vector is the query's direction, produced to the topic; the time until an audience
query returns it). Needs a broker (``INTEREST_KAFKA_BOOTSTRAP``) and, for opensearch, a
cluster (``INTEREST_OPENSEARCH_URL``) running.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from kafka import KafkaProducer

from bench.api import _cpu_seconds, load_phase
from bench.serve_sweep import ef_sweep, segments, wait_merges
from interest_stream.core.kafka import free_port
from interest_stream.core.settings import Settings, settings_environ
from interest_stream.index.faiss_structure import FaissConfig
from interest_stream.index.opensearch_store import HnswParams, OpenSearchStore
from interest_stream.sink import sink_group
from interest_stream.streams.topics import ensure_topics

__all__ = ["STORES", "bench_serve", "synthetic_vectors"]

logger = logging.getLogger(__name__)

STORES = ("faiss", "opensearch")
BLEND = 0.5  # no checkpoint: the API's and the sink's blend weight


def synthetic_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` vectors of a 32-cluster mixture with log-normal norms (inner product != cosine)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((32, dim)).astype(np.float32)
    vecs = centres[rng.integers(0, 32, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    norms = rng.lognormal(0.0, 0.3, (n, 1)).astype(np.float32)
    out: np.ndarray = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True) * norms).astype(
        np.float32
    )
    return out


def _vec6(v: np.ndarray) -> str:
    return "[" + ",".join(["%.6g" % x for x in v.tolist()]) + "]"  # noqa: UP031 (fastest)


def _record(uid: str, version: int, short: np.ndarray, long: np.ndarray) -> bytes:
    """The output record of a synthetic user (vectors rounded to 6 significant digits)."""
    now = int(time.time() * 1000)
    rec = {
        "user_id": uid,
        "version": version,
        "event_time": now,
        "updated_at": now,
        "model_version": "bench",
        "recent": [],
        "purchased": [],
    }
    head = json.dumps(rec)[:-1]
    return f'{head}, "short": {_vec6(short)}, "long": {_vec6(long)}}}'.encode()


def _produce(settings: Settings, short: np.ndarray, long: np.ndarray) -> float:
    """Every user's record to the output topic; returns the seconds it took."""
    t0 = time.perf_counter()
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        linger_ms=20,
        batch_size=1 << 20,
        max_request_size=16 << 20,
        compression_type=None,
    )
    for i in range(short.shape[0]):
        uid = f"u{i}"
        producer.send(
            settings.output_topic, key=uid.encode(), value=_record(uid, 1, short[i], long[i])
        )
    producer.flush()
    producer.close()
    return time.perf_counter() - t0


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        return None
    return None


def _load_avg() -> float:
    return round(os.getloadavg()[0], 2)


#: An API replica without the lean paths (``create_app(fast_path=False)``): every request
#: through FastAPI's routing and response validation (the A/B of ``lean_ab``).
_SERVE_ROUTES_ONLY = (
    "from interest_stream.api import serve; from interest_stream.cli_common import "
    "cli_settings; serve(cli_settings(), fast_path=False)"
)


@contextmanager
def _api(
    settings: Settings, store: str, log: Path, *, fast_path: bool = True
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """An API replica (``interest-stream serve``) of ``store`` on a free port.

    ``fast_path=False``: the same replica without the lean paths (FastAPI answers all).
    """
    port = free_port()
    env = settings_environ(settings)
    env.update(
        INTEREST_API_PORT=str(port),
        INTEREST_USER_STORE=store,
        INTEREST_LOG_LEVEL="WARNING",
    )
    env.pop("INTEREST_MODEL_DIR", None)
    cmd = [sys.executable, "-m", "interest_stream.cli", "serve"]
    if not fast_path:
        cmd = [sys.executable, "-c", _SERVE_ROUTES_ONLY]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait(cond: Any, timeout: float, what: str, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(every)


def _get(url: str, path: str) -> Any:
    try:
        r = httpx.get(url + path, timeout=5.0)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def _settled_structure(url: str, n_users: int, timeout: float = 300.0) -> dict[str, Any]:
    """The in-process user index's blend structure once its background rebuild into IVF
    (from ``ivf_min_rows`` users on) is done: audience figures of a half-built index say
    nothing."""
    want = "ivf" if n_users >= FaissConfig().ivf_min_rows else "flat"
    deadline = time.monotonic() + timeout
    got: dict[str, Any] = {}
    while time.monotonic() < deadline:
        stats = _get(url, "/v1/stats") or {}
        got = ((stats.get("user_index") or {}).get("sets") or {}).get("blend") or {}
        if got.get("kind") == want:
            break
        time.sleep(1.0)
    return {k: got.get(k) for k in ("kind", "nlist", "nprobe", "tuned_recall", "count")}


def _audience(
    client: httpx.Client, url: str, queries: np.ndarray, exact: np.ndarray, k: int
) -> dict[str, Any]:
    """Audience queries one at a time: latency quantiles and recall@k against ``exact``."""
    lat: list[float] = []
    recall: list[float] = []
    for j in range(queries.shape[0]):
        body = {"vector": queries[j].tolist(), "k": k, "horizon": "blend"}
        t = time.perf_counter()
        r = client.post(url + "/v1/audience", json=body)
        lat.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
        got = {int(u["user_id"][1:]) for u in r.json()["users"]}
        recall.append(len(got & set(exact[j].tolist())) / k)
    q = np.percentile(lat[1:] if len(lat) > 1 else lat, [50, 99])
    return {
        "queries": len(lat),
        "p50_ms": round(float(q[0]), 1),
        "p99_ms": round(float(q[1]), 1),
        "recall_at_k": round(float(np.mean(recall)), 4),
        "recall_min": round(float(np.min(recall)), 4),
        "k": k,
    }


def _delay_probes(
    settings: Settings, urls: dict[str, str], dim: int, probes: int, seed: int
) -> dict[str, Any]:
    """Write->searchable: a new user on the query's direction, until each store returns it."""
    rng = np.random.default_rng(seed)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    delays: dict[str, list[float]] = {s: [] for s in urls}
    with httpx.Client(timeout=10.0) as client:
        for p in range(probes):
            q = rng.standard_normal(dim).astype(np.float32)
            q /= np.linalg.norm(q)
            uid = f"probe-{uuid.uuid4().hex[:8]}"
            vec = (q * 20.0).astype(np.float32)  # far above every synthetic user on q
            producer.send(settings.output_topic, key=uid.encode(), value=_record(uid, 1, vec, vec))
            producer.flush()
            t0 = time.perf_counter()
            todo = set(urls)
            deadline = t0 + 60.0
            while todo and time.perf_counter() < deadline:
                for s in sorted(todo):
                    r = client.post(
                        urls[s] + "/v1/audience",
                        json={"vector": q.tolist(), "k": 5, "horizon": "blend"},
                    )
                    if r.status_code == 200 and any(u["user_id"] == uid for u in r.json()["users"]):
                        delays[s].append(time.perf_counter() - t0)
                        todo.discard(s)
                time.sleep(0.02)
            for s in todo:
                logger.warning("probe %d: %s did not return the new user within 60 s", p, s)
    producer.close()
    out: dict[str, Any] = {}
    for s, d in delays.items():
        arr = np.asarray(d or [np.nan]) * 1000
        out[s] = {
            "probes": len(d),
            "p50_ms": round(float(np.nanpercentile(arr, 50)), 0),
            "max_ms": round(float(np.nanmax(arr)), 0),
        }
    return out


def _node_pids(store: OpenSearchStore) -> list[int]:
    try:
        info = store.client.nodes.info(metric="process")
    except Exception:  # a remote cluster we cannot see into
        return []
    return [int(n["process"]["id"]) for n in info["nodes"].values() if "process" in n]


def _sink(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A sink process (``interest-stream opensearch sink``), output into ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "interest_stream.cli", "opensearch", "sink"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _sink_phase(
    settings: Settings,
    n: int,
    sinks: int,
    log_dir: Path,
    *,
    dim: int,
    refresh: str | None,
    hnsw: HnswParams,
    shards: int = 1,
    index_settings: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], OpenSearchStore]:
    """Run ``sinks`` sink processes over the backlog until the group's lag is 0.

    ``refresh``: the index's refresh interval while the backlog is written (then 1 s
    again); ``hnsw``, ``shards``: the index's graphs and shards (created here, before the
    sinks start); ``index_settings``: more index settings (e.g.
    ``knn.advanced.approximate_threshold``), set before the sinks start.
    """
    store = OpenSearchStore(
        settings.opensearch_url, settings.opensearch_index, hnsw=hnsw, shards=shards
    )
    store.ensure_index(dim)
    extra = dict(index_settings or {})
    if refresh is not None:
        extra["refresh_interval"] = refresh
    if extra:
        store.client.indices.put_settings(index=store.index, body={"index": extra})
    node_pids = _node_pids(store)
    node_cpu0 = sum(_cpu_seconds(p) or 0.0 for p in node_pids)
    env = settings_environ(settings)
    t0 = time.perf_counter()
    procs = [_sink(env, log_dir / f"sink{i}.log") for i in range(sinks)]
    samples: list[tuple[float, int]] = []
    lag = _SinkLag(settings)
    try:
        while True:
            left = lag()
            samples.append((time.perf_counter() - t0, left))
            if left == 0:
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a sink exited; see {log_dir}")
            if samples[-1][0] > 3600:
                raise TimeoutError("the sink did not catch up within an hour")
            time.sleep(1.0)
        seconds = time.perf_counter() - t0
        sink_cpu = sum(_cpu_seconds(p.pid) or 0.0 for p in procs)
    finally:
        lag.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    node_cpu = sum(_cpu_seconds(p) or 0.0 for p in node_pids) - node_cpu0
    if refresh is not None:
        store.client.indices.put_settings(
            index=store.index, body={"index": {"refresh_interval": "1s"}}
        )
    # steady rate: between 10% and 90% of the backlog written
    lo = next((t, x) for t, x in samples if x <= 0.9 * n)
    hi = next((t, x) for t, x in samples if x <= 0.1 * n)
    steady = (lo[1] - hi[1]) / (hi[0] - lo[0]) if hi[0] > lo[0] else None
    store.refresh()
    size = store.client.indices.stats(index=store.index, metric="store")
    store_bytes = int(size["_all"]["primaries"]["store"]["size_in_bytes"])
    return {
        "sinks": sinks,
        "shards": shards,
        "index_settings": dict(index_settings or {}),
        "hnsw": asdict(hnsw),
        "segments": segments(store),
        "refresh_interval": refresh or "1s",
        "upserts": n,
        "seconds": round(seconds, 1),
        "upserts_per_s": round(n / seconds, 0),
        "steady_upserts_per_s": None if steady is None else round(steady, 0),
        "sink_cpu_s_per_1k": round(1000 * sink_cpu / n, 3),
        "node_cpu_s_per_1k": round(1000 * node_cpu / n, 3) if node_pids else None,
        "index_bytes_per_user": round(store_bytes / n, 0),
        "count": store.count(),
    }, store


class _SinkLag:
    """The sink group's lag on the output topic (one consumer, asked every second)."""

    def __init__(self, settings: Settings) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=sink_group(settings),
            enable_auto_commit=False,
            **settings.kafka_client_config(),
        )
        parts = sorted(self.consumer.partitions_for_topic(settings.output_topic) or ())
        self.tps = [TopicPartition(settings.output_topic, p) for p in parts]
        self.ends = self.consumer.end_offsets(self.tps)

    def __call__(self) -> int:
        return sum(self.ends[tp] - (self.consumer.committed(tp) or 0) for tp in self.tps)

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def bench_serve(
    settings: Settings,
    *,
    stores: Sequence[str] = STORES,
    n_users: int = 100_000,
    dim: int = 192,
    rate: float = 500.0,
    seconds: float = 15.0,
    queries: int = 200,
    k: int = 100,
    probes: int = 10,
    sinks: int = 1,
    refresh: str | None = None,
    hnsw: HnswParams | None = None,
    efs: Sequence[int] = (),
    shards: int = 1,
    index_settings: Mapping[str, str] | None = None,
    seed: int = 0,
    lean_ab: int = 0,
) -> dict[str, Any]:
    """Measure both user stores on the same synthetic users (see the module docstring).

    ``lean_ab``: that many rounds of GET interest alternating between the replica and one
    without the lean paths (:func:`_get_ab`), after the probes; 0: none.
    """
    ns = f"bench-serve-{uuid.uuid4().hex[:8]}"
    s = settings.model_copy(
        update={
            "output_topic": f"{ns}.user-interest",
            "app_id": ns,
            "opensearch_index": ns,
            "model_dir": None,
            "opensearch_ef_search": None if hnsw is None else hnsw.ef_search,
        }
    )
    ensure_topics(s)
    out: dict[str, Any] = {
        "users": n_users,
        "dim": dim,
        "vectors": "synthetic: 32-cluster mixture, log-normal norms (not a checkpoint's)",
        "rate": rate,
        "load_avg_start": _load_avg(),
    }
    short = synthetic_vectors(n_users, dim, seed + 1)
    long = synthetic_vectors(n_users, dim, seed + 2)
    blend = BLEND * short + (1 - BLEND) * long
    qs = synthetic_vectors(queries, dim, seed + 3)
    exact = np.argsort(-(qs @ blend.T), axis=1)[:, :k]
    out["produce_s"] = round(_produce(s, short, long), 1)
    ids = [f"u{i}" for i in range(n_users)]
    urls: dict[str, str] = {}
    res: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        logs = Path(tmp)
        store = None
        if "opensearch" in stores:
            sink_res, store = _sink_phase(
                s, n_users, sinks, logs, dim=dim, refresh=refresh, hnsw=hnsw or HnswParams(),
                shards=shards, index_settings=index_settings,
            )  # fmt: skip
            res["opensearch"] = {"sink": sink_res}
            # the GETs and queries below measure a settled index (merges after the load done)
            res["opensearch"]["merges_wait_s"] = wait_merges(store)
            if efs:  # straight to the cluster, before the APIs start
                mats = {"blend": blend, "short": short, "long": long}
                res["opensearch"]["ef_sweep"] = ef_sweep(store, mats, qs, efs, k)
                res["opensearch"]["segments_after_sweep"] = segments(store)
        # a sink that follows the topic for the write->searchable probes (joined by then)
        follower = _sink(settings_environ(s), logs / "sink-follow.log") if store else None
        with _multi_api(s, stores, logs) as apis:
            for name, (url, proc) in apis.items():
                t0 = time.perf_counter()
                _wait(lambda u=url: _get(u, "/readyz") is not None, 600, f"the {name} API")
                if name == "faiss":
                    _wait(
                        lambda u=url: (_get(u, "/v1/stats") or {}).get("users", 0) >= n_users,
                        1800,
                        "the faiss API to hold every user",
                    )
                    secs = time.perf_counter() - t0
                    res.setdefault(name, {})["catch_up"] = {
                        "seconds": round(secs, 1),
                        "upserts_per_s": round(n_users / secs, 0),
                    }
                res.setdefault(name, {})["rss_mb_ready"] = _rss_mb(proc.pid)
                urls[name] = url
            for name, url in urls.items():
                r = res[name]
                r["get"] = load_phase(
                    url, ids, ["none"], rate=rate, duration=seconds, endpoint="interest"
                )
                if name == "faiss":  # the structure the audience queries meet (IVF from
                    r["user_index"] = _settled_structure(url, n_users)  # ivf_min_rows on)
                with httpx.Client(timeout=30.0) as client:
                    r["audience"] = _audience(client, url, qs, exact, k)
                r["rss_mb_after_load"] = _rss_mb(apis[name][1].pid)
            out["write_to_searchable"] = _delay_probes(s, urls, dim, probes, seed)
            if lean_ab:
                for name in urls:
                    pids = _node_pids(store) if name == "opensearch" and store else []
                    res[name]["get_lean_ab"] = _get_ab(
                        s, name, apis[name], logs, ids, rate=rate, seconds=seconds,
                        rounds=lean_ab, node_pids=pids,
                    )  # fmt: skip
        if follower is not None:
            follower.terminate()
            follower.wait(30)
        if store is not None:
            store.client.indices.delete(index=store.index, ignore_unavailable=True)
            store.close()
    out.update(res)
    out["load_avg_end"] = _load_avg()
    return out


def _get_ab(
    settings: Settings,
    name: str,
    lean: tuple[str, subprocess.Popen[bytes]],
    logs: Path,
    ids: Sequence[str],
    *,
    rate: float,
    seconds: float,
    rounds: int,
    node_pids: Sequence[int] = (),
) -> dict[str, Any]:
    """GET interest on the replica with the lean paths and on one without, alternating.

    A second replica of ``name`` (``create_app(fast_path=False)``) beside ``lean``; then
    ``rounds`` times a phase on each, in ABBA order (lean first in even rounds, so a drift
    of the box's load weighs on both alike). Per phase: the load's latency, the
    API's CPU per request (warm-up included) and, for opensearch, the nodes'.
    """
    phases: list[dict[str, Any]] = []
    with _api(settings, name, logs / f"api-{name}-routes.log", fast_path=False) as route:
        t0 = time.perf_counter()
        _wait(lambda: _get(route[0], "/readyz") is not None, 600, f"the {name} routes-only API")
        if name == "faiss":
            _wait(
                lambda: (_get(route[0], "/v1/stats") or {}).get("users", 0) >= len(ids),
                1800,
                "the routes-only faiss API to hold every user",
            )
        ready_s = round(time.perf_counter() - t0, 1)
        for r in range(rounds):
            order = (("lean", lean), ("routes", route))
            for variant, (url, proc) in order if r % 2 == 0 else order[::-1]:
                api0 = _cpu_seconds(proc.pid) or 0.0
                node0 = sum(_cpu_seconds(p) or 0.0 for p in node_pids)
                load0 = _load_avg()
                reads0 = (_get(url, "/healthz") or {}).get("consumer") or {}
                got = load_phase(
                    url, ids, ["none"], rate=rate, duration=seconds, endpoint="interest",
                    seed=r,
                )  # fmt: skip
                n = got.get("requests", 0) + got.get("errors", 0) + got.get("warmup_requests", 0)
                api = (_cpu_seconds(proc.pid) or 0.0) - api0
                node = sum(_cpu_seconds(p) or 0.0 for p in node_pids) - node0
                reads1 = (_get(url, "/healthz") or {}).get("consumer") or {}
                batch = None
                if reads1.get("read_requests") and reads0.get("read_requests") is not None:
                    batch = round((reads1["reads"] - reads0["reads"]) / max(
                        reads1["read_requests"] - reads0["read_requests"], 1), 2)  # fmt: skip
                phases.append({
                    "round": r, "variant": variant, "load_avg_start": load0,
                    "api_cpu_ms_per_request": round(1000 * api / max(n, 1), 3),
                    "node_cpu_ms_per_request": round(1000 * node / max(n, 1), 3)
                    if node_pids else None,
                    "reads_per_mget": batch,
                    **{k: got.get(k) for k in ("requests", "errors", "throughput_rps", "p50_ms",
                                               "p90_ms", "p99_ms", "p999_ms", "max_ms",
                                               "client_cpu_ms_per_request")},
                })  # fmt: skip
    return {"routes_replica_ready_s": ready_s, "phases": phases}


@contextmanager
def _multi_api(
    settings: Settings, stores: Sequence[str], logs: Path
) -> Iterator[dict[str, tuple[str, subprocess.Popen[bytes]]]]:
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield {
            name: stack.enter_context(_api(settings, name, logs / f"api-{name}.log"))
            for name in stores
        }
