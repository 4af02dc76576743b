"""The synthetic scaler keeps the real file's per-user statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import DATA

from bench.synth import synthetic_users
from interest_stream.core.errors import ConfigError
from interest_stream.core.eventfile import read_events


@pytest.fixture(scope="module")
def taobao() -> pd.DataFrame:
    return read_events(DATA / "taobao-userbehavior" / "user_histories.csv.gz")


def _collect(it: object) -> pd.DataFrame:
    return pd.concat(list(it), ignore_index=True)  # type: ignore[call-overload]


def test_clones_keep_per_user_statistics(taobao: pd.DataFrame) -> None:
    plan, chunks = synthetic_users(taobao, 20_000, seed=3, chunk_users=3_000)
    syn = _collect(chunks)
    assert plan.users == 20_000 and syn["user_id"].nunique() == 20_000
    assert len(syn) == plan.events
    real_len = taobao.groupby("user_id").size()
    syn_len = syn.groupby("user_id").size()
    # history lengths: same distribution (means and quartiles within a few percent)
    assert abs(syn_len.mean() / real_len.mean() - 1) < 0.05
    for q in (0.25, 0.5, 0.75):
        assert abs(syn_len.quantile(q) - real_len.quantile(q)) <= 0.1 * real_len.quantile(q) + 1
    # event-type mix within one percentage point
    real_mix = taobao["event_type"].value_counts(normalize=True)
    syn_mix = syn["event_type"].value_counts(normalize=True)
    for t, share in real_mix.items():
        assert abs(syn_mix.get(t, 0.0) - share) < 0.01
    # only real items, and each chunk is in event-time order
    assert set(syn["item_id"].unique()) <= set(taobao["item_id"].unique())


def test_chunks_are_time_ordered_and_deterministic(taobao: pd.DataFrame) -> None:
    _, a = synthetic_users(taobao, 2_500, seed=7, chunk_users=1_000)
    _, b = synthetic_users(taobao, 2_500, seed=7, chunk_users=1_000)
    chunks_a = list(a)
    assert [len(c["user_id"].unique()) for c in chunks_a] == [1_000, 1_000, 500]
    for c in chunks_a:
        assert bool(np.all(np.diff(c["ts"].to_numpy()) >= 0))
    pd.testing.assert_frame_equal(_collect(chunks_a), _collect(b))
    _, c = synthetic_users(taobao, 2_500, seed=8, chunk_users=1_000)
    assert not _collect(c).equals(_collect(chunks_a))


def test_clone_is_a_shifted_copy_of_a_real_history(taobao: pd.DataFrame) -> None:
    _, it = synthetic_users(taobao, 50, seed=1, shift_hours=2.0)
    syn = _collect(it)
    one = syn[syn["user_id"] == "syn0"].sort_values("ts", kind="stable")
    matches = 0
    for _, real in taobao.groupby("user_id"):
        real = real.sort_values("ts", kind="stable")
        if len(real) != len(one) or list(real["item_id"]) != list(one["item_id"]):
            continue
        shift = one["ts"].to_numpy() - real["ts"].to_numpy()
        assert np.all(shift == shift[0]) and abs(shift[0]) <= 2 * 3_600_000
        matches += 1
    assert matches >= 1


def test_latest_events_cap(taobao: pd.DataFrame) -> None:
    plan, it = synthetic_users(taobao, 5_000, seed=2, max_events_per_user=4)
    syn = _collect(it)
    sizes = syn.groupby("user_id").size()
    assert sizes.max() <= 4 and len(syn) == plan.events
    assert plan.mean_events_per_user <= 4


@pytest.mark.parametrize(
    "kwargs",
    [{"n_users": 0}, {"n_users": 5, "chunk_users": 0}, {"n_users": 5, "max_events_per_user": 0}],
)
def test_bad_parameters(taobao: pd.DataFrame, kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        synthetic_users(taobao.head(100), **kwargs)
