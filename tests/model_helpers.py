"""Small, seeded inputs for tests and examples (tiny configs, data slices, synthetic events)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from interest_stream.core.events import EVENT_TYPES, Interaction
from interest_stream.models.config import EncoderConfig, TrainConfig

__all__ = [
    "random_histories",
    "synthetic_events",
    "taobao_slice",
    "tiny_encoder_config",
    "tiny_train_config",
]


def tiny_encoder_config(**overrides: Any) -> EncoderConfig:
    """A very small architecture (dim 16, one layer per path) that trains in seconds."""
    base: dict[str, Any] = {
        "dim": 16,
        "d_model": 16,
        "n_heads": 2,
        "n_layers_short": 1,
        "n_layers_long": 1,
        "ffn_mult": 2,
        "short_max_len": 20,
        "long_max_len": 64,
    }
    base.update(overrides)
    return EncoderConfig(**base)


def tiny_train_config(**overrides: Any) -> TrainConfig:
    """A training config for tests: tiny model, two epochs, no validation, one thread,
    no re-ranker."""
    base: dict[str, Any] = {
        "encoder": tiny_encoder_config(),
        "epochs": 2,
        "batch_size": 256,
        "lr": 5e-3,
        "val_fraction": 0.0,
        "refit": False,
        "threads": 1,
        "device": "cpu",
        "long_within_session_rate": 0.05,
        "rerank": False,  # the re-ranker's own tests turn it on (tests/unit/test_rerank.py)
    }
    base.update(overrides)
    return TrainConfig(**base)


def taobao_slice(n_users: int = 120, min_events: int = 20) -> pd.DataFrame:
    """The first ``n_users`` users (by id) of the shared Taobao ``user_histories``.

    Only users with at least ``min_events`` events are kept; the 35 outlying
    early events of the file are dropped.
    """
    from interest_stream.core.eventfile import read_events, shared_data_dir

    df = read_events(shared_data_dir() / "taobao-userbehavior" / "user_histories.csv.gz")
    df = df[(df["ts"] >= 1_511_539_200_000) & (df["ts"] < 1_512_316_800_000)]
    counts = df["user_id"].value_counts()
    users = sorted(counts[counts >= min_events].index)[:n_users]
    return df[df["user_id"].isin(users)].reset_index(drop=True)


def synthetic_events(
    n_users: int = 60,
    n_items: int = 300,
    events_per_user: int = 40,
    n_categories: int = 6,
    seed: int = 0,
) -> pd.DataFrame:
    """Canonical events where each user mostly browses one or two categories.

    Returns:
        ``user_id, item_id, event_type, ts, category`` sorted by time.
    """
    rng = np.random.default_rng(seed)
    item_cat = rng.integers(0, n_categories, size=n_items)
    by_cat = [np.flatnonzero(item_cat == c) for c in range(n_categories)]
    rows = []
    t0 = 1_512_000_000_000
    for u in range(n_users):
        favs = rng.choice(n_categories, size=2, replace=False)
        ts = t0 + np.sort(rng.integers(0, 7 * 86_400_000, size=events_per_user))
        for t in ts:
            cat = favs[0] if rng.random() < 0.7 else favs[1]
            item = int(rng.choice(by_cat[cat])) if len(by_cat[cat]) else int(rng.integers(n_items))
            etype = EVENT_TYPES[int(rng.choice(5, p=[0.8, 0.05, 0.05, 0.05, 0.05]))]
            rows.append((f"u{u}", f"i{item}", etype, int(t), f"c{item_cat[item]}"))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "ts", "category"])
    return df.sort_values("ts", kind="stable").reset_index(drop=True)


def random_histories(
    n: int, length: int, item_ids: list[str], seed: int = 0, span_ms: int = 20 * 60_000
) -> list[list[Interaction]]:
    """``n`` random histories of ``length`` events over ``item_ids`` (oldest first)."""
    rng = np.random.default_rng(seed)
    out = []
    t0 = 1_512_000_000_000
    for _ in range(n):
        items = rng.integers(0, len(item_ids), size=length)
        types = rng.integers(0, len(EVENT_TYPES), size=length)
        ts = np.sort(rng.integers(t0, t0 + span_ms, size=length))
        out.append(
            [
                Interaction(item_ids[i], EVENT_TYPES[k], int(s))
                for i, k, s in zip(items, types, ts, strict=True)
            ]
        )
    return out
