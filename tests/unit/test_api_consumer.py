"""Output-topic records: decoding, batch planning, applying, and the consumer thread."""

from __future__ import annotations

import json
import time
from collections import namedtuple
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from interest_stream.api import consumer as consumer_module
from interest_stream.api import create_app, get_state
from interest_stream.api.consumer import Message, OutputConsumer, apply_messages
from interest_stream.api.metrics import ApiMetrics
from interest_stream.core.records import (
    MalformedRecord,
    Tombstone,
    decode_record,
    encode_record,
    plan_batch,
)
from interest_stream.core.settings import Settings
from interest_stream.index import UserIndex

DIM = 4


def rec(user: str, version: int, short: float = 0.1, **extra: Any) -> dict[str, Any]:
    return {"user_id": user, "version": version, "event_time": 1_700_000_000_000 + version,
            "updated_at": 1_700_000_000_100 + version, "model_version": "m1",
            "short": [short] * DIM, "long": [0.2] * DIM, **extra}  # fmt: skip


def msg(value: dict[str, Any] | bytes | None, key: str | None = None, offset: int = 0) -> Message:
    raw = encode_record(value) if isinstance(value, dict) else value
    k = key if key is not None else (value["user_id"] if isinstance(value, dict) else None)
    return Message(None if k is None else k.encode(), raw, "user-interest", 0, offset)


# --------------------------------------------------------------------------- decode
def test_decode_valid_record() -> None:
    r = decode_record(
        b"u1", encode_record(rec("u1", 3, recent_items=["a"], purchased=["b"])), dim=DIM
    )
    assert not isinstance(r, Tombstone)
    assert (r.user_id, r.version, r.model_version) == ("u1", 3, "m1")
    assert r.short.dtype == np.float32 and r.short.tolist() == pytest.approx([0.1] * DIM)
    assert r.recent_items == ("a",) and r.purchased == ("b",)
    minimal = {"user_id": "u2", "version": 0, "short": [1, 2], "long": [3, 4]}
    r2 = decode_record(None, json.dumps(minimal).encode(), dim=None)
    assert not isinstance(r2, Tombstone) and r2.event_time is None and r2.long.tolist() == [3, 4]


def test_decode_tombstone() -> None:
    assert decode_record(b"u1", None, dim=DIM) == Tombstone("u1")
    with pytest.raises(MalformedRecord, match="without a key"):
        decode_record(None, None, dim=DIM)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b"u1", b"not json", "not JSON"),
        (b"u1", b"\xff\xfe", "not JSON"),
        (b"\xff", b"{}", "key is not UTF-8"),
        (b"u1", b"[1, 2]", "JSON object"),
        (
            b"u1",
            b'{"user_id": "u1", "version": 1, "short": [NaN, 1, 1, 1], "long": [1, 1, 1, 1]}',
            "NaN",
        ),
        (b"u2", encode_record(rec("u1", 1)), "key differs"),
        (b"u1", json.dumps({**rec("u1", 1), "user_id": 5}).encode(), "user_id"),
        (b"u1", json.dumps({**rec("u1", 1), "user_id": ""}).encode(), "user_id"),
        (b"u1", json.dumps({**rec("u1", 1), "version": -1}).encode(), "version"),
        (b"u1", json.dumps({**rec("u1", 1), "version": "3"}).encode(), "version"),
        (b"u1", json.dumps({**rec("u1", 1), "version": True}).encode(), "version"),
        (b"u1", json.dumps({**rec("u1", 1), "short": [0.1] * 3}).encode(), "dimension 3"),
        (b"u1", json.dumps({**rec("u1", 1), "long": [0.1] * 5}).encode(), "dimension 5"),
        (b"u1", json.dumps({**rec("u1", 1), "short": ["1"] * DIM}).encode(), "numbers"),
        (b"u1", json.dumps({**rec("u1", 1), "short": [[1, 2]] * 2}).encode(), "flat list"),
        (b"u1", json.dumps({**rec("u1", 1), "short": []}).encode(), "non-empty"),
        (b"u1", json.dumps({**rec("u1", 1), "short": [1e300] * DIM}).encode(), "non-finite"),
        (b"u1", json.dumps({**rec("u1", 1), "event_time": "yesterday"}).encode(), "event_time"),
        (b"u1", json.dumps({**rec("u1", 1), "model_version": 7}).encode(), "model_version"),
        (b"u1", json.dumps({**rec("u1", 1), "purchased": "i1"}).encode(), "purchased"),
    ],
)
def test_decode_malformed(key: bytes, value: bytes, reason: str) -> None:
    with pytest.raises(MalformedRecord, match=reason):
        decode_record(key, value, dim=DIM)


