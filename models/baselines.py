"""Non-neural baselines scored on the same split and candidates as the model.

Each maps test-user indices to a float64 score matrix over the split's candidates, ties broken
by global popularity then candidate order: ``popularity``, ``recent_popularity``, ``item_knn``
(co-occurrence cosine) and ``repeat_last`` (the user's own distinct items, newest first, then
popularity; called ``own_recent`` before issue #13, still available under that name). The same
scorers serve the temporal and the leave-one-out split. Definitions: docs/DESIGN.md.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from interest_stream.models.split import EvalSplit

__all__ = ["Baselines"]


class Baselines:
    """Baseline scorers for one :class:`~models.split.EvalSplit`.

    Args:
        split: The split (training events, candidates, test users).
        recent_days: Window of ``recent_popularity`` before the cutoff.
    """

    def __init__(self, split: EvalSplit, recent_days: float = 1.0) -> None:
        self.split = split
        n_c = len(split.candidates)
        cols = split.train["item_id"].astype(str).map(split.cand_index).to_numpy(dtype=np.int64)
        counts = np.bincount(cols, minlength=n_c).astype(np.float64)
        # distinct tie-break in [0, 1): higher for more popular, then lower column
        order = np.lexsort((np.arange(n_c), -counts))
        frac = np.empty(n_c, dtype=np.float64)
        frac[order] = (n_c - np.arange(n_c)) / (n_c + 1.0)
        self.pop_frac = frac
        self.pop_scores = counts + 0.5 * frac
        recent_from = split.cutoff_ts - int(recent_days * 86_400_000)
        rmask = split.train["ts"].to_numpy() >= recent_from
        rcounts = np.bincount(cols[rmask], minlength=n_c).astype(np.float64)
        self.recent_scores = rcounts + 0.9 * frac
        self.recent_events = int(rmask.sum())

        users = split.train["user_id"].astype(str)
        codes, _ = users.factorize()
        x = sp.csr_matrix((np.ones(len(cols)), (codes, cols)), shape=(int(codes.max()) + 1, n_c))
        x.data[:] = 1.0  # binary after duplicates summed
        x.sum_duplicates()
        x.data[:] = 1.0
        co = (x.T @ x).tocsr()  # [C, C] co-occurrence counts
        n_users = np.asarray(x.sum(axis=0)).ravel()
        inv = 1.0 / np.sqrt(np.maximum(n_users, 1.0))
        self.sim = sp.diags(inv) @ co @ sp.diags(inv)  # cosine
        self.sim = self.sim.tocsr()
        hist_rows, hist_cols = [], []
        for u, items in enumerate(split.hist_items):
            uniq = np.unique(items)
            hist_rows.append(np.full(len(uniq), u, dtype=np.int64))
            hist_cols.append(uniq)
        rows = np.concatenate(hist_rows) if hist_rows else np.zeros(0, np.int64)
        hcols = np.concatenate(hist_cols) if hist_cols else np.zeros(0, np.int64)
        self.hist = sp.csr_matrix(
            (np.ones(len(rows)), (rows, hcols)), shape=(len(split.users), n_c)
        )

    def popularity(self, users: np.ndarray) -> np.ndarray:
        """float64 ``[len(users), C]`` global popularity scores."""
        return np.broadcast_to(self.pop_scores, (len(users), len(self.pop_scores))).copy()

    def recent_popularity(self, users: np.ndarray) -> np.ndarray:
        """float64 ``[len(users), C]`` last-days popularity scores."""
        return np.broadcast_to(self.recent_scores, (len(users), len(self.recent_scores))).copy()

    def item_knn(self, users: np.ndarray) -> np.ndarray:
        """float64 ``[len(users), C]`` co-occurrence kNN scores."""
        scores = np.asarray((self.hist[users] @ self.sim).todense(), dtype=np.float64)
        return scores + 1e-7 * self.pop_frac[None, :]

    def repeat_last(self, users: np.ndarray) -> np.ndarray:
        """float64 ``[len(users), C]``: own items by recency (>= 2), then popularity (< 1)."""
        out = np.broadcast_to(self.pop_frac, (len(users), len(self.pop_frac))).copy()
        for row, u in enumerate(users):
            items = self.split.hist_items[u]
            if len(items) == 0:
                continue
            uniq, first_in_rev = np.unique(items[::-1], return_index=True)
            last_pos = len(items) - 1 - first_in_rev  # position of the last touch
            out[row, uniq] = 2.0 + last_pos / len(items)
        return out

    own_recent = repeat_last
    """The name of :meth:`repeat_last` before issue #13 (kept for callers)."""
