"""Faults against a real 2-node OpenSearch cluster with 1 replica, under load.

Records are produced to the output topic and written by a sink process while the API
(opensearch mode, both nodes' URLs) answers GET interest and audience queries. Then:
SIGKILL of the node that is not the elected cluster manager (with two manager-eligible
nodes only the elected one is in the voting configuration: docs/OPERATIONS.md), SIGKILL
of the sink mid-load and its restart, the node's restart. Checked: every query answered
(200/404, none failed), every user's highest version in the store and forgotten users
gone (no acknowledged write lost), the node rejoined and the replicas are allocated
again (green, every shard copy active).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from opensearch_helpers import DIM, assert_state, lag, produce, sink_proc, stop_procs, topic_log

from interest_stream.api import create_app
from interest_stream.core.kafka import free_port
from interest_stream.core.settings import Settings
from interest_stream.index.opensearch_local import ClusterConfig, kill_node, start, stop
from interest_stream.index.opensearch_store import OpenSearchStore
from interest_stream.streams.topics import ensure_topics

pytestmark = pytest.mark.integration

SHARDS = 2
USERS = 400
MESSAGES = 6000
RATE = 400.0  # messages/s: the load lasts ~15 s, the kills land inside it


def _ports() -> tuple[int, int]:
    """Base HTTP and transport ports whose next port is free too (two nodes each)."""
    while True:
        http, transport = free_port(), free_port()
        if abs(http - transport) > 1 and http < 65535 and transport < 65535:
            return http, transport


@pytest.fixture(scope="module")
def cluster2() -> Iterator[ClusterConfig]:
    """A 2-node cluster of its own (data outside pytest's 0700 root, as the session node)."""
    data_dir = Path(tempfile.mkdtemp(prefix="interest-os2-test-"))
    data_dir.chmod(0o755)
    http, transport = _ports()
    cfg = ClusterConfig(data_dir=data_dir, http_port=http, transport_port=transport, nodes=2)
    try:
        start(cfg, timeout=240.0)
        yield cfg
    finally:
        stop(cfg)
        shutil.rmtree(data_dir, ignore_errors=True)


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _all_copies_active(store: OpenSearchStore) -> bool:
    """Green with both nodes and every shard's primary and replica active."""
    try:
        h = store.client.cluster.health(index=store.index, params={"request_timeout": 5})
    except Exception:  # a node still starting: ask again
        return False
    return bool(
        h["status"] == "green"
        and h["number_of_nodes"] == 2
        and h["active_shards"] == 2 * SHARDS
        and h["unassigned_shards"] == 0
    )


class _Queries(threading.Thread):
    """GET interest (70%) and audience (30%) through the API until stopped."""

    def __init__(self, client: TestClient, seed: int) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.results: list[tuple[float, str, int, float]] = []  # at, kind, status, seconds
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                if self.rng.random() < 0.7:
                    kind = "get"
                    r = self.client.get(f"/v1/users/user-{self.rng.randrange(USERS)}/interest")
                else:
                    kind = "audience"
                    vec = [self.rng.uniform(-1, 1) for _ in range(DIM)]
                    r = self.client.post("/v1/audience", json={"vector": vec, "k": 10})
                status = r.status_code
                if status not in (200, 404):
                    self.errors.append(f"{kind} {status} {r.text[:200]}")
            except Exception as exc:  # the test asserts there is none
                kind, status = "error", 0
                self.errors.append(f"{type(exc).__name__}: {exc}")
            t1 = time.monotonic()
            self.results.append((t1, kind, status, t1 - t0))
            time.sleep(0.005)  # leave the 2 cores to the cluster and the sink

    def window(self, t0: float, t1: float) -> str:
        """Counts and latency quantiles of the queries answered in ``[t0, t1)``."""
        parts = []
        for kind in ("get", "audience"):
            lat = [s for at, k, _, s in self.results if k == kind and t0 <= at < t1]
            if lat:
                q = np.percentile(np.asarray(lat) * 1000, [50, 99, 100])
                parts.append(
                    f"{kind} n={len(lat)} p50={q[0]:.1f}ms p99={q[1]:.1f}ms max={q[2]:.1f}ms"
                )
        return "; ".join(parts) or "no query"


def test_node_and_sink_sigkill_under_load(
    cluster2: ClusterConfig, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    cfg = cluster2
    seed = int(os.environ.get("INTEREST_TEST_SEED", "0")) or random.randrange(1, 10**6)
    print(f"seed {seed}")
    urls = ",".join(f"http://{cfg.host}:{p}" for p in cfg.http_ports)
    settings = make_settings(opensearch_url=urls, opensearch_index=f"f{uuid.uuid4().hex[:10]}")
    ensure_topics(settings)
    store = OpenSearchStore(urls, settings.opensearch_index, shards=SHARDS, max_retries=2)
    store.ensure_index(DIM)  # 2 shards: each node holds primaries, the sink finds the index
    _wait(lambda: _all_copies_active(store), 60, "every replica to be allocated (green)")
    manager = store.client.cat.cluster_manager(format="json")[0]["node"]
    victim = next(i for i in range(cfg.nodes) if cfg.node_name(i) != manager)
    primaries = [
        s["shard"]
        for s in store.client.cat.shards(index=store.index, format="json")
        if s["prirep"] == "p" and s["node"] == cfg.node_name(victim)
    ]
    print(f"manager {manager}; killing {cfg.node_name(victim)} (primaries of shards {primaries})")

    log = topic_log(seed, users=USERS, n=MESSAGES)
    produce(settings, log[:1000])
    sinks = [sink_proc(settings, tmp_path, "sink-a")]
    producer = threading.Thread(target=produce, args=(settings, log[1000:], RATE), daemon=True)
    app = create_app(settings.model_copy(update={"user_store": "opensearch"}), forget_hooks=[])
    marks: dict[str, float] = {}
    try:
        with TestClient(app) as client:
            _wait(lambda: client.get("/readyz").status_code == 200, 60, "the API to be ready")
            queries = _Queries(client, seed)
            marks["load"] = time.monotonic()
            queries.start()
            producer.start()
            time.sleep(3.0)

            marks["node killed"] = time.monotonic()
            assert kill_node(cfg, victim) is not None
            time.sleep(3.0)

            assert producer.is_alive(), "the load ended before the sink's kill: raise MESSAGES"
            left = lag(settings)
            os.kill(sinks[0].pid, signal.SIGKILL)
            sinks[0].wait(10)
            marks["sink killed"] = time.monotonic()
            print(f"killed the sink with {left} messages uncommitted")
            sinks.append(sink_proc(settings, tmp_path, "sink-b"))

            start(cfg, timeout=180.0)  # the killed node starts again and rejoins
            marks["node rejoined"] = time.monotonic()
            producer.join(120)
            assert not producer.is_alive()
            _wait(lambda: lag(settings) == 0, 120, "the restarted sink to commit every offset")
            _wait(lambda: _all_copies_active(store), 120, "the replicas to be allocated again")
            marks["green"] = time.monotonic()
            queries.stop.set()
            queries.join(30)
    finally:
        stop_procs(sinks)
        for name in ("sink-a", "sink-b"):
            path = tmp_path / f"{name}.log"
            if path.is_file():
                print(f"--- {name} (last lines) ---")
                print("\n".join(path.read_text(errors="replace").splitlines()[-8:]))

    t = sorted(marks.items(), key=lambda kv: kv[1])
    print(" -> ".join(f"{k} +{v - marks['load']:.1f}s" for k, v in t))
    print("before the kill:", queries.window(marks["load"], marks["node killed"]))
    print("node down:", queries.window(marks["node killed"], marks["node rejoined"]))
    print("after:", queries.window(marks["node rejoined"], marks["green"] + 1))
    assert queries.errors == [], queries.errors[:10]
    down = [r for r in queries.results if marks["node killed"] <= r[0] < marks["node rejoined"]]
    assert {k for _, k, _, _ in down} == {"get", "audience"}, "no query while the node was down"
    assert_state(store, log)  # every user's highest version; forgotten users gone
    store.client.indices.delete(index=store.index)
    store.close()
