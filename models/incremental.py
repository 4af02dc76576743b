"""Incremental long-term encoding: a user's long vector updated by its new events only.

The long path is causal (event ``j`` attends to events ``<= j``) and pools the hidden
states with type weights and an optional decay ``exp(-rate * age)`` whose reference
time factors out of the ratio. So a user's long vector is a function of running sums
(:class:`LongState`): ``S_w = sum w_j``, ``S_h = sum w_j h_j``, ``S_e = sum w_j e_j`` and
the revisit channel's ``sum w'_j`` / ``sum w'_j code_j``, all scaled to the newest event.
One new event adds one term: its hidden state (one query over the history's keys and
values; only for one-layer long paths) and its weight. Exact (float rounding) while the
history fits ``long_max_len`` and events arrive in time order; otherwise
:func:`extendable` says no and the caller re-encodes in full. Design: docs/DESIGN.md
("Incremental encoding").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from interest_stream.core.events import Interaction
from interest_stream.models.encoder import InterestEncoder
from interest_stream.models.long_state import LongState

__all__ = [
    "LongState",
    "extend_long",
    "extendable",
    "prefix_of",
    "revisit_from_sums",
    "state_vector",
]


def extendable(enc: InterestEncoder, history: Sequence[Interaction]) -> bool:
    """Whether :func:`extend_long` can encode ``history``: a one-layer long path and a
    non-empty history within ``long_max_len`` (a longer one slides: re-encode in full)."""
    return enc.cfg.n_layers_long == 1 and 0 < len(history) <= enc.cfg.long_max_len


def prefix_of(state: LongState | None, history: Sequence[Interaction]) -> bool:
    """Whether ``state`` folded a prefix of ``history`` (so only newer events remain)."""
    return (
        state is not None
        and 0 < state.n <= len(history)
        and tuple(history[state.n - 1]) == tuple(state.last)
    )


def _layout(enc: InterestEncoder) -> tuple[int, int, int]:
    return enc.cfg.d_model, enc.cfg.dim, enc.cfg.revisit_dim


def _rates(enc: InterestEncoder) -> tuple[float, float]:
    """Decay rates per second of the long pooling (0 = none) and the revisit channel."""
    hl = enc.cfg.long_half_life_hours
    rate = 0.0 if hl is None else math.log(2.0) / (3600.0 * hl)
    rate_r = math.log(2.0) / (3600.0 * enc.cfg.revisit_half_life_hours)
    return rate, rate_r


def _new_hidden(
    enc: InterestEncoder,
    items: Tensor,
    types: Tensor,
    lengths: Tensor,
    starts: Tensor,
    table: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Hidden states of each row's events ``starts[b]..lengths[b]-1`` (one-layer long path).

    Args:
        items: int64 ``[B, L]`` oldest first, padded at the end (``types`` alike).
        lengths: Real events per row; ``starts``: first new event per row.

    Returns:
        ``(hidden [B, K, d], item indices [B, K], valid [B, K])`` of the new events.
    """
    bert = enc.long_bert
    b, width = items.shape
    k = max(1, int((lengths - starts).max()))
    ar_k = torch.arange(k, device=items.device)
    q_pos = (starts[:, None] + ar_k[None, :]).clamp_max(width - 1)  # [B, K]
    valid = (starts[:, None] + ar_k[None, :]) < lengths[:, None]
    pos = torch.zeros(b, width, dtype=torch.long, device=items.device)
    x = bert.embeddings(
        inputs_embeds=enc.long_in(table[items]), token_type_ids=types, position_ids=pos
    )
    xq = x.gather(1, q_pos[:, :, None].expand(-1, -1, x.shape[-1]))  # [B, K, d]
    layer: Any = bert.encoder.layer[0]  # a transformers BertLayer (untyped)
    sa: Any = layer.attention.self
    h, dh = int(sa.num_attention_heads), int(sa.attention_head_size)
    q = sa.query(xq).view(b, k, h, dh).transpose(1, 2)
    kk = sa.key(x).view(b, width, h, dh).transpose(1, 2)
    vv = sa.value(x).view(b, width, h, dh).transpose(1, 2)
    ar = torch.arange(width, device=items.device)
    allowed = (ar[None, None, :] <= q_pos[:, :, None]) & (
        ar[None, None, :] < lengths[:, None, None]
    )
    scores = (q @ kk.transpose(-1, -2)) / math.sqrt(dh)
    scores = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
    ctx = (torch.softmax(scores, dim=-1) @ vv).transpose(1, 2).reshape(b, k, h * dh)
    att = layer.attention.output(ctx, xq)
    hidden: Tensor = layer.output(layer.intermediate(att), att)
    return hidden, items.gather(1, q_pos), valid


