"""``interest-stream opensearch sink``: the output topic written into the OpenSearch user store.

A Kafka consumer group (``<app_id>.opensearch-sink``; several sink processes share the
partitions) reads ``user-interest`` and bulk-writes each poll's records into
:class:`~interest_stream.index.opensearch_store.OpenSearchStore` with external
versions. A partition's offsets are committed only once the bulk responses hold no
failure for its records: a version conflict (a newer version is held) counts as done,
any other failure is retried with back-off and blocks the commit. A tombstone flushes
what is pending, then writes the user's deleted marker. Decisions: docs/DESIGN.md,
"OpenSearch user store".
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from interest_stream.core.checkpoint import read_config
from interest_stream.core.records import MalformedRecord, Tombstone, decode_record
from interest_stream.core.settings import Settings
from interest_stream.index.opensearch_store import (
    Life,
    OpenSearchStore,
    StoreUnavailable,
    Tomb,
    Upsert,
)

__all__ = ["OpenSearchSink", "SinkStats", "run_sink", "sink_group"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def sink_group(settings: Settings) -> str:
    """The sink's consumer group: ``<app_id>.opensearch-sink``."""
    return f"{settings.app_id}.opensearch-sink"


@dataclass
class SinkStats:
    """Counts since the sink started."""

    applied: int = 0
    stale: int = 0
    dropped: int = 0
    malformed: int = 0
    tombstones: int = 0
    retries: int = 0
    commits: int = 0


class _Stopped(Exception):
    """The sink was asked to stop while a write was still being retried."""


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: OpenSearchSink) -> None:
        self.sink = sink

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        for tp in revoked:
            self.sink.lives.pop(tp.partition, None)
        logger.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        logger.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))


