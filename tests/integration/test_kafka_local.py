"""Integration test of streams.kafka_local: a real Kafka 4 broker's whole lifecycle.

Starts its own broker (not the session one) in a temporary data dir on free ports,
talks to it with kafka-python, restarts it on the same data, and stops it. Needs
Java 17+ and Maven (or an existing install in ``INTEREST_KAFKA_HOME``).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from interest_stream.streams.kafka_local import (
    BrokerConfig,
    KafkaStartError,
    free_port,
    start,
    status,
    stop,
)

pytestmark = pytest.mark.integration

BIG = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def broker_cfg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerConfig]:
    cfg = BrokerConfig(data_dir=tmp_path_factory.mktemp("kafka-local"), port=free_port())
    try:
        yield cfg
    finally:
        stop(cfg)


def _consume_all(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes, bytes]]:
    """Read ``expected`` records of ``topic`` from the start (no consumer group)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    got: list[tuple[bytes, bytes]] = []
    try:
        partitions = consumer.partitions_for_topic(topic)
        assert partitions, f"no partitions for {topic}"
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        deadline = time.monotonic() + 60
        while len(got) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend((r.key, r.value) for r in records)
    finally:
        consumer.close()
    return got


def test_broker_lifecycle(broker_cfg: BrokerConfig) -> None:
    cfg = broker_cfg
    t0 = time.monotonic()
    first = start(cfg, timeout=180.0)
    startup = time.monotonic() - t0
    assert first.running and first.answering
    assert first.bootstrap == cfg.bootstrap
    assert first.pid is not None and first.controller_port not in (None, cfg.port)

    st = status(cfg)
    assert st.running and st.answering and st.pid == first.pid
    assert st.version == "4.0.2"
    assert st.log_file.is_file() and st.log_tail
    assert cfg.properties_file.is_file() and cfg.state_file.is_file()

    # Idempotent start: same process.
    again = start(cfg)
    assert again.pid == first.pid and again.answering

    # Another data dir on the same port is refused with a clear message.
    other = BrokerConfig(home=cfg.home, data_dir=cfg.data_dir.parent / "other", port=cfg.port)
    with pytest.raises(KafkaStartError, match=f"port {cfg.port} .*Kafka broker"):
        start(other)

    # Topic admin, produce and consume (one small and one 10 MB record).
    topic = f"kl-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=cfg.bootstrap)
    try:
        admin.create_topics(
            {
                topic: {"num_partitions": 2, "replication_factor": 1},
                f"{topic}-compact": {
                    "num_partitions": 1,
                    "replication_factor": 1,
                    "configs": {"cleanup.policy": "compact"},
                },
            },
            wait_for_metadata=True,
        )
        assert {topic, f"{topic}-compact"} <= set(admin.list_topics())
    finally:
        admin.close()

    producer = KafkaProducer(bootstrap_servers=cfg.bootstrap, max_request_size=BIG + 4096)
    try:
        producer.send(topic, key=b"k1", value=b"hello").get(timeout=30)
        producer.send(topic, key=b"big", value=b"x" * BIG).get(timeout=60)
        producer.send(f"{topic}-compact", key=b"u1", value=b"v1").get(timeout=30)
    finally:
        producer.close()
    got = dict(_consume_all(cfg.bootstrap, topic, expected=2))
    assert got[b"k1"] == b"hello"
    assert len(got[b"big"]) == BIG

    # Stop, check, stop again (idempotent).
    assert stop(cfg) is True
    after = status(cfg)
    assert not after.running and not after.answering and after.pid is None
    assert not cfg.state_file.exists()
    assert stop(cfg) is False
    with pytest.raises(ProcessLookupError):
        os.kill(first.pid, 0)

    # Restart on the same data: the topic and its records survive.
    t0 = time.monotonic()
    restarted = start(cfg, timeout=180.0)
    restart = time.monotonic() - t0
    assert restarted.answering and restarted.pid != first.pid
    assert dict(_consume_all(cfg.bootstrap, topic, expected=2))[b"k1"] == b"hello"
    assert stop(cfg) is True
    print(f"\nkafka_local: first start {startup:.1f}s, restart {restart:.1f}s")


def test_start_timeout_kills_the_broker(tmp_path: Path) -> None:
    cfg = BrokerConfig(data_dir=tmp_path / "slow", port=free_port())
    with pytest.raises(KafkaStartError, match="did not answer") as info:
        start(cfg, timeout=0.5)
    pid = int(str(info.value).split("(pid ")[1].split(")")[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    st = status(cfg)
    assert not st.running and not cfg.state_file.exists()
