"""The worker's local state: its two Faust tables, decoded windows, durable source positions.

:class:`WindowStore` reads windows, suppression records and source positions from
the tables (in the partition of the event being processed) and writes changelog
records the broker acknowledged into them. Contract: its cache of decoded windows
always equals the durable state; :meth:`WindowStore.clear` runs on every rebalance.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP, EventT
from faust.types.tuples import Message

from interest_stream.core.settings import Settings
from interest_stream.streams import faust_compat
from interest_stream.streams.positions import POSITIONS_KEY, PositionsError, decode_positions
from interest_stream.streams.topics import (
    FORGOTTEN_TABLE,
    TABLE_NAME,
    changelog_topic,
    forgotten_changelog_topic,
)
from interest_stream.streams.window import BehaviorWindow, WindowConfig

__all__ = [
    "CACHE_WINDOWS",
    "FORGOTTEN_TABLE_MEMORY_MB",
    "ChangelogRecord",
    "Forgotten",
    "WindowStore",
    "rocksdb_options",
]

log = logging.getLogger(__name__)

#: Decoded windows kept in memory per worker (about 25 KB each at 200 events).
CACHE_WINDOWS = 4096
#: RocksDB memory of the (tiny) forgotten-users table, per partition (MB).
FORGOTTEN_TABLE_MEMORY_MB = 4

#: ``(topic, partition, key, value)`` of one changelog record (value ``None``: tombstone).
ChangelogRecord = tuple[str, int, bytes, bytes | None]


def rocksdb_options(memory_mb: int) -> dict[str, Any]:
    """Faust RocksDB options spending about ``memory_mb`` per partition database.

    Half goes to the block cache, a quarter to each of the two memtables. Every
    partition the worker holds opens its own database, so a worker's RocksDB
    memory is about ``memory_mb`` times the partitions it holds (plus the LRU of
    decoded windows, :data:`CACHE_WINDOWS`).
    """
    mb = 1024 * 1024
    return {
        "driver": "rocksdict",
        "write_buffer_size": max(1, memory_mb // 4) * mb,
        "max_write_buffer_number": 2,
        "block_cache_size": max(1, memory_mb // 2) * mb,
    }


@dataclass(frozen=True, slots=True)
class Forgotten:
    """Suppression record of a forgotten user: forget time (ms) and the command's offset."""

    at_ms: int
    offset: int

    def to_bytes(self) -> bytes:
        """The record as stored in the forgotten-users table (JSON)."""
        return json.dumps({"at": self.at_ms, "offset": self.offset}).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Forgotten:
        """Decode a stored record (``ValueError``/``KeyError``/``TypeError`` if corrupt)."""
        obj = json.loads(raw)
        return cls(int(obj["at"]), int(obj["offset"]))


