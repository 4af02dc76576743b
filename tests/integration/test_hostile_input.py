"""Hostile input at volume against a real broker (issue #6).

A property test first: whatever bytes arrive (any JSON value, any object with
hostile field values, any raw bytes), :func:`parse_event` either returns a valid
event or raises :class:`InvalidEvent` with a reason, and the DLQ record of the
message is always JSON.

Then a bulk run: more than 100,000 malformed or adversarial messages (bad JSON,
wrong types, NaN/inf, far-future and negative timestamps, 10 MB payloads,
unknown types, huge ids, Unicode edge cases, key mismatches, null values) mixed
with valid events and duplicated ``event_id`` s are produced to the event topics
while a worker runs. The worker must never stop; every bad message must be in
the DLQ exactly once (no crash, so no redelivery) with a reason and its source
offsets; every valid event must be applied exactly once (duplicates skipped);
the worker's resident memory is sampled throughout and must stay bounded.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer

from bench.tooling import (
    WorkerProcess,
    group_lag,
    read_changelog_windows,
    read_topic,
    wait_for,
)
from interest_stream.core.errors import InvalidEvent
from interest_stream.core.events import dlq_record, parse_event
from interest_stream.core.settings import Settings
from interest_stream.streams.kafka_local.broker import free_port
from interest_stream.streams.topics import ensure_topics

N_BAD = 100_000
N_VALID = 12_000
N_USERS = 400
BIG = 10 * 1024 * 1024
NOW_MS = int(time.time() * 1000)
RSS_LIMIT_MB = 1200


# --------------------------------------------------------------------------- property
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=300),
)
_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.text(max_size=10), c, max_size=4), max_leaves=10)  # fmt: skip
_events = st.fixed_dictionaries(
    {},
    optional={
        "user_id": _values | st.text(min_size=1, max_size=200),
        "item_id": _values | st.text(min_size=1, max_size=200),
        "event_type": _values | st.sampled_from(["view", "pv", "buy", "cart", "fav", "hover"]),
        "ts": _values | st.integers(min_value=-(10**15), max_value=10**15),
        "event_id": _values,
    },
)


def _check(raw: bytes, key: bytes | None, topic: str) -> None:
    try:
        ev = parse_event(raw, topic=topic, key=key, max_bytes=65_536, now_ms=NOW_MS)
    except InvalidEvent as exc:
        assert exc.message
        rec = dlq_record(exc.message, exc.field, topic=topic, partition=0, offset=1, raw=raw)
        assert json.loads(json.dumps(rec))["error"] == exc.message
        return
    assert 1 <= len(ev.user_id) <= 128 and 1 <= len(ev.item_id) <= 128
    assert ev.event_type in ("view", "click", "cart", "fav", "purchase")
    assert isinstance(ev.ts, int) and ev.ts <= NOW_MS + 86_400_000


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(obj=_events | _values, key=st.none() | st.binary(max_size=40), topic=st.sampled_from(
    ["x.events.view", "x.events.purchase", "other"]))  # fmt: skip
def test_parse_event_property_json(obj: Any, key: bytes | None, topic: str) -> None:
    raw = json.dumps(obj, allow_nan=True).encode("utf-8", errors="surrogatepass")
    _check(raw, key, topic)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=2000), key=st.none() | st.binary(max_size=20))
def test_parse_event_property_bytes(raw: bytes, key: bytes | None) -> None:
    _check(raw, key, "x.events.click")


# --------------------------------------------------------------------------- bulk
def _valid(user: str, i: int) -> dict[str, Any]:
    return {"user_id": user, "item_id": f"it{i % 997}", "event_type": "view",
            "ts": 1_511_600_000_000 + i, "event_id": f"{user}-e{i}"}  # fmt: skip


def _bad(i: int, rnd: random.Random) -> tuple[bytes | None, bytes | None, str]:
    """One hostile message: (key, value, category)."""
    user = f"u{rnd.randrange(N_USERS)}"
    base = _valid(user, i)
    k = user.encode()
    cat = i % 20
    if cat == 0:
        return k, b"{not json" + str(i).encode(), "bad-json"
    if cat == 1:
        return k, json.dumps(base).encode()[: rnd.randrange(1, 40)], "truncated-json"
    if cat == 2:
        return k, bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 64))) + b"\xff", "bytes"
    if cat == 3:
        return k, json.dumps({**base, "user_id": i}).encode(), "int-user"
    if cat == 4:
        return k, json.dumps({**base, "ts": "yesterday"}).encode(), "ts-string"
    if cat == 5:
        return k, json.dumps({**base, "ts": math.nan}).encode(), "ts-nan"
    if cat == 6:
        return k, json.dumps({**base, "ts": math.inf if i % 2 else -math.inf}).encode(), "ts-inf"
    if cat == 7:
        raw = json.dumps({**base, "ts": 0}).encode().replace(b'"ts": 0', b'"ts": 1e999')
        return k, raw, "ts-1e999"
    if cat == 8:
        return k, json.dumps({**base, "ts": NOW_MS + 10 * 365 * 86_400_000}).encode(), "future"
    if cat == 9:
        return k, json.dumps({**base, "ts": -rnd.randrange(1, 10**12)}).encode(), "negative-ts"
    if cat == 10:
        return k, json.dumps({**base, "event_type": "hover"}).encode(), "unknown-type"
    if cat == 11:
        huge = "h" * (70_000 if i % 2000 == 11 else rnd.choice([129, 1000]))
        return huge.encode(), json.dumps({**base, "user_id": huge}).encode(), "huge-id"
    if cat == 12:
        return k, json.dumps({**base, "item_id": "a\u0000b"}).encode(), "control-char"
    if cat == 13:
        return k, json.dumps({**base, "item_id": "x\ud800y"}).encode(), "lone-surrogate"
    if cat == 14:
        return b"someone-else", json.dumps(base).encode(), "key-mismatch"
    if cat == 15:
        return k, None, "null-value"
    if cat == 16:
        return k, json.dumps([base]).encode(), "not-object"
    if cat == 17:
        return k, json.dumps({**base, "item_id": ""}).encode(), "empty-id"
    if cat == 18:
        return k, json.dumps({**base, "ts": 1_511_600_000}).encode(), "ts-seconds"
    return k, b"[" * 3000, "deep-nesting"


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def _messages(s: Settings) -> Iterator[tuple[str, bytes | None, bytes | None, bool, str]]:
    """(topic, key, value, is_valid, category), bad and valid interleaved, with dup event_ids."""
    rnd = random.Random(6)
    topics = list(s.event_topics)
    valid_every = N_BAD // N_VALID + 1
    v = 0
    for i in range(N_BAD):
        if i % valid_every == 0 and v < N_VALID:
            user = f"u{v % N_USERS}"
            raw = json.dumps(_valid(user, v), ensure_ascii=False).encode()
            yield topics[0], user.encode(), raw, True, "valid"
            if v % 10 == 0:  # the same event_id again, on another event topic
                yield topics[1], user.encode(), raw.replace(b'"view"', b'"click"'), True, "dup"
            if v % 97 == 0:  # a valid Unicode edge case
                uni = f"\u00e9\u0301\U0001f600\u200d{user}"
                raw = json.dumps(_valid(uni, v), ensure_ascii=False).encode()
                yield topics[0], uni.encode(), raw, True, "valid-unicode"
            v += 1
        key, value, cat = _bad(i, rnd)
        yield topics[i % len(topics)], key, value, False, cat
        if i in (10_000, 50_000, 90_000):  # 10 MB payloads (the broker takes 16 MB)
            yield topics[3], b"u1", b'{"user_id":"u1","pad":"' + b"x" * BIG + b'"}', False, "10MB"


@pytest.mark.integration
@pytest.mark.slow
def test_bulk_hostile_input_worker_survives(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    s = make_settings(worker_web_port=free_port(), batch_max=2000)
    ensure_topics(s)
    w = WorkerProcess(s, log_path=tmp_path / "worker.log").start()
    rss: list[float] = []
    with w:
        w.wait_ready()
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set() and w.alive():
                rss.append(_rss_mb(w.pid))
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        producer = KafkaProducer(
            bootstrap_servers=s.kafka_bootstrap,
            acks="all",
            linger_ms=20,
            batch_size=256 * 1024,
            max_request_size=16 * 1024 * 1024,
        )
        sent: list[tuple[Any, bool, str, bytes | None, bytes | None, str]] = []
        t0 = time.monotonic()
        for topic, key, value, ok, cat in _messages(s):
            fut = producer.send(topic, key=key, value=value)
            # keep only what the checks need (not the 10 MB values)
            sent.append((fut, ok, cat, key, value if ok else None, topic))
        producer.flush(300)
        producer.close(10)
        produce_s = time.monotonic() - t0
        where = {}
        for fut, ok, cat, key, value, topic in sent:
            md = fut.get(0)
            where[(md.topic, md.partition, md.offset)] = (ok, cat, key, value)
        n_bad = sum(1 for ok, *_ in where.values() if not ok)
        assert n_bad >= N_BAD
        # oracle check: every message meant as bad is refused by the parser, every valid accepted
        for (topic, _, _), (ok, cat, key, value) in where.items():
            if ok:
                parse_event(value, topic=topic, key=key)

        wait_for(lambda: group_lag(s) == 0 or not w.alive(), 300, interval_s=1.0,
                 what="all hostile messages processed")  # fmt: skip
        stop.set()
        sampler.join(5)
        assert w.alive(), w.log_tail()
        metrics = w.metrics()
        process_s = time.monotonic() - t0

    # DLQ: every bad message exactly once, with a reason and its source offsets
    dlq = read_topic(s, s.dlq_topic, timeout_s=120)
    seen: Counter[tuple[str, int, int]] = Counter()
    reasons: Counter[str] = Counter()
    for rec in dlq:
        body = json.loads(rec.value or b"")
        assert body["error"] and isinstance(body["error"], str)
        src = body["source"]
        seen[(src["topic"], src["partition"], src["offset"])] += 1
        ok, cat, *_ = where[(src["topic"], src["partition"], src["offset"])]
        assert not ok, (cat, body["error"])
        reasons[cat] += 1
    bad_keys = {k for k, (ok, *_) in where.items() if not ok}
    assert set(seen) == bad_keys, f"{len(bad_keys - set(seen))} bad messages missing from the DLQ"
    assert max(seen.values()) == 1
    assert metrics["interest_worker_events_dlq_total"] == n_bad

    # valid events: applied exactly once per event_id
    expected: Counter[str] = Counter()
    ids: set[tuple[str, str]] = set()
    for ok, cat, _key, value in where.values():
        if ok:
            ev = json.loads(value or b"")
            if (ev["user_id"], ev["event_id"]) not in ids:
                ids.add((ev["user_id"], ev["event_id"]))
                expected[ev["user_id"]] += 1
    windows = read_changelog_windows(s)
    assert {u: w.version for u, w in windows.items()} == dict(expected)
    n_dup = sum(1 for ok, cat, *_ in where.values() if cat == "dup")
    assert metrics["interest_worker_events_duplicate_total"] == n_dup
    assert metrics["interest_worker_events_applied_total"] == sum(expected.values())

    peak = max(rss)
    print(  # the figures go to docs/RESULTS.md
        f"\nhostile: {len(where)} messages ({n_bad} bad, {sum(expected.values())} valid, "
        f"{n_dup} duplicates), produce {produce_s:.1f}s, all processed {process_s:.1f}s, "
        f"worker RSS start {rss[0]:.0f} MB peak {peak:.0f} MB end {rss[-1]:.0f} MB; "
        f"DLQ by category {dict(sorted(reasons.items()))}"
    )
    assert peak < RSS_LIMIT_MB, f"worker RSS peaked at {peak:.0f} MB"
