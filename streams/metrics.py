"""Prometheus metrics of the stream worker, served at ``GET /metrics``.

:class:`WorkerMetrics` (consume, apply, changelog) and :class:`ReencodeMetrics` (the
re-encode loop of :mod:`interest_stream.streams.reencode`) share the worker's registry.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ReencodeMetrics", "WorkerMetrics"]


class WorkerMetrics:
    """Prometheus metrics of one worker, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._add_event_counters(self.registry)
        self._add_batch_metrics(self.registry)
        self.explains = Counter(
            "interest_worker_explain",
            "Explanations asked, by whether the encoded variants were cached (hit, miss) "
            "or the request was refused with 429 because the queue was full (busy).",
            ["cache"],
            registry=self.registry,
        )
        self.explain_batch = Histogram(
            "interest_worker_explain_batch",
            "Windows encoded together in one call of the explanations' encoder.",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=self.registry,
        )
        self.explain_ms = Histogram(
            "interest_worker_explain_ms",
            "Time to answer one explanation (encode on a miss + scores), ms.",
            buckets=(1, 2, 5, 10, 20, 30, 50, 75, 100, 200, 500, 1000, 5000),
            registry=self.registry,
        )

    def _add_event_counters(self, r: CollectorRegistry) -> None:
        self.consumed = Counter(
            "interest_worker_events_consumed", "Messages taken from the event topics.", registry=r
        )
        self.applied = Counter(
            "interest_worker_events_applied", "Events applied to a window.", registry=r
        )
        self.duplicates = Counter(
            "interest_worker_events_duplicate",
            "Valid events skipped as duplicates (offset mark or event_id).",
            registry=r,
        )
        self.dlq = Counter(
            "interest_worker_events_dlq", "Messages sent to the dead-letter topic.", registry=r
        )
        self.forgotten = Counter(
            "interest_worker_users_forgotten",
            "Forget commands applied (a user's window deleted).",
            registry=r,
        )
        self.forgotten_events = Counter(
            "interest_worker_events_forgotten",
            "Events dropped because they predate their user's forget command.",
            registry=r,
        )
        self.state_errors = Counter(
            "interest_worker_state_errors",
            "Events sent to the DLQ because the stored window could not be decoded.",
            registry=r,
        )
        self.windows_written = Counter(
            "interest_worker_windows_written", "Windows written to the changelog.", registry=r
        )
        self.hook_errors = Counter(
            "interest_worker_batch_hook_errors",
            "Exceptions raised by the on_batch hook.",
            registry=r,
        )
        self.source_holes = Counter(
            "interest_worker_source_holes",
            "Times the stream skipped records of a partition (read from the broker instead).",
            registry=r,
        )
        self.source_gaps = Counter(
            "interest_worker_source_gaps",
            "Skipped offsets without a record (transaction markers, compaction, retention).",
            registry=r,
        )
        self.filled = Counter(
            "interest_worker_events_filled",
            "Records the stream skipped that the worker read from the broker and applied.",
            registry=r,
        )

    def _add_batch_metrics(self, r: CollectorRegistry) -> None:
        self.batch_size = Histogram(
            "interest_worker_batch_size",
            "Messages per batch.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "interest_worker_batch_apply_seconds",
            "Time to validate, apply and durably write one batch (s).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.first_consumed = Gauge(
            "interest_worker_first_consumed_timestamp_seconds",
            "Wall clock when this process took its first batch (0 before).",
            registry=r,
        )
        self.last_applied = Gauge(
            "interest_worker_last_applied_timestamp_seconds",
            "Wall clock when this process last finished a batch (0 before).",
            registry=r,
        )
        self.stage_seconds = Counter(
            "interest_worker_stage_seconds",
            "Wall seconds per stage of a batch (changelog: producing the changelog records "
            "and waiting for their acks; the rest of batch_apply_seconds is validate+apply).",
            ["stage"],
            registry=r,
        )
        self.assigned = Gauge(
            "interest_worker_assigned_partitions",
            "Event-topic partitions this worker holds.",
            registry=r,
        )
        self.new_item_inputs = Gauge(
            "interest_worker_new_item_inputs",
            "Items unknown to the checkpoint that the encoder reads from their estimated "
            "input embeddings (not the OOV row).",
            registry=r,
        )

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the wall time of the ``with`` body to ``interest_worker_stage_seconds``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.labels(stage).inc(time.perf_counter() - t0)

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)


class ReencodeMetrics:
    """The re-encode loop's collectors, in the worker's registry (``/metrics``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.reencoded = Counter(
            "interest_reencoded_users", "Users re-encoded, by horizon.", ["horizon"], registry=r
        )
        self.published = Counter(
            "interest_output_records", "Records published to the output topic.", registry=r
        )
        self.batch_users = Histogram(
            "interest_reencode_batch_users",
            "Users per re-encode flush.",
            buckets=(1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096),
            registry=r,
        )
        self.encode_ms = Histogram(
            "interest_reencode_latency_ms",
            "Model time per flush (ms).",
            buckets=(0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
            registry=r,
        )
        self.publish_ms = Histogram(
            "interest_publish_latency_ms",
            "Time to build a flush's records and have them acknowledged by Kafka (ms).",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
            registry=r,
        )
        self.pending = Gauge(
            "interest_reencode_pending_users", "Users waiting to be re-encoded.", registry=r
        )
        self.model = Gauge(
            "interest_model_loaded", "1 for the model version in use.", ["model_version"],
            registry=r,
        )  # fmt: skip
        self.stage_seconds = Counter(
            "interest_reencode_stage_seconds",
            "Wall seconds per stage: submit = queueing touched windows (copies), short / long "
            "= model calls (with the transfer to an encoder process), records = building and "
            "serializing output records, publish = sending them and waiting for the acks.",
            ["stage"],
            registry=r,
        )
        self.long_paths = Counter(
            "interest_long_encodes",
            "Long-term encodes by path: incremental (a cached state extended by the new "
            "events, or a short history folded from scratch) or full.",
            ["path"],
            registry=r,
        )