class WindowStore:
    """The windows table, the forgotten-users table and what the worker keeps beside them.

    Args:
        app: The worker's Faust app (the tables are created on it).
        settings: Process settings (store kind, memory, app id).
        config: Window configuration of the decoded windows.
        partitions: Partition count of the event topics.
    """

    def __init__(
        self, app: faust.App, settings: Settings, config: WindowConfig, partitions: int
    ) -> None:
        self.config = config
        rocks = settings.store == "rocksdb"
        self.table = app.Table(
            TABLE_NAME,
            partitions=partitions,
            key_type=bytes,
            value_type=bytes,
            options=rocksdb_options(settings.state_memory_mb) if rocks else None,
            help="user_id -> BehaviorWindow bytes (streams.window)",
        )
        self.forgotten_table = app.Table(
            FORGOTTEN_TABLE,
            partitions=partitions,
            key_type=bytes,
            value_type=bytes,
            options=rocksdb_options(FORGOTTEN_TABLE_MEMORY_MB) if rocks else None,
            help="user_id -> forget time and command offset of a forgotten user",
        )
        self.changelog = changelog_topic(settings)
        self.forgotten_changelog = forgotten_changelog_topic(settings)
        # Source positions (streams.positions) acknowledged in the changelog, per
        # partition: topic -> next offset. Read lazily from the store.
        self.durable: dict[int, dict[str, int]] = {}
        # The same once the batch's hooks returned: what Faust commits
        # (faust_compat.own_commits), so a crash in a hook re-delivers the batch.
        self.committable: dict[int, dict[str, int]] = {}
        # Decoded windows of recently touched users, (partition, user_id) -> window.
        self.cache: OrderedDict[tuple[int, str], BehaviorWindow] = OrderedDict()

    def clear(self) -> None:
        """Forget the cache and the positions (before table recovery may change the store)."""
        self.cache.clear()
        self.durable.clear()
        self.committable.clear()

    def read(self, key: bytes, event: EventT[Any] | None, table: Any = None) -> bytes | None:
        """The stored bytes of ``key`` in the partition of ``event`` (any partition if None)."""
        store = (self.table if table is None else table).data
        with faust_compat.current_event(event):
            value = store.get(key)
        return bytes(value) if value is not None else None

    def positions(self, partition: int, event: EventT[Any]) -> dict[str, int]:
        """The durable positions of ``partition`` (read from the store on first use)."""
        known = self.durable.get(partition)
        if known is not None:
            return known
        raw = self.read(POSITIONS_KEY, event)
        positions: dict[str, int] = {}
        if raw is not None:
            try:
                positions = decode_positions(raw)
            except PositionsError as exc:
                log.error("partition %d: %s; starting from the committed offsets", partition, exc)
        self.durable[partition] = positions
        return positions

    def committable_offset(self, tp: TP, event: EventT[Any]) -> int | None:
        """The offset Faust may commit for ``tp`` (``event`` routes a store read to its partition).

        Before a batch of the partition finished here, that is the positions record
        in the store: any record ever written is a valid lower bound.
        """
        known = self.committable.get(tp.partition)
        if known is None:
            raw = self.read(POSITIONS_KEY, event)
            try:
                known = decode_positions(raw) if raw is not None else {}
            except PositionsError:
                known = {}
            self.committable[tp.partition] = known
        return known.get(tp.topic)

    def load_window(self, user_id: str, event: EventT[Any]) -> BehaviorWindow:
        """The window of ``user_id`` in the partition of ``event`` (a new one if none).

        Raises:
            StateCodecError: The stored bytes are corrupt.
        """
        ck = (event.message.partition, user_id)
        window = self.cache.get(ck)
        if window is not None:
            self.cache.move_to_end(ck)
            return window
        raw = self.read(user_id.encode("utf-8"), event)
        if raw is None:
            return BehaviorWindow(user_id, self.config)
        return BehaviorWindow.from_bytes(raw, self.config)

    def load_forgotten(self, user_id: str, event: EventT[Any] | None) -> Forgotten | None:
        """The suppression record of ``user_id`` (``None`` if the user was never forgotten)."""
        raw = self.read(user_id.encode("utf-8"), event, self.forgotten_table)
        if raw is None:
            return None
        try:
            return Forgotten.from_bytes(raw)
        except (ValueError, KeyError, TypeError):
            log.error("suppression record of user %r is corrupt; ignoring it", user_id)
            return None

    def remember(self, key: tuple[int, str], window: BehaviorWindow) -> None:
        """Cache a durably written window (least recently used ones leave first)."""
        self.cache[key] = window
        self.cache.move_to_end(key)
        while len(self.cache) > CACHE_WINDOWS:
            self.cache.popitem(last=False)

    def apply_acked(
        self, app: faust.App, records: Sequence[ChangelogRecord], offsets: Sequence[int]
    ) -> None:
        """Write acknowledged changelog records (at their changelog offsets) to the tables."""
        now = time.time()
        batches: dict[str, list[EventT[Any]]] = {}
        for (topic, partition, key, value), offset in zip(records, offsets, strict=True):
            tp = TP(topic, partition)
            msg = Message(topic, partition, offset, now, 0, None, key, value, None, tp=tp)
            batches.setdefault(topic, []).append(faust.Event(app, key, value, None, msg))
        if batches.get(self.changelog):
            self.table.apply_changelog_batch(batches[self.changelog])
        if batches.get(self.forgotten_changelog):
            self.forgotten_table.apply_changelog_batch(batches[self.forgotten_changelog])