class OpenSearchSink:
    """Consumes the output topic in a consumer group and writes it into OpenSearch."""

    def __init__(
        self,
        settings: Settings,
        store: OpenSearchStore | None = None,
        *,
        max_records: int = 2000,
        backoff_max_s: float = 30.0,
        consumer_factory: Callable[[], Any] | None = None,
    ) -> None:
        """Prepare the sink (nothing connects before :meth:`run`).

        The vector dimension and blend weight come from ``settings.model_dir`` when
        set; otherwise the dimension is the existing index's or the first record's,
        and the blend weight 0.5.
        """
        self.settings = settings
        self.dim: int | None = None
        blend_weight = 0.5
        if settings.model_dir is not None:
            cfg = read_config(settings.model_dir)
            self.dim = int(cfg["dim"])
            train = cfg.get("train")
            if isinstance(train, Mapping):
                blend_weight = float(train.get("blend_alpha", 0.5))
        self.store = store or OpenSearchStore(
            settings.opensearch_url, settings.opensearch_index, blend_weight=blend_weight
        )
        self.max_records = max_records
        self.backoff_max_s = backoff_max_s
        self._factory = consumer_factory
        self.lives: dict[int, dict[str, Life]] = {}
        self.stats = SinkStats()
        self.stop_event = threading.Event()
        self._index_ready = False

    # ------------------------------------------------------------------ retries
    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """Call ``fn`` until it does not raise StoreUnavailable (back-off up to the cap)."""
        backoff = 0.2
        while True:
            try:
                return fn()
            except StoreUnavailable as exc:
                self.stats.retries += 1
                logger.warning("%s failed (retrying in %.1fs): %s", what, backoff, exc)
            if self.stop_event.wait(backoff):
                raise _Stopped(what)
            backoff = min(backoff * 2, self.backoff_max_s)

    def _ensure_index(self, dim: int | None) -> None:
        if self._index_ready:
            return
        have = self._retry(  # an index of an older sink gets the fields it lacks
            "creating the index", lambda: self.store.ensure_index(dim, upgrade=True)
        )
        if have is not None:
            self.dim = have
            self._index_ready = True

    def _lives(self, partition: int) -> dict[str, Life]:
        if partition not in self.lives:
            self.lives[partition] = self._retry(
                f"loading forgotten users of partition {partition}",
                lambda: self.store.lives(partition),
            )
        return self.lives[partition]

    def _flush(self, pending: dict[str, Upsert]) -> None:
        """Write ``pending`` until every user is applied or stale; empties it."""
        backoff = 0.2
        while pending:
            self._ensure_index(self.dim)
            outcomes = self._retry("bulk write", lambda: self.store.write(pending.values()))
            failed: list[str] = []
            for out in outcomes:
                if out.result == "failed":
                    failed.append(f"{out.user_id}: {out.reason}")
                    continue
                del pending[out.user_id]
                if out.result == "applied":
                    self.stats.applied += 1
                else:
                    self.stats.stale += 1
            if pending:
                self.stats.retries += 1
                logger.warning(
                    "%d writes failed (retrying in %.1fs), e.g. %s", len(failed), backoff, failed[0]
                )
                if self.stop_event.wait(backoff):
                    raise _Stopped("bulk write")
                backoff = min(backoff * 2, self.backoff_max_s)

    # ------------------------------------------------------------------ one poll
    def process(self, batch: Mapping[TopicPartition, Sequence[Any]]) -> dict[TopicPartition, int]:
        """Write one poll's records; return the offsets to commit (all of them, once done).

        Raises:
            _Stopped: Asked to stop while a write was still failing (nothing to commit).
        """
        pending: dict[str, Upsert] = {}
        tombs: dict[str, Tomb] = {}
        done: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            lives = self._lives(tp.partition)
            for r in records:
                self._one(tp.partition, r, lives, pending, tombs)
            if records:
                done[tp] = int(records[-1].offset) + 1
        self._flush(pending)
        self._forget(tombs)
        return done

    def _forget(self, tombs: dict[str, Tomb]) -> None:
        """Apply the batch's tombstones (deleted markers); empties ``tombs``."""
        if not tombs:
            return
        self._ensure_index(self.dim)
        if self._index_ready:  # no index and no dimension yet: nothing to forget
            todo = list(tombs.values())
            lives = self._retry("forget", lambda: self.store.forget_many(todo))
            for t in todo:
                self._lives(t.partition)[t.user_id] = lives[t.user_id]
        tombs.clear()

    def _one(
        self,
        partition: int,
        r: Any,
        lives: dict[str, Life],
        pending: dict[str, Upsert],
        tombs: dict[str, Tomb],
    ) -> None:
        try:
            item = decode_record(r.key, r.value, dim=self.dim)
        except MalformedRecord as exc:
            self.stats.malformed += 1
            logger.warning("malformed record %s[%d]@%d: %s", r.topic, partition, r.offset, exc)
            return
        uid = item.user_id
        if isinstance(item, Tombstone):
            # the user's earlier record of this batch is void; its version bounds the marker
            dropped = pending.pop(uid, None)
            floor = max(
                dropped.external_version if dropped else 0, tombs[uid].floor if uid in tombs else 0
            )
            tombs[uid] = Tomb(uid, partition, int(r.offset), floor)
            self.stats.tombstones += 1
            return
        if uid in tombs:  # a new life right after its tombstone: the marker first
            self._flush(pending)
            self._forget(tombs)
        if self.dim is None:
            self.dim = int(item.short.size)
        life = lives.get(uid)
        if life is not None and r.offset < life.tomb:
            self.stats.dropped += 1  # before the user's tombstone: forgotten already
            return
        up = Upsert(item, partition, int(r.offset), life)
        prev = pending.get(uid)
        if prev is not None:
            self.stats.stale += 1
            if prev.external_version > up.external_version:
                return
        pending[uid] = up

    # ------------------------------------------------------------------ the loop
    def _new_consumer(self) -> Any:
        if self._factory is not None:
            return self._factory()
        s = self.settings
        return KafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap.split(","),
            group_id=sink_group(s),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=f"interest-sink-{socket.gethostname()}-{os.getpid()}",
            max_poll_records=self.max_records,
            fetch_max_wait_ms=100,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1500,
            # a store outage is retried inside one poll; stay in the group meanwhile
            max_poll_interval_ms=600_000,
            reconnect_backoff_max_ms=1000,
            metadata_max_age_ms=30_000,  # partitions added to the topic are seen soon
            **s.kafka_client_config(),
        )

    def _commit(self, consumer: Any, done: Mapping[TopicPartition, int]) -> None:
        if not done:
            return
        offsets = {tp: OffsetAndMetadata(off, "", -1) for tp, off in done.items()}
        try:
            consumer.commit(offsets)
            self.stats.commits += 1
        except CommitFailedError as exc:  # rebalanced meanwhile: the new owner re-writes
            logger.warning("offset commit refused after a rebalance (harmless): %s", exc)

    def _wait_for_topic(self, consumer: Any) -> None:
        """Wait until the consumer's metadata knows the topic's partitions.

        A group joined before that gets no partition and kafka-python looks again only
        after ``metadata_max_age_ms`` (seen in the tests: a sink idle for minutes).
        """
        backoff = 0.2
        while not self.stop_event.is_set():
            if consumer.partitions_for_topic(self.settings.output_topic):
                return
            logger.info("waiting for topic %s to exist", self.settings.output_topic)
            self.stop_event.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _await_subscription_metadata(self, consumer: Any, timeout_s: float = 5.0) -> None:
        """Wait until the group coordinator's metadata holds the subscribed topic.

        kafka-python joins the group with the metadata it has: joined before its
        subscription's metadata came back, a sink is assigned from an empty snapshot,
        then rejoins as soon as the metadata arrives (a second rebalance at every
        start, docs/RESULTS.md "Serving from OpenSearch", third pass). Uses kafka-python's
        internals when present (pinned in constraints.txt); without them, nothing waits.
        """
        coord: Any = getattr(consumer, "_coordinator", None)
        cluster: Any = getattr(consumer, "_cluster", None)
        if not hasattr(coord, "_metadata_snapshot") or not hasattr(cluster, "request_update"):
            return
        topic = self.settings.output_topic
        cluster.request_update()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if getattr(coord, "_metadata_snapshot", {}).get(topic):
                return
            if self.stop_event.wait(0.02):
                return
        logger.info("no metadata for %s after %.0fs: joining the group anyway", topic, timeout_s)

    def run(self, *, idle_exit_s: float | None = None) -> SinkStats:
        """Consume and write until :attr:`stop_event` is set (or idle for ``idle_exit_s``).

        Raises:
            KafkaError: The consumer could not be created (broker unreachable).
        """
        self._ensure_index(self.dim)  # an existing index fixes the dimension
        consumer = self._new_consumer()
        self._wait_for_topic(consumer)
        consumer.subscribe([self.settings.output_topic], listener=_Listener(self))
        self._await_subscription_metadata(consumer)
        logger.info(
            "sink of %s into %s/%s (group %s)",
            self.settings.output_topic,
            self.settings.opensearch_url,
            self.settings.opensearch_index,
            sink_group(self.settings),
        )
        last_data = last_log = time.monotonic()
        try:
            while not self.stop_event.is_set():
                batch = consumer.poll(timeout_ms=200, max_records=self.max_records)
                now = time.monotonic()
                if batch:
                    last_data = now
                    self._commit(consumer, self.process(batch))
                elif idle_exit_s is not None and now - last_data >= idle_exit_s:
                    break
                if now - last_log >= 10.0:
                    last_log = now
                    logger.info("sink: %s", asdict(self.stats))
        except _Stopped:
            logger.info("sink stopped while a write was being retried; nothing committed for it")
        finally:
            consumer.close(autocommit=False)
            logger.info("sink done: %s", asdict(self.stats))
        return self.stats


def run_sink(settings: Settings) -> int:
    """Run the sink in this process until SIGTERM/SIGINT; return the exit code."""
    sink = OpenSearchSink(settings)

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("signal %d: stopping the sink", signum)
        sink.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        sink.run()
    except KafkaError as exc:
        from interest_stream.core.errors import InterestStreamError

        raise InterestStreamError(f"the sink's Kafka consumer failed: {exc}") from exc
    finally:
        sink.store.close()
    return 0
