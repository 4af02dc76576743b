"""Topic administration: create the project's topics, idempotently, with the right policies.

* event topics (``INTEREST_EVENT_TOPICS``): ``INTEREST_TOPIC_PARTITIONS`` partitions
  each; they must be co-partitioned (same count), because a user's window lives
  on the partition its key hashes to in every topic;
* the DLQ (``INTEREST_DLQ_TOPIC``): same partition count, delete policy;
* the output topic (``INTEREST_OUTPUT_TOPIC``): compacted, key = user_id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from interest_stream.core.errors import InterestStreamError
from interest_stream.core.settings import Settings

__all__ = ["KafkaUnavailable", "TopicError", "admin_client", "ensure_topics", "partition_counts"]

log = logging.getLogger(__name__)


class KafkaUnavailable(InterestStreamError):
    """The Kafka bootstrap servers do not answer."""


class TopicError(InterestStreamError):
    """A topic exists with settings that cannot work (e.g. wrong partition count)."""


def admin_client(settings: Settings, timeout_s: float = 15.0) -> KafkaAdminClient:
    """A kafka-python admin client, or :class:`KafkaUnavailable` with the address tried."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            return KafkaAdminClient(
                bootstrap_servers=settings.kafka_bootstrap,
                client_id=f"{settings.app_id}-admin",
                request_timeout_ms=10_000,
                **settings.kafka_client_config(),
            )
        except KafkaError as exc:
            last = exc
            time.sleep(0.5)
    raise KafkaUnavailable(
        f"no Kafka broker answers at {settings.kafka_bootstrap} "
        f"(INTEREST_KAFKA_BOOTSTRAP): {last}; start one with `interest-stream kafka start`"
    )


def partition_counts(admin: KafkaAdminClient, topics: Iterable[str]) -> dict[str, int]:
    """Partition count of each existing topic among ``topics``."""
    wanted = list(topics)
    out: dict[str, int] = {}
    try:
        described: list[dict[str, Any]] = admin.describe_topics(wanted)
    except KafkaError:
        described = []
        for t in wanted:
            try:
                described.extend(admin.describe_topics([t]))
            except KafkaError:
                continue
    for d in described:
        if d.get("error_code", 0) == 0 and d.get("partitions"):
            out[d.get("name") or d["topic"]] = len(d["partitions"])
    return out


def ensure_topics(settings: Settings, *, extra: Iterable[str] = ()) -> dict[str, int]:
    """Create the event, DLQ and output topics if missing; check the event topics agree.

    Args:
        settings: The process settings.
        extra: More topics to create like event topics.

    Returns:
        Partition count per topic.

    Raises:
        KafkaUnavailable: No broker answers.
        TopicError: Event topics exist with different partition counts.
    """
    admin = admin_client(settings)
    try:
        n = settings.topic_partitions
        plain = [*settings.event_topics, *extra, settings.dlq_topic]
        specs = [NewTopic(t, n, 1) for t in dict.fromkeys(plain)]
        specs.append(
            NewTopic(
                settings.output_topic,
                n,
                1,
                topic_configs={
                    "cleanup.policy": "compact",
                    "min.cleanable.dirty.ratio": "0.1",
                    "segment.ms": "600000",
                },
            )
        )
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            try:
                admin.create_topics(missing, validate_only=False)
                log.info("created topics %s", ", ".join(s.name for s in missing))
            except TopicAlreadyExistsError:
                pass
            except KafkaError as exc:
                # one topic at a time, so a race on one does not hide the others
                for spec in missing:
                    try:
                        admin.create_topics([spec])
                    except TopicAlreadyExistsError:
                        continue
                    except KafkaError as inner:
                        raise TopicError(f"cannot create topic {spec.name}: {inner}") from exc
        names = [s.name for s in specs]
        counts: dict[str, int] = {}
        for _ in range(50):
            counts = partition_counts(admin, names)
            if len(counts) == len(names):
                break
            time.sleep(0.1)
        event_counts = {t: counts.get(t) for t in settings.event_topics}
        if len(set(event_counts.values())) > 1:
            raise TopicError(
                "event topics must have the same partition count (co-partitioning by "
                f"user_id): {event_counts}"
            )
        return counts
    finally:
        admin.close()
