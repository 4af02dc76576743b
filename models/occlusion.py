"""Exact single-event occlusion of a one-layer long path, without one forward per variant.

The long path embeds each event on its own (no positions), lets event ``i`` attend to
events ``<= i`` and pools the hidden states with per-event weights. Removing event ``j``
therefore leaves the hidden states before ``j`` unchanged, and for each later event
only removes one key from its softmax: ``ctx_i = (N_i - e_ij v_j) / (D_i - e_ij)`` per
head (``N``, ``D`` the unnormalised sums, float64). Only those later events' output
blocks are recomputed; the pooled sums lose ``j``'s term and get the changed terms.
The group of the oldest events (a prefix of the history) is the same computation: the
later events' softmax over the remaining keys only (summed directly, no cancellation).
:func:`encode_variants_many` encodes several users' variants at once (one short-path and
one long-path forward for all of them), for the worker's batched explanations.
Design and measurements: docs/DESIGN.md ("Explanations").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from interest_stream.core.events import Interaction
from interest_stream.models.config import N_SPECIAL_ITEMS, OOV_INDEX, type_index
from interest_stream.models.encoder import InterestEncoder
from interest_stream.models.short_variants import short_variants

__all__ = [
    "EXACT_EVENTS",
    "VariantJob",
    "encode_variants_many",
    "exact_long_occlusion",
    "occludable",
]

EXACT_EVENTS = 8
"""Single events of the long path occluded exactly per window (screened: the largest
first-order changes); the others keep their first-order change. ``None``: all exact."""


VariantJob = tuple[
    Sequence[Interaction], Sequence[Sequence[int]], Sequence[Interaction], Sequence[Sequence[int]]
]
"""One user's ``(short, short_drops, long, long_drops)`` (``InterestModel.encode_variants``)."""


