"""Incremental long-term encoding equals a full re-encode (tiny trained checkpoints)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import random_histories, synthetic_events, tiny_encoder_config, tiny_train_config

from interest_stream import models
from interest_stream.core.events import Interaction
from interest_stream.models import InterestModel
from interest_stream.models.incremental import LongState

#: Largest absolute difference allowed between incremental and full vectors (float32
#: model, sums kept in float64; the vectors' entries are O(1)).
TOL = 2e-4


def _trained(root: Path, **enc: object) -> InterestModel:
    cfg = tiny_train_config(
        encoder=tiny_encoder_config(**enc), revisit_gain=0.5 if enc.get("revisit_dim") else None
    )
    models.train(synthetic_events(seed=3), root, cfg, progress=False)
    return InterestModel.load(root, device="cpu")


@pytest.fixture(
    scope="module",
    params=[{}, {"long_half_life_hours": 0.2, "revisit_dim": 8, "trend": True}],
    ids=["plain", "decay-revisit-trend"],
)
def model(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> InterestModel:
    return _trained(tmp_path_factory.mktemp("inc") / "model", **request.param)


def _grow(model: InterestModel, histories: list[list[Interaction]]) -> np.ndarray:
    """Feed each history event by event; the vectors after the last one."""
    states: list[LongState | None] = [None] * len(histories)
    longest = max(len(h) for h in histories)
    out = np.zeros((len(histories), model.dim), dtype=np.float32)
    for n in range(1, longest + 1):
        rows = [i for i, h in enumerate(histories) if len(h) >= n]
        vecs, got = model.encode_long_states(
            [histories[i][:n] for i in rows], [states[i] for i in rows]
        )
        for j, i in enumerate(rows):
            states[i] = got[j]
            out[i] = vecs[j]
            assert got[j] is not None and got[j].n == n
    return out


def test_event_by_event_equals_full(model: InterestModel) -> None:
    items = [*model.item_ids[:40], "never-seen"]
    hs = random_histories(6, 30, items, seed=1, span_ms=3 * 3_600_000)
    hs += [
        h[:k] for h, k in zip(random_histories(4, 30, items, seed=2), (1, 2, 7, 19), strict=True)
    ]
    got = _grow(model, hs)
    want = model.encode_long(hs)
    assert np.abs(got - want).max() < TOL


def test_several_new_events_and_stale_states(model: InterestModel) -> None:
    hs = random_histories(5, 40, model.item_ids, seed=4, span_ms=86_400_000)
    _, states = model.encode_long_states([h[:10] for h in hs], [None] * 5)
    # three users gain 1, 5 and 30 events; one history changed under its state (a late
    # event inserted before the state's newest one); one state belongs to someone else
    late = [*hs[3][:5], Interaction(hs[3][5].item_id, "purchase", hs[3][5].ts - 1), *hs[3][5:12]]
    new_h = [hs[0][:11], hs[1][:15], hs[2], late, hs[4][:12]]
    states = [states[0], states[1], states[2], states[3], states[0]]
    vecs, got = model.encode_long_states(new_h, states)
    assert np.abs(vecs - model.encode_long(new_h)).max() < TOL
    assert [s.n for s in got if s is not None] == [len(h) for h in new_h]


def test_long_histories_are_encoded_in_full(model: InterestModel) -> None:
    cap = model.encoder.cfg.long_max_len
    hs = random_histories(2, cap + 5, model.item_ids, seed=5)
    vecs, got = model.encode_long_states(hs, [None, None])
    assert got == [None, None]
    np.testing.assert_allclose(vecs, model.encode_long(hs), atol=1e-6)


def test_multi_layer_long_path_falls_back(tmp_path: Path) -> None:
    m = _trained(tmp_path / "m", n_layers_long=2)
    hs = random_histories(3, 8, m.item_ids, seed=6)
    vecs, got = m.encode_long_states(hs, [None] * 3)
    assert got == [None] * 3
    np.testing.assert_allclose(vecs, m.encode_long(hs), atol=1e-6)
    assert torch.get_num_threads() >= 1
