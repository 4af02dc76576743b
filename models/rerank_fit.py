"""Fitting and scoring the repeat-aware re-ranker on a split (numpy + scipy, no torch).

:func:`split_candidates` builds every user's candidate list and features of a split with the
serving functions of :mod:`interest_stream.core.rerank` (top items of the blended vector over
the split's candidates, plus the user's own items among their latest 20 events);
:func:`fit_reranker` chooses the feature set, the number of vector candidates and the L2
strength by cross-fitting over the split's users (folds of users: fit on the others, NDCG@10
on the held-out fold) and fits the chosen setting on every user; :func:`rerank_score_fn` is the
evaluation's ``rerank`` method. Which split it is fit on (never the test one): docs/DESIGN.md
("Repeat-aware re-ranking").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.optimize

from interest_stream.core.rerank import (
    FEATURE_SETS,
    FEATURES,
    Reranker,
    RerankItems,
    candidate_features,
    candidate_ids,
    recent_events,
)
from interest_stream.models.config import TaskKind
from interest_stream.models.split import EvalSplit

__all__ = [
    "HIDE_RATE",
    "L2_GRID",
    "N_CANDIDATES_GRID",
    "SplitCandidates",
    "fit_reranker",
    "rerank_score_fn",
    "split_candidates",
]

log = logging.getLogger(__name__)

N_CANDIDATES_GRID = (50, 100, 200)
"""Vector candidates tried on validation (the user's recent items are always added)."""
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
"""L2 strengths tried (on standardised features, loss averaged over users)."""
HIDE_RATE = 0.2
"""Share of a user's distinct recent items whose vector is hidden while fitting (see DESIGN)."""
_FOLDS = 5


@dataclass
class SplitCandidates:
    """Every user's candidates and features, flattened (users in split order).

    Attributes:
        x: float64 ``[N, len(FEATURES)]`` features.
        starts: int64 ``[U + 1]`` row offsets of each user's candidates.
        label: bool ``[N]``: the candidate is one of the user's targets.
        top_rank: int64 ``[N]`` position in the vector ranking (large for recent-only items).
        n_targets: int64 ``[U]`` the user's targets (in or outside the candidates).
        items: ``[N]`` candidate item ids.
    """

    x: np.ndarray
    starts: np.ndarray
    label: np.ndarray
    top_rank: np.ndarray
    n_targets: np.ndarray
    items: list[str]


def _top_columns(scores: np.ndarray, n: int) -> np.ndarray:
    """Columns of the ``n`` highest finite scores, best first (ties: lower column)."""
    finite = np.flatnonzero(np.isfinite(scores))
    if len(finite) > n:
        part = np.argpartition(-scores[finite], n - 1)[:n]
        finite = finite[part]
    return finite[np.lexsort((finite, -scores[finite]))]


def split_candidates(
    split: EvalSplit,
    vecs: dict[str, np.ndarray],
    cand: np.ndarray,
    known: np.ndarray,
    items: RerankItems,
    n_top: int,
    users: Sequence[int] | None = None,
    hide_rate: float = 0.0,
    seed: int = 0,
) -> SplitCandidates:
    """Candidate lists and features of a split's users, as the API would build them.

    Args:
        split: The split (histories, candidates, targets of task ``all``).
        vecs: ``short``, ``long``, ``blend`` user vectors ``[U, dim]`` of the split's users.
        cand: float32 ``[C, dim]`` vectors of the split's candidates (zero rows if unknown).
        known: bool ``[C]``: the checkpoint has a vector for the candidate.
        items: The checkpoint's items (vectors, statistics) for the features.
        n_top: Items taken from the blended vector's ranking.
        users: User indices (default: all).
        hide_rate: Share of each user's distinct recent items treated as unknown.
        seed: Seed of the hiding.
    """
    rng = np.random.default_rng(seed)
    idx = range(len(split.users)) if users is None else users
    xs, labels, ranks, n_t, ids = [], [], [], [], []
    starts = [0]
    for u in idx:
        b = vecs["blend"][u]
        scores = (cand @ b).astype(np.float64)
        scores[~known] = -np.inf
        top = _top_columns(scores, n_top)
        top_ids = [split.candidates[c] for c in top]
        recent = recent_events(split.histories[u])
        cids = candidate_ids(top_ids, recent, n_top)
        hidden: set[str] = set()
        if hide_rate > 0:
            own = list(dict.fromkeys(e[0] for e in recent))
            hidden = {i for i in own if rng.random() < hide_rate}
        x = candidate_features(items, vecs["short"][u], vecs["long"][u], b, cids, recent, hidden)
        tgt = {split.candidates[c] for c in split.targets[TaskKind.ALL][u]}
        rank_of = {item: r for r, item in enumerate(top_ids)}
        xs.append(x)
        labels.append(np.fromiter((c in tgt for c in cids), dtype=bool, count=len(cids)))
        ranks.append(np.array([rank_of.get(c, 1 << 30) for c in cids], dtype=np.int64))
        n_t.append(len(tgt))
        ids.extend(cids)
        starts.append(starts[-1] + len(cids))
    return SplitCandidates(
        x=np.concatenate(xs) if xs else np.zeros((0, len(FEATURES))),
        starts=np.asarray(starts, dtype=np.int64),
        label=np.concatenate(labels) if labels else np.zeros(0, bool),
        top_rank=np.concatenate(ranks) if ranks else np.zeros(0, np.int64),
        n_targets=np.asarray(n_t, dtype=np.int64),
        items=ids,
    )


def _subset(data: SplitCandidates, users: np.ndarray, n_top: int) -> tuple[np.ndarray, ...]:
    """Rows of ``users`` restricted to ``n_top`` vector candidates (+ recent items).

    Returns:
        ``(rows, starts, label, user_of_row)`` with ``starts`` ``[len(users) + 1]``.
    """
    x_recent = data.x[:, FEATURES.index("in_recent")] > 0
    rows_list, starts = [], [0]
    for u in users:
        r = np.arange(data.starts[u], data.starts[u + 1])
        r = r[(data.top_rank[r] < n_top) | x_recent[r]]
        rows_list.append(r)
        starts.append(starts[-1] + len(r))
    rows = np.concatenate(rows_list) if rows_list else np.zeros(0, np.int64)
    seg = np.repeat(np.arange(len(users)), np.diff(starts))
    return rows, np.asarray(starts, dtype=np.int64), data.label[rows], seg


def _fit_weights(z: np.ndarray, starts: np.ndarray, label: np.ndarray, lam: float) -> np.ndarray:
    """L2-regularised softmax over each user's candidates (multi-positive: mean over targets)."""
    lengths = np.diff(starts)
    npos = np.add.reduceat(label.astype(np.float64), starts[:-1]) if len(label) else lengths * 0.0
    use = (npos > 0) & (lengths > 0)
    if not use.any():
        return np.zeros(z.shape[1])
    keep = np.repeat(use, lengths)
    z, label = z[keep], label[keep]
    lengths, npos = lengths[use], npos[use]
    st = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    seg = np.repeat(np.arange(len(lengths)), lengths)
    pos_w = label / npos[seg]
    n_u = float(len(lengths))

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = z @ w
        mx = np.maximum.reduceat(s, st)
        e = np.exp(s - mx[seg])
        den = np.add.reduceat(e, st)
        p = e / den[seg]
        val = (float((mx + np.log(den)).sum()) - float(pos_w @ s)) / n_u + 0.5 * lam * float(w @ w)
        grad = z.T @ (p - pos_w) / n_u + lam * w
        return val, grad

    res = scipy.optimize.minimize(loss, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B",
                                  options={"maxiter": 300})  # fmt: skip
    out: np.ndarray = res.x
    return out


def _ndcg10(
    scores: np.ndarray, starts: np.ndarray, label: np.ndarray, n_t: np.ndarray
) -> np.ndarray:
    """Per-user NDCG@10 of candidate scores (targets outside the candidates are misses)."""
    disc = 1.0 / np.log2(np.arange(2, 12, dtype=np.float64))
    out = np.zeros(len(n_t))
    for k in range(len(n_t)):
        s, y = scores[starts[k] : starts[k + 1]], label[starts[k] : starts[k + 1]]
        if n_t[k] == 0 or not y.any():
            continue
        ranks = 1 + (s[None, :] > s[y][:, None]).sum(axis=1)
        dcg = disc[ranks[ranks <= 10] - 1].sum()
        out[k] = dcg / disc[: min(int(n_t[k]), 10)].sum()
    return out


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
    std = x.std(axis=0) if len(x) else np.ones(x.shape[1])
    std = np.where(std > 1e-9, std, 1.0)
    return mean, std


def fit_reranker(
    data: SplitCandidates,
    *,
    feature_sets: Sequence[str] | None = None,
    n_candidates_grid: Sequence[int] | None = None,
    l2_grid: Sequence[float] | None = None,
    folds: int = _FOLDS,
    seed: int = 0,
    deadline: float | None = None,
) -> Reranker:
    """Choose (feature set, vector candidates, L2) by cross-fitting over users, then fit it.

    Grid points are tried in :func:`_grid_order` (the setting chosen most often first); at
    a ``deadline`` (``time.perf_counter()``) the search stops with the best point so far, and a
    deadline already passed fits the first point without cross-fitting (the training's
    time budget covers the re-ranker too).

    Args:
        data: :func:`split_candidates` with ``n_top = max(n_candidates_grid)`` (and the
            hiding used for fitting).
        feature_sets: Names of :data:`FEATURE_SETS` to try (default: all).
        n_candidates_grid: Vector candidates to try (each <= the ``n_top`` of ``data``;
            default :data:`N_CANDIDATES_GRID`).
        l2_grid: L2 strengths to try (default :data:`L2_GRID`).
        folds: Folds of users.
        seed: Seed of the fold assignment.
        deadline: ``time.perf_counter()`` after which no further grid point is tried.

    Returns:
        The re-ranker fit on every user of ``data`` with the best setting; ``info`` holds the
        grid's cross-fitted NDCG@10, the vector-only figure on the same users, and timings.
    """
    t0 = time.perf_counter()
    feature_sets = tuple(FEATURE_SETS) if feature_sets is None else tuple(feature_sets)
    n_candidates_grid = N_CANDIDATES_GRID if n_candidates_grid is None else n_candidates_grid
    l2_grid = L2_GRID if l2_grid is None else l2_grid
    n_users = len(data.n_targets)
    with_t = np.flatnonzero(data.n_targets > 0)
    fold = np.random.default_rng(seed).integers(0, folds, size=n_users)
    grid: dict[str, float] = {}
    blend_col = FEATURES.index("s_blend")
    # the vector ranking on the same users and candidates (top-10 unaffected by n_top >= 10)
    rows_all, st_all, lab_all, _ = _subset(data, with_t, max(n_candidates_grid))
    xb = data.x[rows_all, blend_col] - 1e9 * (data.top_rank[rows_all] >= (1 << 30))
    vector_ndcg = float(_ndcg10(xb, st_all, lab_all, data.n_targets[with_t]).mean())
    order = _grid_order(feature_sets, n_candidates_grid, l2_grid)
    if deadline is not None and time.perf_counter() >= deadline:
        order = []  # budget spent: the first point, not cross-fitted
        best = (float("nan"), *_grid_order(feature_sets, n_candidates_grid, l2_grid)[0])
    else:
        best = _search(data, with_t, fold, folds, order, grid, deadline)
    nd, fs, m, lam = best
    cols = [FEATURES.index(c) for c in FEATURE_SETS[fs]]
    rows, st, lab, _ = _subset(data, with_t, m)
    x = data.x[rows][:, cols]
    mean, std = _standardise(x)
    w = _fit_weights((x - mean) / std, st, lab, lam)
    info: dict[str, Any] = {
        "feature_set": fs, "n_candidates": m, "l2": lam,
        "cv_ndcg@10": nd if order else None, "vector_blend_ndcg@10": vector_ndcg,
        "users": int(n_users), "users_with_targets": len(with_t),
        "users_with_target_in_candidates": int(
            (np.add.reduceat(lab.astype(np.int64), st[:-1]) > 0).sum() if len(lab) else 0
        ),
        "folds": folds, "grid": grid, "grid_points": len(order) or 1,
        "fit_seconds": time.perf_counter() - t0,
    }  # fmt: skip
    log.info(
        "re-ranker: %s features, %d vector candidates, l2 %g: cross-fitted NDCG@10 %.4f "
        "(vector blend %.4f on the same users) in %.1fs",
        fs, m, lam, nd, vector_ndcg, info["fit_seconds"],
    )  # fmt: skip
    return Reranker(tuple(FEATURE_SETS[fs]), mean, std, w, int(m), info)


def _grid_order(
    feature_sets: Sequence[str], n_candidates: Sequence[int], l2: Sequence[float]
) -> list[tuple[str, int, float]]:
    """Every grid point, the setting chosen most often on validation first.

    ``full`` features, the fewest vector candidates and L2 nearest 1e-2 won on every data
    set and protocol measured (docs/RESULTS.md), so a search cut short by a time budget
    still tries the likely winner.
    """
    points = [(fs, m, lam) for fs in feature_sets for m in n_candidates for lam in l2]
    return sorted(
        points,
        key=lambda p: (p[0] != "full", p[1], abs(np.log10(max(p[2], 1e-12)) + 2.0), p[2]),
    )


def _search(
    data: SplitCandidates,
    with_t: np.ndarray,
    fold: np.ndarray,
    folds: int,
    order: list[tuple[str, int, float]],
    grid: dict[str, float],
    deadline: float | None,
) -> tuple[float, str, int, float]:
    """Cross-fit the grid points in ``order`` (into ``grid``) until ``deadline``; the best."""
    best: tuple[float, str, int, float] = (-1.0, *order[0])
    subsets_of: dict[int, list[Any]] = {}
    for fs, m, lam in order:
        if deadline is not None and grid and time.perf_counter() >= deadline:
            log.warning("re-ranker: time budget reached after %d of %d grid points",
                        len(grid), len(order))  # fmt: skip
            break
        if m not in subsets_of:
            subsets_of[m] = [
                (_subset(data, tr, m), _subset(data, te, m), te)
                for tr, te in (
                    (with_t[fold[with_t] != f], with_t[fold[with_t] == f]) for f in range(folds)
                )
            ]
        nd = _cross_fit(data, subsets_of[m], [FEATURES.index(c) for c in FEATURE_SETS[fs]], lam)
        grid[f"{fs}_m{m}_l2{lam:g}"] = nd
        if nd > best[0] + 1e-9:
            best = (nd, fs, m, lam)
    return best


def _cross_fit(data: SplitCandidates, subsets: list[Any], cols: list[int], lam: float) -> float:
    """Mean NDCG@10 over the held-out folds of one grid point."""
    per_user = []
    for (tr_rows, tr_st, tr_lab, _), (te_rows, te_st, te_lab, _), te in subsets:
        xtr = data.x[tr_rows][:, cols]
        mean, std = _standardise(xtr)
        w = _fit_weights((xtr - mean) / std, tr_st, tr_lab, lam)
        s = ((data.x[te_rows][:, cols] - mean) / std) @ w
        per_user.append(_ndcg10(s, te_st, te_lab, data.n_targets[te]))
    return float(np.concatenate(per_user).mean()) if per_user else 0.0


def rerank_score_fn(
    split: EvalSplit,
    vecs: dict[str, np.ndarray],
    cand: np.ndarray,
    known: np.ndarray,
    reranker: Reranker,
    items: RerankItems,
) -> Any:
    """The evaluation's ``rerank`` method: candidates re-scored, every other item below them.

    Candidates get the re-ranker's score shifted above every other item; the other items
    keep their blended-vector order (``-inf`` for items the checkpoint does not know).

    Returns:
        ``idx -> float64 [len(idx), C]`` (a :data:`~interest_stream.models.eval_methods.ScoreFn`).
    """

    def f(idx: np.ndarray) -> np.ndarray:
        out: np.ndarray = (vecs["blend"][idx] @ cand.T).astype(np.float64)
        out[:, ~known] = -np.inf
        for row, u in enumerate(idx):
            data = split_candidates(split, vecs, cand, known, items, reranker.n_candidates, [u])
            s = reranker.score(data.x)
            cols = np.array([split.cand_index[i] for i in data.items], dtype=np.int64)
            finite = out[row][np.isfinite(out[row])]
            top = float(finite.max()) if len(finite) else 0.0
            out[row, cols] = s - s.min() + top + 1.0
        return out

    return f