# --------------------------------------------------------------------------- plan
def _r(user: str, version: int) -> Any:
    out = decode_record(None, encode_record(rec(user, version)), dim=DIM)
    return out


def test_plan_batch_keeps_sequential_semantics() -> None:
    p = plan_batch([_r("a", 5), _r("a", 3)])  # newer first: the older one is superseded
    assert [(r.user_id, r.version) for r in p.upsert] == [("a", 5)] and p.superseded == 1
    p = plan_batch([_r("a", 3), _r("a", 5), Tombstone("b"), _r("c", 1)])
    assert [(r.user_id, r.version) for r in p.upsert] == [("a", 5), ("c", 1)]
    assert p.remove == ["b"]
    p = plan_batch([_r("a", 5), Tombstone("a"), _r("a", 2)])  # forget, then start over
    assert p.remove == ["a"] and [r.version for r in p.upsert] == [2]
    p = plan_batch([_r("a", 5), Tombstone("a")])
    assert p.remove == ["a"] and p.upsert == []


# --------------------------------------------------------------------------- apply
def test_apply_messages() -> None:
    users = UserIndex(DIM)
    metrics = ApiMetrics(users=lambda: float(users.count()))
    bad: list[tuple[str, str]] = []
    st = apply_messages(
        [msg(rec("u1", 1)), msg(rec("u2", 5)), msg(b"garbage", key="u3"), msg(rec("u2", 4))],
        users, metrics, on_malformed=lambda m, why: bad.append((m.where, why)),
    )  # fmt: skip
    assert (st.applied, st.stale, st.malformed, st.tombstones) == (2, 1, 1, 0)
    assert bad and bad[0][0] == "user-interest[0]@0" and "JSON" in bad[0][1]
    st = apply_messages([msg(rec("u2", 3, short=0.9))], users, metrics)  # stale vs held v5
    assert (st.applied, st.stale) == (0, 1)
    assert users.get("u2").short.tolist() == pytest.approx([0.1] * DIM)
    st = apply_messages([msg(rec("u2", 6, short=0.9)), msg(None, key="u1")], users, metrics)
    assert (st.applied, st.tombstones) == (1, 1)
    assert "u1" not in users and users.get("u2").version == 6
    text = metrics.render().decode()
    assert 'interest_api_records_total{result="applied"} 3.0' in text
    assert 'interest_api_records_total{result="stale"} 2.0' in text
    assert 'interest_api_records_total{result="malformed"} 1.0' in text
    assert 'interest_api_records_total{result="tombstone"} 1.0' in text
    assert "interest_api_users 1.0" in text


def test_apply_adopts_first_dimension_and_rejects_others() -> None:
    users = UserIndex()
    other = {**rec("u9", 1), "short": [0.1] * 6, "long": [0.1] * 6}
    st = apply_messages([msg(rec("u1", 1)), msg(other), msg(rec("u2", 1))], users,
                        on_malformed=lambda m, why: None)  # fmt: skip
    assert (st.applied, st.malformed) == (2, 1) and users.dim == DIM


def test_apply_tombstone_of_unknown_user_is_harmless() -> None:
    users = UserIndex(DIM)
    st = apply_messages([msg(None, key="ghost")], users)
    assert st.tombstones == 1 and users.count() == 0


# --------------------------------------------------------------------------- thread
TP = namedtuple("TP", "topic partition")
Rec = namedtuple("Rec", "key value topic partition offset")


