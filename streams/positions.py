"""Source positions: per partition, the next offset of each source topic the state has applied.

The worker keeps one record per partition in its windows table under the
reserved key :data:`POSITIONS_KEY` (user ids cannot contain control
characters, so it never collides with a user): ``{topic: next_offset}`` for the
event and command topics at that partition. It is written to the changelog in
the same batch as the windows it covers, so after any crash the recovered state
says exactly which source offsets it holds; the worker applies a message only
at its partition's position (see docs/ARCHITECTURE.md, "Exactly-once state").

:class:`OffsetReader` reads a range of a source partition straight from the
broker: when the stream skips offsets, the worker reads the skipped records
itself (a range with no record -- transaction markers, compaction -- reads empty).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from interest_stream.core.errors import InterestStreamError
from interest_stream.core.settings import Settings

__all__ = [
    "POSITIONS_KEY",
    "OffsetReader",
    "PositionsError",
    "SourceRecord",
    "decode_positions",
    "encode_positions",
    "is_reserved_key",
]

log = logging.getLogger(__name__)

#: Reserved key of the positions record in each partition of the windows table.
POSITIONS_KEY = b"\x00positions"


class PositionsError(InterestStreamError):
    """A positions record cannot be decoded, or the broker could not be probed."""


def is_reserved_key(key: bytes | None) -> bool:
    """Whether a windows-table key is internal (not a user id)."""
    return bool(key) and key[:1] == b"\x00"  # type: ignore[index]


def encode_positions(positions: dict[str, int]) -> bytes:
    """The positions record's bytes (JSON, topics sorted)."""
    return json.dumps(positions, sort_keys=True, separators=(",", ":")).encode()


def decode_positions(raw: bytes) -> dict[str, int]:
    """Decode a positions record.

    Raises:
        PositionsError: Not a JSON object of topic -> non-negative int.
    """
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise PositionsError(f"positions record is not JSON: {exc}") from exc
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in obj.items()
    ):
        raise PositionsError(f"positions record is not topic -> offset: {raw[:200]!r}")
    return dict(obj)


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One record read straight from a source partition."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


class OffsetReader:
    """Reads a range of a source partition with a consumer of its own (no group).

    Used when the stream skipped offsets: the worker reads the skipped records
    itself and applies them in order. Thread-safe (calls are serialised); meant
    for a worker thread (``asyncio.to_thread``).
    """

    def __init__(self, settings: Settings, timeout_s: float = 30.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._consumer: Any = None

    def _client(self) -> Any:
        if self._consumer is None:
            from kafka import KafkaConsumer

            self._consumer = KafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **self.settings.kafka_client_config(),
            )
        return self._consumer

    def read(self, topic: str, partition: int, start: int, end: int) -> list[SourceRecord]:
        """Every record of ``topic[partition]`` with ``start <= offset < end``.

        Offsets without a record (transaction markers, compacted or deleted
        records) are simply absent from the result.

        Raises:
            PositionsError: The broker did not answer within the reader's timeout.
        """
        from kafka import TopicPartition

        tp = TopicPartition(topic, partition)
        out: list[SourceRecord] = []
        with self._lock:
            try:
                consumer = self._client()
                consumer.assign([tp])
                consumer.seek(tp, start)
                deadline = time.monotonic() + self.timeout_s
                while consumer.position(tp) < end:
                    if time.monotonic() > deadline:
                        raise PositionsError(
                            f"reading {topic}[{partition}] {start}..{end} timed out"
                        )
                    for rec in consumer.poll(timeout_ms=200).get(tp, []):
                        if start <= rec.offset < end:
                            out.append(
                                SourceRecord(
                                    int(rec.offset), rec.key, rec.value, int(rec.timestamp)
                                )
                            )
            except PositionsError:
                self._close_locked()
                raise
            except Exception as exc:  # kafka-python raises many kinds
                self._close_locked()
                raise PositionsError(
                    f"reading {topic}[{partition}] {start}..{end}: {exc!r}"
                ) from exc
        return out

    def _close_locked(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception:  # pragma: no cover - closing a broken client
                log.debug("closing the reader consumer failed", exc_info=True)
            self._consumer = None

    def close(self) -> None:
        """Close the reader's consumer (a later call opens a new one)."""
        with self._lock:
            self._close_locked()
