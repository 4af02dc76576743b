"""Publish an event file to Kafka: as fast as possible, at a fixed rate, or in sped-up event time.

Each event goes out as its canonical JSON object (docs/CONTRACTS.md), keyed by
``user_id``, to ``events.<event_type>`` (or to one topic given by the caller).
Events are sent in file order after :func:`interest_stream.core.eventfile.read_events`
has sorted them by event time, so a replay looks like live traffic.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
from kafka import KafkaProducer
from kafka.errors import KafkaError
from tqdm import tqdm

from interest_stream.core.errors import ConfigError, InterestStreamError
from interest_stream.core.events import EVENT_TYPES, topic_event_type
from interest_stream.core.settings import Settings
from interest_stream.streams.topics import KafkaUnavailable

__all__ = [
    "ReplayError",
    "ReplayStats",
    "event_records",
    "make_producer",
    "produce_raw",
    "replay_events",
    "topic_routes",
]

log = logging.getLogger(__name__)


class ReplayError(InterestStreamError):
    """Publishing failed (the broker refused or lost messages)."""


@dataclass
class ReplayStats:
    """What a replay sent."""

    sent: int = 0
    seconds: float = 0.0
    per_topic: dict[str, int] = field(default_factory=dict)
    first_send_ms: int = 0
    last_send_ms: int = 0

    @property
    def rate(self) -> float:
        """Events per second over the whole replay."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able view, with the rate."""
        out = asdict(self)
        out["rate"] = round(self.rate, 1)
        return out


_PACE_SLACK_S = 0.002
"""A paced replay sends an event early by at most this much (burst pacing)."""


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """A kafka-python producer tuned for throughput with no loss (acks=all, retries)."""
    cfg: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "client_id": f"{settings.app_id}-replay",
        "acks": "all",
        "linger_ms": 5,
        "batch_size": 512 * 1024,
        "max_request_size": 16 * 1024 * 1024,
        "retries": 10,
        "max_in_flight_requests_per_connection": 5,
        "enable_idempotence": True,
        **settings.kafka_client_config(),
    }
    cfg.update(overrides)
    try:
        return KafkaProducer(**cfg)
    except KafkaError as exc:
        raise KafkaUnavailable(
            f"no Kafka broker answers at {settings.kafka_bootstrap} "
            f"(INTEREST_KAFKA_BOOTSTRAP): {exc}; start one with `interest-stream kafka start`"
        ) from exc


def topic_routes(settings: Settings) -> dict[str, str]:
    """Event type -> the configured topic that implies it (first event topic otherwise)."""
    routes: dict[str, str] = {}
    for t in settings.event_topics:
        implied = topic_event_type(t)
        if implied is not None and implied not in routes:
            routes[implied] = t
    default = settings.event_topics[0]
    return {et: routes.get(et, default) for et in EVENT_TYPES}


def event_records(
    df: pd.DataFrame, routes: dict[str, str] | str
) -> Iterator[tuple[str, bytes, bytes, int]]:
    """``(topic, key, value, ts)`` for each event row, in order.

    Args:
        df: Canonical events.
        routes: One topic for all, or event type -> topic (see :func:`topic_routes`).
    """
    has_id = "event_id" in df.columns
    cols = [df["user_id"], df["item_id"], df["event_type"], df["ts"]]
    ids: Iterable[Any] = df["event_id"] if has_id else [None] * len(df)
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    for user, item, etype, ts, eid in zip(*cols, ids, strict=True):
        obj: dict[str, Any] = {"user_id": user, "item_id": item, "event_type": etype, "ts": int(ts)}
        if eid is not None and eid == eid:  # skip None / NaN
            obj["event_id"] = str(eid)
        t = routes if isinstance(routes, str) else routes[etype]
        yield (t, user.encode(), dumps(obj).encode(), int(ts))


