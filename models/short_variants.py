"""The short path's occlusion variants in one lean forward pass (no per-variant lists).

:func:`short_variants` equals ``model.encode_short`` of each window without its drop
list (up to float rounding), but builds the padded batch from index arithmetic and runs
the short BERT's layers directly (``F.scaled_dot_product_attention``), skipping the
transformers wrapper's per-call mask and output plumbing: the short windows of an
explanation are tiny (a few events), so that per-call overhead was most of their cost.
Design and measurements: docs/DESIGN.md ("Explanations").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from interest_stream.core.events import Interaction
from interest_stream.models.config import N_SPECIAL_ITEMS, OOV_INDEX, type_index

__all__ = ["short_variants"]


def short_variants(
    model: Any, jobs: Sequence[tuple[Sequence[Interaction], Sequence[Sequence[int]]]]
) -> np.ndarray:
    """Short vectors of every window of ``jobs`` without each of its drop lists.

    Args:
        model: An ``InterestModel`` (eval mode).
        jobs: Per window ``(short window oldest first, drop lists)``.

    Returns:
        float32 ``[sum of len(drops), out_dim]`` in job and drop order (a variant with no
        event left is the learned "no history" vector, like ``encode_short``).
    """
    enc = model.encoder
    cap = int(enc.cfg.short_max_len)
    rows = sum(len(d) for _s, d in jobs)
    out = np.zeros((rows, int(model.dim)), dtype=np.float32)
    if rows == 0:
        return out
    if any(len(s) > cap for s, _d in jobs):  # beyond the window the path was trained on
        wins = [[e for i, e in enumerate(s) if i not in set(d)] for s, drops in jobs for d in drops]
        return np.asarray(model.encode_short(wins), dtype=np.float32)
    items, types, age, lengths = _padded(jobs, getattr(model, "_lookup", model.item_index))
    with torch.inference_mode():
        vec = _forward(
            enc, model._item_table(),  # noqa: SLF001 - the model's cached table
            torch.from_numpy(items), torch.from_numpy(types), torch.from_numpy(age),
            torch.from_numpy(lengths),
        )  # fmt: skip
    d = int(vec.shape[1])
    out[:, :d] = vec.float().numpy()
    if enc.cfg.trend:  # the trend coordinate: one gain for every user (revisit: zero here)
        out[:, d + int(enc.cfg.revisit_dim)] = float(enc.get_buffer("trend_gain"))
    return out


def _padded(
    jobs: Sequence[tuple[Sequence[Interaction], Sequence[Sequence[int]]]],
    lookup: dict[str, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``items, types [V, L]`` (int64), ``age_s [V, L]`` (float32), ``lengths [V]``,
    newest event first, as ``arrays_from_histories`` pads the dropped windows."""
    width = max(1, max(len(s) for s, _d in jobs))
    blocks = []
    for short, drops in jobs:
        n = len(short)
        keep = np.ones((len(drops), n), dtype=bool)
        for r, dr in enumerate(drops):
            keep[r, list(dr)] = False
        keep = keep[:, ::-1]  # newest first
        shift = N_SPECIAL_ITEMS
        it = np.fromiter(
            (lookup.get(e[0], OOV_INDEX - shift) + shift for e in reversed(short)), np.int64, n
        )
        ty = np.fromiter((type_index(e[1]) for e in reversed(short)), np.int64, n)
        ts = np.fromiter((e[2] for e in reversed(short)), np.int64, n)
        r_idx, src = np.nonzero(keep)
        cols = (np.cumsum(keep, axis=1) - 1)[r_idx, src]
        b_items = np.zeros((len(drops), width), dtype=np.int64)
        b_types = np.zeros((len(drops), width), dtype=np.int64)
        b_age = np.zeros((len(drops), width), dtype=np.float32)
        b_items[r_idx, cols] = it[src]
        b_types[r_idx, cols] = ty[src]
        newest = np.where(keep, ts[None, :], np.iinfo(np.int64).min).max(axis=1)
        b_age[r_idx, cols] = np.maximum((newest[r_idx] - ts[src]) / 1000.0, 0.0)
        blocks.append((b_items, b_types, b_age, keep.sum(axis=1).astype(np.int64)))
    return tuple(np.concatenate([b[k] for b in blocks]) for k in range(4))  # type: ignore[return-value]


def _forward(
    enc: Any, table: Tensor, items: Tensor, types: Tensor, age_s: Tensor, lengths: Tensor
) -> Tensor:
    """``InterestEncoder.encode_short``'s computation with the BERT layers run directly."""
    b, width = items.shape
    ar = torch.arange(width)
    mask = ar[None, :] < lengths[:, None]
    emb = table[items]
    tokens = enc.short_in(emb) + enc.short_age(enc._age_bucket(age_s))  # noqa: SLF001
    x = torch.cat([enc.short_summary.expand(b, 1, -1), tokens], dim=1)
    tt = torch.cat([torch.zeros(b, 1, dtype=types.dtype), types], dim=1)
    keys = torch.cat([torch.ones(b, 1, dtype=torch.bool), mask], dim=1)
    hidden = _bert(enc.short_bert, x, tt, torch.arange(width + 1)[None], keys)
    vec: Tensor = enc.short_head(hidden, emb, mask, lengths)
    return vec


def _bert(bert: Any, x: Tensor, types: Tensor, positions: Tensor, keys: Tensor) -> Tensor:
    """A transformers ``BertModel`` (eval, absolute positions) on ``inputs_embeds``:
    embeddings, then each layer's attention and feed-forward, padded keys masked."""
    emb = bert.embeddings
    x = emb.LayerNorm(x + emb.token_type_embeddings(types) + emb.position_embeddings(positions))
    b, width, _ = x.shape
    bias = torch.zeros(b, 1, 1, width, dtype=x.dtype).masked_fill(
        ~keys[:, None, None, :], torch.finfo(x.dtype).min
    )
    for layer in bert.encoder.layer:
        sa = layer.attention.self
        h, dh = int(sa.num_attention_heads), int(sa.attention_head_size)

        def heads(t: Tensor, h: int = h, dh: int = dh) -> Tensor:
            return t.view(b, width, h, dh).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(
            heads(sa.query(x)), heads(sa.key(x)), heads(sa.value(x)), attn_mask=bias
        )
        att = layer.attention.output(ctx.transpose(1, 2).reshape(b, width, h * dh), x)
        x = layer.output(layer.intermediate(att), att)
    return x