def encode_variants_many(
    model: Any, jobs: Sequence[VariantJob], exact_events: int | None = EXACT_EVENTS
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``model.encode_variants`` of several users in one pass (same results with
    ``exact_events=None``; else see :func:`exact_long_occlusion`'s ``screen``).

    The short variants of every job go through one lean forward pass
    (:func:`~interest_stream.models.short_variants.short_variants`) and the long
    variants the exact formula does not cover through one ``encode_long`` call: the
    per-call cost of a forward pass is paid once per batch, not once per user.

    Args:
        model: An ``InterestModel``.
        jobs: Per user ``(short, short_drops, long, long_drops)``.
        exact_events: Single long-path events occluded exactly per window.

    Returns:
        Per job ``(float32 [len(short_drops), dim], float32 [len(long_drops), dim])``.
    """
    dim = int(model.dim)
    short_vecs = short_variants(model, [(short, drops) for short, drops, _l, _ld in jobs])
    longs = [np.empty((len(ld), dim), dtype=np.float32) for _s, _sd, _l, ld in jobs]
    rest: list[tuple[int, int]] = []  # (job, row) encoded by one forward per variant
    lookup = getattr(model, "_lookup", model.item_index)
    for j, (_s, _sd, long, long_drops) in enumerate(jobs):
        out = longs[j]
        done: set[int] = set()
        singles = [r for r, d in enumerate(long_drops) if len(d) == 1]
        group = next((r for r, d in enumerate(long_drops) if _is_prefix(d, len(long))), None)
        if (singles or group is not None) and occludable(model.encoder, long):
            prefix = len(long_drops[group]) if group is not None else 0
            with torch.inference_mode():
                vecs = exact_long_occlusion(
                    model.encoder, long, [long_drops[r][0] for r in singles], lookup,
                    model._item_table(),  # noqa: SLF001 - the model's cached table
                    prefix=prefix, screen=exact_events,
                ).cpu().numpy()  # fmt: skip
            out[singles] = vecs[1 : 1 + len(singles)]
            whole = [r for r, d in enumerate(long_drops) if not d]
            out[whole] = vecs[0]
            done.update(singles + whole)
            if group is not None:
                out[group] = vecs[-1]
                done.add(group)
        for r, d in enumerate(long_drops):
            if r in done:
                continue
            if long and len(d) == len(long):  # the empty window: the "no history" vector
                out[r] = model._empty_long()  # noqa: SLF001 - cached per model
            else:
                rest.append((j, r))
    if rest:
        vecs = model.encode_long([_drop(jobs[j][2], jobs[j][3][r]) for j, r in rest])
        for (j, r), v in zip(rest, vecs, strict=True):
            longs[j][r] = v
    results = []
    at = 0
    for (_s, short_drops, _l, _ld), lo in zip(jobs, longs, strict=True):
        results.append((np.asarray(short_vecs[at : at + len(short_drops)]), lo))
        at += len(short_drops)
    return results


def _is_prefix(drop: Sequence[int], n: int) -> bool:
    """Whether ``drop`` removes the oldest events ``0..m-1``, ``1 < m < n`` (the group)."""
    return (
        1 < len(drop) < n
        and drop[0] == 0
        and drop[-1] == len(drop) - 1
        and (list(drop) == list(range(len(drop))))
    )


def _drop(history: Sequence[Interaction], drop: Sequence[int]) -> list[Interaction]:
    gone = set(drop)
    return [e for i, e in enumerate(history) if i not in gone]


def occludable(enc: InterestEncoder, history: Sequence[Interaction]) -> bool:
    """Whether :func:`exact_long_occlusion` applies: a one-layer long path and a history
    of 2..``long_max_len`` events (removing the only event is the empty window)."""
    return enc.cfg.n_layers_long == 1 and 1 < len(history) <= enc.cfg.long_max_len


def exact_long_occlusion(
    enc: InterestEncoder,
    history: Sequence[Interaction],
    drops: Sequence[int],
    item_index: dict[str, int],
    table: Tensor,
    prefix: int = 0,
    screen: int | None = None,
) -> Tensor:
    """Long vectors of ``history`` and of ``history`` without each single event of ``drops``.

    Args:
        enc: The encoder (eval mode, under ``torch.inference_mode``; :func:`occludable`).
        history: One user's long history, oldest first.
        drops: Indices into ``history``; each is removed on its own.
        item_index: Item id -> vocabulary row (``InterestModel.item_index``).
        table: ``enc.item_table()``.
        prefix: With ``0 < prefix < len(history)``, one more row: the history without
            its ``prefix`` oldest events (the occlusion's group of older events).
        screen: With a number ``M < len(drops)``, only the ``M`` drops whose
            first-order change (the event's own pooled term removed, the later events'
            hidden states unchanged) moves the vector most are exact; the other rows
            are that first-order change. ``None``: every row exact.

    Returns:
        float32 ``[1 + len(drops) (+ 1), out_dim]``: row 0 the whole history, row
        ``1 + r`` the history without event ``drops[r]``, the last row (with ``prefix``)
        the history without its oldest ``prefix`` events (equal to ``encode_long`` of each
        up to float rounding).
    """
    dev = table.device
    n = len(history)
    get = item_index.get
    items = torch.tensor(
        [get(e[0], OOV_INDEX - N_SPECIAL_ITEMS) + N_SPECIAL_ITEMS for e in history],
        dtype=torch.long,
        device=dev,
    )
    types = torch.tensor([type_index(e[1]) for e in history], dtype=torch.long, device=dev)
    ts = torch.tensor([e[2] / 1000.0 for e in history], dtype=torch.float64, device=dev)
    bert = enc.long_bert
    x = bert.embeddings(
        inputs_embeds=enc.long_in(table[items])[None],
        token_type_ids=types[None],
        position_ids=torch.zeros(1, n, dtype=torch.long, device=dev),
    )[0]  # [n, d]
    layer: Any = bert.encoder.layer[0]  # a transformers BertLayer (untyped)
    h, dh, v, e, big_d, big_n = _attention(layer, x)
    ar = torch.arange(n, device=dev)

    def block(ctx: Tensor, xq: Tensor) -> Tensor:
        att = layer.attention.output(ctx.to(xq.dtype), xq)
        out: Tensor = layer.output(layer.intermediate(att), att)
        return out

    ctx_full = (big_n / big_d[..., None]).transpose(0, 1).reshape(n, h * dh)
    hidden = block(ctx_full, x).double()  # [n, d]
    drop = torch.tensor(list(drops), dtype=torch.long, device=dev)
    keep = torch.ones(1 + len(drop), n, dtype=torch.float64, device=dev)
    keep[1 + torch.arange(len(drop), device=dev), drop] = 0.0
    exact = torch.arange(len(drop), device=dev)
    if screen is not None and screen < len(drops):
        exact = _screen(enc, items, types, ts, keep, hidden, table, screen)
    # every (later event i, removed event j) pair of the exact rows: i's softmax without j
    pe, pi = torch.nonzero(drop[exact, None] < ar[None, :], as_tuple=True)
    pj = exact[pe]  # row of drop
    jj = drop[pj]
    e_ij = e[:, pi, jj]  # [h, P]
    ctx = (big_n[:, pi] - e_ij[..., None] * v[:, jj]) / (big_d[:, pi] - e_ij)[..., None]
    changed = block(ctx.transpose(0, 1).reshape(-1, h * dh), x[pi]).double() - hidden[pi]
    rows = pj + 1
    if 0 < prefix < n:  # the later events attend to the remaining keys only
        g = prefix
        e_g = e[:, g:, g:]
        ctx_g = ((e_g @ v[:, g:]) / e_g.sum(-1)[..., None]).transpose(0, 1).reshape(-1, h * dh)
        changed = torch.cat([changed, block(ctx_g, x[g:]).double() - hidden[g:]])
        rows = torch.cat([rows, torch.full((n - g,), 1 + len(drop), device=dev)])
        pi = torch.cat([pi, ar[g:]])
        keep = torch.cat([keep, (ar >= g).to(torch.float64)[None]])
    return _pooled(enc, items, types, ts, keep, hidden, rows, pi, changed, table)


def _screen(
    enc: InterestEncoder,
    items: Tensor,
    types: Tensor,
    ts: Tensor,
    keep: Tensor,
    hidden: Tensor,
    table: Tensor,
    screen: int,
) -> Tensor:
    """Rows of the ``screen`` drops whose first-order change (their own pooled term
    removed, the other hidden states kept) moves the long vector most (L2)."""
    none = torch.zeros(0, dtype=torch.long, device=hidden.device)
    first = _pooled(enc, items, types, ts, keep, hidden, none, none, hidden[:0], table)
    moved = (first[1:] - first[0]).norm(dim=1)
    return torch.argsort(moved, descending=True, stable=True)[: max(0, screen)]


def _attention(layer: Any, x: Tensor) -> tuple[int, int, Tensor, Tensor, Tensor, Tensor]:
    """Heads, head size, values and the unnormalised causal softmax sums (float64).

    Returns:
        ``(h, dh, v [h, n, dh], e [h, n, n] (0 above the diagonal), D [h, n], N [h, n, dh])``.
    """
    n = x.shape[0]
    sa: Any = layer.attention.self
    h, dh = int(sa.num_attention_heads), int(sa.attention_head_size)
    q = sa.query(x).view(n, h, dh).transpose(0, 1).double()
    k = sa.key(x).view(n, h, dh).transpose(0, 1).double()
    v = sa.value(x).view(n, h, dh).transpose(0, 1).double()  # [h, n, dh]
    ar = torch.arange(n, device=x.device)
    causal = ar[None, :] <= ar[:, None]  # [query, key]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
    s = s.masked_fill(~causal[None], float("-inf"))
    e = torch.exp(s - s.amax(-1, keepdim=True))
    return h, dh, v, e, e.sum(-1), e @ v


def _pooled(
    enc: InterestEncoder,
    items: Tensor,
    types: Tensor,
    ts: Tensor,
    keep: Tensor,
    hidden: Tensor,
    rows: Tensor,
    pi: Tensor,
    changed: Tensor,
    table: Tensor,
) -> Tensor:
    """The long vectors of every variant from the pooled sums.

    ``keep [V, n]`` (float64): 1 where variant ``v`` keeps event ``i``; ``changed [P, d]``
    the hidden-state change of event ``pi[p]`` in variant ``rows[p]`` (added to its sum).
    """
    logw = enc.long_type_logw[types].double()
    hl = enc.cfg.long_half_life_hours
    if hl is not None:  # the reference time factors out of the ratio: the newest event
        logw = logw - math.log(2.0) / (3600.0 * hl) * (ts.max() - ts)
    w = torch.exp(logw - logw.max())
    emb = table[items].double()
    n_var = keep.shape[0]
    s_w = keep @ w  # [V]
    s_h = keep @ (w[:, None] * hidden)
    s_h.index_add_(0, rows, w[pi, None] * changed)
    s_e = keep @ (w[:, None] * emb)
    dtype = table.dtype
    vec = enc.long_out((s_h / s_w[:, None]).to(dtype)) + enc.long_copy_gain * (
        s_e / s_w[:, None]
    ).to(dtype)
    parts = [vec.float()]
    rd = enc.cfg.revisit_dim
    if rd:
        rate_r = math.log(2.0) / (3600.0 * enc.cfg.revisit_half_life_hours)
        wr = enc.get_buffer("revisit_type_w")[types].double() * torch.exp(-rate_r * (ts.max() - ts))
        codes = enc.get_buffer("revisit_codes")[items].double()
        tot = keep @ wr
        r = keep @ (wr[:, None] * codes)
        gain = enc.get_buffer("revisit_gain")
        parts.append((gain * (r / tot.clamp_min(1e-12)[:, None])).float())
    if enc.cfg.trend:
        parts.append(enc.get_buffer("trend_gain").float().expand(n_var, 1))
    return torch.cat(parts, dim=1)
