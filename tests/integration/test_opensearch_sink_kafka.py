"""The OpenSearch sink against the session's broker and OpenSearch node.

* two sink processes sharing the partitions: records with stale versions, same-version
  re-sends, tombstones and new lives → the exact end state;
* SIGKILL of the sink mid-load, restart → the exact end state;
* a sink joins its group once (no second rebalance right after joining).
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opensearch_helpers import (
    assert_state,
    lag,
    produce,
    sink_proc,
    stop_procs,
    topic_log,
    wait,
)

from interest_stream.core.settings import Settings
from interest_stream.index.opensearch_store import OpenSearchStore
from interest_stream.sink import OpenSearchSink
from interest_stream.streams.topics import ensure_topics

pytestmark = pytest.mark.integration


@pytest.fixture
def sink_settings(
    make_settings: Callable[..., Settings], opensearch_url: str
) -> Iterator[tuple[Settings, OpenSearchStore]]:
    s = make_settings(opensearch_url=opensearch_url, opensearch_index=f"u{uuid.uuid4().hex[:10]}")
    ensure_topics(s)
    st = OpenSearchStore(opensearch_url, s.opensearch_index)
    try:
        yield s, st
    finally:
        st.client.indices.delete(index=st.index, ignore_unavailable=True)
        st.close()


def test_two_sinks_reach_the_exact_end_state(
    sink_settings: tuple[Settings, OpenSearchStore], tmp_path: Path
) -> None:
    settings, store = sink_settings
    log = topic_log(11, users=150, n=3000)
    produce(settings, log[:1500])
    procs = [sink_proc(settings, tmp_path, f"sink{i}") for i in range(2)]
    try:
        produce(settings, log[1500:])
        wait(lambda: lag(settings) == 0, 90, "the sinks to commit every offset")
    finally:
        stop_procs(procs)
    assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]
    assert_state(store, log)


def test_sink_sigkill_mid_load_then_restart_is_exact(
    sink_settings: tuple[Settings, OpenSearchStore], tmp_path: Path
) -> None:
    settings, store = sink_settings
    log = topic_log(12, users=800, n=6000)
    produce(settings, log)
    total = lag(settings)
    proc = sink_proc(settings, tmp_path, "sink-a")
    try:
        wait(lambda: lag(settings) < total, 60, "a first commit")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        left = lag(settings)
        print(f"killed the sink with {left} of {total} messages uncommitted")
        assert left > 0, "the sink finished before the kill: make the load larger"
        proc = sink_proc(settings, tmp_path, "sink-b")
        wait(lambda: lag(settings) == 0, 120, "the restarted sink to catch up")
    finally:
        stop_procs([proc])
    assert_state(store, log)


def test_a_sink_joins_its_group_once(
    sink_settings: tuple[Settings, OpenSearchStore], caplog: pytest.LogCaptureFixture
) -> None:
    """No second rebalance right after joining (kafka-python joined before the topic's
    metadata came back, then rejoined when it did; a sink once stayed unassigned)."""
    settings, store = sink_settings
    log = topic_log(13, users=20, n=60)
    produce(settings, log)
    caplog.set_level(logging.INFO, logger="interest_stream.sink")
    sink = OpenSearchSink(settings)
    try:
        sink.run(idle_exit_s=1.5)
    finally:
        sink.store.close()
    assigned = [r.getMessage() for r in caplog.records if "partitions assigned" in r.getMessage()]
    assert len(assigned) == 1, assigned
    assert lag(settings) == 0
    assert_state(store, log)
