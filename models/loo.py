"""The leave-one-out-by-time protocol of the field (SASRec, BERT4Rec, RecBole): which event is which.

Events are ordered by (time, original row order); users with fewer than ``min_events`` events are left
out; per user the last event is the **test** target, the second-last the **validation** target and
every earlier event is **train**. :func:`loo_frame` labels the events; every consumer (training,
``evaluate --protocol loo``, the peer harness under ``bench/peers/``) reads the roles from it, so all of
them see the same split. Definition: docs/DESIGN.md ("Evaluation protocol").
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from interest_stream.models.errors import DataError

__all__ = ["LOO_ROLES", "loo_frame"]

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
