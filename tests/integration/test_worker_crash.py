"""Crash recovery against a real broker: SIGKILL mid-replay, restart, nothing lost or doubled.

The workers run with a long commit interval, so every kill leaves a large batch
of processed-but-uncommitted messages behind: each restart must skip them
through the windows' offset marks. The second restart starts from an empty
state folder, so the windows come back from the changelog topic.
"""

from __future__ import annotations

import shutil
import threading
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
# A dead member is dropped by the group coordinator after the session timeout,
# so a restarted worker waits that long for its partitions.
FAST_GROUP = {
    "INTEREST_FAUST_BROKER_SESSION_TIMEOUT": "8",
    "INTEREST_FAUST_BROKER_HEARTBEAT_INTERVAL": "1",
}
NO_COMMITS = {**FAST_GROUP, "INTEREST_FAUST_BROKER_COMMIT_INTERVAL": "600"}


def consumed(w: WorkerProcess) -> float:
    return w.metrics().get("interest_worker_events_consumed_total", 0.0)


def test_sigkill_mid_replay_loses_and_doubles_nothing(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    df: pd.DataFrame = read_events(TAOBAO)
    settings = make_settings(worker_web_port=free_port(), batch_within_ms=100)
    ensure_topics(settings)
    errors: list[BaseException] = []
    # The replay waits at these counts until the given kill has happened, so every
    # kill lands in the middle of the replay however fast or slow the machine is.
    gates = {20_000: threading.Event(), 50_000: threading.Event()}
    w1_ready = threading.Event()

    def on_sent(n: int) -> None:
        gate = gates.get(n)
        if gate is not None:
            gate.wait(300)

    def publish() -> None:
        try:
            w1_ready.wait(300)
            replay_events(df, settings, on_sent=on_sent)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    replay = threading.Thread(target=publish, daemon=True)
    replay.start()

    # 1) first worker: processes part of the stream, commits nothing, is killed
    w1 = WorkerProcess(settings, log_path=tmp_path / "w1.log", extra_env=NO_COMMITS).start()
    with w1:
        w1.wait_ready()
        w1_ready.set()
        wait_for(lambda: consumed(w1) >= 15_000, 120, what="w1 consumed 15k")
        w1.kill()
        gates[20_000].set()
    applied_1 = read_changelog_windows(settings)
    assert 0 < sum(w.version for w in applied_1.values()) < len(df)

    # 2) same state folder: local RocksDB + changelog tail; redelivered events are skipped
    w2 = WorkerProcess(settings, log_path=tmp_path / "w2.log", extra_env=NO_COMMITS).start()
    with w2:
        w2.wait_ready()
        wait_for(
            lambda: (
                w2.metrics().get("interest_worker_events_duplicate_total", 0) > 0
                and consumed(w2) >= 20_000
            ),
            120,
            what="w2 skipped duplicates and went on",
        )
        w2.kill()
        gates[50_000].set()
    applied_2 = read_changelog_windows(settings)
    assert sum(w.version for w in applied_2.values()) > sum(w.version for w in applied_1.values())

    # 3) wiped state folder: windows recovered from the changelog topic
    shutil.rmtree(settings.state_dir)
    w3 = WorkerProcess(settings, log_path=tmp_path / "w3.log", extra_env=FAST_GROUP).start()
    with w3:
        w3.wait_ready()
        replay.join(120)
        assert not replay.is_alive() and not errors, errors
        wait_for(
            lambda: group_lag(settings) == 0 or not w3.alive(),
            180,
            interval_s=1.0,
            what="all events processed and committed",
        )
        assert w3.alive(), w3.log_tail()
        assert w3.metrics()["interest_worker_events_dlq_total"] == 0
        assert w3.terminate() == 0

    windows = read_changelog_windows(settings)
    expected: dict[str, dict[str, int]] = {}
    for (user, etype), n in df.groupby(["user_id", "event_type"]).size().items():
        expected.setdefault(str(user), {})[str(etype)] = int(n)
    assert set(windows) == set(expected)
    wrong = [
        u
        for u, exp in expected.items()
        if {t: c for t, c in windows[u].type_counts.items() if c} != exp
        or windows[u].version != sum(exp.values())
    ]
    assert not wrong, f"{len(wrong)} users differ, e.g. {wrong[0]}: {windows[wrong[0]].type_counts}"
    # a history that holds all of a user's events holds each exactly once
    small = [u for u, exp in expected.items() if sum(exp.values()) <= settings.long_history_events]
    assert len(small) > 100
    for u in small:
        rows = df[df["user_id"] == u]
        assert sorted(windows[u].long()) == sorted(
            zip(rows["item_id"], rows["event_type"], rows["ts"].astype(int), strict=True)
        )


@pytest.mark.slow
def test_repeated_sigkills_at_random_moments_lose_and_double_nothing(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Several SIGKILLs at random moments of one paced replay; one restart wipes the state dir.

    Commits are off for the killed workers, so every restart re-reads the topics
    from the beginning and must skip everything already applied (offset marks),
    whether the window comes from the local RocksDB or from the changelog topic.
    """
    import random
    import time

    df_all: pd.DataFrame = read_events(TAOBAO)
    users = sorted(df_all["user_id"].unique())[:300]
    df = df_all[df_all["user_id"].isin(users)].reset_index(drop=True)
    seed = int(time.time())
    rnd = random.Random(seed)
    settings = make_settings(worker_web_port=free_port(), batch_within_ms=50)
    ensure_topics(settings)
    errors: list[BaseException] = []
    rate = len(df) / 45.0  # the replay lasts about 45 s

    def publish() -> None:
        try:
            replay_events(df, settings, rate=rate)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    kills, kills_during_replay, wipe_at = 4, 0, rnd.randrange(1, 4)
    replay = threading.Thread(target=publish, daemon=True)
    ready_s: list[float] = []
    for k in range(kills):
        if k == wipe_at:
            shutil.rmtree(settings.state_dir, ignore_errors=True)
        w = WorkerProcess(settings, log_path=tmp_path / f"w{k}.log", extra_env=NO_COMMITS)
        t_start = time.monotonic()
        with w.start():
            w.wait_ready()
            ready_s.append(time.monotonic() - t_start)
            if k == 0:
                replay.start()
            time.sleep(rnd.uniform(1.0, 6.0))
            kills_during_replay += replay.is_alive()
            w.kill()
    t_start = time.monotonic()
    wf = WorkerProcess(settings, log_path=tmp_path / "final.log", extra_env=FAST_GROUP).start()
    with wf:
        wf.wait_ready()
        ready_s.append(time.monotonic() - t_start)
        replay.join(180)
        assert not replay.is_alive() and not errors, errors
        wait_for(lambda: group_lag(settings) == 0 or not wf.alive(), 180, interval_s=1.0,
                 what="all events processed and committed")  # fmt: skip
        assert wf.alive(), wf.log_tail()
        assert wf.terminate() == 0
    assert kills_during_replay >= 3, (
        f"only {kills_during_replay} kills hit the replay (seed {seed})"
    )

    windows = read_changelog_windows(settings)
    expected = df.groupby("user_id").size().to_dict()
    assert set(windows) == set(expected), f"seed {seed}"
    wrong = {u: (windows[u].version, n) for u, n in expected.items() if windows[u].version != n}
    assert not wrong, f"seed {seed}: {len(wrong)} users differ, e.g. {list(wrong.items())[:3]}"
    for u in users[:50]:
        rows = df[df["user_id"] == u]
        if len(rows) <= settings.long_history_events:
            assert sorted(windows[u].long()) == sorted(
                zip(rows["item_id"], rows["event_type"], rows["ts"].astype(int), strict=True)
            ), f"seed {seed}: user {u}"
    print(
        f"\nrepeated kills: seed {seed}, {kills} kills ({kills_during_replay} during the replay), "
        f"{len(df)} events, {len(expected)} users, all exact; restart -> partitions held "
        f"{', '.join(f'{x:.1f}' for x in ready_s)} s"
    )
