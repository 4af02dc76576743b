"""The worker against a real broker: the Taobao slice plus 1,000 malformed messages.

Runs ``python -m interest_stream.streams.worker`` as a child process, replays the 84,287 events
with malformed messages mixed in, then checks every user's window against the
file, the DLQ against what was sent, and that the worker is still alive.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from bench.tooling import (
    WorkerProcess,
    read_changelog_windows,
    read_topic,
    wait_for,
)
from interest_stream.core.eventfile import read_events, shared_data_dir
from interest_stream.core.events import DLQ_RAW_MAX_BYTES
from interest_stream.core.settings import Settings
from interest_stream.streams.kafka_local.broker import free_port
from interest_stream.streams.replay import make_producer, produce_raw, replay_events
from interest_stream.streams.topics import ensure_topics

pytestmark = pytest.mark.integration

TAOBAO = shared_data_dir() / "taobao-userbehavior" / "user_histories.csv.gz"
TS = 1_511_500_000_000
MB = 1_000_000


@pytest.fixture(scope="module")
def taobao() -> pd.DataFrame:
    return read_events(TAOBAO)


Pair = tuple[bytes | None, bytes | None]


def malformed_messages(users: list[str], rng: random.Random) -> list[Pair]:
    """Exactly 1,000 (key, value) pairs that must all go to the DLQ."""

    def js(obj: object) -> bytes:
        return json.dumps(obj).encode()

    def good(u: str) -> dict[str, object]:
        # the type is implied by the events.<type> topic the message lands on
        return {"user_id": u, "item_id": "i1", "ts": TS}

    out: list[tuple[bytes | None, bytes | None]] = []

    def add(n: int, make: Callable[[int, str], tuple[bytes | None, bytes | None]]) -> None:
        for i in range(n):
            out.append(make(i, rng.choice(users)))

    def key(i: int, u: str) -> bytes | None:
        return u.encode() if i % 2 else None

    # bad JSON
    add(
        150,
        lambda i, u: (
            key(i, u),
            [
                js(good(u))[: 10 + i % 20],
                js(good(u)) + b"}",
                b"",
                b"{user_id: 'x'}",
                b'{"user_id": "' + u.encode() + b'", "item_id": "i1",,}',
            ][i % 5],
        ),
    )
    # missing required fields (event_type is implied by the events.<type> topics)
    add(
        150,
        lambda i, u: (
            key(i, u),
            js({k: v for k, v in good(u).items() if k != ["user_id", "item_id", "ts"][i % 3]}),
        ),
    )
    # wrong types
    wrong: list[tuple[str, object]] = [
        ("user_id", 12345),
        ("item_id", ["i"]),
        ("ts", True),
        ("ts", "yesterday"),
        ("ts", 1511500000000.5),
        ("event_type", 3),
    ]
    add(
        150,
        lambda i, u: (
            None if wrong[i % 6][0] == "user_id" else key(i, u),
            js({**good(u), wrong[i % 6][0]: wrong[i % 6][1]}),
        ),
    )
    # unknown event types
    add(
        100,
        lambda i, u: (
            key(i, u),
            js({**good(u), "event_type": ["like", "share", "", "VIEWS"][i % 4]}),
        ),
    )
    # 1 MB strings (over INTEREST_MAX_EVENT_BYTES)
    add(20, lambda i, u: (key(i, u), js({**good(u), "item_id": "x" * MB})))
    # non-UTF-8 bytes
    add(
        100,
        lambda i, u: (
            key(i, u),
            [
                b"\xff\xfe" + js(good(u)),
                js(good(u)).replace(b'"i1"', b'"i\xc3\x28"'),
                bytes(rng.randrange(128, 256) for _ in range(40)),
            ][i % 3],
        ),
    )
    # key is not the user_id
    add(100, lambda i, u: (b"someone-else-" + str(i).encode(), js(good(u))))
    # not an object
    add(80, lambda i, u: (key(i, u), [b"[1, 2, 3]", b'"view"', b"42", b"null"][i % 4]))
    # bad times: epoch seconds, negative, far future
    add(
        60,
        lambda i, u: (key(i, u), js({**good(u), "ts": [TS // 1000, -5, 4_000_000_000_000][i % 3]})),
    )
    # bad ids: empty, too long, control characters
    add(
        60,
        lambda i, u: (
            key(i, u) if i % 3 != 0 else None,
            js(
                {**good(u), **[{"user_id": ""}, {"item_id": "i" * 129}, {"item_id": "a\nb"}][i % 3]}
            ),
        ),
    )
    # JSON constants NaN / Infinity
    add(
        20,
        lambda i, u: (key(i, u), b'{"user_id": "' + u.encode() + b'", "item_id": "i1", "ts": NaN}'),
    )
    # tombstones (no value)
    add(10, lambda i, u: (u.encode(), None))
    assert len(out) == 1000
    rng.shuffle(out)
    return out


def fingerprint(key: bytes | None, value: bytes | None) -> tuple[object, ...]:
    if value is None:
        return (key, "none")
    if len(value) > DLQ_RAW_MAX_BYTES:
        return (key, "sha256", hashlib.sha256(value).hexdigest())
    try:
        return (key, "utf-8", value.decode("utf-8"))
    except UnicodeDecodeError:
        return (key, "base64", base64.b64encode(value).decode())


def dlq_fingerprint(key: bytes | None, rec: dict[str, object]) -> tuple[object, ...]:
    if rec["raw"] is None:
        return (key, "none")
    if rec.get("raw_truncated"):
        return (key, "sha256", rec["raw_sha256"])
    return (key, rec["raw_encoding"], rec["raw"])


def publish_mixed(
    settings: Settings, df: pd.DataFrame, bad: list[tuple[bytes | None, bytes | None]], chunks: int
) -> None:
    """Replay ``df`` in ``chunks`` slices with a share of ``bad`` after each, on random topics."""
    rng = random.Random(5)
    producer = make_producer(settings)
    try:
        per = -(-len(bad) // chunks)
        for c in range(chunks):
            part = df.iloc[c * len(df) // chunks : (c + 1) * len(df) // chunks]
            replay_events(part, settings, producer=producer)
            by_topic: dict[str, list[tuple[bytes | None, bytes | None]]] = {}
            for pair in bad[c * per : (c + 1) * per]:
                by_topic.setdefault(rng.choice(settings.event_topics), []).append(pair)
            for topic, pairs in by_topic.items():
                produce_raw(settings, topic, pairs, producer=producer)
    finally:
        producer.close(timeout=30)


def expected_counts(df: pd.DataFrame) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (user, etype), n in df.groupby(["user_id", "event_type"]).size().items():
        out.setdefault(str(user), {})[str(etype)] = int(n)
    return out


def assert_windows_match(settings: Settings, df: pd.DataFrame) -> None:
    """Every user's changelog window has exactly the file's per-type counts and version."""
    windows = read_changelog_windows(settings)
    expected = expected_counts(df)
    assert set(windows) == set(expected)
    wrong = {
        u: ({t: c for t, c in windows[u].type_counts.items() if c}, exp)
        for u, exp in expected.items()
        if {t: c for t, c in windows[u].type_counts.items() if c} != exp
        or windows[u].version != sum(exp.values())
    }
    assert not wrong, f"{len(wrong)} users differ, e.g. {next(iter(wrong.items()))}"
    latest = df.groupby("user_id")["ts"].max()
    assert all(windows[u].event_time == int(latest[u]) for u in expected)


def test_replay_with_malformed_messages(
    make_settings: Callable[..., Settings], taobao: pd.DataFrame, tmp_path: Path
) -> None:
    settings = make_settings(worker_web_port=free_port(), batch_within_ms=100)
    ensure_topics(settings)
    users = sorted(taobao["user_id"].unique())
    bad = malformed_messages(users, random.Random(1))
    total = len(taobao) + len(bad)
    worker = WorkerProcess(settings, log_path=tmp_path / "worker.log")
    with worker:
        worker.wait_ready()
        publish_mixed(settings, taobao, bad, chunks=10)
        wait_for(
            lambda: (
                worker.metrics().get("interest_worker_events_consumed_total", 0) >= total
                or not worker.alive()
            ),
            240,
            interval_s=1.0,
            what="all messages consumed",
        )
        assert worker.alive(), worker.log_tail()
        m = worker.metrics()
        assert m["interest_worker_events_consumed_total"] == total
        assert m["interest_worker_events_applied_total"] == len(taobao)
        assert m["interest_worker_events_dlq_total"] == len(bad)
        assert m["interest_worker_events_duplicate_total"] == 0

        # state: exact per-user per-type counts, versions and newest event times
        assert_windows_match(settings, taobao)

        # the HTTP view serves the same windows; unknown users are 404
        windows = read_changelog_windows(settings)
        for user in users[:: max(1, len(users) // 20)]:
            status, body = worker.get_json(f"/windows/{user}/")
            assert status == 200
            assert body["version"] == windows[user].version
            assert body["type_counts"] == windows[user].type_counts
            assert len(body["long"]) == min(settings.long_history_events, windows[user].version)
        assert worker.get_json("/windows/no-such-user/")[0] == 404
        status, health = worker.get_json("/healthz/")
        assert status == 200 and health["status"] == "ok"

        # DLQ: exactly the malformed messages, with a reason and their source offsets
        dlq = read_topic(settings, settings.dlq_topic)
        assert len(dlq) == len(bad)
        records = [json.loads(r.value or b"null") for r in dlq]
        for rec in records:
            assert isinstance(rec["error"], str) and rec["error"]
            src = rec["source"]
            assert src["topic"] in settings.event_topics
            assert isinstance(src["partition"], int) and isinstance(src["offset"], int)
        sources = {
            (r["source"]["topic"], r["source"]["partition"], r["source"]["offset"]) for r in records
        }
        assert len(sources) == len(bad)
        assert Counter(
            dlq_fingerprint(r.key, rec) for r, rec in zip(dlq, records, strict=True)
        ) == Counter(fingerprint(k, v) for k, v in bad)
        # each source offset points at the malformed message itself
        source_values = {}
        for topic in settings.event_topics:
            for r in read_topic(settings, topic):
                if (topic, r.partition, r.offset) in sources:
                    source_values[(topic, r.partition, r.offset)] = (r.key, r.value)
        for r, rec in zip(dlq, records, strict=True):
            s = rec["source"]
            k, v = source_values[(s["topic"], s["partition"], s["offset"])]
            assert k == r.key
            assert fingerprint(k, v) == dlq_fingerprint(r.key, rec)
        reasons = Counter(str(rec["field"]) for rec in records)
        assert {"None", "user_id", "item_id", "ts", "event_type", "key"} <= set(reasons)

        assert worker.alive()
        assert worker.terminate() == 0
