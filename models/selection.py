"""Validation during training: scoring an encoder on the validation split, and the
grid search of the blend alpha and the fixed channels' settings.

* :func:`validate` — NDCG@10 / Recall@20 of the short, long and blended vectors
  (and, with ``select_alpha``, every alpha of :data:`ALPHA_GRID`);
* :func:`select_channels` — revisit gain and trend window/weight (with the alpha);
* :func:`trend_scores` — the item side of the trend coordinate;
* :func:`baseline_scores` — the baselines' NDCG@10 on the validation split.

Every choice keeps the best validation NDCG@10 of the blend on ``cfg.val_task``
(ties: the earlier grid point).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from interest_stream.models.config import N_SPECIAL_ITEMS, TaskKind, TrainConfig
from interest_stream.models.encoder import InterestEncoder, SeqBatch
from interest_stream.models.features import arrays_from_histories, short_window
from interest_stream.models.metrics import rank_metrics
from interest_stream.models.split import EvalSplit
from interest_stream.models.vocab import Vocab

__all__ = [
    "ALPHA_GRID",
    "REVISIT_GAIN_GRID",
    "TREND_DAYS_GRID",
    "TREND_WEIGHT_GRID",
    "baseline_scores",
    "encode_split",
    "select_channels",
    "trend_scores",
    "validate",
]

log = logging.getLogger(__name__)

ALPHA_GRID = tuple(round(0.1 * k, 1) for k in range(11))
"""Blend alphas tried on the validation split when ``TrainConfig.select_alpha``."""
REVISIT_GAIN_GRID = (0.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)
"""Revisit-channel gains tried on the validation split (with every blend alpha)."""
REVISIT_NEGATIVE_GRID = tuple(-g for g in REVISIT_GAIN_GRID if g > 0)
"""Negative gains (the user's own items pushed *down*: nobody re-rates a film), tried only
when no gain of :data:`REVISIT_GAIN_GRID` beats gain 0 (data with re-visits never pays them)."""
TREND_DAYS_GRID = (1.0, 3.0, 7.0)
"""Trend windows (days before the cutoff) tried on the validation split."""
TREND_WEIGHT_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
"""Trend weights tried, in standard deviations of the blend's validation scores."""


def encode_split(
    enc: InterestEncoder, split: EvalSplit, vocab: Vocab, cfg: TrainConfig, device: torch.device
) -> dict[str, np.ndarray]:
    """Short, long and blended (``cfg.blend_alpha``) vectors of a split's test users.

    Returns:
        ``{"short", "long", "blend"}`` -> float32 ``[U, dim]``.
    """
    enc.eval()
    shorts, longs = [], []
    with torch.inference_mode():
        table = enc.item_table()
        for start in range(0, len(split.users), 512):
            hs = split.histories[start : start + 512]
            sw = [short_window(h, cfg.short_window_events, cfg.short_window_minutes) for h in hs]
            lw = [h[-cfg.long_history_events :] for h in hs]
            sa = arrays_from_histories(sw, vocab.item_index, cfg.encoder.short_max_len)
            la = arrays_from_histories(lw, vocab.item_index, cfg.encoder.long_max_len)
            shorts.append(enc.encode_short(SeqBatch.from_arrays(sa).to(device), table).cpu())
            longs.append(enc.encode_long(SeqBatch.from_arrays(la).to(device), table).cpu())
    dim = cfg.encoder.dim
    s = torch.cat(shorts).numpy() if shorts else np.zeros((0, dim), np.float32)
    lo = torch.cat(longs).numpy() if longs else np.zeros((0, dim), np.float32)
    a = cfg.blend_alpha
    return {"short": s, "long": lo, "blend": a * s + (1 - a) * lo}


def validate(
    enc: InterestEncoder, split: EvalSplit, vocab: Vocab, cfg: TrainConfig, device: torch.device
) -> dict[str, float]:
    """Validation figures of an encoder (full ranking over the split's candidates).

    Returns:
        ``users``, ``<short|long|blend>_ndcg@10`` / ``_recall@20``, ``best_alpha`` and
        ``best_alpha_ndcg@10`` (plus ``blend_ndcg@10_alpha<a>`` with ``select_alpha``).
    """
    vecs = encode_split(enc, split, vocab, cfg, device)
    with torch.inference_mode():
        table = enc.item_table()[N_SPECIAL_ITEMS:].cpu().numpy()
    rows = np.array([vocab.item_index[c] for c in split.candidates], dtype=np.int64)
    cand = table[rows]
    task = cfg.val_task
    users = split.users_with_targets(task)
    exclude = split.hist_items if task is TaskKind.NEW else None
    out: dict[str, float] = {"users": float(len(users))}
    for name, v in vecs.items():

        def score(idx: np.ndarray, v: np.ndarray = v) -> np.ndarray:
            res: np.ndarray = v[idx] @ cand.T
            return res

        m = rank_metrics(score, users, split.targets[task], exclude)
        out[f"{name}_ndcg@10"] = float(m["ndcg@10"].mean()) if len(users) else float("nan")
        out[f"{name}_recall@20"] = float(m["recall@20"].mean()) if len(users) else float("nan")
    out["best_alpha"], out["best_alpha_ndcg@10"] = cfg.blend_alpha, out["blend_ndcg@10"]
    if cfg.select_alpha and len(users):
        for alpha in ALPHA_GRID:

            def score_a(idx: np.ndarray, alpha: float = alpha) -> np.ndarray:
                v = alpha * vecs["short"][idx] + (1.0 - alpha) * vecs["long"][idx]
                res: np.ndarray = v @ cand.T
                return res

            nd = float(rank_metrics(score_a, users, split.targets[task], exclude)["ndcg@10"].mean())
            out[f"blend_ndcg@10_alpha{alpha:.1f}"] = nd
            if nd > out["best_alpha_ndcg@10"] + 1e-9:
                out["best_alpha"], out["best_alpha_ndcg@10"] = alpha, nd
    return out


def trend_scores(
    df: pd.DataFrame, item_index: dict[str, int], n_items: int, end_ts: int, days: float
) -> np.ndarray:
    """Item side of the trend coordinate: ``log1p`` of each item's events in the
    ``days`` before ``end_ts``, scaled to unit standard deviation over the items.

    Returns:
        float32 ``[n_items]`` in vocabulary order.
    """
    recent = df[(df["ts"] >= end_ts - int(days * 86_400_000)) & (df["ts"] < end_ts)]
    rows = recent["item_id"].astype(str).map(item_index).dropna().to_numpy(dtype=np.int64)
    pop = np.log1p(np.bincount(rows, minlength=n_items).astype(np.float64))
    sd = float(pop.std())
    out: np.ndarray = (pop / sd if sd > 0 else pop).astype(np.float32)
    return out


class _ChannelScorer:
    """Validation scores of blend + revisit channel for one (alpha, gain)."""

    def __init__(
        self, enc: InterestEncoder, split: EvalSplit, vocab: Vocab, cfg: TrainConfig,
        device: torch.device,
    ) -> None:  # fmt: skip
        self.vecs = encode_split(enc, split, vocab, cfg, device)
        enc.eval()
        self.rows = np.array([vocab.item_index[c] for c in split.candidates], dtype=np.int64)
        n_users = len(split.users)
        with torch.inference_mode():
            self.sem = enc.item_table()[N_SPECIAL_ITEMS:].cpu().numpy()[self.rows]
            self.codes = np.zeros((len(self.rows), 0), np.float32)
            self.rev = np.zeros((n_users, 0), np.float32)
            if cfg.encoder.revisit_dim > 0:
                self._revisit_inputs(enc, split, vocab, cfg, device)
        self.split = split
        self.task = cfg.val_task
        self.users = split.users_with_targets(self.task)
        self.exclude = split.hist_items if self.task is TaskKind.NEW else None

    def _revisit_inputs(
        self, enc: InterestEncoder, split: EvalSplit, vocab: Vocab, cfg: TrainConfig,
        device: torch.device,
    ) -> None:  # fmt: skip
        """The users' revisit vectors at gain 1 and the candidates' revisit codes."""
        saved = float(enc.get_buffer("revisit_gain"))
        enc.get_buffer("revisit_gain").fill_(1.0)
        parts = []
        for start in range(0, len(split.users), 512):
            hs = [h[-cfg.long_history_events :] for h in split.histories[start : start + 512]]
            la = arrays_from_histories(hs, vocab.item_index, cfg.encoder.long_max_len)
            parts.append(enc.revisit_vector(SeqBatch.from_arrays(la).to(device)).cpu())
        enc.get_buffer("revisit_gain").fill_(saved)
        self.codes = enc.get_buffer("revisit_codes")[N_SPECIAL_ITEMS:].cpu().numpy()[self.rows]
        if parts:
            self.rev = torch.cat(parts).numpy()

    def base(self, idx: np.ndarray, a: float, g: float) -> np.ndarray:
        """Scores ``[len(idx), n_candidates]`` of the blend at ``a`` plus revisit gain ``g``."""
        v = a * self.vecs["short"][idx] + (1.0 - a) * self.vecs["long"][idx]
        res: np.ndarray = v @ self.sem.T
        if g:
            res = res + ((1.0 - a) * g) * (self.rev[idx] @ self.codes.T)
        return res

    def ndcg(self, fn: Any) -> float:
        """Mean validation NDCG@10 of a score function."""
        m = rank_metrics(fn, self.users, self.split.targets[self.task], self.exclude)
        return float(m["ndcg@10"].mean())


def _select_trend(
    sc: _ChannelScorer,
    vocab: Vocab,
    alphas: tuple[float, ...],
    best: tuple[float, float, float],
    out: dict[str, Any],
) -> None:
    """The trend step of :func:`select_channels` (updates ``out``)."""
    split = sc.split
    a0, g0, nd0 = best
    sample = sc.users[: min(len(sc.users), 256)]
    scale = float(np.std(sc.base(sample, a0, g0))) or 1.0
    tgrid: dict[str, float] = {}
    tbest: tuple[float, float | None, float, float] = (a0, None, 0.0, nd0)
    for days in TREND_DAYS_GRID:
        pop = trend_scores(split.train, vocab.item_index, len(vocab.item_ids),
                           split.cutoff_ts, days)[sc.rows]  # fmt: skip
        for a in alphas:
            for w in TREND_WEIGHT_GRID:
                if w == 0.0:
                    continue  # = the revisit step's figure

                def score(
                    idx: np.ndarray, a: float = a, w: float = w, pop: np.ndarray = pop
                ) -> np.ndarray:
                    return sc.base(idx, a, g0) + (w * scale) * pop[None, :]

                nd = sc.ndcg(score)
                tgrid[f"days{days:g}_alpha{a:.1f}_w{w:g}"] = nd
                if nd > tbest[3] + 1e-9:
                    tbest = (a, days, w, nd)
    out.update(
        alpha=tbest[0],
        trend_days=tbest[1],
        trend_weight=tbest[2],
        trend_gain=tbest[2] * scale,
        score_std=scale,
        val_ndcg_at_10=tbest[3],
        trend_grid=tgrid,
    )
    log.info(
        "trend coordinate: %s days, weight %g (gain %.3g), alpha %.1f "
        "(validation NDCG@10 %.4f; without it %.4f)",
        tbest[1], tbest[2], tbest[2] * scale, tbest[0], tbest[3], nd0,
    )  # fmt: skip


def _gain_grid(
    sc: _ChannelScorer,
    alphas: tuple[float, ...],
    gains: tuple[float, ...],
    grid: dict[str, float],
    best: tuple[float, float, float],
) -> tuple[float, float, float]:
    """Every (alpha, revisit gain) of ``alphas x gains`` on validation; the best so far.

    Each figure is added to ``grid``; ``best`` is ``(alpha, gain, NDCG@10)`` and is replaced
    only by a strictly better point (ties: the earlier one).
    """
    for a in alphas:
        for g in gains:
            nd = sc.ndcg(lambda idx, a=a, g=g: sc.base(idx, a, g))
            grid[f"alpha{a:.1f}_gain{g:g}"] = nd
            if nd > best[2] + 1e-9:
                best = (a, g, nd)
    return best


def select_channels(
    enc: InterestEncoder,
    split: EvalSplit,
    vocab: Vocab,
    cfg: TrainConfig,
    device: torch.device,
    alpha: float,
) -> dict[str, Any]:
    """Choose the fixed channels' settings (and the blend alpha) on the validation split.

    1. Revisit channel (``revisit_dim > 0``): every (alpha, gain) of
       ``ALPHA_GRID x REVISIT_GAIN_GRID`` (only the given alpha when ``cfg.select_alpha``
       is off; only ``cfg.revisit_gain`` when set), then ``REVISIT_NEGATIVE_GRID`` if no
       positive gain beat gain 0.
    2. Trend coordinate (``trend``): with that gain, every (alpha, days, weight) of
       ``ALPHA_GRID x TREND_DAYS_GRID x TREND_WEIGHT_GRID``; the user-side gain is the
       weight times the standard deviation of the blend's scores (scale-free grid).

    Args:
        enc: The encoder fit on the events before the validation period.
        split: The validation split.
        vocab: The training vocabulary.
        cfg: Training settings.
        device: Torch device of ``enc``.
        alpha: The blend alpha chosen by early stopping.

    Returns:
        ``alpha``, ``revisit_gain``, ``trend_gain`` (+ ``trend_days``, grids, scores).
    """
    sc = _ChannelScorer(enc, split, vocab, cfg, device)
    revisit = cfg.encoder.revisit_dim > 0
    alphas = ALPHA_GRID if cfg.select_alpha else (alpha,)
    out: dict[str, Any] = {"alpha": alpha, "revisit_gain": 0.0, "trend_gain": 0.0}
    grid: dict[str, float] = {}
    gains: tuple[float, ...] = (0.0,)
    if revisit:
        gains = REVISIT_GAIN_GRID if cfg.revisit_gain is None else (cfg.revisit_gain,)
    best = _gain_grid(sc, alphas, gains, grid, (alpha, 0.0, -1.0))
    if revisit and cfg.revisit_gain is None and best[1] == 0.0:
        best = _gain_grid(sc, alphas, REVISIT_NEGATIVE_GRID, grid, best)
    out.update(alpha=best[0], revisit_gain=best[1], val_ndcg_at_10=best[2], revisit_grid=grid)
    if revisit:
        log.info(
            "revisit channel: gain %g, alpha %.1f (validation NDCG@10 %.4f; without it %.4f)",
            best[1],
            best[0],
            best[2],
            max((v for k, v in grid.items() if k.endswith("_gain0")), default=float("nan")),
        )
    if cfg.encoder.trend and len(sc.users):
        _select_trend(sc, vocab, alphas, best, out)
    return out


def baseline_scores(split: EvalSplit, task: TaskKind) -> dict[str, float]:
    """NDCG@10 of the baselines on a validation split (a yardstick for the curves)."""
    from interest_stream.models.baselines import Baselines

    base = Baselines(split)
    users = split.users_with_targets(task)
    if len(users) == 0:
        return {}
    exclude = split.hist_items if task is TaskKind.NEW else None
    fns = {
        "popularity": base.popularity,
        "recent_popularity": base.recent_popularity,
        "item_knn": base.item_knn,
    }
    if task is TaskKind.ALL:
        fns["repeat_last"] = base.repeat_last
    return {
        name: float(rank_metrics(fn, users, split.targets[task], exclude)["ndcg@10"].mean())
        for name, fn in fns.items()
    }
