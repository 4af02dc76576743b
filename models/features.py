"""Turning event histories into padded arrays for the encoder (numpy only).

Layout of one window (both paths): tokens are **newest first**. Token ``k`` of
row ``b`` is the ``k``-th newest event of history ``b``; padding is at the end.
For each token the arrays hold the item index (``0`` pad, ``1`` OOV, ``>= 2``
vocabulary row + 2), the event-type id (``0`` pad) and the age in seconds
relative to the newest event of that window.

:func:`short_window` is the rule the worker, the training and the evaluation
share for the short-term window: the latest ``max_events`` events that lie
within ``max_minutes`` of the newest one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from interest_stream.core.events import Interaction
from interest_stream.models.config import N_SPECIAL_ITEMS, OOV_INDEX, type_index

__all__ = [
    "WindowArrays",
    "arrays_from_flat",
    "arrays_from_histories",
    "short_window",
    "short_window_starts",
]

_TYPE_CACHE: dict[str, int] = {}


def _type_id(event_type: str) -> int:
    tid = _TYPE_CACHE.get(event_type)
    if tid is None:
        tid = type_index(event_type)
        _TYPE_CACHE[event_type] = tid
    return tid


@dataclass
class WindowArrays:
    """A batch of windows as numpy arrays (newest event first).

    Attributes:
        items: int64 ``[B, L]`` item indices (0 = padding, 1 = OOV).
        types: int64 ``[B, L]`` event-type ids (0 = padding).
        age_s: float32 ``[B, L]`` seconds between each event and the window's newest one.
        lengths: int64 ``[B]`` number of real events per row (0 = empty history).
    """

    items: np.ndarray
    types: np.ndarray
    age_s: np.ndarray
    lengths: np.ndarray

    @property
    def batch_size(self) -> int:
        """Number of rows ``B``."""
        return int(self.lengths.shape[0])


def short_window(
    history: Sequence[Interaction], max_events: int = 50, max_minutes: float = 30.0
) -> list[Interaction]:
    """The short-term window of a history: latest ``max_events`` events within ``max_minutes``.

    Args:
        history: Events in event-time order (oldest first).
        max_events: At most this many latest events.
        max_minutes: Keep only events at most this many minutes older than the newest.

    Returns:
        The window, oldest first (empty for an empty history).
    """
    if not history:
        return []
    tail = list(history[-max_events:])
    newest = max(e.ts for e in tail)
    limit = newest - int(max_minutes * 60_000)
    return [e for e in tail if e.ts >= limit]


def short_window_starts(
    ts: np.ndarray, ends: np.ndarray, seg_starts: np.ndarray, max_events: int, max_minutes: float
) -> np.ndarray:
    """Start index of the short window ending (exclusive) at each of ``ends``.

    All indices are into one flat, per-user time-sorted event array.

    Args:
        ts: int64 ``[N]`` event times (ms), sorted within each user segment.
        ends: int64 ``[P]`` exclusive window ends.
        seg_starts: int64 ``[P]`` start of the user segment of each end.
        max_events: Cap on the window length.
        max_minutes: Events older than this before the window's newest event are left out.

    Returns:
        int64 ``[P]`` window starts; ``start == end`` for an empty window.
    """
    starts = np.maximum(seg_starts, ends - max_events)
    nonempty = ends > seg_starts
    out = ends.copy()
    if not nonempty.any():
        return out
    e = ends[nonempty]
    s = starts[nonempty]
    newest = ts[e - 1]
    limit = newest - int(max_minutes * 60_000)
    # first index in [s, e) whose ts >= limit (ts sorted within the segment)
    lo = s.copy()
    hi = e - 1
    # vectorised binary search
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        go_right = active & (ts[mid] < limit)
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)
    out[nonempty] = lo
    return out


def arrays_from_flat(
    items: np.ndarray,
    types: np.ndarray,
    ts: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    max_len: int,
) -> WindowArrays:
    """Gather windows ``[starts[b], ends[b])`` of flat event arrays into a padded batch.

    Args:
        items: int64 ``[N]`` item indices.
        types: int64 ``[N]`` event-type ids.
        ts: int64 ``[N]`` event times (ms).
        starts: int64 ``[B]`` window starts (inclusive).
        ends: int64 ``[B]`` window ends (exclusive).
        max_len: Keep at most this many newest events per window.

    Returns:
        The padded batch, newest event first, ``L = max(1, longest window)``.
    """
    lengths = np.minimum(ends - starts, max_len).astype(np.int64)
    width = max(1, int(lengths.max()) if lengths.size else 1)
    k = np.arange(width, dtype=np.int64)[None, :]
    valid = k < lengths[:, None]
    idx = np.where(valid, ends[:, None] - 1 - k, 0)
    out_items = np.where(valid, items[idx], 0)
    out_types = np.where(valid, types[idx], 0)
    newest = np.where(lengths > 0, ts[np.maximum(ends - 1, 0)], 0)
    age = np.where(valid, (newest[:, None] - ts[idx]) / 1000.0, 0.0)
    return WindowArrays(
        items=out_items.astype(np.int64),
        types=out_types.astype(np.int64),
        age_s=np.maximum(age, 0.0).astype(np.float32),
        lengths=lengths,
    )


def arrays_from_histories(
    histories: Sequence[Sequence[Interaction]], item_index: Mapping[str, int], max_len: int
) -> WindowArrays:
    """Pad many users' histories into one batch (the inference path).

    Each history is cut to its newest ``max_len`` events; unknown item ids map
    to the OOV index and unknown event types count as views.

    Args:
        histories: ``B`` histories, each in event-time order (oldest first).
        item_index: Item id -> vocabulary row (the encoder index is row + 2).
        max_len: Cap on events per history.

    Returns:
        The padded batch, newest event first, ``L = max(1, longest window)``.
    """
    tails = [h[-max_len:] if len(h) > max_len else h for h in histories]
    lengths = np.fromiter((len(t) for t in tails), dtype=np.int64, count=len(tails))
    b = len(tails)
    width = max(1, int(lengths.max()) if b else 1)
    items = np.zeros((b, width), dtype=np.int64)
    types = np.zeros((b, width), dtype=np.int64)
    age = np.zeros((b, width), dtype=np.float32)
    total = int(lengths.sum())
    if total:
        flat = [e for t in tails for e in reversed(t)]
        get = item_index.get
        shift = N_SPECIAL_ITEMS
        it = np.fromiter(
            (get(e[0], OOV_INDEX - shift) + shift for e in flat), dtype=np.int64, count=total
        )
        ty = np.fromiter((_type_id(e[1]) for e in flat), dtype=np.int64, count=total)
        tsf = np.fromiter((e[2] for e in flat), dtype=np.int64, count=total)
        rows = np.repeat(np.arange(b, dtype=np.int64), lengths)
        row_start = np.cumsum(lengths) - lengths
        cols = np.arange(total, dtype=np.int64) - np.repeat(row_start, lengths)
        newest = np.maximum.reduceat(tsf, row_start[lengths > 0])
        newest_full = np.zeros(b, dtype=np.int64)
        newest_full[lengths > 0] = newest
        items[rows, cols] = it
        types[rows, cols] = ty
        age[rows, cols] = np.maximum((newest_full[rows] - tsf) / 1000.0, 0.0)
    return WindowArrays(items=items, types=types, age_s=age, lengths=lengths)