def _wait_turn(start: float, i: int, since_first_ms: int, rate: float | None,
               speed: float | None) -> None:  # fmt: skip
    """Sleep until event ``i`` is due: at ``rate`` per second, else in sped-up event time."""
    if rate is not None:
        delay = start + i / rate - time.monotonic()
        if delay > _PACE_SLACK_S:
            # sleep only when >= 2 ms ahead: events then leave in small bursts
            # instead of one sleep per event (5,000 sleeps/s cost the producer a core)
            time.sleep(delay)
    elif speed is not None:
        delay = start + since_first_ms / 1000.0 / speed - time.monotonic()
        if delay > 0:
            time.sleep(min(delay, 5.0))


def replay_events(
    df: pd.DataFrame,
    settings: Settings,
    *,
    topic: str | None = None,
    rate: float | None = None,
    speed: float | None = None,
    progress: bool = False,
    producer: KafkaProducer | None = None,
    on_sent: Callable[[int], None] | None = None,
) -> ReplayStats:
    """Publish events to Kafka and wait until the broker acknowledged every one.

    Args:
        df: Canonical events (see :func:`interest_stream.core.eventfile.read_events`).
        settings: Process settings (bootstrap, security).
        topic: Send everything to this topic instead of the one configured for
            each event type (see :func:`topic_routes`).
        rate: Events per second to hold (open loop); ``None`` = as fast as possible.
        speed: Replay in event time sped up this many times (``rate`` wins if both).
        progress: Show a progress bar.
        producer: Reuse a producer (it is flushed, not closed).
        on_sent: Called with the running count every 1,000 events (for callers
            that inject faults mid-replay).

    Raises:
        ConfigError: A non-positive rate or speed.
        ReplayError: The broker did not acknowledge all events.
    """
    if rate is not None and rate <= 0:
        raise ConfigError(f"--rate must be positive, got {rate}")
    if speed is not None and speed <= 0:
        raise ConfigError(f"--speed must be positive, got {speed}")
    own = producer is None
    prod = producer or make_producer(settings)
    stats = ReplayStats()
    errors: list[BaseException] = []
    bar = tqdm(total=len(df), unit="ev", disable=not progress, desc="replay", smoothing=0.1)
    first_ts: int | None = None
    records: Iterable[tuple[str, bytes, bytes, int]] = event_records(
        df, topic or topic_routes(settings)
    )
    if rate is not None:
        # a paced replay encodes its records before the clock starts: the JSON encoding
        # is the load generator's work, not the system's, and would skew the pacing
        records = list(records)
    start = time.monotonic()
    stats.first_send_ms = int(time.time() * 1000)
    try:
        for i, (t, key, value, ts) in enumerate(records):
            first_ts = ts if first_ts is None else first_ts
            _wait_turn(start, i, ts - first_ts, rate, speed)
            fut = prod.send(t, key=key, value=value)
            fut.add_errback(errors.append)
            stats.per_topic[t] = stats.per_topic.get(t, 0) + 1
            stats.sent += 1
            if stats.sent % 1000 == 0:
                bar.update(1000)
                if on_sent is not None:
                    on_sent(stats.sent)
                if errors:
                    break
        prod.flush(timeout=120)
        bar.update(stats.sent % 1000)
    finally:
        bar.close()
        if own:
            prod.close(timeout=30)
    stats.seconds = time.monotonic() - start
    stats.last_send_ms = int(time.time() * 1000)
    if errors:
        raise ReplayError(f"{len(errors)} events were not acknowledged, first: {errors[0]!r}")
    log.info("replayed %d events in %.1fs (%.0f ev/s)", stats.sent, stats.seconds, stats.rate)
    return stats


def produce_raw(
    settings: Settings,
    topic: str,
    pairs: Iterable[tuple[bytes | None, bytes | None]],
    *,
    producer: KafkaProducer | None = None,
) -> int:
    """Publish raw ``(key, value)`` pairs (any bytes, e.g. malformed events); returns the count."""
    own = producer is None
    prod = producer or make_producer(settings)
    errors: list[BaseException] = []
    n = 0
    try:
        for key, value in pairs:
            prod.send(topic, key=key, value=value).add_errback(errors.append)
            n += 1
        prod.flush(timeout=120)
    finally:
        if own:
            prod.close(timeout=30)
    if errors:
        raise ReplayError(f"{len(errors)} raw messages were not acknowledged: {errors[0]!r}")
    return n
