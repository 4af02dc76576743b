"""Prometheus metrics of the API, in a registry of their own (one per app).

==================================================  =========  =========================
name                                                type       labels
==================================================  =========  =========================
``interest_api_request_duration_ms``                histogram  method, route, status
``interest_api_users``                              gauge      (users in the user index)
``interest_api_items``                              gauge      (items in the item index)
``interest_api_consumer_lag``                       gauge      (messages behind the topic end)
``interest_api_ready``                              gauge      (1 once caught up)
``interest_api_records_total``                      counter    result = applied, stale,
                                                               malformed, tombstone
``interest_api_forgotten_total``                    counter    (admin deletes)
``interest_freshness_ms``                           histogram  (event produced -> vector here)
``interest_record_transit_ms``                      histogram  (record built -> vector here)
==================================================  =========  =========================

``route`` is the path template (``/v1/users/{user_id}/interest``), never the
raw path, so the label set stays small; unmatched paths are ``<unmatched>``.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["LATENCY_BUCKETS_MS", "ApiMetrics"]

FRESHNESS_BUCKETS_MS = (
    5, 10, 25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2500, 5000, 10000, 30000,
)  # fmt: skip
FRESHNESS_SAMPLES = 200_000
LATENCY_BUCKETS_MS = (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class ApiMetrics:
    """The API's collectors, bound to a private :class:`CollectorRegistry`."""

    def __init__(
        self,
        users: Callable[[], float] | None = None,
        items: Callable[[], float] | None = None,
    ) -> None:
        """Create the collectors.

        Args:
            users: Returns the number of users (read at scrape time).
            items: Returns the number of items (read at scrape time).
        """
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.latency = Histogram(
            "interest_api_request_duration_ms",
            "HTTP request latency in milliseconds, by route template.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS_MS,
            registry=r,
        )
        self.users = Gauge("interest_api_users", "Users in the user index.", registry=r)
        self.items = Gauge("interest_api_items", "Items in the item index.", registry=r)
        self.users.set_function(users or (lambda: 0.0))
        self.items.set_function(items or (lambda: 0.0))
        self.lag = Gauge(
            "interest_api_consumer_lag", "Output-topic messages not applied yet.", registry=r
        )
        self.ready = Gauge("interest_api_ready", "1 once the consumer caught up.", registry=r)
        self.records = Counter(
            "interest_api_records",
            "Output-topic records by result: applied, stale (older version), malformed, tombstone.",
            ["result"],
            registry=r,
        )
        for result in ("applied", "stale", "malformed", "tombstone"):
            self.records.labels(result)
        self.freshness = Histogram(
            "interest_freshness_ms",
            "Event produced to Kafka -> its user's new vectors readable in this API (ms).",
            buckets=FRESHNESS_BUCKETS_MS,
            registry=r,
        )
        self.transit = Histogram(
            "interest_record_transit_ms",
            "Record built by the worker (its updated_at) -> readable in this API (ms): the "
            "output topic's share of the freshness.",
            buckets=FRESHNESS_BUCKETS_MS,
            registry=r,
        )
        self._fresh: deque[float] = deque(maxlen=FRESHNESS_SAMPLES)
        self._fresh_seen = 0  # samples observed so far (the reservoir keeps the latest)
        self._fresh_lock = threading.Lock()
        self.forgotten = Counter(
            "interest_api_forgotten", "Users forgotten through DELETE /v1/users/{id}.", registry=r
        )

    def count_records(self, applied: int, stale: int, malformed: int, tombstones: int) -> None:
        """Add a batch's counts."""
        for result, n in (
            ("applied", applied),
            ("stale", stale),
            ("malformed", malformed),
            ("tombstone", tombstones),
        ):
            if n:
                self.records.labels(result).inc(n)

    def observe_freshness(self, values_ms: Sequence[float]) -> None:
        """Record freshness samples (histogram + a bounded reservoir for exact quantiles)."""
        for v in values_ms:
            self.freshness.observe(v)
        with self._fresh_lock:
            self._fresh.extend(values_ms)
            self._fresh_seen += len(values_ms)

    def freshness_since(self, mark: int) -> tuple[int, np.ndarray]:
        """The samples observed after the running count ``mark`` (newest first), and the count.

        For time charts: pass the count of the previous call to get one interval's
        samples (at most the reservoir's size).
        """
        with self._fresh_lock:
            seen = self._fresh_seen
            n = min(max(seen - mark, 0), len(self._fresh))
            tail = np.fromiter(itertools.islice(reversed(self._fresh), n), dtype=np.float64)
        return seen, tail

    def freshness_summary(self) -> dict[str, Any]:
        """p50/p95/p99/max (ms) over the latest samples, and the sample count."""
        with self._fresh_lock:
            data = np.fromiter(self._fresh, dtype=np.float64)
        if data.size == 0:
            return {"samples": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
        p50, p95, p99 = np.percentile(data, [50, 95, 99])
        return {
            "samples": int(data.size),
            "p50_ms": round(float(p50), 1),
            "p95_ms": round(float(p95), 1),
            "p99_ms": round(float(p99), 1),
            "max_ms": round(float(data.max()), 1),
        }

    def reset_freshness(self) -> None:
        """Forget the reservoir (benchmarks measure one phase at a time)."""
        with self._fresh_lock:
            self._fresh.clear()

    def render(self) -> bytes:
        """The Prometheus text exposition of every collector."""
        return generate_latest(self.registry)