class FakeKafka:
    """Enough of kafka-python's KafkaConsumer for OutputConsumer."""

    def __init__(self, log: dict[int, list[tuple[bytes | None, bytes | None]]], topic: str,
                 missing: bool = False) -> None:  # fmt: skip
        self.log = log
        self.topic = topic
        self.missing = missing
        self.pos: dict[Any, int] = {}
        self.closed = False

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return None if self.missing else set(self.log)

    def assign(self, tps: list[Any]) -> None:
        for tp in tps:
            self.pos.setdefault(tp, 0)

    def seek_to_beginning(self, *tps: Any) -> None:
        for tp in tps:
            self.pos[tp] = 0

    def seek(self, tp: Any, offset: int) -> None:
        self.pos[tp] = offset

    def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: len(self.log[tp.partition]) for tp in tps}

    def position(self, tp: Any) -> int:
        return self.pos[tp]

    def poll(self, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        out: dict[Any, list[Any]] = {}
        budget = 2  # small polls: catching up takes several
        for tp, p in self.pos.items():
            msgs = self.log[tp.partition][p : p + budget]
            if msgs:
                out[tp] = [
                    Rec(k, v, tp.topic, tp.partition, p + i) for i, (k, v) in enumerate(msgs)
                ]
                self.pos[tp] = p + len(msgs)
        if not out:
            time.sleep(timeout_ms / 1000)
        return out

    def close(self) -> None:
        self.closed = True


def _wait(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


@pytest.fixture
def patched_tp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer_module, "TopicPartition", TP)


def _kv(r: dict[str, Any]) -> tuple[bytes, bytes]:
    return r["user_id"].encode(), encode_record(r)


def test_consumer_catches_up_then_follows(patched_tp: None) -> None:
    settings = Settings(output_topic="ui")
    log = {0: [_kv(rec("u1", 1)), _kv(rec("u2", 1)), (b"u3", b"junk"), _kv(rec("u1", 2))],
           1: [_kv(rec("u4", 1)), (b"u4", None), _kv(rec("u5", 1))]}  # fmt: skip
    fake = FakeKafka(log, "ui")
    users = UserIndex(DIM)
    metrics = ApiMetrics()
    c = OutputConsumer(settings, users, metrics, dim=DIM, poll_ms=10, lag_refresh_s=0.01,
                       partitions_refresh_s=0.05, consumer_factory=lambda: fake)  # fmt: skip
    assert not c.ready and c.status == "starting"
    c.start()
    try:
        assert c.wait_ready(5)
        assert c.status == "ready" and c.lag == 0
        assert {u for u in ("u1", "u2", "u4", "u5") if u in users} == {"u1", "u2", "u5"}
        assert users.version("u1") == 2
        assert c.totals.malformed == 1 and c.totals.tombstones == 1
        # live updates after readiness
        log[0].append(_kv(rec("u2", 7)))
        log[1].append((b"u5", None))
        _wait(lambda: users.version("u2") == 7 and "u5" not in users)
        # a new partition appears
        log[2] = [_kv(rec("u6", 1))]
        _wait(lambda: "u6" in users)
        assert "interest_api_ready 1.0" in metrics.render().decode()
    finally:
        c.stop()
    assert fake.closed and not c.alive


def test_consumer_retries_until_kafka_answers(patched_tp: None) -> None:
    attempts: list[int] = []
    fake = FakeKafka({0: [_kv(rec("u1", 1))]}, "ui")

    def factory() -> FakeKafka:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("NoBrokersAvailable")
        return fake

    c = OutputConsumer(Settings(output_topic="ui"), UserIndex(DIM), dim=DIM, poll_ms=10,
                       consumer_factory=factory)  # fmt: skip
    c.start()
    try:
        _wait(lambda: c.status == "error" or c.ready)
        assert c.wait_ready(10) and len(attempts) == 3 and c.error is None
        assert "u1" in c.users
    finally:
        c.stop()


def test_consumer_missing_topic_is_ready_and_empty(patched_tp: None) -> None:
    fake = FakeKafka({}, "ui", missing=True)
    c = OutputConsumer(Settings(output_topic="ui"), UserIndex(DIM), poll_ms=10,
                       consumer_factory=lambda: fake)  # fmt: skip
    c.start()
    try:
        assert c.wait_ready(5) and c.lag == 0 and c.users.count() == 0
        assert c.describe()["status"] == "ready"
    finally:
        c.stop()


def test_readyz_reports_lag(patched_tp: None) -> None:
    class Stuck(FakeKafka):
        def poll(self, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
            time.sleep(0.01)
            return {}

    fake = Stuck({0: [_kv(rec("u1", 1))] * 3}, "ui")
    app = create_app(Settings(output_topic="ui"))
    state = get_state(app)
    assert state.consumer is not None
    state.consumer._factory = lambda: fake
    with TestClient(app) as client:
        _wait(lambda: state.consumer is not None and state.consumer.lag == 3)
        r = client.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert (
            body["error"] == "not_ready"
            and body["lag"] == 3
            and "3 messages behind" in body["detail"]
        )
        assert client.get("/healthz").json()["consumer"]["thread_alive"] is True
    assert state.consumer is not None and not state.consumer.alive
