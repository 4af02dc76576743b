"""Synthetic traffic at scale: many users with the per-user statistics of a real file.

The benchmarks need more users than the shared slices hold (issue #5 asks for
1,000,000). :func:`synthetic_users` scales a canonical event file by *cloning
real users*: synthetic user ``k`` is a copy of a real user's history drawn at
random (with replacement), under a new id, with its timeline shifted by a random
offset. So the distribution of history lengths, event-type mix, item
popularity and time gaps per user is the real file's, only with more users:

* items stay the real item ids (the model's catalogue knows them);
* event types and their order within a user are the template's;
* the shift (``shift_hours``, uniform in ``[-h, +h]``) decorrelates the clones
  of one template in time; gaps inside a history are unchanged;
* ``max_events_per_user`` optionally keeps each clone's *latest* events only
  (the memory benchmark uses it to put a million users into the state without
  replaying a hundred million events; the README of the benchmark says so).

Chunks come out user-block by user-block, each sorted by event time, so a
million users never have to be held in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from interest_stream.core.errors import ConfigError

__all__ = ["SyntheticPlan", "synthetic_users", "templates"]

_CANONICAL = ("user_id", "item_id", "event_type", "ts")


@dataclass(frozen=True)
class SyntheticPlan:
    """What :func:`synthetic_users` will produce (for logs and benchmark reports)."""

    users: int
    events: int
    templates: int
    mean_events_per_user: float


def templates(
    events: pd.DataFrame, max_events_per_user: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-template (real user) slices: (starts, lengths, items, types, ts) of the kept events.

    Each user's events are sorted by time; ``max_events_per_user`` keeps the latest ones.
    """
    missing = [c for c in _CANONICAL if c not in events.columns]
    if missing:
        raise ConfigError(f"synthetic_users needs canonical columns, missing {missing}")
    df = events.sort_values(["user_id", "ts"], kind="stable")
    users = df["user_id"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    starts, ends = bounds[:-1], bounds[1:]
    if max_events_per_user is not None:
        starts = np.maximum(starts, ends - max_events_per_user)
    keep = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
    lengths = ends - starts
    new_starts = np.r_[0, np.cumsum(lengths)[:-1]]
    items = df["item_id"].to_numpy()[keep]
    types = df["event_type"].to_numpy()[keep]
    ts = df["ts"].to_numpy(dtype=np.int64)[keep]
    return new_starts, lengths, items, types, ts


def synthetic_users(
    events: pd.DataFrame,
    n_users: int,
    *,
    seed: int = 0,
    chunk_users: int = 50_000,
    shift_hours: float = 12.0,
    max_events_per_user: int | None = None,
    id_prefix: str = "syn",
) -> tuple[SyntheticPlan, Iterator[pd.DataFrame]]:
    """Scale ``events`` to ``n_users`` cloned users (see the module docstring).

    Args:
        events: Canonical events (``user_id, item_id, event_type, ts``).
        n_users: Synthetic users to produce.
        seed: Seed of the template draw and the time shifts (same seed, same stream).
        chunk_users: Users per yielded DataFrame.
        shift_hours: Each clone's timeline moves by a uniform offset in ``[-h, +h]``.
        max_events_per_user: Keep only each clone's latest events (``None`` = all).
        id_prefix: Synthetic user ids are ``f"{id_prefix}{k}"``.

    Returns:
        The plan (users, events, templates) and an iterator of canonical DataFrames.

    Raises:
        ConfigError: Bad parameters or a file without the canonical columns.
    """
    if n_users < 1:
        raise ConfigError(f"n_users must be >= 1, got {n_users}")
    if chunk_users < 1:
        raise ConfigError(f"chunk_users must be >= 1, got {chunk_users}")
    if max_events_per_user is not None and max_events_per_user < 1:
        raise ConfigError(f"max_events_per_user must be >= 1, got {max_events_per_user}")
    if len(events) == 0:
        raise ConfigError("synthetic_users needs at least one event to clone")
    starts, lengths, items, types, ts = templates(events, max_events_per_user)
    rng = np.random.default_rng(seed)
    choice = rng.integers(0, len(starts), size=n_users)
    shift_ms = int(shift_hours * 3_600_000)
    shifts = rng.integers(-shift_ms, shift_ms + 1, size=n_users, dtype=np.int64)
    total = int(lengths[choice].sum())
    plan = SyntheticPlan(
        users=n_users,
        events=total,
        templates=len(starts),
        mean_events_per_user=round(total / n_users, 2),
    )

    def chunks() -> Iterator[pd.DataFrame]:
        for lo in range(0, n_users, chunk_users):
            hi = min(n_users, lo + chunk_users)
            tpl = choice[lo:hi]
            ln = lengths[tpl]
            # flat index of every event of every clone in this chunk
            first = np.repeat(starts[tpl], ln)
            within = np.arange(int(ln.sum())) - np.repeat(np.cumsum(ln) - ln, ln)
            idx = first + within
            user_no = np.repeat(np.arange(lo, hi), ln)
            frame = pd.DataFrame(
                {
                    "user_id": np.char.add(id_prefix, user_no.astype(str)).astype(object),
                    "item_id": items[idx],
                    "event_type": types[idx],
                    "ts": ts[idx] + np.repeat(shifts[lo:hi], ln),
                }
            )
            yield frame.sort_values("ts", kind="stable").reset_index(drop=True)

    return plan, chunks()
