"""Training examples built from an event table (numpy only).

Events sit in one flat array grouped by user, time-sorted within each. **Next-item examples**:
the short window before event ``p`` predicts its item and type. **Next-days points**: at session
starts (plus a resampled share of other events) the long history and short window predict the
set of items in the following ``long_horizon_hours``. Details: docs/DESIGN.md ("Training
objective").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from interest_stream.models.config import N_SPECIAL_ITEMS, OOV_INDEX, type_index
from interest_stream.models.features import WindowArrays, arrays_from_flat, short_window_starts

__all__ = [
    "ChunkPlan",
    "EventArrays",
    "LongTargets",
    "build_event_arrays",
    "chronological",
    "chunk_plan",
    "long_targets",
]


@dataclass
class EventArrays:
    """Events of many users in one flat, user-grouped, time-sorted layout.

    Attributes:
        items: int64 ``[N]`` encoder item index (vocabulary row + 2; 1 = OOV).
        types: int64 ``[N]`` event-type ids.
        ts: int64 ``[N]`` event times (ms).
        seg_start: int64 ``[N]`` first index of each event's user segment.
        seg_end: int64 ``[N]`` end (exclusive) of each event's user segment.
        short_start: int64 ``[N]`` start of the short window ending before each event.
        long_start: int64 ``[N]`` start of the long history ending before each event.
        session_start: bool ``[N]``: the event starts a session (not a user's first).
    """

    items: np.ndarray
    types: np.ndarray
    ts: np.ndarray
    seg_start: np.ndarray
    seg_end: np.ndarray
    short_start: np.ndarray
    long_start: np.ndarray
    session_start: np.ndarray

    def __len__(self) -> int:
        """Number of events ``N``."""
        return int(self.items.shape[0])

    def short_windows(self, ends: np.ndarray, max_len: int) -> WindowArrays:
        """Short windows ending (exclusive) at ``ends`` (``[B]``), padded."""
        return arrays_from_flat(
            self.items, self.types, self.ts, self.short_start[ends], ends, max_len
        )

    def long_windows(self, ends: np.ndarray, max_len: int) -> WindowArrays:
        """Long histories ending (exclusive) at ``ends`` (``[B]``), padded."""
        return arrays_from_flat(
            self.items, self.types, self.ts, self.long_start[ends], ends, max_len
        )


def build_event_arrays(
    events: pd.DataFrame,
    item_index: Mapping[str, int],
    short_window_events: int,
    short_window_minutes: float,
    long_history_events: int,
    session_gap_minutes: float,
) -> EventArrays:
    """Lay out events for training.

    Args:
        events: Canonical events (any order; ties keep their order).
        item_index: Item id -> vocabulary row; other items become OOV.
        short_window_events: Short window cap.
        short_window_minutes: Short window span.
        long_history_events: Long history cap.
        session_gap_minutes: Gap that starts a new session.

    Returns:
        The flat arrays.
    """
    df = events.sort_values(["user_id", "ts"], kind="stable")
    users = df["user_id"].to_numpy()
    n = len(df)
    items = np.fromiter(
        (
            item_index.get(i, OOV_INDEX - N_SPECIAL_ITEMS) + N_SPECIAL_ITEMS
            for i in df["item_id"].astype(str)
        ),
        dtype=np.int64,
        count=n,
    )
    tmap = {t: type_index(t) for t in df["event_type"].unique()}
    types = df["event_type"].map(tmap).to_numpy(dtype=np.int64)
    ts = df["ts"].to_numpy(dtype=np.int64)
    new_user = np.ones(n, dtype=bool)
    if n > 1:
        new_user[1:] = users[1:] != users[:-1]
    starts = np.flatnonzero(new_user)
    ends = np.append(starts[1:], n)
    lengths = ends - starts
    seg_start = np.repeat(starts, lengths).astype(np.int64)
    seg_end = np.repeat(ends, lengths).astype(np.int64)
    pos = np.arange(n, dtype=np.int64)
    short_start = short_window_starts(ts, pos, seg_start, short_window_events, short_window_minutes)
    long_start = np.maximum(seg_start, pos - long_history_events)
    gap = np.zeros(n, dtype=np.int64)
    gap[1:] = ts[1:] - ts[:-1]
    session_start = (~new_user) & (gap > int(session_gap_minutes * 60_000))
    return EventArrays(
        items=items,
        types=types,
        ts=ts,
        seg_start=seg_start,
        seg_end=seg_end,
        short_start=short_start,
        long_start=long_start,
        session_start=session_start,
    )


@dataclass
class LongTargets:
    """Target sets of next-days points in CSR form.

    Attributes:
        row: int64 ``[T]`` point (row of the batch) of each target.
        item: int64 ``[T]`` encoder item index of each target.
        weight: float32 ``[T]`` loss weight (the largest type weight of the item's events).
    """

    row: np.ndarray
    item: np.ndarray
    weight: np.ndarray


def long_targets(
    arr: EventArrays,
    points: np.ndarray,
    horizon_ms: int,
    type_weights: np.ndarray,
    max_targets: int,
    rng: np.random.Generator,
) -> LongTargets:
    """Distinct items of each point's next ``horizon_ms`` (anchored at the event before it).

    Args:
        arr: The event arrays.
        points: int64 ``[B]`` indices of the first event after each point's history
            (never a user's first event).
        horizon_ms: Horizon after the newest history event.
        type_weights: float ``[N_TYPE_IDS]`` weight per event-type id.
        max_targets: Keep a random subset of at most this many targets per point.
        rng: Random generator for the subset.

    Returns:
        The targets; OOV items are dropped.
    """
    anchor_ts = arr.ts[points] + horizon_ms
    seg_end = arr.seg_end[points]
    # end of the horizon: first index >= point with ts > anchor_ts (binary search in segment)
    lo = points.copy()
    hi = seg_end.copy()
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        midc = np.minimum(mid, len(arr) - 1)
        right = active & (arr.ts[midc] <= anchor_ts)
        lo = np.where(right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)
    ends = lo
    counts = ends - points
    total = int(counts.sum())
    rows = np.repeat(np.arange(len(points), dtype=np.int64), counts)
    offs = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    idx = np.repeat(points, counts) + offs
    items = arr.items[idx]
    weights = type_weights[arr.types[idx]].astype(np.float32)
    keep = items != OOV_INDEX
    rows, items, weights = rows[keep], items[keep], weights[keep]
    # dedupe (row, item) keeping the largest weight
    order = np.lexsort((-weights, items, rows))
    rows, items, weights = rows[order], items[order], weights[order]
    first = np.ones(len(rows), dtype=bool)
    if len(rows) > 1:
        first[1:] = (rows[1:] != rows[:-1]) | (items[1:] != items[:-1])
    rows, items, weights = rows[first], items[first], weights[first]
    if len(rows):
        # random subset of at most max_targets per row
        shuffle = rng.permutation(len(rows))
        rows_s = rows[shuffle]
        order = np.argsort(rows_s, kind="stable")
        perm = shuffle[order]
        rows, items, weights = rows[perm], items[perm], weights[perm]
        starts = np.searchsorted(rows, rows, side="left")
        rank = np.arange(len(rows)) - starts
        keep = rank < max_targets
        rows, items, weights = rows[keep], items[keep], weights[keep]
    return LongTargets(row=rows, item=items, weight=weights)


@dataclass
class ChunkPlan:
    """Chronological chunks of at most ``long_len`` events covering every user.

    A user with more than ``long_len`` events gets chunks starting every
    ``long_len // 2`` events. A next-days point whose history ends at event
    ``q`` is read from the earliest chunk containing ``q``, so its long history
    in training has between ``long_len // 2 + 1`` and ``long_len`` events (all of
    them when the user has fewer) — at inference it is the latest ``long_len``.

    Attributes:
        start: int64 ``[K]`` first event index of each chunk.
        end: int64 ``[K]`` end (exclusive) of each chunk.
    """

    start: np.ndarray
    end: np.ndarray

    def locate(
        self, arr: EventArrays, points: np.ndarray, long_len: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Chunk id and position (within the chunk) of each point's last history event.

        Args:
            arr: The event arrays the plan was made for.
            points: int64 ``[P]`` first event after each history (never a user's first).
            long_len: The chunk length used to build the plan.

        Returns:
            ``(chunk [P], position [P])``.
        """
        stride = max(1, long_len // 2)
        q = points - 1
        rel = q - arr.seg_start[q]
        k = np.maximum(0, -((-(rel - (long_len - 1))) // stride))  # ceil division
        start = arr.seg_start[q] + k * stride
        chunk = np.searchsorted(self.start, start)
        return chunk.astype(np.int64), (q - start).astype(np.int64)


def chunk_plan(arr: EventArrays, long_len: int) -> ChunkPlan:
    """Cut every user's events into overlapping chronological chunks (see :class:`ChunkPlan`)."""
    stride = max(1, long_len // 2)
    seg_starts = np.unique(arr.seg_start)
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    for a in seg_starts:
        b = int(arr.seg_end[a])
        n = b - int(a)
        k = 1 if n <= long_len else 1 + -(-(n - long_len) // stride)
        s = int(a) + stride * np.arange(k, dtype=np.int64)
        starts.append(s)
        ends.append(np.minimum(s + long_len, b))
    return ChunkPlan(start=np.concatenate(starts), end=np.concatenate(ends))


def chronological(
    arr: EventArrays, starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Oldest-first padded arrays of chunks ``[starts[b], ends[b])``.

    Returns:
        ``(items [B, L], types [B, L], lengths [B], age_s [B, L])``: int64 ids with
        padding (0) at the end, and float32 seconds before each chunk's last event.
    """
    lengths = (ends - starts).astype(np.int64)
    width = max(1, int(lengths.max()) if len(lengths) else 1)
    k = np.arange(width, dtype=np.int64)[None, :]
    valid = k < lengths[:, None]
    idx = np.where(valid, starts[:, None] + k, 0)
    last = arr.ts[np.maximum(ends - 1, 0)]
    age = np.where(valid, (last[:, None] - arr.ts[idx]) / 1000.0, 0.0)
    return (
        np.where(valid, arr.items[idx], 0).astype(np.int64),
        np.where(valid, arr.types[idx], 0).astype(np.int64),
        lengths,
        np.maximum(age, 0.0).astype(np.float32),
    )
