"""The training loop: fit a fresh encoder on an event table for some epochs.

:func:`fit` initialises an encoder (seeded), then per epoch samples the training
points, runs AdamW steps on next-item + next-type + next-days losses
(:mod:`interest_stream.models.task`) and, with a validation split, scores the
epoch (:func:`interest_stream.models.selection.validate`) and stops early after
``cfg.patience`` epochs without improvement. The RNG use (numpy ``cfg.seed``,
torch generators seeded with ``cfg.seed``) is fixed, so a seed gives one model.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from interest_stream.models.config import OOV_INDEX, LossKind, SeenItems, TaskKind, TrainConfig
from interest_stream.models.data import (
    EventArrays,
    build_event_arrays,
    chronological,
    chunk_plan,
    long_targets,
)
from interest_stream.models.encoder import InterestEncoder, SeqBatch
from interest_stream.models.selection import validate
from interest_stream.models.split import EvalSplit
from interest_stream.models.task import ItemSoftmax, type_loss
from interest_stream.models.vocab import Vocab, new_encoder

__all__ = ["FitOutcome", "fit"]

log = logging.getLogger(__name__)


@dataclass
class FitOutcome:
    """What :func:`fit` produced.

    Attributes:
        encoder: The encoder (the best validation epoch's weights), in eval mode.
        best_epoch: Best validation epoch (the last epoch run without validation).
        best_val: Its validation NDCG@10 (``None`` without validation).
        history: One record per epoch (losses, validation figures, seconds).
        alpha: Blend alpha of the best validation epoch (``cfg.blend_alpha`` without).
    """

    encoder: InterestEncoder
    best_epoch: int
    best_val: float | None
    history: list[dict[str, Any]]
    alpha: float


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


@dataclass
class _Run:
    """Everything fixed for one :func:`fit` call (data, model, optimiser, RNGs)."""

    cfg: TrainConfig
    device: torch.device
    arr: EventArrays
    enc: InterestEncoder
    rng: np.random.Generator
    gen: torch.Generator
    softmax: ItemSoftmax
    mask_hist: bool
    hard_hist: bool
    opt: torch.optim.Optimizer
    type_w_np: np.ndarray
    type_w: torch.Tensor
    horizon_ms: int
    pos: np.ndarray
    plan: Any
    chunk_len: np.ndarray
    short_len: np.ndarray
    recency: np.ndarray | None
    session_pts: np.ndarray
    other_pts: np.ndarray


@dataclass
class _Epoch:
    """One epoch's sampled training points and batches."""

    long_pts: np.ndarray
    pt_chunk: np.ndarray
    pt_pos: np.ndarray
    short_batches: list[np.ndarray]
    chunk_batches: list[np.ndarray]
    chunk_row: np.ndarray


def _prepare(
    df: pd.DataFrame, vocab: Vocab, cfg: TrainConfig, device: torch.device, phase: str
) -> _Run:
    """Event arrays, a seeded encoder, the loss, the optimiser and the RNGs."""
    arr: EventArrays = build_event_arrays(
        df,
        vocab.item_index,
        cfg.short_window_events,
        cfg.short_window_minutes,
        cfg.long_history_events,
        cfg.session_gap_minutes,
    )
    enc = new_encoder(cfg, vocab, device)
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
    pos = np.arange(len(arr), dtype=np.int64)
    plan = chunk_plan(arr, cfg.encoder.long_max_len)
    recency: np.ndarray | None = None
    if cfg.sample_half_life_days is not None:
        age_days = (arr.ts.max() - arr.ts) / 86_400_000.0
        recency = np.power(0.5, age_days / cfg.sample_half_life_days).astype(np.float32)
    run = _Run(
        cfg=cfg, device=device, arr=arr, enc=enc, rng=rng, gen=gen, softmax=softmax,
        mask_hist=mask_hist, hard_hist=cfg.seen_items is SeenItems.HARD_NEGATIVES, opt=opt,
        type_w_np=type_w_np, type_w=torch.from_numpy(type_w_np).to(device),
        horizon_ms=int(cfg.long_horizon_hours * 3_600_000), pos=pos, plan=plan,
        chunk_len=plan.end - plan.start,
        short_len=np.minimum(pos - arr.short_start, cfg.encoder.short_max_len),
        recency=recency, session_pts=np.flatnonzero(arr.session_start),
        other_pts=np.flatnonzero(~arr.session_start & (pos > arr.seg_start)),
    )  # fmt: skip
    log.info(
        "%s: %d events, %d chunks, %d session starts, %d other points, %s softmax over %d items",
        phase, len(arr), len(plan.start), len(run.session_pts), len(run.other_pts),
        "sampled" if sampled else "full", vocab.n_warm,
    )  # fmt: skip
    return run


def _sample_epoch(run: _Run) -> _Epoch:
    """Sample an epoch's long-loss points and next-item points, and batch them."""
    cfg, rng, long_len = run.cfg, run.rng, run.cfg.encoder.long_max_len
    n_extra = round(cfg.long_within_session_rate * len(run.other_pts))
    extra = rng.choice(run.other_pts, size=n_extra, replace=False) if n_extra else run.other_pts[:0]
    long_pts = np.concatenate([run.session_pts, extra])
    pt_chunk, pt_pos = run.plan.locate(run.arr, long_pts, long_len)
    short_pts = run.pos
    if cfg.next_item_rate < 1.0:
        keep = max(1, round(cfg.next_item_rate * len(run.arr)))
        short_pts = np.sort(rng.choice(run.pos, size=keep, replace=False))
    short_batches = _length_batches(short_pts, run.short_len[short_pts], cfg.batch_size, rng)
    n_steps = len(short_batches)
    used = np.unique(pt_chunk)
    chunk_bs = max(1, math.ceil(len(used) / max(n_steps, 1)))
    chunk_batches = _length_batches(used, run.chunk_len[used], chunk_bs, rng)
    chunk_row = np.full(len(run.plan.start), -1, dtype=np.int64)
    return _Epoch(long_pts, pt_chunk, pt_pos, short_batches, chunk_batches, chunk_row)


def _history(run: _Run, pts: np.ndarray) -> torch.Tensor | None:
    """The long windows' items of ``pts`` when the loss needs the users' histories."""
    if not (run.mask_hist or run.hard_hist):
        return None
    return torch.from_numpy(run.arr.long_windows(pts, run.cfg.encoder.long_max_len).items).to(
        run.device
    )


def _short_losses(run: _Run, sb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The item table, next-item NLL and next-type loss of the short vectors at ``sb``."""
    cfg, arr, device = run.cfg, run.arr, run.device
    sbatch = _to_batch(
        arr.short_windows(sb, cfg.encoder.short_max_len), device, cfg.item_dropout, run.gen
    )
    table = run.enc.item_table()
    s_vec = run.enc.encode_short(sbatch, table)
    tgt_items = torch.from_numpy(arr.items[sb]).to(device)
    tgt_types = torch.from_numpy(arr.types[sb]).to(device)
    rows = torch.arange(len(sb), device=device)
    w = run.type_w[tgt_types]
    if run.recency is not None:
        w = w * torch.from_numpy(run.recency[sb]).to(device)
    hist_s = _history(run, sb)
    pair_nll = run.softmax.nll(
        s_vec, table, rows, tgt_items, w, per_row=False, history=hist_s,
        mask_history=run.mask_hist,
    )  # fmt: skip
    l_type = type_loss(run.enc.type_head(s_vec), tgt_types)
    return table, pair_nll, l_type


def _long_losses(
    run: _Run, ep: _Epoch, cb: np.ndarray, table: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Next-days NLL of the long vector and of the blend for the chunks ``cb``
    (``None`` when their points have no targets)."""
    cfg, arr, device, enc = run.cfg, run.arr, run.device, run.enc
    ep.chunk_row[cb] = np.arange(len(cb))
    rows_all = ep.chunk_row[ep.pt_chunk]
    ep.chunk_row[cb] = -1
    sel = np.flatnonzero(rows_all >= 0)
    row_of = rows_all[sel]
    pts = ep.long_pts[sel]
    lt = long_targets(arr, pts, run.horizon_ms, run.type_w_np, cfg.max_long_targets, run.rng)
    if not len(lt.row):
        return None
    c_items, c_types, c_len, c_age = chronological(arr, run.plan.start[cb], run.plan.end[cb])
    c_items_t = _drop_items(torch.from_numpy(c_items), cfg.item_dropout, run.gen)
    prefix = enc.long_prefix_vectors(
        c_items_t.to(device),
        torch.from_numpy(c_types).to(device),
        torch.from_numpy(c_len).to(device),
        table,
        torch.from_numpy(c_age).to(device),
    )
    ll = prefix[torch.from_numpy(row_of).to(device), torch.from_numpy(ep.pt_pos[sel]).to(device)]
    lsb = _to_batch(
        arr.short_windows(pts, cfg.encoder.short_max_len), device, cfg.item_dropout, run.gen
    )
    ls = enc.encode_short(lsb, table)
    r = torch.from_numpy(lt.row).to(device)
    it = torch.from_numpy(lt.item).to(device)
    wt = torch.from_numpy(lt.weight).to(device)
    rw = None if run.recency is None else torch.from_numpy(run.recency[pts - 1]).to(device)
    hist = _history(run, pts)
    mask = run.mask_hist
    l_long = run.softmax.nll(ll, table, r, it, wt, history=hist, mask_history=mask, row_weights=rw)
    a = cfg.blend_alpha
    l_blend = run.softmax.nll(
        a * ls + (1 - a) * ll, table, r, it, wt, history=hist, mask_history=mask, row_weights=rw
    )
    return l_long, l_blend


def _step(run: _Run, ep: _Epoch, step: int, sums: dict[str, float]) -> None:
    """One optimiser step; adds its losses to ``sums``."""
    cfg, device = run.cfg, run.device
    table, pair_nll, l_type = _short_losses(run, ep.short_batches[step])
    loss = pair_nll + cfg.type_loss_weight * l_type
    l_long = l_blend = torch.zeros((), device=device)
    if step < len(ep.chunk_batches):
        longs = _long_losses(run, ep, ep.chunk_batches[step], table)
        if longs is not None:
            l_long, l_blend = longs
            loss = loss + cfg.long_loss_weight * l_long + cfg.blend_loss_weight * l_blend
    run.opt.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.enc.parameters(), cfg.grad_clip)
    run.opt.step()
    sums["loss"] += float(loss.detach())
    sums["next"] += float(pair_nll.detach())
    sums["type"] += float(l_type.detach())
    sums["long"] += float(l_long.detach())
    sums["blend"] += float(l_blend.detach())


def _train_epoch(
    run: _Run, epoch: int, n_epochs: int, phase: str, progress: bool
) -> dict[str, Any]:
    """Run one epoch of steps; its history record (without validation and seconds)."""
    run.enc.train()
    ep = _sample_epoch(run)
    n_steps = len(ep.short_batches)
    sums = {"loss": 0.0, "next": 0.0, "type": 0.0, "long": 0.0, "blend": 0.0}
    bar = tqdm(
        range(n_steps),
        desc=f"{phase} epoch {epoch}/{n_epochs}",
        disable=not progress,
        leave=False,
        unit="step",
    )
    for step in bar:
        _step(run, ep, step, sums)
        if progress and step % 20 == 0:
            bar.set_postfix(loss=f"{sums['loss'] / (step + 1):.3f}")
    bar.close()
    record: dict[str, Any] = {"epoch": epoch, "steps": n_steps, "long_points": len(ep.long_pts)}
    record.update({f"train_{k}": v / max(n_steps, 1) for k, v in sums.items()})
    return record


def _log_epoch(phase: str, record: dict[str, Any]) -> None:
    log.info(
        "%s epoch %d: loss %.4f (next %.3f type %.3f long %.3f blend %.3f) %s %.1fs",
        phase,
        record["epoch"],
        record["train_loss"],
        record["train_next"],
        record["train_type"],
        record["train_long"],
        record["train_blend"],
        f"val blend NDCG@10 {record['val']['blend_ndcg@10']:.4f}" if "val" in record else "",
        record["seconds"],
    )


def fit(
    df: pd.DataFrame,
    vocab: Vocab,
    cfg: TrainConfig,
    device: torch.device,
    n_epochs: int,
    val_split: EvalSplit | None,
    progress: bool,
    phase: str,
    deadline: float | None,
) -> FitOutcome:
    """Fit a fresh encoder on ``df`` for up to ``n_epochs`` epochs.

    Args:
        df: Canonical events to train on (time-sorted).
        vocab: The item vocabulary.
        cfg: Training settings (seed, objective, optimiser, early stopping).
        device: Torch device.
        n_epochs: Maximum number of epochs.
        val_split: Validation split for early stopping (``None``: run every epoch).
        progress: Show tqdm progress bars.
        phase: Label in the logs (``fit``, ``refit``).
        deadline: ``time.perf_counter()`` value not to overrun (``None``: no budget).

    Returns:
        The encoder with the best validation epoch's weights, and the curves.
    """
    run = _prepare(df, vocab, cfg, device, phase)
    history: list[dict[str, Any]] = []
    best_val: float | None = None
    best_alpha = cfg.blend_alpha
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch = 0
    bad = 0
    for epoch in range(1, n_epochs + 1):
        t_ep = time.perf_counter()
        record = _train_epoch(run, epoch, n_epochs, phase, progress)
        if val_split is not None:
            val = validate(run.enc, val_split, vocab, cfg, device)
            record["val"] = val
            score = val["best_alpha_ndcg@10"]
            if best_val is None or score > best_val:
                best_val, best_epoch, bad = score, epoch, 0
                best_alpha = float(val["best_alpha"])
                best_state = copy.deepcopy(run.enc.state_dict())
            else:
                bad += 1
        else:
            best_epoch = epoch
        record["seconds"] = time.perf_counter() - t_ep
        history.append(record)
        _log_epoch(phase, record)
        if val_split is not None and epoch >= cfg.min_epochs and bad >= cfg.patience:
            log.info("%s: early stop after epoch %d (best %d)", phase, epoch, best_epoch)
            break
        # stop when another epoch like this one would overrun the budget
        if deadline is not None and time.perf_counter() + record["seconds"] > deadline:
            log.warning("%s: time budget reached after epoch %d", phase, epoch)
            break
    if best_state is not None:
        run.enc.load_state_dict(best_state)
    run.enc.eval()
    return FitOutcome(
        encoder=run.enc, best_epoch=best_epoch, best_val=best_val, history=history, alpha=best_alpha
    )
