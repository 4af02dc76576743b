"""Two workers in one consumer group against a real broker: split, hand-over, final state.

Both run ``python -m interest_stream.streams.worker`` with the same app id (consumer group) but
their own web port and state folder, on event topics with 4 partitions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from bench.tooling import WorkerProcess, group_lag, read_changelog_windows, wait_for
from interest_stream.core.eventfile import read_events, shared_data_dir
from interest_stream.core.settings import Settings
from interest_stream.streams.kafka_local.broker import free_port
from interest_stream.streams.replay import replay_events
from interest_stream.streams.topics import ensure_topics

pytestmark = pytest.mark.integration

TAOBAO = shared_data_dir() / "taobao-userbehavior" / "user_histories.csv.gz"
ALL = {0, 1, 2, 3}


def counts_of(df: pd.DataFrame) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (user, etype), n in df.groupby(["user_id", "event_type"]).size().items():
        out.setdefault(str(user), {})[str(etype)] = int(n)
    return out


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {t: c for t, c in counts.items() if c}


def test_two_workers_split_partitions_and_take_over(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    df = read_events(TAOBAO)
    base = make_settings(topic_partitions=4, batch_within_ms=100)
    s1 = base.model_copy(update={"worker_web_port": free_port(), "state_dir": tmp_path / "w1"})
    s2 = base.model_copy(update={"worker_web_port": free_port(), "state_dir": tmp_path / "w2"})
    counts = ensure_topics(base)
    assert all(counts[t] == 4 for t in base.event_topics)
    first, second = df.iloc[: len(df) // 2], df.iloc[len(df) // 2 :]

    w1 = WorkerProcess(s1, log_path=tmp_path / "w1.log").start()
    w2 = WorkerProcess(s2, log_path=tmp_path / "w2.log").start()
    with w1, w2:
        w1.wait_ready()
        w2.wait_ready()

        def split() -> bool:
            p1, p2 = set(w1.partitions()), set(w2.partitions())
            return bool(p1) and bool(p2) and not p1 & p2 and p1 | p2 == ALL

        wait_for(split, 90, what="partitions split between the two workers")
        p1, p2 = set(w1.partitions()), set(w2.partitions())

        replay_events(first, settings=base)
        wait_for(lambda: group_lag(base) == 0, 120, interval_s=1.0, what="first half committed")
        m1, m2 = w1.metrics(), w2.metrics()
        assert m1["interest_worker_events_applied_total"] > 0
        assert m2["interest_worker_events_applied_total"] > 0
        assert (
            m1["interest_worker_events_applied_total"] + m2["interest_worker_events_applied_total"]
        ) == len(first)

        # each user is served by exactly the worker holding its partition, with its counts
        expected = counts_of(first)
        served_by: dict[str, int] = {}
        for user, exp in expected.items():
            s_1, b_1 = w1.get_json(f"/windows/{user}/")
            s_2, b_2 = w2.get_json(f"/windows/{user}/")
            assert sorted((s_1, s_2)) == [200, 404], (user, s_1, s_2)
            body, held = (b_1, p1) if s_1 == 200 else (b_2, p2)
            assert nonzero(body["type_counts"]) == exp
            assert body["version"] == sum(exp.values())
            parts = {int(k.rsplit(":", 1)[1]) for k in body["offsets"]}
            assert parts <= held
            served_by[user] = 1 if s_1 == 200 else 2
        assert set(served_by.values()) == {1, 2}

        # graceful stop of w1: w2 takes over every partition and serves w1's users intact
        assert w1.terminate() == 0
        wait_for(lambda: set(w2.partitions()) == ALL, 120, what="w2 holds all partitions")
        moved = [u for u, w in served_by.items() if w == 1]
        for user in moved:
            status, body = w2.get_json(f"/windows/{user}/")
            assert status == 200, user
            assert nonzero(body["type_counts"]) == expected[user]
            assert body["version"] == sum(expected[user].values())

        # the rest of the stream goes to w2 alone; the final state is the whole file's
        replay_events(second, settings=base)
        wait_for(lambda: group_lag(base) == 0, 120, interval_s=1.0, what="second half committed")
        assert w2.alive()
        assert w2.metrics()["interest_worker_events_duplicate_total"] == 0

    windows = read_changelog_windows(base)
    expected = counts_of(df)
    assert set(windows) == set(expected)
    wrong = [
        u
        for u, exp in expected.items()
        if nonzero(windows[u].type_counts) != exp or windows[u].version != sum(exp.values())
    ]
    assert not wrong, f"{len(wrong)} users differ, e.g. {wrong[0]}"
