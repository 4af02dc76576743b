"""The training task: losses on top of :class:`~interest_stream.models.encoder.InterestEncoder`.

* next item (short vector): type-weighted softmax cross-entropy over the items;
* next event type (short vector, auxiliary head): 5-way cross-entropy;
* next days (long vector, and the blend ``alpha * short + (1 - alpha) * long``):
  multi-positive softmax cross-entropy over the items of the following
  ``long_horizon_hours``.

The softmax is full or sampled (``n_negatives`` uniform negatives shared by the
batch); a row's own history items are hard negatives or masked out
(``mask_history``). Design: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from interest_stream.models.config import N_SPECIAL_ITEMS

__all__ = ["ItemSoftmax", "type_loss"]


class ItemSoftmax:
    """Log-likelihood of target items under a softmax over the first ``n_scored`` items.

    Args:
        n_scored: Items taking part in the softmax (vocabulary rows ``0 .. n_scored-1``;
            items after them, e.g. cold items known only from text, are never scored).
        sampled: Use the sampled softmax.
        n_negatives: Uniform negatives per step of the sampled softmax.
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
        history: Tensor | None = None,
        mask_history: bool = False,
        row_weights: Tensor | None = None,
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
            history: int64 ``[B, L]`` item indices of each row's input history (0 =
                padding): extra negatives of the sampled softmax, or the items
                removed from the softmax with ``mask_history``.
            mask_history: Remove the history items (except the row's positives).
            row_weights: float ``[B]`` weights of the rows in the ``per_row`` mean.

        Returns:
            Scalar loss.
        """
        scored = table[N_SPECIAL_ITEMS : N_SPECIAL_ITEMS + self.n_scored]
        if not self.sampled:
            logits = vec @ scored.T  # [B, n_scored]
            if mask_history and history is not None:
                logits = logits.masked_fill(self._history_mask(history, rows, items), -1e9)
            logp = F.log_softmax(logits, dim=-1)
            pair = logp[rows, items - N_SPECIAL_ITEMS]
        else:
            pair = self._sampled_pairs(vec, table, rows, items, history, mask_history)
        if not per_row:
            return (-pair * weights).sum() / weights.sum().clamp_min(1e-12)
        b = vec.shape[0]
        num = torch.zeros(b, device=vec.device, dtype=vec.dtype).index_add(0, rows, -pair * weights)
        den = torch.zeros(b, device=vec.device, dtype=vec.dtype).index_add(0, rows, weights)
        present = den > 0
        if not bool(present.any()):
            return vec.sum() * 0.0
        per = num[present] / den[present]
        if row_weights is None:
            return per.mean()
        rw = row_weights[present]
        return (per * rw).sum() / rw.sum().clamp_min(1e-12)

    def _history_mask(self, history: Tensor, rows: Tensor, items: Tensor) -> Tensor:
        """bool ``[B, n_scored]``: history items of each row, minus the row's positives."""
        mask = torch.zeros(history.shape[0], self.n_scored, dtype=torch.bool, device=history.device)
        valid = (history >= N_SPECIAL_ITEMS) & (history < N_SPECIAL_ITEMS + self.n_scored)
        b_idx, l_idx = valid.nonzero(as_tuple=True)
        mask[b_idx, history[b_idx, l_idx] - N_SPECIAL_ITEMS] = True
        mask[rows, items - N_SPECIAL_ITEMS] = False
        return mask

    def _sampled_pairs(
        self,
        vec: Tensor,
        table: Tensor,
        rows: Tensor,
        items: Tensor,
        history: Tensor | None,
        mask_history: bool,
    ) -> Tensor:
        """Log-probability of each pair against uniform (+ in-history) negatives ``[T]``."""
        b = vec.shape[0]
        neg = (
            torch.randint(
                0, self.n_scored, (self.n_negatives,), device=vec.device, generator=self.generator
            )
            + N_SPECIAL_ITEMS
        )
        neg_logits = vec @ table[neg].T  # [B, K]
        drop = _member(neg.expand(b, -1), rows, items)  # a row's positives
        parts = []
        if history is not None and history.shape[1] > 0:
            hist, _ = torch.sort(history, dim=1)  # [B, L], padding first
            dup = torch.zeros_like(hist, dtype=torch.bool)
            dup[:, 1:] = hist[:, 1:] == hist[:, :-1]
            h_drop = (hist < N_SPECIAL_ITEMS) | (hist >= N_SPECIAL_ITEMS + self.n_scored) | dup
            h_drop |= _member(hist, rows, items)
            # uniform negatives in the history: counted twice, or masked
            at = torch.searchsorted(hist, neg.expand(b, -1).contiguous()).clamp_max(
                hist.shape[1] - 1
            )
            drop |= hist.gather(1, at) == neg[None, :]
            if not mask_history:
                h_logits = torch.einsum("bd,bld->bl", vec, table[hist])
                parts.append(h_logits.masked_fill(h_drop, float("-inf")))
        parts.insert(0, neg_logits.masked_fill(drop, float("-inf")))
        lse_neg = torch.logsumexp(torch.cat(parts, dim=1), dim=1)  # [B]
        pos = (vec[rows] * table[items]).sum(-1)  # [T]
        return pos - torch.logaddexp(pos, lse_neg[rows])


def _member(cands: Tensor, rows: Tensor, items: Tensor) -> Tensor:
    """bool ``[B, C]``: ``cands[b, c]`` is one of row ``b``'s target items."""
    out = torch.zeros_like(cands, dtype=torch.bool)
    hit = cands[rows] == items[:, None]  # [T, C]
    t_idx, c_idx = hit.nonzero(as_tuple=True)
    out[rows[t_idx], c_idx] = True
    return out


def type_loss(logits: Tensor, next_types: Tensor) -> Tensor:
    """Cross-entropy of the next event type.

    Args:
        logits: float ``[B, N_TYPE_IDS]``.
        next_types: int64 ``[B]`` event-type ids (>= 1).

    Returns:
        Scalar loss.
    """
    return F.cross_entropy(logits, next_types)
