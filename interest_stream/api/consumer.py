"""The API's background consumer of the output topic, and how records are applied.

Every API replica reads the whole compacted ``user-interest`` topic into its own
user index: no consumer group, all partitions assigned, from the beginning.
Readiness means "caught up with the end offsets captured when the consumer
started"; after that the replica follows the topic live.

:func:`apply_messages` is the pure part (decode, plan, write, count) that the
unit tests call directly; :class:`OutputConsumer` runs kafka-python's consumer
in a daemon thread around it, reconnecting with back-off and never letting an
exception end the thread.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from interest_stream.api.metrics import ApiMetrics
from interest_stream.core.records import (
    MalformedRecord,
    Tombstone,
    UserRecord,
    decode_record,
    plan_batch,
)
from interest_stream.core.settings import Settings
from interest_stream.index.errors import DimensionMismatch
from interest_stream.index.user_index import UserIndex

__all__ = ["ApplyStats", "Message", "OutputConsumer", "apply_messages"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    """One message of the output topic, as the apply step needs it."""

    key: bytes | None
    value: bytes | None
    topic: str = ""
    partition: int = -1
    offset: int = -1

    @property
    def where(self) -> str:
        """``topic[partition]@offset`` for logs."""
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass
class ApplyStats:
    """What one :func:`apply_messages` call did."""

    applied: int = 0
    stale: int = 0
    malformed: int = 0
    tombstones: int = 0


class _RateLimitedLog:
    """Logs the first few malformed records, then one summary line per interval."""

    def __init__(self, first: int = 20, every_s: float = 10.0) -> None:
        self.first = first
        self.every_s = every_s
        self.count = 0
        self.suppressed = 0
        self.last = 0.0

    def __call__(self, msg: Message, reason: str) -> None:
        self.count += 1
        now = time.monotonic()
        if self.count <= self.first:
            logger.warning("malformed record %s: %s", msg.where, reason)
        elif now - self.last >= self.every_s:
            logger.warning(
                "malformed record %s: %s (%d more since the last report)",
                msg.where, reason, self.suppressed,
            )  # fmt: skip
            self.suppressed = 0
            self.last = now
        else:
            self.suppressed += 1


_default_log = _RateLimitedLog()


def apply_messages(
    messages: Iterable[Message],
    users: UserIndex,
    metrics: ApiMetrics | None = None,
    *,
    dim: int | None = None,
    on_malformed: Callable[[Message, str], None] | None = None,
) -> ApplyStats:
    """Decode and apply a batch of output-topic messages to the user index.

    Args:
        messages: Messages in offset order (per partition).
        users: The user index (the API's user store).
        metrics: Counters to update (optional).
        dim: Expected vector dimension; defaults to the index's, else the
            first valid record's. Records of another dimension are malformed.
        on_malformed: Called with each malformed message and the reason
            (default: a rate-limited warning log).

    Returns:
        Counts of applied, stale, malformed records and tombstones.
    """
    report = on_malformed or _default_log
    stats = ApplyStats()
    expected = dim if dim is not None else users.dim
    decoded: list[UserRecord | Tombstone] = []
    for msg in messages:
        try:
            item = decode_record(msg.key, msg.value, dim=expected)
        except MalformedRecord as exc:
            stats.malformed += 1
            report(msg, str(exc))
            continue
        if isinstance(item, Tombstone):
            stats.tombstones += 1
        elif expected is None:
            expected = int(item.short.size)
        decoded.append(item)
    plan = plan_batch(decoded)
    stats.stale += plan.superseded
    if plan.remove:
        users.remove_many(plan.remove)
    if plan.upsert:
        try:
            res = users.upsert_many(plan.upsert)
        except DimensionMismatch as exc:  # cannot happen after decode's check; be safe
            logger.error("batch refused by the user index: %s", exc)
            stats.malformed += len(plan.upsert)
        else:
            stats.applied += res.applied
            stats.stale += res.stale
            if metrics is not None:
                now_ms = time.time() * 1000.0
                fresh = [now_ms - r.produced_at for r in plan.upsert if r.produced_at]
                if fresh:
                    metrics.observe_freshness(fresh)
                for r in plan.upsert:
                    if r.updated_at:
                        metrics.transit.observe(now_ms - r.updated_at)
    if metrics is not None:
        metrics.count_records(stats.applied, stats.stale, stats.malformed, stats.tombstones)
    return stats


class OutputConsumer:
    """Reads the output topic into the user index in a daemon thread.

    Attributes:
        status: ``starting``, ``catching_up``, ``ready`` or ``error`` (Kafka unreachable;
            retried with back-off; a ready replica stays ready and serves what it has).
        lag: Messages behind the end offsets (catch-up target before ready, the
            live end offsets after).
        error: The last connection error, if any.
    """

    def __init__(
        self,
        settings: Settings,
        users: UserIndex,
        metrics: ApiMetrics | None = None,
        *,
        dim: int | None = None,
        max_records: int = 5000,
        poll_ms: int = 100,
        lag_refresh_s: float = 2.0,
        partitions_refresh_s: float = 30.0,
        consumer_factory: Callable[..., Any] | None = None,
    ) -> None:
        """Prepare the consumer (nothing connects before :meth:`start`).

        Args:
            settings: Kafka bootstrap/security and ``output_topic``.
            users: The user index to fill.
            metrics: Counters and gauges to update.
            dim: Expected vector dimension (the model's), if known.
            max_records: Most messages per poll (one batched index write).
            poll_ms: Poll timeout.
            lag_refresh_s: How often the live lag is measured once ready.
            partitions_refresh_s: How often new partitions (or a late topic) are looked for.
            consumer_factory: Builds the Kafka consumer (tests); default kafka-python's.
        """
        self.settings = settings
        self.topic = settings.output_topic
        self.users = users
        self.metrics = metrics
        self.dim = dim
        self.max_records = max_records
        self.poll_ms = poll_ms
        self.lag_refresh_s = lag_refresh_s
        self.partitions_refresh_s = partitions_refresh_s
        self._factory = consumer_factory
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._positions: dict[Any, int] = {}
        self._target: dict[Any, int] | None = None
        self.status = "starting"
        self.lag: int | None = None
        self.error: str | None = None
        self.totals = ApplyStats()

    # ------------------------------------------------------------------ control
    @property
    def ready(self) -> bool:
        """Whether the catch-up target was reached."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until ready (or ``timeout``); returns readiness."""
        return self._ready.wait(timeout)

    def start(self) -> None:
        """Start the consumer thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name="user-interest-consumer", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("consumer thread did not stop within %.0fs", timeout)

    @property
    def alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._consume()
                backoff = 0.5
            except Exception as exc:  # never let the thread die
                self.error = f"{type(exc).__name__}: {exc}"
                if not self.ready:
                    self.status = "error"
                logger.warning(
                    "output-topic consumer error (retrying in %.1fs): %s", backoff, self.error
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _new_consumer(self) -> Any:
        if self._factory is not None:
            return self._factory()
        return KafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap.split(","),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=f"interest-api-{socket.gethostname()}-{os.getpid()}",
            max_poll_records=self.max_records,
            fetch_max_wait_ms=100,
            request_timeout_ms=30_000,
            # kafka-python's default backoff grows to 30 s: after a broker restart the
            # replica would stay stale that long (measured in the broker-restart test)
            reconnect_backoff_max_ms=1000,
            **self.settings.kafka_client_config(),
        )

    def _assign(self, consumer: Any) -> list[Any]:
        parts = consumer.partitions_for_topic(self.topic)
        tps = [TopicPartition(self.topic, p) for p in sorted(parts or ())]
        consumer.assign(tps)
        fresh = [tp for tp in tps if tp not in self._positions]
        if fresh:
            consumer.seek_to_beginning(*fresh)
        for tp in tps:
            if tp in self._positions:
                consumer.seek(tp, self._positions[tp])
        if not tps:
            logger.warning("topic %r does not exist (yet); the user index stays empty", self.topic)
        return tps

    def _consume(self) -> None:
        consumer = self._new_consumer()
        try:
            tps = self._assign(consumer)
            if self._target is None:
                self._target = dict(consumer.end_offsets(tps)) if tps else {}
                logger.info(
                    "catching up with %s: %d partitions, %d messages",
                    self.topic, len(tps), sum(self._target.values()),
                )  # fmt: skip
            self.error = None
            if not self.ready:
                self.status = "catching_up"
                # k-means on a half-filled index is wasted work: train once caught up
                self.users.hold_rebuilds(True)
            next_lag = next_parts = time.monotonic()
            live_end: dict[Any, int] = dict(self._target)
            while not self._stop.is_set():
                batch = consumer.poll(timeout_ms=self.poll_ms, max_records=self.max_records)
                if batch:
                    msgs = [
                        Message(r.key, r.value, r.topic, r.partition, r.offset)
                        for records in batch.values()
                        for r in records
                    ]
                    st = apply_messages(msgs, self.users, self.metrics, dim=self.dim)
                    self.totals.applied += st.applied
                    self.totals.stale += st.stale
                    self.totals.malformed += st.malformed
                    self.totals.tombstones += st.tombstones
                for tp in tps:
                    self._positions[tp] = int(consumer.position(tp))
                now = time.monotonic()
                if not self.ready:
                    behind = sum(
                        max(0, end - self._positions.get(tp, 0)) for tp, end in self._target.items()
                    )
                    self._set_lag(behind)
                    if behind == 0:
                        self._become_ready()
                elif now >= next_lag:
                    live_end = dict(consumer.end_offsets(tps)) if tps else {}
                    self._set_lag(
                        sum(
                            max(0, end - self._positions.get(tp, 0)) for tp, end in live_end.items()
                        )
                    )
                    next_lag = now + self.lag_refresh_s
                if now >= next_parts:
                    next_parts = now + self.partitions_refresh_s
                    parts = consumer.partitions_for_topic(self.topic) or set()
                    if {tp.partition for tp in tps} != set(parts):
                        logger.info("partitions of %s changed: %s", self.topic, sorted(parts))
                        tps = self._assign(consumer)
                        for tp in tps:
                            self._target.setdefault(tp, 0)
        finally:
            try:
                consumer.close()
            except Exception:  # pragma: no cover - best effort
                logger.debug("consumer close failed", exc_info=True)

    def _set_lag(self, lag: int) -> None:
        self.lag = lag
        if self.metrics is not None:
            self.metrics.lag.set(lag)

    def _become_ready(self) -> None:
        self.status = "ready"
        self._ready.set()
        self.users.hold_rebuilds(False)
        if self.metrics is not None:
            self.metrics.ready.set(1)
        logger.info(
            "caught up with %s: %d users (%d applied, %d stale, %d malformed, %d tombstones)",
            self.topic, self.users.count(), self.totals.applied, self.totals.stale,
            self.totals.malformed, self.totals.tombstones,
        )  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """Status, lag and counters as JSON."""
        return {
            "status": self.status,
            "ready": self.ready,
            "lag": self.lag,
            "error": self.error,
            "topic": self.topic,
            "applied": self.totals.applied,
            "stale": self.totals.stale,
            "malformed": self.totals.malformed,
            "tombstones": self.totals.tombstones,
        }
