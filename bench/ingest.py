"""Ingest throughput of the worker against the raw consume rate of the same topics.

:func:`bench_ingest` publishes an event file to fresh topics, then measures

* ``raw_consume_eps``: a bare aiokafka consumer (no group, no processing)
  reading every event topic from the beginning to the end;
* ``worker_applied_eps``: one worker process (``python -m interest_stream.streams.worker``)
  catching up on the same backlog: events applied / (last batch finished -
  first batch taken), from the worker's ``/metrics`` gauges.

The gap between the two is the price of Faust's per-message machinery plus
validation, window updates and the durable changelog writes.

Run it with ``python -m bench.ingest [EVENT_FILE]`` (settings from the
environment; topics and app id get a fresh namespace).
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

from bench.tooling import WorkerProcess, read_topic, wait_for
from interest_stream.core.settings import Settings, load_settings
from interest_stream.streams.positions import is_reserved_key
from interest_stream.streams.replay import replay_events
from interest_stream.streams.topics import changelog_topic, ensure_topics

__all__ = ["bench_ingest", "fresh_settings", "main", "raw_consume_rate"]

log = logging.getLogger(__name__)


def fresh_settings(settings: Settings, state_root: Path | None = None) -> Settings:
    """A copy of ``settings`` with namespaced topics, app id and state folder (a fresh run)."""
    from interest_stream.streams.kafka_local.broker import free_port

    ns = f"bench{uuid.uuid4().hex[:8]}"
    root = state_root if state_root is not None else Path(tempfile.mkdtemp(prefix="is-bench-"))
    return settings.model_copy(
        update={
            "event_topics": tuple(f"{ns}.{t}" for t in settings.event_topics),
            "dlq_topic": f"{ns}.{settings.dlq_topic}",
            "output_topic": f"{ns}.{settings.output_topic}",
            "app_id": f"{ns}-{settings.app_id}",
            "state_dir": root / ns,
            "worker_web_port": settings.worker_web_port or free_port(),
        }
    )


async def _raw_consume(settings: Settings, expected: int, timeout_s: float) -> dict[str, float]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **settings.kafka_client_config(),
    )
    await consumer.start()
    try:
        for t in settings.event_topics:  # a group-less consumer has no metadata yet
            consumer._client.add_topic(t)
        await consumer._client.force_metadata_update()
        tps = [
            TopicPartition(t, p)
            for t in settings.event_topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        total = sum(end.values())
        n = 0
        first: float | None = None
        deadline = time.monotonic() + timeout_s
        while n < total and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                if records and first is None:
                    first = time.perf_counter()
                n += len(records)
        last = time.perf_counter()
    finally:
        await consumer.stop()
    seconds = last - (first if first is not None else last)
    return {
        "messages": float(n),
        "expected": float(expected),
        "seconds": seconds,
        "eps": n / seconds if seconds > 0 else 0.0,
    }


def raw_consume_rate(
    settings: Settings, expected: int, timeout_s: float = 120.0
) -> dict[str, float]:
    """Read all event topics with a bare aiokafka consumer; messages, seconds and messages/s."""
    return asyncio.run(_raw_consume(settings, expected, timeout_s))


def bench_ingest(
    settings: Settings,
    events_df: pd.DataFrame,
    *,
    timeout_s: float = 600.0,
    log_path: Path | None = None,
) -> dict[str, Any]:
    """Replay ``events_df`` into the (fresh) topics of ``settings`` and measure ingest.

    Args:
        settings: Settings naming fresh topics, app id and state folder
            (see :func:`fresh_settings`); ``worker_web_port`` must be set.
        events_df: Canonical events (e.g. :func:`interest_stream.core.eventfile.read_events`).
        timeout_s: Longest wait for the worker to apply everything.
        log_path: File for the worker's log.

    Returns:
        ``events``, ``replay_eps``, ``raw_consume_eps``, ``worker_applied_eps``,
        ``worker_seconds``, ``batches``, ``mean_batch``, ``batch_apply_seconds``,
        ``changelog_bytes_per_window`` (mean and at a full history) and the
        settings that matter (``batch_max``, ``batch_within_ms``, ``store``).
    """
    n = len(events_df)
    ensure_topics(settings)
    replay = replay_events(events_df, settings)
    raw = raw_consume_rate(settings, n)
    worker = WorkerProcess(settings, log_path=log_path)
    with worker.start():
        worker.wait_ready()
        wait_for(
            lambda: (
                worker.metrics().get("interest_worker_events_consumed_total", 0) >= n
                or not worker.alive()
            ),
            timeout_s,
            interval_s=0.5,
            what="worker applied the whole replay",
        )
        m = worker.metrics()
        worker.terminate()
    seconds = (
        m["interest_worker_last_applied_timestamp_seconds"]
        - m["interest_worker_first_consumed_timestamp_seconds"]
    )
    applied = m["interest_worker_events_applied_total"]
    sizes: list[int] = []
    latest: dict[bytes | None, int] = {}
    for rec in read_topic(settings, changelog_topic(settings)):
        if rec.value is not None and not is_reserved_key(rec.key):
            latest[rec.key] = len(rec.value)
    sizes = list(latest.values())
    batches = m.get("interest_worker_batch_size_count", 0.0)
    full = settings.long_history_events
    full_sizes = _full_window_sizes(settings, full)
    return {
        "events": n,
        "replay_eps": round(replay.rate, 1),
        "raw_consume_eps": round(raw["eps"], 1),
        "raw_consume_seconds": round(raw["seconds"], 3),
        "worker_applied": int(applied),
        "worker_applied_eps": round(applied / seconds, 1) if seconds > 0 else 0.0,
        "worker_seconds": round(seconds, 3),
        "batches": int(batches),
        "mean_batch": round(m.get("interest_worker_batch_size_sum", 0.0) / batches, 1)
        if batches
        else 0.0,
        "batch_apply_seconds": round(m.get("interest_worker_batch_apply_seconds_sum", 0.0), 3),
        "windows": len(sizes),
        "changelog_bytes_per_window_mean": round(statistics.fmean(sizes), 1) if sizes else 0.0,
        f"changelog_bytes_per_window_at_{full}_events": full_sizes,
        "batch_max": settings.batch_max,
        "batch_within_ms": settings.batch_within_ms,
        "store": settings.store,
    }


def _full_window_sizes(settings: Settings, full: int) -> float:
    """Median encoded size of the windows whose history is full."""
    from interest_stream.streams.changelog import read_changelog_windows

    sizes = [len(w.to_bytes()) for w in read_changelog_windows(settings).values() if len(w) == full]
    return float(statistics.median(sizes)) if sizes else 0.0


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.ingest [EVENT_FILE]``: print the figures as JSON."""
    from interest_stream.core.eventfile import read_events, shared_data_dir

    args = sys.argv[1:] if argv is None else argv
    path = (
        Path(args[0])
        if args
        else shared_data_dir() / "taobao-userbehavior" / "user_histories.csv.gz"
    )
    logging.basicConfig(level=logging.WARNING)
    settings = fresh_settings(load_settings())
    result = bench_ingest(settings, read_events(path))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
