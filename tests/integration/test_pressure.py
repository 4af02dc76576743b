"""Crash scenarios with the CPU squeezed: nothing lost, nothing doubled, per user.

Each scenario runs under :class:`pressure.CpuPressure` (a busy loop on every
core; the worker(s) and the broker pinned to one core), with every random
choice (users, batch settings, kill moments, victims) drawn from a seed that is
printed; ``INTEREST_TEST_SEED=<seed>`` replays a run, and
``INTEREST_PRESSURE_REPEAT=30`` runs each scenario 30 times (seeds seed..seed+29).

Scenarios: SIGKILL mid-batch (three times in one replay); SIGKILL while the
worker restores its state from the changelog after a wiped state folder;
SIGKILL of one of two workers during a rebalance; broker restart (SIGTERM or
SIGKILL) while the worker works through a backlog. Every scenario ends with a
graceful worker that drains the topics; then every user's window in the
changelog must hold exactly the user's events.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from random import Random

import pandas as pd
import pytest
from helpers import TAOBAO_HISTORIES
from pressure import CpuPressure, repeat_count, rng, test_seed

from bench.tooling import WorkerProcess, group_lag, read_changelog_windows, wait_for
from interest_stream.core.eventfile import read_events
from interest_stream.core.settings import Settings
from interest_stream.streams.kafka_local.broker import BrokerConfig, free_port, start, status, stop
from interest_stream.streams.replay import make_producer, replay_events
from interest_stream.streams.topics import ensure_topics

pytestmark = pytest.mark.integration

RUNS = range(repeat_count())
# A dead member leaves the group after the session timeout: restarts wait that long.
FAST_GROUP = {
    "INTEREST_FAUST_BROKER_SESSION_TIMEOUT": "8",
    "INTEREST_FAUST_BROKER_HEARTBEAT_INTERVAL": "1",
}


@pytest.fixture(scope="module")
def all_events() -> pd.DataFrame:
    return read_events(TAOBAO_HISTORIES)


@pytest.fixture
def squeezed(kafka_broker_pid: int | None) -> Iterator[CpuPressure]:
    with CpuPressure() as cpu:
        if kafka_broker_pid is not None:
            cpu.squeeze(kafka_broker_pid)
        print(f"[pressure] {cpu.describe()}", flush=True)
        yield cpu


def _sample(all_events: pd.DataFrame, rnd: Random, users: int) -> pd.DataFrame:
    ids = sorted(all_events["user_id"].unique())
    chosen = set(rnd.sample(ids, users))
    return all_events[all_events["user_id"].isin(chosen)].reset_index(drop=True)


def _consumed(w: WorkerProcess) -> float:
    try:
        return w.metrics().get("interest_worker_events_consumed_total", 0.0)
    except Exception:
        return -1.0


def _commit_env(rnd: Random, *, survives: bool = False) -> dict[str, str]:
    """Group settings plus a commit interval drawn from the seed.

    A worker that is killed may commit rarely or never (600 s: every restart then
    re-reads everything); one that must drain the topics at the end commits every
    0.5 or 2.8 s, since the drain waits for the group's committed offsets.
    """
    choices = ["0.5", "2.8"] if survives else ["0.5", "2.8", "600"]
    return {**FAST_GROUP, "INTEREST_FAUST_BROKER_COMMIT_INTERVAL": rnd.choice(choices)}


class _Replay:
    """Publishes events in a thread; errors are re-raised by :meth:`join`."""

    def __init__(self, df: pd.DataFrame, settings: Settings, seconds: float, **kw: object) -> None:
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(df, settings, len(df) / seconds, kw), daemon=True
        )

    def _run(
        self, df: pd.DataFrame, settings: Settings, rate: float, kw: dict[str, object]
    ) -> None:
        try:
            replay_events(df, settings, rate=rate, **kw)  # type: ignore[arg-type]
        except BaseException as exc:  # reported by join()
            self.errors.append(exc)

    def start(self) -> _Replay:
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout_s: float = 300.0) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "replay did not finish"
        assert not self.errors, self.errors


def _gate(gates: dict[int, threading.Event]) -> Callable[[int], None]:
    """An ``on_sent`` callback that blocks the replay at each gate's count until it is set."""

    def on_sent(n: int) -> None:
        gate = gates.get(n)
        if gate is not None:
            gate.wait(600)

    return on_sent