def state_vector(enc: InterestEncoder, sums: Tensor, table: Tensor) -> Tensor:
    """The long vector (``[B, dim]``, without the revisit channel) of running sums ``[B, S]``."""
    d, dim, _ = _layout(enc)
    s_w = sums[:, :1].clamp_min(1e-30)
    pooled = (sums[:, 1 : 1 + d] / s_w).to(table.dtype)
    copy = (sums[:, 1 + d : 1 + d + dim] / s_w).to(table.dtype)
    out: Tensor = enc.long_out(pooled) + enc.long_copy_gain * copy
    return out


def revisit_from_sums(enc: InterestEncoder, sums: Tensor) -> Tensor:
    """The revisit channel (``[B, revisit_dim]``) of running sums ``[B, S]``."""
    d, dim, rd = _layout(enc)
    off = 1 + d + dim
    total = sums[:, off : off + 1].clamp_min(1e-12)
    out = (sums[:, off + 1 : off + 1 + rd] / total).float()
    return enc.get_buffer("revisit_gain") * out


def extend_long(
    enc: InterestEncoder,
    states: Sequence[LongState | None],
    histories: Sequence[Sequence[Interaction]],
    arrays: tuple[Tensor, Tensor, Tensor],
    table: Tensor,
) -> tuple[Tensor, list[LongState]]:
    """Fold each row's new events into its state (the whole history without one).

    Args:
        enc: The encoder (eval mode, under ``torch.inference_mode``).
        states: Per row, the state to extend; ``None`` or a state that is not a prefix
            of the row's history (:func:`prefix_of`) folds the whole history.
        histories: Per row, the whole history (:func:`extendable`).
        arrays: ``(items, types, ts_s)`` of the histories, oldest first, padded at the end
            (``ts_s`` float64 seconds).
        table: ``enc.item_table()``.

    Returns:
        ``(sums [B, S] float64, new states)``.
    """
    items, types, ts_s = arrays
    dev = items.device
    d, dim, rd = _layout(enc)
    rate, rate_r = _rates(enc)
    lengths = torch.tensor([len(h) for h in histories], dtype=torch.long, device=dev)
    kept = [s if prefix_of(s, h) else None for s, h in zip(states, histories, strict=True)]
    starts = torch.tensor([0 if s is None else s.n for s in kept], dtype=torch.long, device=dev)
    size = 1 + d + dim + 1 + rd
    sums = torch.zeros(len(histories), size, dtype=torch.float64, device=dev)
    for i, s in enumerate(kept):
        if s is not None:
            sums[i] = torch.from_numpy(s.sums).to(dev, torch.float64)
    hidden, new_items, valid = _new_hidden(enc, items, types, lengths, starts, table)
    k = hidden.shape[1]
    q_pos = (starts[:, None] + torch.arange(k, device=dev)[None, :]).clamp_max(items.shape[1] - 1)
    q_types = types.gather(1, q_pos)
    q_ts = ts_s.gather(1, q_pos)
    newest = ts_s.gather(1, (lengths - 1).clamp_min(0)[:, None])  # [B, 1]
    prev = torch.where(
        starts > 0, ts_s.gather(1, (starts - 1).clamp_min(0)[:, None])[:, 0], newest[:, 0]
    )
    # rescale the old sums to the newest event, then add the new terms (decayed to it)
    age_new = (newest - q_ts).clamp_min(0.0)
    gap = (newest[:, 0] - prev).clamp_min(0.0)
    w = torch.exp(enc.long_type_logw[q_types].double() - rate * age_new) * valid
    sums[:, : 1 + d + dim] *= torch.exp(-rate * gap)[:, None]
    sums[:, 0] += w.sum(1)
    sums[:, 1 : 1 + d] += torch.einsum("bk,bkd->bd", w, hidden.double())
    sums[:, 1 + d : 1 + d + dim] += torch.einsum("bk,bkd->bd", w, table[new_items].double())
    if rd:
        off = 1 + d + dim
        wr = enc.get_buffer("revisit_type_w")[q_types].double() * torch.exp(-rate_r * age_new)
        wr = wr * valid
        sums[:, off : off + 1 + rd] *= torch.exp(-rate_r * gap)[:, None]
        sums[:, off] += wr.sum(1)
        codes = enc.get_buffer("revisit_codes")[new_items].double()
        sums[:, off + 1 :] += torch.einsum("bk,bkd->bd", wr, codes)
    host = sums.cpu().numpy().astype(np.float32)  # half the memory of a cached state
    out = [LongState(len(h), h[-1], host[i]) for i, h in enumerate(histories)]
    return sums, out
