"""Full-ranking metrics per user (Recall, NDCG, MRR at 10 and 20, MRR) and bootstrap intervals.

Rank of an item = 1 + number of candidates with a strictly higher score; excluded items score
``-inf``. Binary relevance; formulas in docs/DESIGN.md ("Evaluation protocol"). Callers break
ties among the top. :data:`METRIC_NAMES` is the set every report carries, in both protocols.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["METRIC_NAMES", "bootstrap_ci", "paired_ratio_ci", "rank_metrics"]

METRIC_NAMES = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10", "mrr@20", "mrr")
"""Per-user metrics of :func:`rank_metrics`; ``mrr`` is the uncut reciprocal rank."""


def rank_metrics(
    score_fn: Callable[[np.ndarray], np.ndarray],
    users: np.ndarray,
    targets: Sequence[np.ndarray],
    exclude: Sequence[np.ndarray] | None = None,
    chunk: int = 256,
) -> dict[str, np.ndarray]:
    """Per-user ranking metrics of one method.

    Args:
        score_fn: Maps int64 user indices ``[b]`` to float scores ``[b, n_candidates]``.
        users: int64 user indices to evaluate (each must have >= 1 target).
        targets: Per user index, int64 candidate columns of the targets.
        exclude: Per user index, candidate columns removed from the ranking, or ``None``.
        chunk: Users scored per call of ``score_fn``.

    Returns:
        ``{metric: float64 [len(users)]}`` for :data:`METRIC_NAMES`.
    """
    n = len(users)
    out = {name: np.zeros(n, dtype=np.float64) for name in METRIC_NAMES}
    discounts = 1.0 / np.log2(np.arange(2, 22, dtype=np.float64))
    for start in range(0, n, chunk):
        idx = users[start : start + chunk]
        scores = np.asarray(score_fn(idx), dtype=np.float64)
        for row, u in enumerate(idx):
            s = scores[row]
            if exclude is not None and len(exclude[u]):
                s = s.copy()
                s[exclude[u]] = -np.inf
            tgt = targets[u]
            ts = s[tgt]
            ranks = 1 + (s[None, :] > ts[:, None]).sum(axis=1)
            _fill(out, start + row, ranks, len(tgt), discounts)
    return out


def _fill(
    out: dict[str, np.ndarray], pos: int, ranks: np.ndarray, n_t: int, discounts: np.ndarray
) -> None:
    """Write one user's metrics (target ranks ``ranks``, ``n_t`` targets) at ``pos``."""
    best = int(ranks.min())
    out["mrr"][pos] = 1.0 / best
    for k in (10, 20):
        hit = ranks[ranks <= k]
        out[f"recall@{k}"][pos] = float(len(hit)) / n_t
        idcg = float(discounts[: min(n_t, k)].sum())
        out[f"ndcg@{k}"][pos] = float(discounts[hit - 1].sum()) / idcg
        out[f"mrr@{k}"][pos] = 1.0 / best if best <= k else 0.0


def _resample_index(n: int, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


def bootstrap_ci(
    values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of per-user values with a percentile bootstrap interval over users.

    Args:
        values: float ``[U]`` per-user metric.
        n_boot: Resamples.
        seed: Seed of the resampling (the same seed gives the same resamples for
            every method, i.e. paired intervals).
        level: Confidence level.

    Returns:
        ``(mean, low, high)``.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (float("nan"), float("nan"), float("nan"))
    idx = _resample_index(v.size, n_boot, seed)
    means = v[idx].mean(axis=1)
    a = (1.0 - level) / 2.0
    return (float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a)))


def paired_ratio_ci(
    num: np.ndarray, den: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Ratio of two methods' means on the same users, with a paired bootstrap interval.

    Args:
        num: float ``[U]`` per-user metric of the numerator method.
        den: float ``[U]`` per-user metric of the denominator method (same users).
        n_boot: Resamples.
        seed: Resampling seed.
        level: Confidence level.

    Returns:
        ``(ratio, low, high)`` of ``mean(num) / mean(den)``.
    """
    a = np.asarray(num, dtype=np.float64)
    b = np.asarray(den, dtype=np.float64)
    if a.size == 0 or b.mean() == 0:
        return (float("nan"), float("nan"), float("nan"))
    idx = _resample_index(a.size, n_boot, seed)
    ratios = a[idx].mean(axis=1) / np.maximum(b[idx].mean(axis=1), 1e-12)
    q = (1.0 - level) / 2.0
    return (
        float(a.mean() / b.mean()),
        float(np.quantile(ratios, q)),
        float(np.quantile(ratios, 1 - q)),
    )
