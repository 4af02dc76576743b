"""The faust-streaming / aiokafka internals the worker relies on (streams.faust_compat).

Each test pins one library behaviour; a library upgrade that changes it fails
here first, with the name of the internal in the assertion.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from faust.types import TP

from interest_stream.core.errors import ConfigError
from interest_stream.core.settings import Settings
from interest_stream.streams import faust_compat
from interest_stream.streams.worker import WindowWorker


def _worker(tmp_path: Path, **kw: object) -> WindowWorker:
    s = Settings(
        kafka_bootstrap="127.0.0.1:1",
        state_dir=tmp_path / "state",
        store="memory",
        event_topics=("t.events.view", "t.events.click"),
        app_id="compat-test",
        **kw,  # type: ignore[arg-type]
    )
    return WindowWorker(s, partitions=2)


def test_installed_versions_are_the_tested_ones() -> None:
    assert faust_compat.installed_versions() == faust_compat.TESTED_VERSIONS
    faust_compat.check_versions()  # no error


def test_an_untested_version_is_refused_with_the_override_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(faust_compat.TESTED_VERSIONS, "faust-streaming", "0.0.1")
    with pytest.raises(faust_compat.UntestedLibraryError) as info:
        faust_compat.check_versions()
    assert isinstance(info.value, ConfigError)  # the CLI's exit code 2
    assert "INTEREST_ALLOW_UNTESTED_FAUST" in str(info.value)
    assert "0.15.3" in str(info.value) and "0.0.1" in str(info.value)
    faust_compat.check_versions(allow_untested=True)  # only a warning


def test_a_worker_refuses_to_start_on_an_untested_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(faust_compat.TESTED_VERSIONS, "aiokafka", "9.9.9")
    with pytest.raises(faust_compat.UntestedLibraryError):
        _worker(tmp_path)
    _worker(tmp_path, allow_untested_faust=True)


def test_faust_alone_commits_past_offsets_it_recorded_as_a_gap(tmp_path: Path) -> None:
    """The Faust behaviour behind the data loss: a read gap counts as acked.

    ``Consumer._drain_messages`` records a gap whenever the next message it reads
    is more than one past its read offset (after a seek back, stale records still
    in flight arrive first); ``_new_offset`` then commits through the gap as if
    those offsets had been processed.
    """
    consumer = _worker(tmp_path).app.consumer
    tp = TP("t.events.view", 0)
    consumer._committed_offset[tp] = 100
    asyncio.run(consumer._add_gap(tp, 101, 149))  # offsets 101..149 never delivered
    consumer._acked[tp] = [100, 150, 151]
    consumer._acked_index[tp] = {100, 150, 151}
    assert consumer._new_offset(tp) == 152  # 101..149 committed without being processed


def test_own_commits_commits_exactly_the_durable_offsets(tmp_path: Path) -> None:
    consumer = _worker(tmp_path).app.consumer
    tp = TP("t.events.view", 0)
    other = TP("t.events.view", 1)
    durable = {tp: 120}
    faust_compat.own_commits(consumer, durable.get)
    faust_compat.own_commits(consumer, durable.get)  # installing twice is a no-op
    consumer._committed_offset[tp] = 100
    consumer._committed_offset[other] = None
    asyncio.run(consumer._add_gap(tp, 101, 149))
    consumer._acked[tp] = [100, 150, 151]
    consumer._acked_index[tp] = {100, 150, 151}
    consumer._acked[other] = [7, 8]
    # Faust's commit path (Consumer._filter_committable_offsets -> _new_offset)
    assert consumer._filter_committable_offsets([tp, other]) == {tp: 120}
    # its own bookkeeping is emptied, so it cannot grow
    assert not consumer._acked[tp] and not consumer._acked_index[tp] and not consumer._gap[tp]
    assert not consumer._acked[other]
    # nothing at or below the committed offset is committed again
    consumer._committed_offset[tp] = 120
    assert consumer._filter_committable_offsets([tp]) == {}


def test_committed_offset_reads_what_faust_sought_to(tmp_path: Path) -> None:
    consumer = _worker(tmp_path).app.consumer
    tp = TP("t.events.view", 0)
    assert faust_compat.committed_offset(consumer, tp) is None
    consumer._committed_offset[tp] = 42
    assert faust_compat.committed_offset(consumer, tp) == 42


def test_fetch_wait_patch_sets_the_aiokafka_consumer_attribute(tmp_path: Path) -> None:
    from aiokafka import AIOKafkaConsumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    faust_compat.install_fetch_wait_patch()
    assert getattr(AIOKafkaConsumerThread, "_interest_fetch_wait_patched", False)

    async def made() -> int:
        c = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", fetch_max_wait_ms=1500)
        # the attribute the patch overrides is the one start() hands to the fetcher
        assert c._fetch_max_wait_ms == 1500
        return int(c._fetch_max_wait_ms)

    assert asyncio.run(made()) == 1500
    w = _worker(tmp_path, fetch_max_wait_ms=37)
    assert getattr(w.app, faust_compat.FETCH_WAIT_ATTR) == 37


def test_current_event_routes_faust_current_event(tmp_path: Path) -> None:
    import faust
    from faust.types.tuples import Message

    w = _worker(tmp_path)
    msg = Message("t.events.view", 1, 5, 0.0, 0, None, b"k", b"v", None, tp=TP("t.events.view", 1))
    ev = faust.Event(w.app, b"k", b"v", None, msg)
    assert faust.current_event() is None
    with faust_compat.current_event(ev):
        assert faust.current_event() is ev
    assert faust.current_event() is None


def test_the_cli_worker_exits_2_naming_the_override(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import interest_stream.streams.faust_compat as c\n"
        "c.TESTED_VERSIONS['aiokafka'] = '9.9.9'\n"
        "from interest_stream.cli import main; main(['worker'])"
    )
    env = {"PATH": "/usr/bin:/bin", "INTEREST_STATE_DIR": str(tmp_path), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "INTEREST_ALLOW_UNTESTED_FAUST" in proc.stderr
    assert "aiokafka 0.14.0 (tested: 9.9.9)" in proc.stderr


def test_recovery_never_seeks_a_changelog_below_zero() -> None:
    """faust-streaming 0.15.3 maps only -1 to 0 in ``Recovery._seek_offsets``."""
    from collections import Counter

    from faust.tables.recovery import Recovery

    faust_compat.install_recovery_seek_guard()
    faust_compat.install_recovery_seek_guard()  # idempotent
    sought: list[dict[TP, int]] = []

    class Consumer:
        async def seek_wait(self, offsets: dict[TP, int]) -> None:
            sought.append(dict(offsets))

    a, b, c, d = (TP("x-changelog", p) for p in range(4))
    offsets: Counter[TP] = Counter({a: -2, b: -1, c: 41, d: None})  # type: ignore[dict-item]
    tps = {a, b, c, d}
    asyncio.run(Recovery._seek_offsets(object(), Consumer(), tps, offsets, "active"))
    assert sought == [{a: 0, b: 0, c: 41, d: 0}]  # aiokafka's seek raises ValueError below 0
