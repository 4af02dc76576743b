"""The training task: losses on top of :class:`~models.encoder.InterestEncoder` outputs.

* next item (short vector): softmax cross-entropy over the items, weighted by
  the target event's type weight;
* next event type (short vector, auxiliary head): 5-way cross-entropy — the
  multi-task part that makes the encoder tell a purchase from a view;
* next days (long vector, and the blend ``alpha * short + (1 - alpha) * long``):
  multi-positive softmax cross-entropy, the weighted mean of ``-log p(item)``
  over the distinct items of the following ``long_horizon_hours``.

The softmax is full (every trained item) or sampled: the positives against
``n_negatives`` uniform negatives shared by the batch (accidental hits masked).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.config import N_SPECIAL_ITEMS

__all__ = ["ItemSoftmax", "type_loss"]


class ItemSoftmax:
    """Log-likelihood of target items under a softmax over the first ``n_scored`` items.

    Args:
        n_scored: Items taking part in the softmax (vocabulary rows ``0 .. n_scored-1``;
            items after them, e.g. cold items known only from text, are never scored).
        sampled: Use the sampled softmax.
        n_negatives: Negatives per step of the sampled softmax.
        generator: Torch generator of the negatives.
    """

    def __init__(
        self,
        n_scored: int,
        sampled: bool,
        n_negatives: int,
        generator: torch.Generator | None = None,
    ) -> None:
        self.n_scored = n_scored
        self.sampled = sampled
        self.n_negatives = min(n_negatives, n_scored)
        self.generator = generator

    def nll(
        self,
        vec: Tensor,
        table: Tensor,
        rows: Tensor,
        items: Tensor,
        weights: Tensor,
        per_row: bool = True,
    ) -> Tensor:
        """Weighted mean negative log-likelihood of (row, item) target pairs.

        Each row's targets share the row's softmax. With ``per_row`` the loss is
        a weighted mean within each row and then a plain mean over rows (a row
        with many targets counts once); otherwise one weighted mean over all
        pairs (the weights then also rank rows: a purchase outweighs a view).

        Args:
            vec: float ``[B, dim]`` user vectors.
            table: float ``[n_items + 2, dim]`` item table.
            rows: int64 ``[T]`` row of each target pair.
            items: int64 ``[T]`` encoder item index (>= 2) of each target.
            weights: float ``[T]`` weight of each pair.
            per_row: Normalise the weights within each row.

        Returns:
            Scalar loss.
        """
        scored = table[N_SPECIAL_ITEMS : N_SPECIAL_ITEMS + self.n_scored]
        if not self.sampled:
            logp = F.log_softmax(vec @ scored.T, dim=-1)  # [B, n_scored]
            pair = logp[rows, items - N_SPECIAL_ITEMS]
        else:
            neg = torch.randint(
                0, self.n_scored, (self.n_negatives,), device=vec.device, generator=self.generator
            )
            neg_logits = vec @ scored[neg].T  # [B, K]
            # a row's positives never count as its negatives
            order = torch.argsort(neg)
            sorted_neg = neg[order]
            tgt = items - N_SPECIAL_ITEMS
            at = torch.searchsorted(sorted_neg, tgt).clamp_max(len(neg) - 1)
            hit = sorted_neg[at] == tgt
            if bool(hit.any()):
                # all duplicates of a hit item: mark every k with neg[k] == target
                k_idx = order[at[hit]]
                hit_mask = torch.zeros_like(neg_logits, dtype=torch.bool)
                hit_mask[rows[hit], k_idx] = True
                dup = neg[None, :] == neg[k_idx][:, None]  # [H, K]
                hit_mask[rows[hit]] |= dup
                neg_logits = neg_logits.masked_fill(hit_mask, float("-inf"))
            lse_neg = torch.logsumexp(neg_logits, dim=1)  # [B]
            pos = (vec[rows] * table[items]).sum(-1)  # [T]
            pair = pos - torch.logaddexp(pos, lse_neg[rows])
        if not per_row:
            return (-pair * weights).sum() / weights.sum().clamp_min(1e-12)
        b = vec.shape[0]
        num = torch.zeros(b, device=vec.device, dtype=vec.dtype).index_add(0, rows, -pair * weights)
        den = torch.zeros(b, device=vec.device, dtype=vec.dtype).index_add(0, rows, weights)
        present = den > 0
        if not bool(present.any()):
            return vec.sum() * 0.0
        return (num[present] / den[present]).mean()


def type_loss(logits: Tensor, next_types: Tensor) -> Tensor:
    """Cross-entropy of the next event type.

    Args:
        logits: float ``[B, N_TYPE_IDS]``.
        next_types: int64 ``[B]`` event-type ids (>= 1).

    Returns:
        Scalar loss.
    """
    return F.cross_entropy(logits, next_types)
