"""The OpenSearch sink against the session's broker and OpenSearch node.

* two sink processes sharing the partitions: records with stale versions, same-version
  re-sends, tombstones and new lives → the exact end state;
* SIGKILL of the sink mid-load, restart → the exact end state.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from interest_stream.core.settings import Settings, settings_environ
from interest_stream.index.opensearch_store import OpenSearchStore
from interest_stream.sink import sink_group
from interest_stream.streams.topics import ensure_topics

pytestmark = pytest.mark.integration

DIM = 8


def _topic_log(seed: int, users: int, n: int) -> list[tuple[str, bytes | None]]:
    """Messages in produce order: new versions, stale and same-version re-sends,
    tombstones and new lives."""
    rng = random.Random(seed)
    versions: dict[str, int] = {}
    out: list[tuple[str, bytes | None]] = []
    for _ in range(n):
        uid = f"user-{rng.randrange(users)}"
        roll = rng.random()
        if roll < 0.04:
            versions[uid] = 0
            out.append((uid, None))
            continue
        if roll < 0.15 and versions.get(uid):
            v = max(0, versions[uid] - rng.randrange(1, 4))
        elif roll < 0.25 and versions.get(uid):
            v = versions[uid]
        else:
            v = versions[uid] = versions.get(uid, 0) + rng.randrange(1, 3)
        vec = [round(rng.uniform(-1, 1), 6) for _ in range(DIM)]
        rec = {
            "user_id": uid,
            "version": v,
            "event_time": 1,
            "updated_at": 2,
            "model_version": "m",
            "short": vec,
            "long": vec[::-1],
            "recent": [],
            "purchased": [],
            "counts": {},
        }
        out.append((uid, json.dumps(rec).encode()))
    return out


def _expected(log: list[tuple[str, bytes | None]]) -> dict[str, tuple[int, list[float]]]:
    state: dict[str, tuple[int, list[float]]] = {}
    for uid, value in log:
        if value is None:
            state.pop(uid, None)
            continue
        obj = json.loads(value)
        if uid not in state or obj["version"] >= state[uid][0]:
            state[uid] = (obj["version"], obj["short"])
    return state


def _produce(settings: Settings, log: list[tuple[str, bytes | None]]) -> None:
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        max_in_flight_requests_per_connection=1,
        linger_ms=5,
    )
    for uid, value in log:
        producer.send(settings.output_topic, key=uid.encode(), value=value)
    producer.flush()
    producer.close()


def _lag(settings: Settings) -> int:
    """Messages of the output topic not yet committed by the sink's group."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=sink_group(settings),
        enable_auto_commit=False,
    )
    try:
        parts = consumer.partitions_for_topic(settings.output_topic) or set()
        tps = [TopicPartition(settings.output_topic, p) for p in parts]
        ends = consumer.end_offsets(tps)
        return sum(ends[tp] - (consumer.committed(tp) or 0) for tp in tps)
    finally:
        consumer.close(autocommit=False)


def _sink_proc(settings: Settings, tmp: Path, name: str) -> subprocess.Popen[bytes]:
    env = settings_environ(settings)
    out = (tmp / f"{name}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "interest_stream.cli", "opensearch", "sink"],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _assert_state(store: OpenSearchStore, log: list[tuple[str, bytes | None]]) -> None:
    expected = _expected(log)
    for uid in {u for u, _ in log}:
        got = store.get(uid)
        if uid not in expected:
            assert got is None, uid
            continue
        version, short = expected[uid]
        assert got is not None, uid
        assert got.version == version, uid
        assert np.array_equal(got.short, np.asarray(short, dtype=np.float32)), uid
    store.refresh()
    assert store.count() == len(expected)


@pytest.fixture
def sink_settings(
    make_settings: Callable[..., Settings], opensearch_url: str
) -> Iterator[tuple[Settings, OpenSearchStore]]:
    s = make_settings(opensearch_url=opensearch_url, opensearch_index=f"u{uuid.uuid4().hex[:10]}")
    ensure_topics(s)
    st = OpenSearchStore(opensearch_url, s.opensearch_index)
    try:
        yield s, st
    finally:
        st.client.indices.delete(index=st.index, ignore_unavailable=True)
        st.close()


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def test_two_sinks_reach_the_exact_end_state(
    sink_settings: tuple[Settings, OpenSearchStore], tmp_path: Path
) -> None:
    settings, store = sink_settings
    log = _topic_log(11, users=150, n=3000)
    _produce(settings, log[:1500])
    procs = [_sink_proc(settings, tmp_path, f"sink{i}") for i in range(2)]
    try:
        _produce(settings, log[1500:])
        _wait(lambda: _lag(settings) == 0, 90, "the sinks to commit every offset")
    finally:
        _stop(procs)
    assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]
    _assert_state(store, log)


def test_sink_sigkill_mid_load_then_restart_is_exact(
    sink_settings: tuple[Settings, OpenSearchStore], tmp_path: Path
) -> None:
    settings, store = sink_settings
    log = _topic_log(12, users=800, n=6000)
    _produce(settings, log)
    total = _lag(settings)
    proc = _sink_proc(settings, tmp_path, "sink-a")
    try:
        _wait(lambda: _lag(settings) < total, 60, "a first commit")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        left = _lag(settings)
        print(f"killed the sink with {left} of {total} messages uncommitted")
        assert left > 0, "the sink finished before the kill: make the load larger"
        proc = _sink_proc(settings, tmp_path, "sink-b")
        _wait(lambda: _lag(settings) == 0, 120, "the restarted sink to catch up")
    finally:
        _stop([proc])
    _assert_state(store, log)
