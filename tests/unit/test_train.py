"""Training on a slice of real Taobao data: speed, determinism, learning, split hygiene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from model_helpers import random_histories, taobao_slice, tiny_encoder_config, tiny_train_config

from interest_stream import models
from interest_stream.core.events import Interaction
from interest_stream.models import DataError, InterestModel, ModelError, TrainConfig
from interest_stream.models.checkpoint import load_item_vectors
from interest_stream.models.config import N_SPECIAL_ITEMS
from interest_stream.models.encoder import InterestEncoder
from interest_stream.models.model import save_checkpoint


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    """40 real Taobao users with at least 40 events each (about 5,000 events)."""
    return taobao_slice(n_users=40, min_events=40)


@pytest.fixture(scope="module")
def trained(events: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tb") / "model"
    models.train(events, out, tiny_train_config(epochs=3), progress=False)
    return out


def test_tiny_model_learns_and_reports_its_training_time(trained: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["train_seconds"] > 0  # how long is a benchmark's question, not a test's
    hist = metrics["phases"]["fit"]["history"]
    assert len(hist) == 3
    assert hist[-1]["train_next"] < hist[0]["train_next"]  # it learns
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["split"]["train_max_ts"] < cfg["split"]["train_cutoff_ts"]


def test_determinism_under_a_seed(events: pd.DataFrame, trained: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    models.train(events, again, tiny_train_config(epochs=3), progress=False)
    _, v1, _ = load_item_vectors(trained)
    _, v2, _ = load_item_vectors(again)
    np.testing.assert_array_equal(v1, v2)
    other = tmp_path / "other"
    models.train(events, other, tiny_train_config(epochs=3, seed=7), progress=False)
    _, v3, _ = load_item_vectors(other)
    assert not np.allclose(v1, v3)


def test_trained_beats_untrained_on_held_out_future(
    events: pd.DataFrame, trained: Path, tmp_path: Path
) -> None:
    """Same vocabulary and architecture; only the weights differ."""
    cfg = json.loads((trained / "config.json").read_text())
    ids, _, _ = load_item_vectors(trained)
    enc = InterestEncoder(
        models.EncoderConfig(**cfg["encoder"]), n_items=len(ids), n_categories=cfg["n_categories"]
    )
    trained_model = InterestModel.load(trained, device="cpu")
    enc.get_buffer("item_cat").copy_(trained_model.encoder.get_buffer("item_cat"))
    untrained = tmp_path / "untrained"
    extra = {k: cfg[k] for k in ("train", "seed", "split")}
    save_checkpoint(untrained, enc, ids, extra, metrics={})
    kw = {"n_bootstrap": 50, "tasks": ("all",), "device": "cpu"}
    good = models.evaluate(events, trained, **kw)["tasks"]["all"]["methods"]["blend"]
    bad = models.evaluate(events, untrained, **kw)["tasks"]["all"]["methods"]["blend"]
    assert good["ndcg@10"]["mean"] > bad["ndcg@10"]["mean"] + 0.02
    assert good["recall@20"]["mean"] > bad["recall@20"]["mean"]


def test_evaluation_refuses_a_leaking_model(events: pd.DataFrame, trained: Path) -> None:
    with pytest.raises(ModelError, match="leak"):
        models.evaluate(events, trained, cutoff_quantile=0.5, n_bootstrap=10)


def test_training_uses_only_the_past(events: pd.DataFrame, trained: Path) -> None:
    cfg = json.loads((trained / "config.json").read_text())
    cutoff = cfg["split"]["train_cutoff_ts"]
    assert cutoff == int(np.quantile(events["ts"].to_numpy(), 0.8))
    ids, _, _ = load_item_vectors(trained)
    assert set(ids) == set(events.loc[events["ts"] < cutoff, "item_id"])


def test_validation_and_refit(events: pd.DataFrame, tmp_path: Path) -> None:
    cfg = tiny_train_config(epochs=3, val_fraction=0.15, refit=True, patience=1, min_epochs=1)
    res = models.train(events, tmp_path / "m", cfg, progress=False)
    assert 1 <= res.best_epoch <= 3
    assert res.val_ndcg10 is not None and 0.0 <= res.val_ndcg10 <= 1.0
    phases = res.metrics["phases"]
    assert "val" in phases["fit"]["history"][0]
    assert len(phases["refit"]["history"]) == res.best_epoch
    assert "repeat_last" in phases["fit"]["val_baselines_ndcg@10"]


def test_sampled_softmax_and_long_decay_train(events: pd.DataFrame, tmp_path: Path) -> None:
    enc = tiny_encoder_config(long_half_life_hours=72.0)
    cfg = tiny_train_config(epochs=1, loss="sampled", n_negatives=64, encoder=enc)
    models.train(events, tmp_path / "s", cfg, progress=False)
    model = InterestModel.load(tmp_path / "s", device="cpu")
    hs = random_histories(4, 30, model.item_ids, span_ms=5 * 86_400_000)
    batched = model.encode_long(hs)
    single = np.concatenate([model.encode_long([h]) for h in hs])
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)


def test_bad_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="columns"):
        models.train(pd.DataFrame({"user_id": ["u"]}), tmp_path / "x", TrainConfig())
    tiny = pd.DataFrame(
        {
            "user_id": ["u"] * 5,
            "item_id": list("abcde"),
            "event_type": ["view"] * 5,
            "ts": np.arange(5) + 1_512_000_000_000,
        }
    )
    with pytest.raises(DataError):
        models.train(tiny, tmp_path / "y", TrainConfig())


def test_item_text_gives_cold_items_vectors(events: pd.DataFrame, tmp_path: Path) -> None:
    """Items known only from text get a vector from MiniLM (offline) in the checkpoint."""
    cutoff = int(np.quantile(events["ts"].to_numpy(), 0.8))
    items = sorted(events.loc[events["ts"] < cutoff, "item_id"].unique())[:50]
    text = pd.DataFrame(
        {
            "item_id": [*items, "cold-1", "cold-2"],
            "text": [f"product {i} | shoes" for i in items]
            + ["red running shoes | shoes", "garden hose | tools"],
        }
    )
    res = models.train(
        events, tmp_path / "t", tiny_train_config(epochs=1), progress=False, item_text=text
    )
    ids, vecs, cfg = load_item_vectors(res.out_dir)
    assert ids[-2:] == ["cold-1", "cold-2"] and cfg["n_cold_items"] == 2 and cfg["has_text"]
    meta = json.loads((res.out_dir / "item_meta.json").read_text())
    assert meta["cold-1"]["cold"] is True
    assert np.isfinite(vecs).all() and np.abs(vecs[-2:]).sum() > 0
    assert not np.allclose(vecs[-1], vecs[-2])
    model = InterestModel.load(res.out_dir, device="cpu")
    assert model.encoder.item_emb.weight.shape[0] == len(ids) + N_SPECIAL_ITEMS


def test_next_days_targets_start_at_the_next_event() -> None:
    """A user back after weeks: the targets are their next days of activity, not empty."""
    from interest_stream.models.data import build_event_arrays, long_targets

    t0 = 1_512_000_000_000
    h = 3_600_000
    ev = pd.DataFrame(
        {
            "user_id": ["u"] * 5,
            "item_id": ["a", "b", "c", "d", "e"],
            "event_type": ["view", "view", "cart", "view", "view"],
            "ts": [t0, t0 + h, t0 + 500 * h, t0 + 501 * h, t0 + 600 * h],
        }
    )
    index = {i: k for k, i in enumerate("abcde")}
    arr = build_event_arrays(ev, index, 50, 30.0, 200, 30.0)
    assert list(np.flatnonzero(arr.session_start)) == [1, 2, 3, 4]  # gaps > 30 min
    weights = np.array([0, 1, 1, 2, 1.5, 2.5], dtype=np.float32)
    lt = long_targets(arr, np.array([2]), 72 * h, weights, 100, np.random.default_rng(0))
    assert sorted(lt.item.tolist()) == [index["c"] + N_SPECIAL_ITEMS, index["d"] + N_SPECIAL_ITEMS]
    assert lt.weight[lt.item == index["c"] + N_SPECIAL_ITEMS][0] == 2.0  # cart weight


def test_masked_history_and_sampled_next_items(tmp_path: Path) -> None:
    from model_helpers import synthetic_events

    cfg = tiny_train_config(
        epochs=1, val_fraction=0.2, val_task="new", next_item_rate=0.5, sample_half_life_days=3.0
    )
    res = models.train(synthetic_events(seed=4), tmp_path / "m", cfg, progress=False)
    assert res.metrics["phases"]["fit"]["history"][0]["steps"] >= 1
    saved = json.loads((res.out_dir / "config.json").read_text())
    assert saved["train"]["seen_items"] == "auto" and saved["train"]["val_task"] == "new"


def test_blend_alpha_is_chosen_on_validation(events: pd.DataFrame, tmp_path: Path) -> None:
    """The serving alpha is the grid point with the best validation NDCG@10."""
    from interest_stream.models.training import ALPHA_GRID

    cfg = tiny_train_config(epochs=2, val_fraction=0.2, blend_alpha=0.5)
    res = models.train(events, tmp_path / "m", cfg, progress=False)
    saved = json.loads((res.out_dir / "config.json").read_text())
    fit = res.metrics["phases"]["fit"]
    val = fit["history"][fit["best_epoch"] - 1]["val"]
    by_alpha = {a: val[f"blend_ndcg@10_alpha{a:.1f}"] for a in ALPHA_GRID}
    chosen = saved["train"]["blend_alpha"]
    assert chosen == fit["selected_alpha"] == val["best_alpha"]
    assert by_alpha[chosen] == pytest.approx(max(by_alpha.values()))
    assert res.val_ndcg10 == pytest.approx(max(by_alpha.values()))
    assert saved["blend_alpha_selection"]["trained_alpha"] == 0.5
    assert InterestModel.load(res.out_dir, device="cpu").blend_alpha == chosen
    # at alpha 0.5 the grid reproduces the plain blend figure
    assert by_alpha[0.5] == pytest.approx(val["blend_ndcg@10"])


def test_scalar_gains_get_their_own_learning_rate(events: pd.DataFrame, tmp_path: Path) -> None:
    """With scalar_lr_mult the copy gains and identity scale move much further."""
    from model_helpers import tiny_encoder_config

    moved = []
    for mult in (1.0, 30.0):
        cfg = tiny_train_config(
            epochs=1, scalar_lr_mult=mult, encoder=tiny_encoder_config(identity_dim=8)
        )
        res = models.train(events, tmp_path / f"m{mult}", cfg, progress=False)
        enc = InterestModel.load(res.out_dir, device="cpu").encoder
        gains = [enc.short_copy_gain, enc.long_copy_gain, enc.ident_scale]
        moved.append(sum(abs(float(g) - 1.0) for g in gains if g is not None))
    assert moved[1] > 5 * moved[0]


def test_revisit_channel(events: pd.DataFrame, tmp_path: Path) -> None:
    """The revisit channel: chosen on validation, round-trips, points at returned-to items."""
    from model_helpers import tiny_encoder_config

    from interest_stream.models.training import REVISIT_GAIN_GRID

    cfg = tiny_train_config(
        epochs=2, val_fraction=0.2, encoder=tiny_encoder_config(revisit_dim=256)
    )
    res = models.train(events, tmp_path / "m", cfg, progress=False)
    saved = json.loads((res.out_dir / "config.json").read_text())
    sel = res.metrics["phases"]["channel_selection"]
    assert saved["dim"] == 16 + 256
    assert saved["revisit_gain"] == sel["revisit_gain"] and sel["revisit_gain"] in REVISIT_GAIN_GRID
    assert sel["val_ndcg_at_10"] == pytest.approx(max(sel["revisit_grid"].values()))
    assert saved["train"]["blend_alpha"] == sel["alpha"]
    model = InterestModel.load(res.out_dir, device="cpu")
    assert model.dim == 272 and model.item_vectors().shape == (len(model.item_ids), 272)
    assert float(model.encoder.get_buffer("revisit_gain")) == sel["revisit_gain"]
    # the codes are saved with the weights: what the item vectors file holds is what scores
    _, vectors, _ = load_item_vectors(res.out_dir)
    np.testing.assert_array_equal(vectors, model.item_vectors())

    model.encoder.get_buffer("revisit_gain").fill_(1.0)
    items = model.item_ids
    t0 = 1_700_000_000_000
    # item 0 five times (once purchased); item 2 three times; item 1 once, ten days ago
    hist = [Interaction(items[1], "view", t0 - 240 * 3_600_000)]
    hist += [Interaction(items[0], "view", t0 + k * 60_000) for k in range(4)]
    hist += [Interaction(items[0], "purchase", t0 + 300_000)]
    hist += [Interaction(items[2], "view", t0 + 600_000 + k * 1000) for k in range(3)]
    long = model.encode_long([hist])[0]
    short = model.encode_short([hist])[0]
    assert np.all(short[16:] == 0.0)  # the short vector has no revisit channel
    rev = model.item_vectors()[:, 16:] @ long[16:]
    others = np.delete(rev, [0, 1, 2])
    assert rev[0] > rev[2] > rev[1]
    assert rev[0] > others.max() and rev[2] > np.percentile(others, 99)
    # an empty history has a zero channel
    assert np.all(model.encode_long([[]])[0][16:] == 0.0)


def test_trend_coordinate(events: pd.DataFrame, tmp_path: Path) -> None:
    """The trend coordinate: recent item popularity on the item side, one gain for users."""
    from model_helpers import tiny_encoder_config

    from interest_stream.models.training import TREND_DAYS_GRID, trend_scores

    cfg = tiny_train_config(epochs=2, val_fraction=0.2, encoder=tiny_encoder_config(trend=True))
    res = models.train(events, tmp_path / "m", cfg, progress=False)
    saved = json.loads((res.out_dir / "config.json").read_text())
    sel = res.metrics["phases"]["channel_selection"]
    assert saved["dim"] == 17
    best = max([sel["val_ndcg_at_10"], *sel["trend_grid"].values()])
    assert sel["val_ndcg_at_10"] == pytest.approx(best)
    model = InterestModel.load(res.out_dir, device="cpu")
    trend_item = model.item_vectors()[:, -1]
    hs = [[], [Interaction(model.item_ids[0], "view", 1_700_000_000_000)]]
    for vec in (model.encode_short(hs), model.encode_long(hs)):
        np.testing.assert_allclose(vec[:, -1], saved["trend"]["gain"], rtol=1e-6)
    days = saved["trend"]["days"]
    if days is None:  # the grid's best was no trend at all
        assert saved["trend"]["gain"] == 0.0 and not trend_item.any()
    else:
        assert days in TREND_DAYS_GRID and saved["trend"]["gain"] > 0
        cutoff = saved["split"]["train_cutoff_ts"]
        before = events[events["ts"] < cutoff]
        expected = trend_scores(before, model.item_index, len(model.item_ids), cutoff, days)
        np.testing.assert_allclose(trend_item, expected, rtol=1e-6)
        assert trend_item.std() == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("comes_back", [False, True])
def test_revisit_gain_sign_follows_validation(comes_back: bool) -> None:
    """Where users never come back to an item, the selection pushes their own items down (a
    negative gain); where the target is the item they touched most, a positive gain is kept and
    the negative grid is never tried. Real encoder (untrained, seed 0, large copy gains) on a
    leave-one-out split of synthetic events."""
    from model_helpers import synthetic_events

    from interest_stream.models.loo import loo_frame, loo_split
    from interest_stream.models.selection import (
        REVISIT_GAIN_GRID,
        REVISIT_NEGATIVE_GRID,
        select_channels,
    )
    from interest_stream.models.vocab import build_vocab, new_encoder

    df = synthetic_events(n_users=60, n_items=60, events_per_user=30, n_categories=2, seed=0)
    if comes_back:  # every validation target is the item the user touched most
        frame = loo_frame(df)
        train = frame[frame["role"] == "train"]
        most = train.groupby("user_id")["item_id"].agg(lambda s: s.value_counts().index[0])
        valid = frame["role"] == "valid"
        frame.loc[valid, "item_id"] = frame.loc[valid, "user_id"].map(most)
        df = frame[list(df.columns)]
    else:  # nobody comes back
        df = df.drop_duplicates(["user_id", "item_id"]).reset_index(drop=True)
    frame = loo_frame(df)
    cfg = tiny_train_config(encoder=tiny_encoder_config(revisit_dim=256), val_fraction=0.2)
    vocab = build_vocab(frame[frame["role"] == "train"], None, progress=False)
    split = loo_split(frame, "valid", candidates=vocab.item_ids)
    enc = new_encoder(cfg, vocab, torch.device("cpu"))
    with torch.no_grad():  # vectors that point at the user's own items, as MovieLens' do
        enc.short_copy_gain.fill_(20.0)
        enc.long_copy_gain.fill_(20.0)
    sel = select_channels(enc, split, vocab, cfg, torch.device("cpu"), cfg.blend_alpha)
    tried_negative = any("_gain-" in key for key in sel["revisit_grid"])
    if comes_back:
        assert sel["revisit_gain"] in REVISIT_GAIN_GRID and sel["revisit_gain"] > 0
        assert not tried_negative
    else:
        assert sel["revisit_gain"] in REVISIT_NEGATIVE_GRID and tried_negative
        no_channel = max(v for k, v in sel["revisit_grid"].items() if k.endswith("_gain0"))
        assert sel["val_ndcg_at_10"] > no_channel


def test_train_flags_reach_the_config(tmp_path: Path) -> None:
    """``train --dropout`` and a negative ``--revisit-gain`` end up in the training config."""
    from interest_stream.models.cli import _train_config, train_cmd

    ev = tmp_path / "events.csv"
    ev.write_text("user_id,item_id,event_type,ts\n")
    args = ["--events", str(ev), "--out", str(tmp_path / "m"), "--item-text", "none"]
    args += ["--dropout", "0.3", "--revisit-dim", "64", "--revisit-gain", "-32"]
    cfg = _train_config(train_cmd.make_context("train", list(args)).params)
    assert cfg.encoder.dropout == 0.3 and cfg.encoder.revisit_dim == 64
    assert cfg.revisit_gain == -32.0
    assert _train_config(train_cmd.make_context("train", args[:6]).params).encoder.dropout == 0.1
