"""Reading the ``user-interest`` topic of a real broker with the client helpers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from kafka import KafkaProducer

from interest_stream.client import (
    InterestTombstone,
    InterestTopicReader,
    InterestUpdate,
    MalformedRecord,
    TopicNotFound,
    latest_interest,
    read_interest,
)
from interest_stream.core.settings import Settings
from interest_stream.streams.topics import ensure_topics

pytestmark = pytest.mark.integration

DIM = 8


def _record(user: str, version: int, seed: int) -> dict[str, Any]:
    v = np.random.default_rng(seed).standard_normal(DIM).round(5).tolist()
    return {"user_id": user, "version": version, "event_time": 1_700_000_000_000 + version,
            "updated_at": 1_700_000_000_100 + version, "model_version": "c-1",
            "short": v, "long": v[::-1], "recent": [["i1", "view", 1], ["i2", "cart", 2]],
            "purchased": ["i9"], "counts": {"view": 1, "cart": 1}, "produced_at": 1}  # fmt: skip


@pytest.fixture
def topic(make_settings: Callable[..., Settings]) -> Iterator[dict[str, Any]]:
    settings = make_settings()
    ensure_topics(settings)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                             key_serializer=str.encode)  # fmt: skip

    def send(user: str, value: dict[str, Any] | bytes | None) -> None:
        raw = json.dumps(value).encode() if isinstance(value, dict) else value
        producer.send(settings.output_topic, key=user, value=raw)
        producer.flush(10)

    try:
        yield {"settings": settings, "send": send}
    finally:
        producer.close(5)


def test_reads_typed_updates_and_tombstones(topic: dict[str, Any]) -> None:
    settings, send = topic["settings"], topic["send"]
    send("alice", _record("alice", 1, 1))
    send("bob", _record("bob", 1, 2))
    send("alice", _record("alice", 3, 3))
    send("alice", _record("alice", 2, 4))  # stale: older than the held version 3
    send("bob", b"{not json")  # malformed: skipped and counted
    send("bob", None)  # tombstone
    send("carol", _record("carol", 1, 5))

    with InterestTopicReader(settings, stop_at_end=True, dim=DIM) as reader:
        msgs = list(reader)
    assert reader.malformed == 1
    assert len(msgs) == 6
    tomb = [m for m in msgs if isinstance(m, InterestTombstone)]
    assert [t.user_id for t in tomb] == ["bob"]
    ups = [m for m in msgs if isinstance(m, InterestUpdate)]
    alice = [m for m in ups if m.user_id == "alice"]
    assert [m.version for m in alice] == [1, 3, 2]  # per-partition (per-user) offset order
    first = alice[0]
    assert first.record.short.dtype == np.float32 and first.record.short.shape == (DIM,)
    assert first.record.short.tolist() == pytest.approx(_record("alice", 1, 1)["short"])
    assert first.record.recent_items == ("i1", "i2") and first.record.purchased == ("i9",)
    assert first.record.model_version == "c-1" and first.record.event_time == 1_700_000_000_001
    assert first.position.topic == settings.output_topic and first.position.timestamp_ms
    offsets = [m.position.offset for m in alice]
    assert offsets == sorted(offsets) and len({m.position.partition for m in alice}) == 1

    # the materialised view: newest version per user, tombstones applied
    latest = latest_interest(settings, dim=DIM)
    assert sorted(latest) == ["alice", "carol"] and latest["alice"].version == 3

    # a dimension the consumer does not expect is malformed; "raise" surfaces it
    with pytest.raises(MalformedRecord, match="dimension"):
        list(read_interest(settings, stop_at_end=True, dim=DIM + 1, on_malformed="raise"))


def test_follows_new_messages_from_the_end(topic: dict[str, Any]) -> None:
    settings, send = topic["settings"], topic["send"]
    send("old", _record("old", 1, 1))
    got: list[str] = []
    reader = InterestTopicReader(settings, start="end", idle_timeout_s=20.0)

    def consume() -> None:
        for msg in reader:
            got.append(msg.user_id)
            if len(got) == 2:
                return

    t = threading.Thread(target=consume)
    t.start()
    deadline = time.monotonic() + 20  # until the reader connected and sits at the end
    while reader._consumer is None and time.monotonic() < deadline:
        time.sleep(0.05)
    send("new1", _record("new1", 1, 2))
    send("new2", None)
    t.join(30)
    reader.close()
    assert not t.is_alive() and sorted(got) == ["new1", "new2"]


def test_missing_topic_is_an_error(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(TopicNotFound, match="does not exist"):
        list(read_interest(make_settings(), stop_at_end=True))
