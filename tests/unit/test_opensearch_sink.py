"""Unit tests of the OpenSearch sink's write logic against an in-memory fake of the engine.

The fake keeps OpenSearch's external versioning (``external_gte`` for records, strict
``external`` for markers, 409 otherwise), so the sink's life/marker scheme is checked
against the topic's semantics (``plan_batch``: highest version wins, a tombstone clears
what came before it) without a cluster; the real engine is in the integration test.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from kafka import TopicPartition

from interest_stream.core.settings import Settings
from interest_stream.index.opensearch_store import (
    Life,
    StoreUnavailable,
    Tomb,
    Upsert,
    WriteOutcome,
)
from interest_stream.sink import OpenSearchSink

TOPIC = "user-interest"


@dataclass
class Rec:
    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int


class FakeStore:
    """External versioning as OpenSearch does it, plus injectable failures."""

    def __init__(self) -> None:
        self.docs: dict[str, tuple[int, dict[str, Any]]] = {}
        self.fail_writes = 0
        self.fail_users: set[str] = set()
        self.dim: int | None = None

    def ensure_index(self, dim: int | None, *, upgrade: bool | None = None) -> int | None:
        self.dim = self.dim or dim
        return self.dim

    def write(self, ups: Iterable[Upsert]) -> list[WriteOutcome]:
        if self.fail_writes:
            self.fail_writes -= 1
            raise StoreUnavailable("injected")
        out = []
        for up in ups:
            uid = up.record.user_id
            if uid in self.fail_users:
                self.fail_users.discard(uid)
                out.append(WriteOutcome(uid, "failed", "429 injected"))
                continue
            held = self.docs.get(uid)
            if held is not None and up.external_version < held[0]:
                out.append(WriteOutcome(uid, "stale"))
                continue
            life = up.life
            self.docs[uid] = (
                up.external_version,
                {
                    "deleted": False,
                    "version": up.record.version,
                    "short": up.record.short.tolist(),
                    "kp": up.partition,
                    "life": life.base if life else 0,
                    "tomb": life.tomb if life else -1,
                },
            )
            out.append(WriteOutcome(uid, "applied"))
        return out

    def forget(self, user_id: str, partition: int, offset: int, floor: int = 0) -> Life:
        held = self.docs.get(user_id)
        if held and held[1]["kp"] == partition and held[1]["tomb"] >= offset:
            return Life(held[1]["life"], held[1]["tomb"])
        marker = max(held[0] if held else 0, floor) + 1
        self.docs[user_id] = (
            marker,
            {"deleted": True, "kp": partition, "life": marker, "tomb": offset},
        )
        return Life(marker, offset)

    def forget_many(self, tombs: list[Tomb]) -> dict[str, Life]:
        if self.fail_writes:
            self.fail_writes -= 1
            raise StoreUnavailable("injected")
        return {t.user_id: self.forget(t.user_id, t.partition, t.offset, t.floor) for t in tombs}

    def lives(self, partition: int) -> dict[str, Life]:
        return {
            u: Life(d["life"], d["tomb"])
            for u, (_, d) in self.docs.items()
            if d["kp"] == partition and d["tomb"] >= 0
        }

    def state(self) -> dict[str, tuple[int, float]]:
        return {
            u: (d["version"], d["short"][0]) for u, (_, d) in self.docs.items() if not d["deleted"]
        }


def _record(uid: str, version: int, tag: float) -> bytes:
    return json.dumps(
        {"user_id": uid, "version": version, "short": [tag, 0.0], "long": [0.0, tag]}
    ).encode()


def _expected(log: list[Rec]) -> dict[str, tuple[int, float]]:
    """The topic's meaning: in offset order, a tombstone clears, a lower version is stale."""
    state: dict[str, tuple[int, float]] = {}
    for r in log:
        uid = r.key.decode() if r.key else ""
        if r.value is None:
            state.pop(uid, None)
            continue
        obj = json.loads(r.value)
        if uid not in state or obj["version"] >= state[uid][0]:
            state[uid] = (obj["version"], float(np.float32(obj["short"][0])))
    return state


def _sink(store: FakeStore) -> OpenSearchSink:
    return OpenSearchSink(Settings(), store=store, backoff_max_s=0.001)  # type: ignore[arg-type]


def _feed(sink: OpenSearchSink, log: list[Rec], cut: int, step: int) -> None:
    for lo in range(cut, len(log), step):
        chunk = log[lo : lo + step]
        by_tp: dict[TopicPartition, list[Rec]] = {}
        for r in chunk:
            by_tp.setdefault(TopicPartition(TOPIC, r.partition), []).append(r)
        sink.process(by_tp)


def _log(seed: int, n: int = 400) -> list[Rec]:
    rng = random.Random(seed)
    versions: dict[str, int] = {}
    log: list[Rec] = []
    for off in range(n):
        uid = f"u{rng.randrange(12)}"
        roll = rng.random()
        if roll < 0.08:
            versions[uid] = 0  # forgotten: the next life starts again at 1
            log.append(Rec(uid.encode(), None, TOPIC, 0, off))
            continue
        if roll < 0.2 and versions.get(uid):
            v = max(0, versions[uid] - rng.randrange(1, 4))  # a stale re-send
        elif roll < 0.3 and versions.get(uid):
            v = versions[uid]  # same version again (model swap): read last wins
        else:
            v = versions[uid] = versions.get(uid, 0) + rng.randrange(1, 3)
        log.append(Rec(uid.encode(), _record(uid, v, round(rng.random(), 4)), TOPIC, 0, off))
    return log


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_end_state_matches_the_topic_with_replays_and_restarts(seed: int) -> None:
    log = _log(seed)
    store = FakeStore()
    rng = random.Random(seed)
    done = 0
    while done < len(log):  # crash after a random prefix, restart from an earlier offset
        upto = min(len(log), done + rng.randrange(20, 120))
        sink = _sink(store)
        _feed(sink, log[:upto], max(0, done - rng.randrange(0, 60)), rng.randrange(1, 40))
        done = upto
    assert store.state() == _expected(log)


def test_failed_writes_are_retried_before_the_commit() -> None:
    log = [
        Rec(b"a", _record("a", 1, 0.5), TOPIC, 0, 0),
        Rec(b"b", _record("b", 1, 0.25), TOPIC, 0, 1),
    ]
    store = FakeStore()
    store.fail_writes = 2
    store.fail_users = {"b"}
    sink = _sink(store)
    done = sink.process({TopicPartition(TOPIC, 0): log})
    assert done == {TopicPartition(TOPIC, 0): 2}
    assert store.state() == {"a": (1, 0.5), "b": (1, 0.25)}
    assert sink.stats.retries >= 3


def test_malformed_records_are_skipped_and_counted() -> None:
    store = FakeStore()
    sink = _sink(store)
    recs = [
        Rec(b"a", b"{not json", TOPIC, 0, 0),
        Rec(b"a", _record("a", 2, 0.5), TOPIC, 0, 1),
        Rec(b"b", _record("b", 1, 0.5)[:-1] + b',"short":[1,2,3]}', TOPIC, 0, 2),
    ]
    assert sink.process({TopicPartition(TOPIC, 0): recs}) == {TopicPartition(TOPIC, 0): 3}
    assert sink.stats.malformed == 2 and store.state() == {"a": (2, 0.5)}
