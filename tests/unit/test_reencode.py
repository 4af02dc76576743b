"""The re-encode loop's own logic: coalescing, long-term cadence, back-pressure, records.

The encoder here is a small deterministic function of the window (hashing the
items into a vector), so every assertion can say exactly which window a
published vector came from; the real model runs in tests/integration/test_pipeline.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence

import numpy as np
import pytest

from interest_stream.core import records
from interest_stream.core.events import Event, Interaction
from interest_stream.core.records import PURCHASED_IN_RECORD, RECENT_IN_RECORD
from interest_stream.streams.reencode import (
    Reencoder,
    build_record,
)
from interest_stream.streams.window import BehaviorWindow, WindowConfig

DIM = 8
T0 = 1_512_000_000_000


def _vec(history: Sequence[Interaction]) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    for it in history:
        h = hashlib.blake2b(it.item_id.encode(), digest_size=DIM).digest()
        v += np.frombuffer(h, dtype=np.uint8).astype(np.float32) / 255.0
    return v


class HashEncoder:
    """Short = hash-sum of the short window; long = same over the history, negated."""

    model_version = "hash-1"
    dim = DIM

    def __init__(self) -> None:
        self.short_calls: list[int] = []
        self.long_calls: list[int] = []

    def encode_short(self, histories: Sequence[Sequence[Interaction]]) -> np.ndarray:
        self.short_calls.append(len(histories))
        return np.stack([_vec(h) for h in histories]) if histories else np.zeros((0, DIM))

    def encode_long(self, histories: Sequence[Sequence[Interaction]]) -> np.ndarray:
        self.long_calls.append(len(histories))
        return -np.stack([_vec(h) for h in histories]) if histories else np.zeros((0, DIM))


def window(user: str, items: Sequence[tuple[str, str]], start: int = 0) -> BehaviorWindow:
    w = BehaviorWindow(user, WindowConfig())
    for k, (item, etype) in enumerate(items):
        w.apply(Event(user, item, etype, T0 + (start + k) * 1000), "t", 0, start + k)
    return w


class Sink:
    def __init__(self) -> None:
        self.records: list[dict[str, object]] = []
        self.calls = 0

    async def __call__(self, records: Sequence[tuple[bytes, bytes | None]]) -> None:
        self.calls += 1
        for key, value in records:
            assert value is not None
            rec = json.loads(value)
            assert rec["user_id"] == key.decode()
            self.records.append(rec)


def test_build_record_reads_recent_purchases_and_counts() -> None:
    events = [(f"i{k}", "purchase" if k % 7 == 0 else "view") for k in range(120)]
    events += [("i0", "purchase")]  # bought again: listed once, as the newest
    w = window("u1", events)
    rec = build_record("u1", w, np.ones(DIM), -np.ones(DIM), "m1", produced_at=123, now_ms=456)
    history = w.long()
    assert rec["version"] == len(events) and rec["event_time"] == history[-1].ts
    assert rec["recent"] == [[i.item_id, i.event_type, i.ts] for i in history[-RECENT_IN_RECORD:]]
    bought: list[str] = []
    for it in reversed(history):
        if it.event_type == "purchase" and it.item_id not in bought:
            bought.append(it.item_id)
    assert rec["purchased"] == bought[:PURCHASED_IN_RECORD][::-1]
    assert rec["purchased"][-1] == "i0" and rec["purchased"].count("i0") == 1
    assert rec["counts"] == {"view": 102, "click": 0, "cart": 0, "fav": 0, "purchase": 19}
    assert rec["produced_at"] == 123 and rec["updated_at"] == 456
    assert rec["short"] == [1.0] * DIM and rec["model_version"] == "m1"


def test_users_are_coalesced_and_encoded_from_their_newest_window() -> None:
    async def run() -> tuple[Sink, HashEncoder, Reencoder]:
        enc, sink = HashEncoder(), Sink()
        r = Reencoder(enc, sink, flush_ms=5, batch_max=64)
        a_old, a_new = window("a", [("x", "view")]), window("a", [("x", "view"), ("y", "cart")])
        await r.submit({"a": a_old, "b": window("b", [("z", "view")])}, {"a": 10, "b": 11})
        await r.submit({"a": a_new}, {"a": 9})
        assert r.pending == 2
        assert await r.flush_once() == 2
        return sink, enc, r

    sink, enc, r = asyncio.run(run())
    by_user = {rec["user_id"]: rec for rec in sink.records}
    assert set(by_user) == {"a", "b"} and enc.short_calls == [2]
    a = by_user["a"]
    assert a["version"] == 2  # the newest window, not the first one submitted
    np.testing.assert_allclose(
        a["short"], _vec(window("a", [("x", "view"), ("y", "cart")]).short()), rtol=1e-5
    )
    assert a["produced_at"] == 10  # the newest Kafka timestamp among the coalesced submissions
    assert r.pending == 0


def test_short_windows_are_cut_with_the_encoders_spec_when_it_has_one() -> None:
    class SpecEncoder(HashEncoder):
        short_window_spec = (2, 1e6)  # a checkpoint trained with another short window

        def __init__(self) -> None:
            super().__init__()
            self.seen: list[list[str]] = []

        def encode_short(self, histories: Sequence[Sequence[Interaction]]) -> np.ndarray:
            self.seen.extend([i.item_id for i in h] for h in histories)
            return super().encode_short(histories)

    enc, sink = SpecEncoder(), Sink()
    events = [(f"i{k}", "view") for k in range(6)]
    w = window("a", events)  # one event a second: all within the worker's 30 minutes
    assert len(w.short()) == 6

    async def run() -> None:
        r = Reencoder(enc, sink, flush_ms=5, batch_max=64)
        await r.submit({"a": w}, {"a": 1})
        assert await r.flush_once() == 1

    asyncio.run(run())
    assert enc.seen == [["i4", "i5"]]
    np.testing.assert_allclose(sink.records[0]["short"], _vec(w.short((2, 1e6))), rtol=1e-5)


def test_long_vector_is_refreshed_on_its_own_cadence() -> None:
    async def run(refresh_s: float) -> tuple[Sink, HashEncoder]:
        enc, sink = HashEncoder(), Sink()
        r = Reencoder(enc, sink, flush_ms=1, batch_max=64, long_refresh_s=refresh_s)
        first = window("u", [("a", "view")])
        await r.submit({"u": first})
        await r.flush_once()
        await r.submit({"u": window("u", [("a", "view"), ("b", "view")])})
        await r.flush_once()
        return sink, enc

    sink, enc = asyncio.run(run(refresh_s=3600.0))
    assert enc.short_calls == [1, 1] and enc.long_calls == [1]  # second flush reuses it
    assert sink.records[0]["long"] == sink.records[1]["long"]
    assert sink.records[0]["short"] != sink.records[1]["short"]
    sink, enc = asyncio.run(run(refresh_s=0.0))
    assert enc.long_calls == [1, 1] and sink.records[0]["long"] != sink.records[1]["long"]


def test_long_refreshes_per_flush_are_capped_and_new_users_always_encode() -> None:
    """A wave of due long vectors is spread over flushes; the most overdue go first."""

    async def run() -> tuple[HashEncoder, Reencoder]:
        enc, sink = HashEncoder(), Sink()
        r = Reencoder(
            enc, sink, flush_ms=1, batch_max=64, long_refresh_s=0.0, long_refresh_per_flush=3
        )
        users = {f"u{k}": window(f"u{k}", [("a", "view")]) for k in range(10)}
        await r.submit(users)
        await r.flush_once()  # all new: 10 long encodes despite the cap
        await r.submit(users | {"new": window("new", [("b", "view")])})
        await r.flush_once()  # 10 due (refresh 0 s) + 1 new: the new one + 3 refreshes
        await r.submit(users)
        await r.flush_once()
        return enc, r

    enc, r = asyncio.run(run())
    assert enc.long_calls == [10, 4, 3]
    assert len(r._long) == 11  # every user keeps a long vector


def test_back_pressure_blocks_submit_until_a_flush_makes_room() -> None:
    async def run() -> tuple[bool, bool, int]:
        r = Reencoder(HashEncoder(), Sink(), flush_ms=1, batch_max=2, max_pending=3)
        await r.submit({f"u{k}": window(f"u{k}", [("i", "view")]) for k in range(3)})
        blocked = asyncio.create_task(r.submit({"late": window("late", [("i", "view")])}))
        await asyncio.sleep(0.05)
        was_blocked = not blocked.done()
        await r.flush_once()  # takes 2 of 3: room again
        await asyncio.wait_for(blocked, timeout=2.0)
        return was_blocked, blocked.done(), r.pending

    was_blocked, done, pending = asyncio.run(run())
    assert was_blocked and done and pending == 2  # 1 left + the late user


def test_forget_drops_pending_user_and_cached_long_vector() -> None:
    async def run() -> tuple[Sink, HashEncoder]:
        enc, sink = HashEncoder(), Sink()
        r = Reencoder(enc, sink, flush_ms=1, batch_max=8, long_refresh_s=3600.0)
        await r.submit({"u": window("u", [("a", "view")]), "v": window("v", [("b", "view")])})
        await r.flush_once()
        await r.submit({"u": window("u", [("a", "view"), ("c", "view")])})
        r.forget("u")
        assert await r.flush_once() == 0
        await r.submit({"u": window("u", [("d", "view")])})  # a new life: long re-encoded
        await r.flush_once()
        return sink, enc

    sink, enc = asyncio.run(run())
    assert [rec["user_id"] for rec in sink.records] == ["u", "v", "u"]
    assert enc.long_calls == [2, 1]


@pytest.mark.parametrize("n_users", [1, 700])
def test_run_loop_flushes_everyone_in_batches_of_at_most_batch_max(n_users: int) -> None:
    async def run() -> tuple[Sink, HashEncoder]:
        enc, sink = HashEncoder(), Sink()
        r = Reencoder(enc, sink, flush_ms=2, batch_max=256)
        task = asyncio.create_task(r.run())
        await r.submit({f"u{k}": window(f"u{k}", [("i", "view")]) for k in range(n_users)})
        for _ in range(200):
            if len(sink.records) >= n_users:
                break
            await asyncio.sleep(0.01)
        r.close()
        task.cancel()
        return sink, enc

    sink, enc = asyncio.run(run())
    assert sorted(rec["user_id"] for rec in sink.records) == sorted(f"u{k}" for k in range(n_users))
    assert max(enc.short_calls) <= 256 and sum(enc.short_calls) == n_users


def test_submitted_windows_are_copies_the_worker_can_keep_mutating() -> None:
    async def run() -> tuple[Sink, BehaviorWindow]:
        sink = Sink()
        r = Reencoder(HashEncoder(), sink, flush_ms=1, batch_max=8)
        w = window("u", [("a", "view"), ("b", "view")])
        await r.submit({"u": w})
        # the worker applies the next batch to its cached object before the flush
        w.apply(Event("u", "c", "cart", T0 + 10_000), "t", 0, 99)
        await r.flush_once()
        return sink, w

    sink, w = asyncio.run(run())
    rec = sink.records[0]
    assert rec["version"] == 2 and [e[0] for e in rec["recent"]] == ["a", "b"]
    assert w.version == 3 and w.items[-1] == "c"


def test_records_are_compact_utf8_json() -> None:
    w = window("u1", [("ié", "view"), ("j", "purchase")])
    rec = build_record("u1", w, np.ones(DIM) / 3, -np.ones(DIM), "m1", now_ms=1)
    raw = json.dumps(rec, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert records.dumps_record(rec) == raw == records.encode_record(rec)
    assert records.tombstone("u1") == (b"u1", None)
