"""The API's consumer of the item-vectors topic: items born after the checkpoint, live.

Like the output-topic consumer, every replica reads the whole compacted topic
(:func:`~interest_stream.streams.topics.item_vectors_topic`; no consumer group, every
partition from the beginning) in a daemon thread. It keeps the newest record per item
and applies records to the current item index
(:meth:`~interest_stream.index.item_index.ItemIndex.apply_new_items`); when the API
swaps in another checkpoint (a new ``ItemIndex`` object), every record kept is applied
again to it (those of other model versions are ignored there). Design: docs/DESIGN.md
("Items born after the checkpoint").
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from interest_stream.core.new_items import ItemVectorRecord, MalformedItemRecord
from interest_stream.core.settings import Settings
from interest_stream.index.item_index import ItemIndex
from interest_stream.streams.topics import item_vectors_topic

__all__ = ["ItemVectorsConsumer"]

logger = logging.getLogger(__name__)


class ItemVectorsConsumer:
    """Reads the item-vectors topic into whatever item index ``items()`` returns.

    Args:
        settings: Kafka bootstrap/security and the output topic (the topic's prefix).
        items: Returns the API's current item index (``None`` without a checkpoint).
        poll_ms: Poll timeout.
    """

    def __init__(
        self, settings: Settings, items: Callable[[], ItemIndex | None], poll_ms: int = 200
    ) -> None:
        self.settings = settings
        self.topic = item_vectors_topic(settings)
        self._items = items
        self.poll_ms = poll_ms
        self._latest: dict[str, ItemVectorRecord] = {}
        self._applied_to: ItemIndex | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.applied = 0
        self.malformed = 0

    def apply(self, values: Iterable[bytes | None]) -> int:
        """Parse record values and apply them to the current item index; returns applied."""
        recs = []
        for value in values:
            if value is None:
                continue
            try:
                recs.append(ItemVectorRecord.from_json(value))
            except MalformedItemRecord as exc:
                self.malformed += 1
                logger.warning("%s", exc)
        with self._lock:
            for r in recs:
                old = self._latest.get(r.item_id)
                if old is None or r.version >= old.version:
                    self._latest[r.item_id] = r
            items = self._items()
            if items is None:
                return 0
            if items is not self._applied_to:  # another checkpoint: replay what is kept
                self._applied_to = items
                recs = list(self._latest.values())
            n = items.apply_new_items(recs)
        self.applied += n
        return n

    def start(self) -> None:
        """Start the consumer thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="item-vectors", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._consume()
            except Exception as exc:  # never let the thread die
                logger.warning("item-vectors consumer error (retrying in 2 s): %s", exc)
                self._stop.wait(2.0)

    def _consume(self) -> None:
        consumer: Any = KafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap.split(","),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=f"interest-api-items-{socket.gethostname()}-{os.getpid()}",
            reconnect_backoff_max_ms=1000,
            **self.settings.kafka_client_config(),
        )
        try:
            tps: list[Any] = []
            while not self._stop.is_set() and not tps:
                parts = consumer.partitions_for_topic(self.topic) or ()
                tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
                if not tps:
                    self._stop.wait(1.0)
            if not tps:
                return
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            while not self._stop.is_set():
                batch = consumer.poll(timeout_ms=self.poll_ms)
                self.apply(m.value for msgs in batch.values() for m in msgs)
        finally:
            consumer.close()

    def describe(self) -> dict[str, Any]:
        """State for the ready/admin answers."""
        return {
            "topic": self.topic,
            "items_kept": len(self._latest),
            "applied": self.applied,
            "malformed": self.malformed,
        }