def _lag_detail(settings: Settings) -> str:
    """Partitions whose committed offset is behind their end: ``topic[p] committed/end``."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=settings.app_id,
        enable_auto_commit=False,
    )  # fmt: skip
    try:
        tps = [TopicPartition(t, p) for t in settings.event_topics
               for p in sorted(c.partitions_for_topic(t) or ())]  # fmt: skip
        end = c.end_offsets(tps)
        behind = [f"{tp.topic}[{tp.partition}] {c.committed(tp)}/{end[tp]}" for tp in tps
                  if (c.committed(tp) or 0) < end[tp]]  # fmt: skip
        return "behind: " + ", ".join(behind)
    finally:
        c.close()


def _drain_and_check(
    settings: Settings, workers: list[WorkerProcess], df: pd.DataFrame, seed: int
) -> None:
    """Wait until every event is processed and committed, stop gracefully, compare exactly."""
    try:
        wait_for(
            lambda: group_lag(settings) == 0 or not all(w.alive() for w in workers),
            300,
            interval_s=1.0,
            what=f"all events processed and committed (seed {seed})",
        )
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; {_lag_detail(settings)}") from exc
    for w in workers:
        assert w.alive(), f"seed {seed}: {w.log_tail()}"
    for w in workers:
        assert w.terminate() == 0, f"seed {seed}: {w.log_tail()}"
    windows = read_changelog_windows(settings)
    expected = df.groupby("user_id").size().to_dict()
    assert set(windows) == set(expected), f"seed {seed}: users differ"
    wrong = {u: (windows[u].version, n) for u, n in expected.items() if windows[u].version != n}
    assert not wrong, (
        f"seed {seed}: {len(wrong)} users differ (applied, produced), "
        f"e.g. {list(wrong.items())[:3]}"
    )
    small = [u for u, n in expected.items() if n <= settings.long_history_events]
    for u in small:
        rows = df[df["user_id"] == u]
        assert sorted(windows[u].long()) == sorted(
            zip(rows["item_id"], rows["event_type"], rows["ts"].astype(int), strict=True)
        ), f"seed {seed}: user {u} holds other events"


def _log_has(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except OSError:
        return False


@pytest.mark.parametrize("run", RUNS)
def test_sigkill_mid_batch_under_pressure(
    run: int,
    make_settings: Callable[..., Settings],
    all_events: pd.DataFrame,
    squeezed: CpuPressure,
    tmp_path: Path,
) -> None:
    seed = test_seed(run)
    rnd = rng(seed)
    df = _sample(all_events, rnd, 80)
    settings = make_settings(
        worker_web_port=free_port(),
        batch_max=rnd.choice([200, 1000, 4000]),
        batch_within_ms=rnd.choice([20, 100, 300]),
    )
    ensure_topics(settings)
    env = _commit_env(rnd)
    # the replay waits at each gate until that kill happened: every kill lands mid-replay
    # (on_sent counts in thousands; each worker gets >= 1,000 new events, targets <= 800)
    step = 1000 * max(1, len(df) // 4000)
    gates = {step * (k + 1): threading.Event() for k in range(3)}
    replay = _Replay(df, settings, rnd.uniform(6.0, 12.0), on_sent=_gate(gates))
    kills = []
    for k, gate in enumerate(gates.values()):
        w = WorkerProcess(
            settings, log_path=tmp_path / f"w{k}.log", extra_env=env, cpus={squeezed.core}
        )
        with w.start():
            w.wait_ready(180)
            if k == 0:
                replay.start()
            target = rnd.randint(50, 800)
            wait_for(
                lambda w=w, t=target: _consumed(w) >= t,
                180,
                what=f"worker {k} consumed {target} (seed {seed})",
            )
            time.sleep(rnd.uniform(0.0, 0.3))  # inside the next batch
            kills.append(int(_consumed(w)))
            w.kill()
        gate.set()
    final = WorkerProcess(
        settings, log_path=tmp_path / "final.log", extra_env=FAST_GROUP, cpus={squeezed.core}
    ).start()
    try:
        final.wait_ready(180)
        replay.join()
        _drain_and_check(settings, [final], df, seed)
    finally:
        final.kill() if final.alive() else None
    print(f"[mid-batch] seed {seed}: {len(df)} events, 3 SIGKILLs at consumed {kills}, exact")


@pytest.mark.parametrize("run", RUNS)
def test_sigkill_during_restore_after_wiped_state(
    run: int,
    make_settings: Callable[..., Settings],
    all_events: pd.DataFrame,
    squeezed: CpuPressure,
    tmp_path: Path,
) -> None:
    seed = test_seed(run)
    rnd = rng(seed)
    df = _sample(all_events, rnd, 120)
    cut = int(len(df) * rnd.uniform(0.5, 0.8))
    settings = make_settings(worker_web_port=free_port(), batch_within_ms=rnd.choice([20, 100]))
    ensure_topics(settings)
    env = _commit_env(rnd)
    # 1) a first worker builds a changelog from the first part, then dies
    w0 = WorkerProcess(
        settings, log_path=tmp_path / "w0.log", extra_env=env, cpus={squeezed.core}
    ).start()
    with w0:
        w0.wait_ready(180)
        replay_events(df.iloc[:cut], settings)
        wait_for(lambda: _consumed(w0) >= cut, 180, what=f"first part consumed (seed {seed})")
        w0.kill()
    # 2) the rest arrives while workers restore from the changelog and die doing it
    replay = _Replay(df.iloc[cut:], settings, rnd.uniform(4.0, 8.0)).start()
    # Two kills at random moments of a restore; a restore can be over in 0.3 s on a quiet
    # machine, so until one kill has landed inside one, the next restarts on a wiped
    # folder and is killed as soon as its restore starts (at most 4 extra attempts).
    during = kills = 0
    while kills < 2 or (during == 0 and kills < 6):
        if kills == 0 or kills >= 2 or rnd.random() < 0.5:
            shutil.rmtree(settings.state_dir, ignore_errors=True)
        log = tmp_path / f"r{kills}.log"
        w = WorkerProcess(settings, log_path=log, extra_env=env, cpus={squeezed.core})
        with w.start():
            # a kept state folder may need no restore at all: then the kill lands after it
            wait_for(
                lambda log=log: (
                    _log_has(log, "Restoring state from changelog")
                    or _log_has(log, "Recovery complete")
                ),
                180,
                interval_s=0.01,
                what=f"restore started or done (seed {seed})",
            )
            time.sleep(rnd.uniform(0.0, 0.25) if kills < 2 else 0.0)
            w.kill()
        during += not _log_has(log, "Done reading from changelog")
        kills += 1
    final = WorkerProcess(
        settings, log_path=tmp_path / "final.log", extra_env=FAST_GROUP, cpus={squeezed.core}
    ).start()
    try:
        final.wait_ready(180)
        replay.join()
        _drain_and_check(settings, [final], df, seed)
    finally:
        final.kill() if final.alive() else None
    assert during >= 1, f"seed {seed}: no kill of {kills} landed inside a restore"
    print(
        f"[restore] seed {seed}: {len(df)} events, cut {cut}, "
        f"{during}/{kills} kills inside a restore, exact"
    )


@pytest.mark.parametrize("run", RUNS)
def test_sigkill_one_of_two_workers_during_rebalance(
    run: int,
    make_settings: Callable[..., Settings],
    all_events: pd.DataFrame,
    squeezed: CpuPressure,
    tmp_path: Path,
) -> None:
    seed = test_seed(run)
    rnd = rng(seed)
    df = _sample(all_events, rnd, 100)
    s1 = make_settings(worker_web_port=free_port(), batch_within_ms=rnd.choice([20, 100]))
    s2 = s1.model_copy(update={"worker_web_port": free_port(), "state_dir": tmp_path / "b-state"})
    ensure_topics(s1)
    env = _commit_env(rnd, survives=True)
    replay = _Replay(df, s1, rnd.uniform(10.0, 16.0))
    w1 = WorkerProcess(s1, log_path=tmp_path / "a0.log", extra_env=env, cpus={squeezed.core})
    w2 = WorkerProcess(s2, log_path=tmp_path / "b0.log", extra_env=env, cpus={squeezed.core})
    workers = [w1, w2]
    try:
        w1.start().wait_ready(180)
        replay.start()
        target = rnd.randint(300, 3000)
        wait_for(lambda: _consumed(w1) >= target, 180, what=f"w1 consumed (seed {seed})")
        w2.start()  # joins the group: a rebalance starts
        victim = rnd.randrange(2)
        time.sleep(rnd.uniform(0.2, 5.0))
        workers[victim].kill()
        # the victim comes back on its own state folder: one more rebalance
        settings_v = (s1, s2)[victim]
        back = WorkerProcess(
            settings_v,
            log_path=tmp_path / f"{'ab'[victim]}1.log",
            extra_env=FAST_GROUP,
            cpus={squeezed.core},
        ).start()
        workers[victim] = back
        back.wait_ready(180)
        replay.join()
        _drain_and_check(s1, workers, df, seed)
    finally:
        for w in (w1, w2, *workers):
            if w.alive():
                w.kill()
    print(
        f"[rebalance] seed {seed}: {len(df)} events, killed {'w1' if victim == 0 else 'w2'} "
        f"during the rebalance, exact"
    )


@pytest.mark.parametrize("run", RUNS)
def test_broker_restart_while_worker_under_pressure(
    run: int,
    make_settings: Callable[..., Settings],
    all_events: pd.DataFrame,
    squeezed: CpuPressure,
    tmp_path: Path,
) -> None:
    seed = test_seed(run)
    rnd = rng(seed)
    df = _sample(all_events, rnd, 80)
    cut = int(len(df) * rnd.uniform(0.4, 0.7))
    cfg = BrokerConfig(data_dir=tmp_path / "own-kafka", port=free_port())
    broker = start(cfg, timeout=180.0)
    assert broker.pid is not None
    squeezed.squeeze(broker.pid)
    settings = make_settings(
        kafka_bootstrap=broker.bootstrap,
        worker_web_port=free_port(),
        batch_within_ms=rnd.choice([20, 100]),
    )
    how = rnd.choice(["SIGTERM", "SIGKILL"])
    restarts = 0
    w: WorkerProcess | None = None
    try:
        ensure_topics(settings)
        env = _commit_env(rnd, survives=True)
        w = WorkerProcess(
            settings, log_path=tmp_path / "w.log", extra_env=env, cpus={squeezed.core}
        ).start()
        w.wait_ready(180)
        producer = make_producer(
            settings,
            retries=2**31 - 1,
            delivery_timeout_ms=300_000,
            request_timeout_ms=10_000,
            reconnect_backoff_max_ms=1000,
        )
        replay_events(df.iloc[:cut], settings, producer=producer)  # a backlog for the worker
        target = rnd.randint(100, max(101, cut // 2))
        wait_for(lambda: _consumed(w) >= target, 180, what=f"worker consumed (seed {seed})")
        if how == "SIGKILL":
            pid = status(cfg).pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        stop(cfg)
        time.sleep(rnd.uniform(1.0, 5.0))
        broker = start(cfg, timeout=180.0)
        assert broker.pid is not None
        squeezed.squeeze(broker.pid)
        replay_events(df.iloc[cut:], settings, producer=producer)
        producer.close(10)
        # a worker that stopped itself on a failed write is restarted, as a supervisor would
        if not w.alive():
            restarts += 1
            w = WorkerProcess(
                settings,
                log_path=tmp_path / "w-restarted.log",
                extra_env=FAST_GROUP,
                cpus={squeezed.core},
            ).start()
            w.wait_ready(180)
        _drain_and_check(settings, [w], df, seed)
    finally:
        if w is not None and w.alive():
            w.kill()
        stop(cfg)
    print(
        f"[broker] seed {seed}: {len(df)} events, broker {how} after {cut} published, "
        f"worker restarts {restarts}, exact"
    )
