"""Unit tests of streams.worker and streams.state that need no broker."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Mapping
from pathlib import Path

import faust
import pytest

from bench.tooling import settings_environ
from interest_stream.core.settings import Settings, load_settings
from interest_stream.streams.metrics import WorkerMetrics
from interest_stream.streams.topics import TABLE_NAME, changelog_topic
from interest_stream.streams.window import BehaviorWindow
from interest_stream.streams.worker import BatchHook, WindowWorker, WorkerError, worker_info_path


def make(tmp_path: Path, **kw: object) -> Settings:
    base: dict[str, object] = {
        "kafka_bootstrap": "127.0.0.1:1",
        "app_id": "unit-app",
        "state_dir": tmp_path / "state",
        "worker_web_port": 6199,
    }
    base.update(kw)
    return Settings(**base)


def test_changelog_topic_and_info_path_follow_the_app_id(tmp_path: Path) -> None:
    s = make(tmp_path, app_id="my-app")
    assert changelog_topic(s) == "my-app-windows-changelog"
    assert worker_info_path(s) == tmp_path / "state" / "worker.json"


def test_app_is_built_from_settings_without_contacting_kafka(tmp_path: Path) -> None:
    s = make(tmp_path, store="memory", kafka_bootstrap="127.0.0.1:1,127.0.0.2:2")
    w = WindowWorker(s, partitions=4)
    conf = w.app.conf
    assert conf.id == "unit-app"
    assert [str(u) for u in conf.broker] == ["kafka://127.0.0.1:1", "kafka://127.0.0.2:2"]
    assert str(conf.store) == "memory:"
    assert conf.web_port == 6199 and conf.web_bind == "127.0.0.1"
    assert conf.topic_partitions == 4
    assert conf.processing_guarantee.value == "at_least_once"
    assert w.table.name == TABLE_NAME and w.table.partitions == 4
    assert w.table.changelog_topic.get_topic_name() == changelog_topic(s)
    # the event topics and the co-partitioned command topic (streams.commands)
    assert set(w.source.topics) == {*s.event_topics, f"{s.app_id}.commands"}
    assert w.forgotten_table.partitions == 4
    # no assignment yet: nothing is served
    assert w.held_partitions() == set()
    assert w.read_window("u1") is None


def test_rocksdb_store_uses_the_rocksdict_driver(tmp_path: Path) -> None:
    s = make(tmp_path, store="rocksdb")
    w = WindowWorker(s, partitions=2)
    assert str(w.app.conf.store) == "rocksdb:"
    store = w.table.data
    assert type(store).__module__ == "faust.stores.rocksdb"
    assert store.use_rocksdict is True  # type: ignore[attr-defined]
    w.check_store()
    assert Path(str(w.app.conf.tabledir)).is_relative_to(tmp_path / "state")


def test_rocksdb_memory_follows_the_setting(tmp_path: Path) -> None:
    w = WindowWorker(make(tmp_path, store="rocksdb", state_memory_mb=64), partitions=2)
    opts = w.table.data.rocksdb_options  # type: ignore[attr-defined]
    assert opts.block_cache_size == 32 * 2**20 and opts.write_buffer_size == 16 * 2**20
    assert opts.max_write_buffer_number == 2
    small = w.forgotten_table.data.rocksdb_options  # type: ignore[attr-defined]
    assert small.block_cache_size < opts.block_cache_size


def test_port_zero_picks_a_free_port(tmp_path: Path) -> None:
    w = WindowWorker(make(tmp_path, store="memory", worker_web_port=0), partitions=1)
    assert 0 < w.web_port < 65536
    assert w.app.conf.web_port == w.web_port


def test_security_settings_become_faust_credentials(tmp_path: Path) -> None:
    w = WindowWorker(
        make(
            tmp_path,
            store="memory",
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="SCRAM-SHA-256",
            kafka_sasl_username="u",
            kafka_sasl_password="p",
        ),
        partitions=1,
    )
    creds = w.app.conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.username == "u" and creds.password == "p"
    assert creds.mechanism.value == "SCRAM-SHA-256"
    w2 = WindowWorker(make(tmp_path, store="memory", kafka_security_protocol="SSL"), partitions=1)
    ssl_creds = w2.app.conf.broker_credentials
    assert isinstance(ssl_creds, faust.SSLCredentials)
    assert isinstance(ssl_creds.context, ssl.SSLContext)
    w3 = WindowWorker(make(tmp_path, store="memory"), partitions=1)
    assert w3.app.conf.broker_credentials is None


def test_metrics_render_in_prometheus_text(tmp_path: Path) -> None:
    m = WorkerMetrics()
    m.consumed.inc(3)
    m.applied.inc(2)
    m.dlq.inc(1)
    m.batch_size.observe(3)
    m.batch_seconds.observe(0.004)
    text = m.render().decode()
    assert "interest_worker_events_consumed_total 3.0" in text
    assert "interest_worker_events_applied_total 2.0" in text
    assert "interest_worker_events_dlq_total 1.0" in text
    assert 'interest_worker_batch_size_bucket{le="5.0"} 1.0' in text
    assert 'interest_worker_batch_apply_seconds_bucket{le="0.005"} 1.0' in text
    # each worker has its own registry: two in one process do not clash
    assert "interest_worker_events_consumed_total 0.0" in WorkerMetrics().render().decode()


def test_batch_hook_may_be_sync_or_async_and_its_errors_are_counted(tmp_path: Path) -> None:
    seen: list[tuple[str, list[str]]] = []

    def sync_hook(windows: Mapping[str, BehaviorWindow], /) -> None:
        seen.append(("sync", sorted(windows)))

    async def async_hook(windows: Mapping[str, BehaviorWindow], /) -> None:
        await asyncio.sleep(0)
        seen.append(("async", sorted(windows)))

    def bad_hook(windows: Mapping[str, BehaviorWindow], /) -> None:
        raise RuntimeError("encoder down")

    batch = {"u1": BehaviorWindow("u1"), "u2": BehaviorWindow("u2")}
    hooks: list[BatchHook] = [sync_hook, async_hook, bad_hook]
    errors = []
    for hook in hooks:
        w = WindowWorker(make(tmp_path, store="memory"), partitions=1, on_batch=hook)
        asyncio.run(w._call_hook(batch))
        errors.append(w.metrics.hook_errors._value.get())
    assert seen == [("sync", ["u1", "u2"]), ("async", ["u1", "u2"])]
    assert errors == [0, 0, 1]


def test_settings_environ_round_trips_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = make(
        tmp_path,
        event_topics=("a.events.view", "a.events.cart"),
        batch_max=77,
        kafka_sasl_password="secret",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="PLAIN",
        log_json=True,
    )
    env = settings_environ(s, base={"PATH": "/bin", "INTEREST_MODEL_DIR": "/stale"})
    assert "INTEREST_MODEL_DIR" not in env  # unset fields do not leak from the base
    assert env["PATH"] == "/bin"
    for key in list(dict(__import__("os").environ)):
        if key.startswith("INTEREST_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("INTEREST_"):
            monkeypatch.setenv(key, value)
    back = load_settings()
    assert back.safe_dump() == s.safe_dump()
    assert back.kafka_sasl_password is not None
    assert back.kafka_sasl_password.get_secret_value() == "secret"


def test_worker_error_is_a_project_error() -> None:
    from interest_stream.core.errors import InterestStreamError

    assert issubclass(WorkerError, InterestStreamError)
    assert json.loads(json.dumps({"e": str(WorkerError("x"))})) == {"e": "x"}


def test_fetch_max_wait_reaches_the_aiokafka_consumer(tmp_path: Path) -> None:
    """Faust hard-codes 1,500 ms; the worker's setting replaces it (latency, see worker.py)."""
    import asyncio

    w = WindowWorker(make(tmp_path, fetch_max_wait_ms=40), partitions=2)

    async def build() -> int:
        thread = w.app.consumer._thread  # type: ignore[attr-defined]
        consumer = thread._create_worker_consumer(w.app.transport)
        return int(consumer._fetch_max_wait_ms)

    assert asyncio.run(build()) == 40
