"""The user index's per-user metadata: a record without its vectors, kept compact.

:class:`Meta` is what :class:`~interest_stream.index.user_index.UserIndex` holds per user
besides the vectors (version, times, model version, recent items, purchases and the
record's ``recent`` events packed by :class:`Recent`); ``to_json`` / ``from_json`` are
its snapshot rows (a row without ``recent`` reads as before).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from interest_stream.core.events import EVENT_TYPES

__all__ = ["Meta", "Recent"]

_TYPE_CODE = {t: k for k, t in enumerate(EVENT_TYPES)}


@dataclass(slots=True)
class Recent:
    """A record's ``recent`` events, compact: ids, one byte of type, int64 times."""

    items: tuple[str, ...]
    types: bytes  # index into EVENT_TYPES, 255 = another type (kept by name in ``other``)
    ts: array[int]
    other: tuple[str, ...] = ()

    @classmethod
    def pack(cls, events: Sequence[tuple[str, str, int]]) -> Recent | None:
        if not events:
            return None
        codes = bytes(_TYPE_CODE.get(t, 255) for _i, t, _ts in events)
        other = tuple(t for _i, t, _ts in events if t not in _TYPE_CODE)
        ts = array("q", (int(e[2]) for e in events))
        return cls(tuple(sys.intern(e[0]) for e in events), codes, ts, other)

    def unpack(self) -> tuple[tuple[str, str, int], ...]:
        others = iter(self.other)
        return tuple(
            (i, EVENT_TYPES[c] if c != 255 else next(others), int(t))
            for i, c, t in zip(self.items, self.types, self.ts, strict=True)
        )


@dataclass(slots=True)
class Meta:
    """A user's record without its vectors, as the index keeps it (JSON rows in snapshots)."""

    version: int
    event_time: int | None
    updated_at: int | None
    model_version: str | None
    recent_items: tuple[str, ...]
    purchased: tuple[str, ...]
    recent: Recent | None = None

    def to_json(self) -> list[Any]:
        row: list[Any] = [self.version, self.event_time, self.updated_at, self.model_version,
               list(self.recent_items), list(self.purchased)]  # fmt: skip
        if self.recent is not None:
            row.append([list(e) for e in self.recent.unpack()])
        return row

    @classmethod
    def from_json(cls, row: Sequence[Any]) -> Meta:
        recent = (
            Recent.pack([(str(e[0]), str(e[1]), int(e[2])) for e in row[6]])
            if len(row) > 6
            else None
        )
        return cls(int(row[0]), row[1], row[2], row[3], tuple(row[4]), tuple(row[5]), recent)
