"""The leave-one-out-by-time protocol of the field (SASRec, BERT4Rec, RecBole): which event is what.

Events are ordered by (time, original row order); users with fewer than ``min_events`` events are
left out; per user the last event is the **test** target, the second-last the **validation**
target and every earlier event is **train**. :func:`loo_frame` labels the events; every consumer
(training, ``evaluate --protocol loo``, the peer harness under ``bench/peers/``) reads the roles
from it, so all of them see the same split. :func:`loo_split` turns a frame into the
:class:`~interest_stream.models.split.EvalSplit` that validation (target role ``valid``) and
evaluation (``test``) rank on; :func:`loo_fingerprint` identifies a frame's split in a checkpoint.
Definition: docs/DESIGN.md ("Evaluation protocol").
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from interest_stream.core.events import Interaction
from interest_stream.models.config import TaskKind
from interest_stream.models.errors import DataError
from interest_stream.models.split import EvalSplit

__all__ = ["LOO_ROLES", "loo_fingerprint", "loo_frame", "loo_split"]

LOO_ROLES = ("train", "valid", "test")


def loo_frame(events: pd.DataFrame, min_events: int = 3) -> pd.DataFrame:
    """Label each event of users with ``>= min_events`` events as train, valid or test.

    Args:
        events: Canonical events (``user_id, item_id, event_type, ts``) in file row order.
        min_events: Users with fewer events are dropped (at least 3: one train, valid, test).

    Returns:
        The kept events sorted by (ts, original row order), index reset, with two new columns:
        ``seq`` (int64 global position in that order, a tie-free time) and ``role``
        (``"train"``, ``"valid"`` or ``"test"``).

    Raises:
        DataError: ``min_events < 3`` or no user has enough events.
    """
    if min_events < 3:
        raise DataError(f"min_events must be >= 3, got {min_events}")
    df = events.reset_index(drop=True)
    df = df.iloc[np.argsort(df["ts"].to_numpy(dtype=np.int64), kind="stable")]
    sizes = df.groupby("user_id", sort=False)["user_id"].transform("size")
    df = df[sizes.to_numpy() >= min_events].reset_index(drop=True)
    if df.empty:
        raise DataError(f"no user has {min_events} or more events")
    df["seq"] = np.arange(len(df), dtype=np.int64)
    from_end = df.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
    role = np.full(len(df), "train", dtype=object)
    role[from_end == 1] = "valid"
    role[from_end == 0] = "test"
    df["role"] = role
    return df


def loo_fingerprint(frame: pd.DataFrame, min_events: int = 3) -> dict[str, Any]:
    """What identifies a frame's split: sizes and a hash of the test rows.

    Args:
        frame: The output of :func:`loo_frame`.
        min_events: The ``min_events`` the frame was made with.

    Returns:
        ``min_events``, ``events`` (rows of the frame), ``users`` and ``test_sha256`` (SHA-256
        of the test rows' ``user_id, item_id, ts`` in frame order, tab-separated lines).
    """
    test = frame[frame["role"] == "test"]
    lines = (
        test["user_id"].astype(str) + "\t" + test["item_id"].astype(str) + "\t"
        + test["ts"].astype(np.int64).astype(str) + "\n"
    )  # fmt: skip
    digest = hashlib.sha256("".join(lines.tolist()).encode()).hexdigest()
    return {
        "min_events": int(min_events),
        "events": len(frame),
        "users": len(test),
        "test_sha256": digest,
    }


def loo_split(
    frame: pd.DataFrame, target: str = "test", candidates: Sequence[str] | None = None
) -> EvalSplit:
    """The split that ranks each user's ``target``-role event from the events before it.

    Args:
        frame: The output of :func:`loo_frame`.
        target: ``"test"`` (history = the train and valid events, the training period of the
            baselines = every non-test event) or ``"valid"`` (history = the train events,
            training period = the train events).
        candidates: The ranking universe (default: every item of the frame). A target item
            outside it gives its user no target; history items must be inside it.

    Returns:
        An :class:`EvalSplit` with one target per user (task ``all``; task ``new`` keeps it only
        when the item is not in the history), ``cutoff_ts`` = 1 + the newest event of the
        training period, ``train`` = the training period's events in frame order.

    Raises:
        DataError: ``target`` is not valid/test, or a history item is not a candidate.
    """
    if target not in ("valid", "test"):
        raise DataError(f"target must be 'valid' or 'test', got {target!r}")
    hist_roles = ("train", "valid") if target == "test" else ("train",)
    role = frame["role"].to_numpy()
    period = frame[np.isin(role, hist_roles)]
    tgt_rows = frame[role == target]
    cands = sorted(frame["item_id"].astype(str).unique()) if candidates is None else candidates
    cand_index = {str(item): i for i, item in enumerate(cands)}
    groups = {u: g for u, g in period.groupby("user_id", sort=False)}
    target_item = dict(zip(tgt_rows["user_id"], tgt_rows["item_id"].astype(str), strict=True))
    users = sorted(target_item)
    histories: list[list[Interaction]] = []
    hist_items: list[np.ndarray] = []
    hist_ts: list[np.ndarray] = []
    targets: dict[TaskKind, list[np.ndarray]] = {TaskKind.ALL: [], TaskKind.NEW: []}
    for u in users:
        g = groups[u]
        items = g["item_id"].astype(str).tolist()
        ts = g["ts"].to_numpy(dtype=np.int64)
        histories.append(
            [Interaction(i, t, int(s)) for i, t, s in zip(items, g["event_type"], ts, strict=True)]
        )
        try:
            cols = np.fromiter((cand_index[i] for i in items), dtype=np.int64, count=len(items))
        except KeyError as exc:
            raise DataError(f"history item {exc} of user {u} is not a candidate") from exc
        hist_items.append(cols)
        hist_ts.append(ts)
        col = cand_index.get(target_item[u])
        tgt = np.zeros(0, np.int64) if col is None else np.array([col], dtype=np.int64)
        targets[TaskKind.ALL].append(tgt)
        targets[TaskKind.NEW].append(np.setdiff1d(tgt, cols))
    cutoff = int(period["ts"].max()) + 1
    n_unknown = sum(len(t) == 0 for t in targets[TaskKind.ALL])
    stats = {
        "protocol": "loo", "target_role": target, "cutoff_ts": cutoff,
        "events_before": len(period), "test_users": len(users), "candidates": len(cands),
        "targets_on_unknown_items": int(n_unknown),
        "users_with_targets_all": len(users) - int(n_unknown),
        "users_with_targets_new": int(sum(len(t) > 0 for t in targets[TaskKind.NEW])),
    }  # fmt: skip
    return EvalSplit(
        cutoff_ts=cutoff, train=period, candidates=[str(c) for c in cands],
        cand_index=cand_index, users=[str(u) for u in users], histories=histories,
        hist_items=hist_items, hist_ts=hist_ts, targets=targets, stats=stats,
    )  # fmt: skip
