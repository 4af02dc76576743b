"""Topic administration: create the project's topics, idempotently, and check them.

* event topics (``INTEREST_EVENT_TOPICS``): ``INTEREST_TOPIC_PARTITIONS`` partitions
  each; they must be co-partitioned (same count), because a user's window lives
  on the partition its key hashes to in every topic;
* the DLQ (``INTEREST_DLQ_TOPIC``): same partition count, delete policy;
* the output topic (``INTEREST_OUTPUT_TOPIC``): compacted, key = user_id;
* the item-vectors topic (:func:`item_vectors_topic`): compacted, key = item id
  (vectors of items born after the checkpoint, docs/CONTRACTS.md §4b);
* the worker's tables' changelogs (:func:`changelog_topic`,
  :func:`forgotten_changelog_topic`) and the command topic: the event topics'
  partition count (:func:`check_topics`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from interest_stream.core.errors import InterestStreamError, KafkaUnavailable
from interest_stream.core.settings import Settings
from interest_stream.streams.commands import CommandError, command_topic

__all__ = [
    "FORGOTTEN_TABLE",
    "TABLE_NAME",
    "KafkaUnavailable",
    "TopicError",
    "WorkerError",
    "admin_client",
    "changelog_topic",
    "check_topics",
    "ensure_command_topic",
    "ensure_topics",
    "forgotten_changelog_topic",
    "item_vectors_topic",
    "partition_counts",
]

log = logging.getLogger(__name__)


class TopicError(InterestStreamError):
    """A topic exists with settings that cannot work (e.g. wrong partition count)."""


class WorkerError(InterestStreamError):
    """The worker cannot start or run (topics missing or not co-partitioned, bad store)."""


#: Name of the worker's windows table (user_id -> window bytes).
TABLE_NAME = "windows"
#: Name of the worker's forgotten-users table (user_id -> suppression record).
FORGOTTEN_TABLE = "forgotten"


def changelog_topic(settings: Settings) -> str:
    """Name of the windows table's changelog topic (Faust's ``<app_id>-windows-changelog``)."""
    return f"{settings.app_id}-{TABLE_NAME}-changelog"


def forgotten_changelog_topic(settings: Settings) -> str:
    """Changelog topic of the forgotten-users table (``<app_id>-forgotten-changelog``)."""
    return f"{settings.app_id}-{FORGOTTEN_TABLE}-changelog"


def item_vectors_topic(settings: Settings) -> str:
    """The compacted topic of new items' vectors (``<output topic>.item-vectors``)."""
    return f"{settings.output_topic}.item-vectors"


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
        compacted = {
            "cleanup.policy": "compact",
            "min.cleanable.dirty.ratio": "0.1",
            "segment.ms": "600000",
        }
        for topic in (settings.output_topic, item_vectors_topic(settings)):
            specs.append(NewTopic(topic, n, 1, topic_configs=compacted))
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


def check_topics(settings: Settings) -> int:
    """Create missing topics and return the event topics' common partition count.

    Raises:
        WorkerError: The event topics are not co-partitioned, or a changelog
            topic exists with another partition count.
        KafkaUnavailable: No broker answers.
    """
    try:
        counts = ensure_topics(settings)
    except TopicError as exc:
        raise WorkerError(f"{exc} (INTEREST_EVENT_TOPICS)") from exc
    event_counts = {t: counts.get(t) for t in settings.event_topics}
    distinct = set(event_counts.values())
    if None in distinct or len(distinct) != 1:
        raise WorkerError(
            "the event topics must exist and have the same partition count "
            f"(co-partitioned by user_id); found {event_counts} (INTEREST_EVENT_TOPICS)"
        )
    n = int(next(iter(distinct)))  # type: ignore[arg-type]
    try:
        ensure_command_topic(settings, n)
    except CommandError as exc:
        raise WorkerError(str(exc)) from exc
    admin = admin_client(settings)
    internal = [changelog_topic(settings), forgotten_changelog_topic(settings)]
    try:
        cl = partition_counts(admin, internal)
    finally:
        admin.close()
    for topic in internal:
        have = cl.get(topic)
        if have is not None and have != n:
            raise WorkerError(
                f"changelog topic {topic} has {have} partitions but the event "
                f"topics have {n}; use a new INTEREST_APP_ID or recreate the changelog"
            )
    return n


def ensure_command_topic(settings: Settings, partitions: int) -> int:
    """Create the command topic with ``partitions`` partitions if missing; return its count.

    Raises:
        CommandError: It exists with another partition count (not co-partitioned).
        KafkaUnavailable: No broker answers.
    """
    topic = command_topic(settings)
    admin = admin_client(settings)
    try:
        have = partition_counts(admin, [topic]).get(topic)
        if have is None:
            try:
                admin.create_topics([NewTopic(topic, partitions, 1)])
                log.info("created command topic %s (%d partitions)", topic, partitions)
            except TopicAlreadyExistsError:
                pass
            for _ in range(50):
                have = partition_counts(admin, [topic]).get(topic)
                if have is not None:
                    break
                time.sleep(0.1)
    finally:
        admin.close()
    if have != partitions:
        raise CommandError(
            f"command topic {topic} has {have} partitions but the event topics have "
            f"{partitions}; it must be co-partitioned (INTEREST_COMMAND_TOPIC)"
        )
    return int(have)
