"""The interest encoder: an item tower and two small Hugging Face BERT paths (short, long).

``item_table()`` embeds items (row 0 padding, row 1 OOV); ``encode_short`` / ``encode_long`` map
windows to ``[B, dim]``; optional fixed revisit and trend channels are set after training
(``models.selection``) and included by ``score_table()``. ``forward`` returns embeddings only;
losses live in ``models.task``. Design: docs/DESIGN.md ("Encoder architecture").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from transformers import BertModel

from interest_stream.models.config import (
    DEFAULT_TYPE_WEIGHTS,
    N_SPECIAL_ITEMS,
    N_TYPE_IDS,
    EncoderConfig,
    type_index,
)
from interest_stream.models.features import WindowArrays

__all__ = ["InterestEncoder", "SeqBatch"]


@dataclass
class SeqBatch:
    """A padded batch of windows as tensors (newest event first).

    Attributes:
        items: int64 ``[B, L]`` item indices (0 = padding, 1 = OOV).
        types: int64 ``[B, L]`` event-type ids (0 = padding).
        age_s: float32 ``[B, L]`` age of each event relative to the newest one (seconds).
        lengths: int64 ``[B]`` real events per row.
    """

    items: Tensor
    types: Tensor
    age_s: Tensor
    lengths: Tensor

    @classmethod
    def from_arrays(cls, arr: WindowArrays, pin: bool = False) -> SeqBatch:
        """Wrap numpy arrays without copying (optionally in pinned memory for CUDA)."""
        batch = cls(
            items=torch.from_numpy(np.ascontiguousarray(arr.items)),
            types=torch.from_numpy(np.ascontiguousarray(arr.types)),
            age_s=torch.from_numpy(np.ascontiguousarray(arr.age_s)),
            lengths=torch.from_numpy(np.ascontiguousarray(arr.lengths)),
        )
        return batch.pin_memory() if pin else batch

    def pin_memory(self) -> SeqBatch:
        """Copy into page-locked memory (for asynchronous host-to-GPU copies)."""
        return SeqBatch(
            self.items.pin_memory(),
            self.types.pin_memory(),
            self.age_s.pin_memory(),
            self.lengths.pin_memory(),
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SeqBatch:
        """Move every tensor to ``device``."""
        return SeqBatch(
            self.items.to(device, non_blocking=non_blocking),
            self.types.to(device, non_blocking=non_blocking),
            self.age_s.to(device, non_blocking=non_blocking),
            self.lengths.to(device, non_blocking=non_blocking),
        )

    @property
    def mask(self) -> Tensor:
        """bool ``[B, L]``: True for real events."""
        width = self.items.shape[1]
        ar = torch.arange(width, device=self.items.device)
        return ar[None, :] < self.lengths[:, None]


_REVISIT_SEED = 0x5EED
"""Seed of the revisit codes (plus the table's row count): refits get the same codes."""


class InterestEncoder(nn.Module):
    """Short- and long-term interest vectors in the item space.

    Args:
        cfg: Architecture.
        n_items: Vocabulary size (real items; the table has ``n_items + 2`` rows).
        n_categories: Number of item categories (0 = no category embedding).
        text_dim: Size of the frozen text embeddings (0 = no text path).

    Example::

        enc = InterestEncoder(EncoderConfig(), n_items=1000)
        table = enc.item_table()                 # [1002, 64]
        short = enc.encode_short(batch, table)   # [B, 64]
        scores = short @ table[2:].T             # [B, 1000]
    """

    def __init__(
        self, cfg: EncoderConfig, n_items: int, n_categories: int = 0, text_dim: int = 0
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_items = n_items
        self.n_categories = n_categories
        self.text_dim = text_dim
        rows = n_items + N_SPECIAL_ITEMS
        dim, d = cfg.dim, cfg.d_model
        sem = dim - cfg.identity_dim

        self.item_emb = nn.Embedding(rows, sem)
        nn.init.normal_(self.item_emb.weight, std=1.0 / math.sqrt(sem))
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.register_buffer("item_cat", torch.zeros(rows, dtype=torch.long))
        self.cat_emb: nn.Embedding | None = None
        if n_categories > 0:
            self.cat_emb = nn.Embedding(n_categories + 1, sem)
            nn.init.normal_(self.cat_emb.weight, std=1.0 / math.sqrt(sem))
        self.register_buffer("item_text", torch.zeros(rows, max(text_dim, 0)))
        self.text_proj: nn.Linear | None = None
        if text_dim > 0:
            self.text_proj = nn.Linear(text_dim, sem, bias=False)
        # fixed random identity codes (saved with the weights), scaled by one learned number
        self.ident_scale: nn.Parameter | None = None
        if cfg.identity_dim > 0:
            ident = torch.randn(rows, cfg.identity_dim) / math.sqrt(cfg.identity_dim)
            self.register_buffer("item_ident", ident)
            self.ident_scale = nn.Parameter(torch.tensor(1.0))

        # short path
        self.short_in = nn.Linear(dim, d)
        self.short_age = nn.Embedding(cfg.n_age_buckets, d)
        self.short_summary = nn.Parameter(torch.randn(d) * 0.02)
        self.short_bert = BertModel(  # type: ignore[no-untyped-call]
            cfg.bert_config(cfg.n_layers_short, cfg.short_max_len + 1), add_pooling_layer=False
        )
        self.short_out = nn.Linear(d, dim)
        self.short_copy_score = nn.Linear(d, 1)
        self.short_copy_gain = nn.Parameter(torch.tensor(1.0))
        self.short_empty = nn.Parameter(torch.zeros(dim))

        # long path (causal, no positions)
        self.long_in = nn.Linear(dim, d)
        self.long_bert = BertModel(  # type: ignore[no-untyped-call]
            cfg.bert_config(cfg.n_layers_long, 1), add_pooling_layer=False
        )
        self.long_out = nn.Linear(d, dim)
        self.long_type_logw = nn.Parameter(torch.zeros(N_TYPE_IDS))
        self.long_copy_gain = nn.Parameter(torch.tensor(1.0))
        self.long_empty = nn.Parameter(torch.zeros(dim))

        # auxiliary head (used by the training task): next event type from the short vector
        self.type_head = nn.Linear(dim, N_TYPE_IDS)

        # revisit channel: fixed codes, fixed type weights, one gain set after training
        if cfg.revisit_dim > 0:
            gen = torch.Generator().manual_seed(_REVISIT_SEED + rows)
            codes = torch.randn(rows, cfg.revisit_dim, generator=gen) / math.sqrt(cfg.revisit_dim)
            codes[:N_SPECIAL_ITEMS] = 0.0  # padding and OOV never accumulate
            self.register_buffer("revisit_codes", codes)
            type_w = torch.zeros(N_TYPE_IDS)
            for name, w in DEFAULT_TYPE_WEIGHTS.items():
                type_w[type_index(name)] = w
            self.register_buffer("revisit_type_w", type_w)
            self.register_buffer("revisit_gain", torch.tensor(0.0))
        # trend coordinate: per-item recent popularity, one user-side gain (set after training)
        if cfg.trend:
            self.register_buffer("trend_item", torch.zeros(rows))
            self.register_buffer("trend_gain", torch.tensor(0.0))

    @property
    def out_dim(self) -> int:
        """Size of the published vectors (``dim + revisit_dim``)."""
        return self.cfg.out_dim

    # ------------------------------------------------------------------ items
    def item_table(self) -> Tensor:
        """Vectors of every item index.

        Returns:
            float32 ``[n_items + 2, dim]``; row 0 = padding (zeros), row 1 = OOV,
            row ``i + 2`` = vocabulary item ``i``.
        """
        table = self.item_emb.weight
        if self.cat_emb is not None:
            table = table + self.cat_emb(self.item_cat)
        if self.text_proj is not None:
            table = table + self.text_proj(self.item_text)
        if self.ident_scale is not None:
            table = torch.cat([table, self.ident_scale * self.get_buffer("item_ident")], dim=1)
        pad = torch.ones(table.shape[0], 1, device=table.device, dtype=table.dtype)
        pad[0] = 0.0
        return table * pad

    def score_table(self) -> Tensor:
        """The published item vectors: :meth:`item_table` plus the revisit codes.

        Returns:
            float32 ``[n_items + 2, out_dim]`` (same row layout as :meth:`item_table`).
        """
        table = self.item_table()
        parts = [table]
        if self.cfg.revisit_dim > 0:
            parts.append(self.get_buffer("revisit_codes").to(table.dtype))
        if self.cfg.trend:
            parts.append(self.get_buffer("trend_item").to(table.dtype).unsqueeze(1))
        return torch.cat(parts, dim=1) if len(parts) > 1 else table

    def revisit_vector(self, batch: SeqBatch) -> Tensor:
        """The long vector's revisit channel for a batch of histories (newest first).

        Args:
            batch: Histories (``age_s`` relative to each row's newest event); cut to
                ``long_max_len`` newest events like :meth:`encode_long`.

        Returns:
            float32 ``[B, revisit_dim]``: ``gain * sum_j w_j code(j) / sum_j w_j``;
            zeros for an empty history (and ``[B, 0]`` without the channel).
        """
        b = batch.items.shape[0]
        if self.cfg.revisit_dim == 0:
            return torch.zeros(b, 0, device=batch.items.device)
        batch = self._cap(batch, self.cfg.long_max_len)
        rate = math.log(2.0) / (3600.0 * self.cfg.revisit_half_life_hours)
        decay = torch.exp(-rate * batch.age_s.clamp_min(0.0).float())
        w = self.get_buffer("revisit_type_w")[batch.types] * decay * batch.mask
        codes = self.get_buffer("revisit_codes")[batch.items]  # [B, L, D]
        total = w.sum(dim=1, keepdim=True).clamp_min(1e-12)
        out = torch.einsum("bl,bld->bd", w / total, codes)
        return self.get_buffer("revisit_gain") * out

    def _age_bucket(self, age_s: Tensor) -> Tensor:
        bucket = torch.floor(torch.log2(1.0 + age_s.clamp_min(0.0)))
        return bucket.clamp(0, self.cfg.n_age_buckets - 1).long()

    def _run_bert(
        self,
        bert: BertModel,
        summary: Tensor,
        tokens: Tensor,
        types: Tensor,
        positions: Tensor,
        mask: Tensor,
    ) -> Tensor:
        b = tokens.shape[0]
        x = torch.cat([summary.expand(b, 1, -1), tokens], dim=1)
        ones = torch.ones(b, 1, dtype=mask.dtype, device=mask.device)
        att = torch.cat([ones, mask], dim=1).long()
        tt = torch.cat([torch.zeros(b, 1, dtype=types.dtype, device=types.device), types], dim=1)
        out = bert(
            inputs_embeds=x,
            attention_mask=att,
            token_type_ids=tt,
            position_ids=positions,
            return_dict=True,
        )
        hidden: Tensor = out.last_hidden_state
        return hidden

    # ------------------------------------------------------------------ paths
    def encode_short(self, batch: SeqBatch, table: Tensor | None = None) -> Tensor:
        """Short-term vectors of a batch of recent windows.

        Args:
            batch: Windows, newest event first (``items [B, L]``, ``L <= short_max_len``
                is enforced by truncation).
            table: ``item_table()`` if already computed (``[n_items + 2, dim]``).

        Returns:
            float32 ``[B, dim]``.
        """
        if table is None:
            table = self.item_table()
        batch = self._cap(batch, self.cfg.short_max_len)
        mask = batch.mask
        b, width = batch.items.shape
        emb = table[batch.items]  # [B, L, dim]
        tokens = self.short_in(emb) + self.short_age(self._age_bucket(batch.age_s))
        pos = torch.arange(width + 1, device=tokens.device).unsqueeze(0).expand(b, -1)
        hidden = self._run_bert(self.short_bert, self.short_summary, tokens, batch.types, pos, mask)
        return self.short_head(hidden, emb, mask, batch.lengths)

    def short_head(self, hidden: Tensor, emb: Tensor, mask: Tensor, lengths: Tensor) -> Tensor:
        """The short vector from the short BERT's output (summary token first): the
        summary's projection plus the copy attention over the window's item embeddings
        ``emb [B, L, dim]``; an empty window gets the learned "no history" vector."""
        h_sum, h_tok = hidden[:, 0], hidden[:, 1:]
        score = self.short_copy_score(h_tok).squeeze(-1).masked_fill(~mask, -1e9)
        attn = torch.softmax(score, dim=-1) * mask
        copy = torch.einsum("bl,bld->bd", attn, emb)
        out = self.short_out(h_sum) + self.short_copy_gain * copy
        empty = (lengths == 0).unsqueeze(-1)
        return torch.where(empty, self.short_empty.expand_as(out), out)

    def long_prefix_vectors(
        self,
        items: Tensor,
        types: Tensor,
        lengths: Tensor,
        table: Tensor | None = None,
        age_s: Tensor | None = None,
    ) -> Tensor:
        """Long-term vectors after every prefix of chronological sequences.

        The long path is causal: event ``j`` attends to events ``<= j`` only, and
        the vector after event ``t`` pools events ``<= t``. One pass therefore
        gives the long vector of every prefix (what training needs), and the
        vector after the last event is :meth:`encode_long`'s answer.

        Args:
            items: int64 ``[B, L]`` item indices, **oldest first**, padding at the end.
            types: int64 ``[B, L]`` event-type ids.
            lengths: int64 ``[B]`` real events per row.
            table: ``item_table()`` if already computed.
            age_s: float ``[B, L]`` seconds before any per-row reference time (e.g. the
                row's newest event); needed when ``long_half_life_hours`` is set.

        Returns:
            float32 ``[B, L, dim]``: row ``b``, position ``t`` = long vector of events
            ``0..t`` of row ``b`` (positions ``>= lengths[b]`` are meaningless).
        """
        if table is None:
            table = self.item_table()
        b, width = items.shape
        ar = torch.arange(width, device=items.device)
        mask = ar[None, :] < lengths[:, None]  # [B, L]
        emb = table[items]  # [B, L, dim]
        tokens = self.long_in(emb)
        causal = ar[None, :] <= ar[:, None]  # [L(query), L(key)]
        att = (causal[None] & mask[:, None, :]) | torch.eye(
            width, dtype=torch.bool, device=items.device
        )[None]
        pos = torch.zeros(b, width, dtype=torch.long, device=items.device)
        out = self.long_bert(
            inputs_embeds=tokens,
            attention_mask=att.to(tokens.dtype),
            token_type_ids=types,
            position_ids=pos,
            return_dict=True,
        )
        hidden: Tensor = out.last_hidden_state  # [B, L, d]
        logw = self.long_type_logw[types]  # [B, L]
        if self.cfg.long_half_life_hours is not None and age_s is not None:
            rate = math.log(2.0) / (3600.0 * self.cfg.long_half_life_hours)
            logw = logw.double() - rate * age_s.double()
            logw = logw - logw.masked_fill(~mask, float("-inf")).amax(1, keepdim=True).clamp(
                min=-1e30
            )
            w = (torch.exp(logw.clamp(min=-700.0)) * mask).to(hidden.dtype)
        else:
            w = torch.exp(logw) * mask
        cum_w = torch.cumsum(w, dim=1).clamp_min(1e-30).unsqueeze(-1)
        pooled = torch.cumsum(w.unsqueeze(-1) * hidden, dim=1) / cum_w
        copy = torch.cumsum(w.unsqueeze(-1) * emb, dim=1) / cum_w
        res: Tensor = self.long_out(pooled) + self.long_copy_gain * copy
        return res

    def encode_long(self, batch: SeqBatch, table: Tensor | None = None) -> Tensor:
        """Long-term vectors of a batch of long histories.

        Args:
            batch: Histories, newest event first (``items [B, L]``, truncated to
                ``long_max_len`` newest events).
            table: ``item_table()`` if already computed (``[n_items + 2, dim]``).

        Returns:
            float32 ``[B, dim]``.
        """
        batch = self._cap(batch, self.cfg.long_max_len)
        b, width = batch.items.shape
        ar = torch.arange(width, device=batch.items.device)
        # newest-first -> oldest-first (padding stays at the end)
        src = (batch.lengths[:, None] - 1 - ar[None, :]).clamp_min(0)
        valid = ar[None, :] < batch.lengths[:, None]
        items = torch.where(valid, batch.items.gather(1, src), torch.zeros_like(batch.items))
        types = torch.where(valid, batch.types.gather(1, src), torch.zeros_like(batch.types))
        ages = torch.where(valid, batch.age_s.gather(1, src), torch.zeros_like(batch.age_s))
        prefix = self.long_prefix_vectors(items, types, batch.lengths, table, ages)
        last = (batch.lengths - 1).clamp_min(0)
        out = prefix[torch.arange(b, device=prefix.device), last]
        empty = (batch.lengths == 0).unsqueeze(-1)
        return torch.where(empty, self.long_empty.expand_as(out), out)

    @staticmethod
    def _cap(batch: SeqBatch, max_len: int) -> SeqBatch:
        if batch.items.shape[1] <= max_len:
            return batch
        return SeqBatch(
            batch.items[:, :max_len],
            batch.types[:, :max_len],
            batch.age_s[:, :max_len],
            batch.lengths.clamp_max(max_len),
        )

    def forward(self, short: SeqBatch, long: SeqBatch) -> tuple[Tensor, Tensor]:
        """Both vectors for aligned batches of short windows and long histories.

        Args:
            short: ``B`` short windows.
            long: The same ``B`` users' long histories.

        Returns:
            ``(short [B, dim], long [B, dim])``.
        """
        table = self.item_table()
        return self.encode_short(short, table), self.encode_long(long, table)
