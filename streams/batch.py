"""One batch of the stream worker: its hooks, what it did, and the records it writes.

* :class:`BatchHook` / :class:`ForgetHook` -- called after each batch;
* :class:`BatchResult` -- what one batch did;
* :func:`apply_command` -- a command-topic message applied to a batch;
* :func:`changelog_records` -- the changelog records of the users a batch touched
  (each partition's positions record after its windows).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from faust.types import EventT
from faust.types.tuples import Message

from interest_stream.core.events import dlq_record
from interest_stream.streams.commands import CommandError, parse_command
from interest_stream.streams.metrics import WorkerMetrics
from interest_stream.streams.positions import POSITIONS_KEY, encode_positions
from interest_stream.streams.store import ChangelogRecord, Forgotten, WindowStore
from interest_stream.streams.window import BehaviorWindow

__all__ = [
    "BatchHook",
    "BatchResult",
    "ForgetHook",
    "Touched",
    "apply_command",
    "blank",
    "changelog_records",
    "dlq_value",
    "stop_recording",
    "ts_ms",
]

log = logging.getLogger(__name__)


class BatchHook(Protocol):
    """Called after each batch with every window written in it (user_id -> window).

    The windows' changelog records are already acknowledged when the hook runs,
    and the batch's source offsets are committed only after it returns, so a crash
    inside the hook re-delivers the batch (its users are then passed again).
    The hook may be a plain or an ``async`` function; it must not modify the
    windows. An exception is logged and counted, and processing goes on.
    """

    def __call__(self, windows: Mapping[str, BehaviorWindow], /) -> Awaitable[None] | None:
        """Handle the windows of one batch."""
        ...


class ForgetHook(Protocol):
    """Called after each batch with the users forgotten in it (user_id -> forget time, ms).

    The windows' tombstones are acknowledged when the hook runs; the hook runs
    before :class:`BatchHook` (a user forgotten and active again in the same
    batch is first forgotten, then passed with its new window). Exceptions are
    logged and counted like the batch hook's.
    """

    def __call__(self, users: Mapping[str, int], /) -> Awaitable[None] | None:
        """Handle the users forgotten in one batch."""
        ...


@dataclass(slots=True)
class BatchResult:
    """What one batch did: messages taken, events applied, duplicates, DLQ records, windows."""

    consumed: int = 0
    applied: int = 0
    duplicates: int = 0
    dlq: int = 0
    windows: dict[str, BehaviorWindow] = field(default_factory=dict)
    forgotten: dict[str, int] = field(default_factory=dict)
    forgotten_events: int = 0
    filled: int = 0


@dataclass(slots=True)
class Touched:
    """A user a batch touched: its window (``None``: deleted by a forget in this batch)."""

    window: BehaviorWindow | None
    event: EventT[Any]
    applied: int = 0
    forgotten: Forgotten | None = None
    forgotten_dirty: bool = False

    def __post_init__(self) -> None:
        if self.window is not None:  # the batch's hook learns which events are new
            self.window.fresh = []  # (BehaviorWindow.fresh; streams/new_items.py)


def stop_recording(touched: Iterable[Touched]) -> None:
    """After a batch's hooks: its windows stop recording the events inserted into them."""
    for slot in touched:
        if slot.window is not None:
            slot.window.fresh = None


def blank(window: BehaviorWindow) -> bool:
    """A window created for this batch to which nothing was applied (no event, no mark)."""
    return window.version == 0 and not window.offsets and not window.recent_ids


def ts_ms(message: Message) -> int:
    """The message's Kafka timestamp in milliseconds."""
    return round((message.timestamp or 0.0) * 1000)


def dlq_value(error: str, field_name: str | None, message: Message) -> tuple[bytes | None, bytes]:
    """``(key, value)`` of the dead-letter record for ``message``."""
    rec = dlq_record(
        error,
        field_name,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        raw=message.value,
    )
    return message.key, json.dumps(rec, separators=(",", ":"), ensure_ascii=False).encode()


def changelog_records(
    touched: Mapping[tuple[int, str], Touched],
    batch_pos: Mapping[int, dict[str, int]],
    durable: Mapping[int, dict[str, int]],
    changelog: str,
    forgotten_changelog: str,
) -> list[ChangelogRecord]:
    """The records a batch writes: windows and suppression records, then changed positions.

    Each partition's positions record comes after its windows, so the changelog
    never holds a position ahead of the windows it covers.
    """
    records: list[ChangelogRecord] = []
    for (partition, user_id), slot in touched.items():
        key = user_id.encode("utf-8")
        if slot.window is not None and blank(slot.window) and not slot.forgotten_dirty:
            continue  # nothing applied to a user without a window: nothing to store
        if slot.window is not None or slot.forgotten_dirty:
            value = None if slot.window is None else slot.window.to_bytes()
            records.append((changelog, partition, key, value))
        if slot.forgotten_dirty and slot.forgotten is not None:
            records.append((forgotten_changelog, partition, key, slot.forgotten.to_bytes()))
    for partition, pos in batch_pos.items():
        if pos != durable.get(partition):
            records.append((changelog, partition, POSITIONS_KEY, encode_positions(pos)))
    return records


def apply_command(
    ev: EventT[Any],
    touched: dict[tuple[int, str], Touched],
    dlq_out: list[tuple[bytes | None, bytes]],
    res: BatchResult,
    store: WindowStore,
    metrics: WorkerMetrics,
) -> None:
    """Apply one command-topic message to a batch (see :mod:`interest_stream.streams.commands`).

    A ``forget`` replaces the user's window by a tombstone and stores a suppression
    record; a malformed command goes to ``dlq_out``.
    """
    msg = ev.message
    try:
        cmd = parse_command(msg.value, msg.key)
    except CommandError as exc:
        dlq_out.append(dlq_value(str(exc), "command", msg))
        return
    ck = (msg.partition, cmd.user_id)
    slot = touched.get(ck)
    if slot is None:
        # the window is not read: the forget replaces it by a tombstone anyway
        forgotten = store.load_forgotten(cmd.user_id, ev)
        slot = touched[ck] = Touched(None, ev, forgotten=forgotten)
    at_ms = ts_ms(msg)
    if slot.forgotten is not None and msg.offset <= slot.forgotten.offset:
        # re-delivered after a crash: already applied. Announce it again (the output
        # tombstone may have died with the crash) unless a new life began since.
        res.duplicates += 1
        alive = slot.window is not None or (store.read(cmd.user_id.encode("utf-8"), ev) is not None)
        if not alive:
            res.forgotten[cmd.user_id] = slot.forgotten.at_ms
        return
    slot.window = None
    slot.forgotten = Forgotten(at_ms, msg.offset)
    slot.forgotten_dirty = True
    res.forgotten[cmd.user_id] = at_ms
    metrics.forgotten.inc()
    log.info("forgetting user %r (command at %d ms)", cmd.user_id, at_ms)
