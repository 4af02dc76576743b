"""Prometheus metrics of the stream worker (:class:`WorkerMetrics`), served at ``GET /metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["WorkerMetrics"]


class WorkerMetrics:
    """Prometheus metrics of one worker, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._add_event_counters(self.registry)
        self._add_batch_metrics(self.registry)

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
        self.assigned = Gauge(
            "interest_worker_assigned_partitions",
            "Event-topic partitions this worker holds.",
            registry=r,
        )

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)
