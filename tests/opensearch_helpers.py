"""The OpenSearch sink tests' pieces: a topic log with stale re-sends and tombstones, its
exact end state, producing it, the sink's lag, a sink process, and the end-state check."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from interest_stream.core.settings import Settings, settings_environ
from interest_stream.index.opensearch_store import OpenSearchStore
from interest_stream.sink import sink_group

DIM = 8


def topic_log(seed: int, users: int, n: int, dim: int = DIM) -> list[tuple[str, bytes | None]]:
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
        vec = [round(rng.uniform(-1, 1), 6) for _ in range(dim)]
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


def end_state(log: list[tuple[str, bytes | None]]) -> dict[str, tuple[int, list[float]]]:
    state: dict[str, tuple[int, list[float]]] = {}
    for uid, value in log:
        if value is None:
            state.pop(uid, None)
            continue
        obj = json.loads(value)
        if uid not in state or obj["version"] >= state[uid][0]:
            state[uid] = (obj["version"], obj["short"])
    return state


def produce(
    settings: Settings, log: list[tuple[str, bytes | None]], rate: float | None = None
) -> None:
    """Send ``log`` to the output topic (acks=all), at ``rate`` messages/s if given."""
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        max_in_flight_requests_per_connection=1,
        linger_ms=5,
    )
    started = time.monotonic()
    for i, (uid, value) in enumerate(log):
        producer.send(settings.output_topic, key=uid.encode(), value=value)
        if rate and i % 50 == 49:
            time.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
    producer.flush()
    producer.close()


def lag(settings: Settings) -> int:
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


def sink_proc(settings: Settings, tmp: Path, name: str) -> subprocess.Popen[bytes]:
    env = settings_environ(settings)
    out = (tmp / f"{name}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "interest_stream.cli", "opensearch", "sink"],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def assert_state(store: OpenSearchStore, log: list[tuple[str, bytes | None]]) -> None:
    expected = end_state(log)
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


def stop_procs(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process still running; SIGKILL it after 20 s."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
