"""The temporal evaluation protocol, shared by validation (training) and evaluation.

One global cutoff ``c``: the training period is every event before ``c`` (its items are the
candidates, fully ranked); test users have events on both sides; targets are their distinct
candidate items in ``[c, c + horizon)`` — all of them (task ``all``) or only items not in the
history (task ``new``, history masked for every method). Definition and edge cases:
docs/DESIGN.md ("Evaluation protocol").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from interest_stream.core.events import Interaction
from interest_stream.models.config import TaskKind
from interest_stream.models.errors import DataError

__all__ = ["EvalSplit", "cutoff_time", "make_split"]


def cutoff_time(ts: np.ndarray | pd.Series, quantile: float) -> int:
    """The cutoff (ms) at a quantile of event time; events with ``ts < cutoff`` are before it.

    Args:
        ts: Event times in ms.
        quantile: In ``(0, 1]``; ``1.0`` puts every event before the cutoff.

    Returns:
        The cutoff in epoch ms.
    """
    arr = np.asarray(ts, dtype=np.int64)
    if arr.size == 0:
        raise DataError("no events")
    if quantile >= 1.0:
        return int(arr.max()) + 1
    return int(np.quantile(arr, quantile))


@dataclass
class EvalSplit:
    """The data of one temporal split.

    Attributes:
        cutoff_ts: The cutoff (ms); history is ``ts < cutoff_ts``.
        train: Every event before the cutoff (all users), sorted by time.
        candidates: Items known at the cutoff, the ranking universe (sorted ids).
        cand_index: Item id -> column of ``candidates``.
        users: Test users.
        histories: Per test user, all their events before the cutoff (oldest first).
        hist_items: Per test user, int64 candidate columns of the history (oldest first).
        hist_ts: Per test user, int64 times (ms) of the history events.
        targets: Per task, per test user, int64 candidate columns of the targets.
        stats: Counts describing the split.
    """

    cutoff_ts: int
    train: pd.DataFrame
    candidates: list[str]
    cand_index: dict[str, int]
    users: list[str]
    histories: list[list[Interaction]]
    hist_items: list[np.ndarray]
    hist_ts: list[np.ndarray]
    targets: dict[TaskKind, list[np.ndarray]]
    stats: dict[str, Any] = field(default_factory=dict)

    def users_with_targets(self, task: TaskKind) -> np.ndarray:
        """int64 indices of the test users that have at least one target for ``task``."""
        return np.flatnonzero([len(t) > 0 for t in self.targets[task]]).astype(np.int64)


def make_split(
    events: pd.DataFrame, cutoff_ts: int, horizon_ms: int | None = None, end_ts: int | None = None
) -> EvalSplit:
    """Split events at ``cutoff_ts`` following the protocol of this module.

    Args:
        events: Canonical events (``user_id, item_id, event_type, ts``), any order.
        cutoff_ts: The cutoff in ms.
        horizon_ms: Targets are events in ``[cutoff, cutoff + horizon)``; ``None`` = all later.
        end_ts: Ignore events at or after this time (e.g. the training cutoff when
            validating inside the training period).

    Returns:
        The split.

    Raises:
        DataError: No events before the cutoff.
    """
    df = events
    if end_ts is not None:
        df = df[df["ts"] < end_ts]
    df = df.sort_values("ts", kind="stable")
    before = df[df["ts"] < cutoff_ts]
    after = df[df["ts"] >= cutoff_ts]
    if horizon_ms is not None:
        after = after[after["ts"] < cutoff_ts + horizon_ms]
    if before.empty:
        raise DataError("no events before the cutoff")
    candidates = sorted(before["item_id"].astype(str).unique().tolist())
    cand_index = {item: i for i, item in enumerate(candidates)}
    test_users = sorted(set(before["user_id"].unique()) & set(after["user_id"].unique()))

    hist_df = before[before["user_id"].isin(test_users)]
    hist_groups = {u: g for u, g in hist_df.groupby("user_id", sort=False)}
    after_t = after[after["user_id"].isin(test_users)]
    known = after_t["item_id"].isin(cand_index)
    after_groups = {u: g for u, g in after_t[known].groupby("user_id", sort=False)}

    histories: list[list[Interaction]] = []
    hist_items: list[np.ndarray] = []
    hist_ts: list[np.ndarray] = []
    targets: dict[TaskKind, list[np.ndarray]] = {TaskKind.ALL: [], TaskKind.NEW: []}
    for u in test_users:
        g = hist_groups[u]
        items = g["item_id"].astype(str).tolist()
        types = g["event_type"].astype(str).tolist()
        ts = g["ts"].to_numpy(dtype=np.int64)
        histories.append(
            [Interaction(i, t, int(s)) for i, t, s in zip(items, types, ts, strict=True)]
        )
        cols = np.fromiter((cand_index[i] for i in items), dtype=np.int64, count=len(items))
        hist_items.append(cols)
        hist_ts.append(ts)
        ag = after_groups.get(u)
        if ag is None:
            tgt = np.zeros(0, dtype=np.int64)
        else:
            tgt = np.unique(
                np.fromiter((cand_index[i] for i in ag["item_id"].astype(str)), dtype=np.int64)
            )
        targets[TaskKind.ALL].append(tgt)
        targets[TaskKind.NEW].append(np.setdiff1d(tgt, cols, assume_unique=False))

    stats = _stats(cutoff_ts, before, after, test_users, candidates, known, targets)
    return EvalSplit(
        cutoff_ts=int(cutoff_ts),
        train=before,
        candidates=candidates,
        cand_index=cand_index,
        users=test_users,
        histories=histories,
        hist_items=hist_items,
        hist_ts=hist_ts,
        targets=targets,
        stats=stats,
    )


def _stats(
    cutoff_ts: int, before: pd.DataFrame, after: pd.DataFrame, test_users: list[Any],
    candidates: list[str], known: pd.Series, targets: dict[TaskKind, list[np.ndarray]],
) -> dict[str, Any]:  # fmt: skip
    """The split's statistics (``EvalSplit.stats``)."""
    return {
        "cutoff_ts": int(cutoff_ts),
        "events_before": len(before),
        "events_after": len(after),
        "users_before": int(before["user_id"].nunique()),
        "test_users": len(test_users),
        "candidates": len(candidates),
        "test_events_on_known_items": int(known.sum()),
        "test_events_on_unknown_items": int((~known).sum()),
        "users_with_targets_all": int(sum(len(t) > 0 for t in targets[TaskKind.ALL])),
        "users_with_targets_new": int(sum(len(t) > 0 for t in targets[TaskKind.NEW])),
        "mean_targets_all": float(
            np.mean([len(t) for t in targets[TaskKind.ALL] if len(t)] or [0])
        ),
        "mean_targets_new": float(
            np.mean([len(t) for t in targets[TaskKind.NEW] if len(t)] or [0])
        ),
    }
