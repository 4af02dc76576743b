"""Evaluation of items born after the checkpoint: the ``new_items`` section of both reports.

The stream is simulated honestly (:class:`~interest_stream.core.new_items.NewItemEstimator`
sees only what a live worker would have seen at the prediction time). Leave-one-out: every
train-role event, plus the valid/test-role events earlier (in the frame's order) than the
user's target event; each user is scored with the estimator's state at that moment.
Temporal: every event before the cutoff. Methods with ``_new`` rank the published new items
with their estimated vectors and encode the user with their estimated input embeddings;
the others are the product without them (new items score ``-inf``). Figures for all
targets and for the targets the checkpoint does not know. Rule and results: docs/DESIGN.md
and docs/RESULTS.md ("Items born after the checkpoint").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from interest_stream.core.new_items import NewItemEstimator, NewItemParams, NewItemVectors
from interest_stream.core.rerank import (
    Reranker,
    RerankItems,
    candidate_features,
    candidate_ids,
    recent_events,
)
from interest_stream.models.config import N_SPECIAL_ITEMS, TaskKind
from interest_stream.models.eval_methods import ScoreFn, dot_scores, summarise, user_vectors
from interest_stream.models.metrics import rank_metrics
from interest_stream.models.split import EvalSplit

__all__ = ["PARAM_GRID", "estimator_for", "loo_new_items", "temporal_new_items"]

log = logging.getLogger(__name__)

PARAM_GRID = (
    NewItemParams(window=5, prior=0.0),
    NewItemParams(window=2, prior=1.0),
    NewItemParams(window=5, prior=1.0),
    NewItemParams(window=10, prior=1.0),
    NewItemParams(window=5, prior=4.0),
)
"""Settings tried on the leave-one-out validation split (best by ``blend_new`` NDCG@10,
with the category feed)."""
_VEC = ("short", "long", "blend")


def item_categories(events: pd.DataFrame) -> dict[str, str]:
    """Each item's category from its events' ``category`` column (empty without one)."""
    if "category" not in events.columns:
        return {}
    df = events[["item_id", "category"]].astype(str).drop_duplicates("item_id")
    return dict(zip(df["item_id"], df["category"], strict=True))


def estimator_for(
    model: Any, params: NewItemParams, categories: dict[str, str] | None = None
) -> NewItemEstimator:
    """An estimator over a model's item vectors (published and input) and codes."""
    with torch.inference_mode():
        inp = model.encoder.item_table()[N_SPECIAL_ITEMS:].float().cpu().numpy()
    cfg = model.encoder.cfg
    return NewItemEstimator(
        model.item_ids, model.item_vectors(), inp, params, categories,
        codes=(cfg.dim, cfg.revisit_dim),
    )  # fmt: skip


def _sequences(frame: pd.DataFrame) -> tuple[dict[str, list[tuple[str, str, int]]], np.ndarray]:
    """Per user the events in frame order, and each frame row's position in its user's list."""
    seqs: dict[str, list[tuple[str, str, int]]] = {}
    pos = np.zeros(len(frame), np.int64)
    u_, i_, t_ = (frame[c].astype(str) for c in ("user_id", "item_id", "event_type"))
    cols = zip(u_, i_, t_, frame["ts"].astype(np.int64), strict=True)
    for r, (u, i, t, ts) in enumerate(cols):
        seq = seqs.setdefault(u, [])
        pos[r] = len(seq)
        seq.append((i, t, int(ts)))
    return seqs, pos


def _observe_all(est: NewItemEstimator, seq: Sequence[tuple[str, str, int]], n: int) -> None:
    """Observe the first ``n`` events of one user's list (only windows touching a new item)."""
    new = [k for k in range(n) if seq[k][0] not in est.known]
    w = est.params.window
    todo = sorted({p for k in new for p in range(k, min(n, k + w + 1))})
    est.observe(seq, todo)


def loo_walk(
    frame: pd.DataFrame, target: str, est: NewItemEstimator, cats: dict[str, str], feed: bool
) -> Iterator[tuple[str, NewItemEstimator]]:
    """Yield ``(user, estimator)`` at each user's ``target``-role event, before it is observed.

    Every train-role event is observed first; the other events in frame order. ``feed``: the
    category of every item of ``cats`` is known from the start (an item feed); otherwise an
    item's category is learnt from its first observed event.
    """
    if feed:
        for item, cat in cats.items():
            est.set_category(item, cat)
    seqs, pos = _sequences(frame)
    role = frame["role"].to_numpy()
    n_train = frame[role == "train"].groupby("user_id", sort=False).size()
    for u, n in n_train.items():
        _observe_all(est, seqs[str(u)], int(n))
    users = frame["user_id"].astype(str).to_numpy()
    items = frame["item_id"].astype(str).to_numpy()
    for r in np.flatnonzero(role != "train"):
        u = str(users[r])
        if role[r] == target:
            yield u, est
        est.set_category(str(items[r]), cats.get(str(items[r])))
        est.observe(seqs[u], [int(pos[r])])


class _Scored:
    """Per user: vectors (with new-item inputs), new items' columns and scores, re-ranked list."""

    def __init__(self, split: EvalSplit, vecs: dict[str, np.ndarray]) -> None:
        self.split = split
        self.vecs = {m: vecs[m].copy() for m in _VEC}
        self.split_vecs = vecs  # the vectors without new-item inputs
        n = len(split.users)
        self.cols: list[np.ndarray] = [np.zeros(0, np.int64)] * n
        self.scores: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
        # re-ranked candidates: new items as the re-ranker was fit to see them (no vector,
        # ``unknown``, as the API serves them), and with their estimated vectors
        self.rr: list[tuple[np.ndarray, np.ndarray] | None] = [None] * n
        self.rr_vec: list[tuple[np.ndarray, np.ndarray] | None] = [None] * n
        self.published = np.zeros(n, np.int64)

    def user(self, k: int, model: Any, v: NewItemVectors, alpha: float, rr: Any) -> None:
        """Score user ``k`` with the published new items ``v`` (the state at its target)."""
        split = self.split
        hist = split.histories[k]
        own = {e[0] for e in hist}
        mine = [j for j, i in enumerate(v.ids) if i in own]
        if mine:
            model.set_extra_items([v.ids[j] for j in mine], v.inp[mine])
            one = user_vectors(model, [hist], alpha)
            model.set_extra_items([], np.zeros((0, v.inp.shape[1])))
            for m in _VEC:
                self.vecs[m][k] = one[m][0]
        cols = np.array([split.cand_index.get(i, -1) for i in v.ids], np.int64)
        ok = cols >= 0
        self.cols[k], self.published[k] = cols[ok], int(ok.sum())
        self.scores[k] = {m: v.out[ok] @ self.vecs[m][k] for m in _VEC}
        if rr is not None:
            self.rr[k], self.rr_vec[k] = _rerank_user(self, k, v, rr)

    def fn(self, method: str, cand: np.ndarray, known: np.ndarray) -> ScoreFn:
        """Score function of ``<method>_new`` (``rerank``/``rerank_vec``: re-ranked lists)."""
        vec = "blend" if method.startswith("rerank") else method
        lists = self.rr if method == "rerank" else self.rr_vec if method == "rerank_vec" else None

        def f(idx: np.ndarray) -> np.ndarray:
            out: np.ndarray = (self.vecs[vec][idx] @ cand.T).astype(np.float64)
            out[:, ~known] = -np.inf
            for r, u in enumerate(idx):
                out[r, self.cols[u]] = self.scores[u][vec]
                got = None if lists is None else lists[u]
                if got is not None:
                    finite = out[r][np.isfinite(out[r])]
                    top = float(finite.max()) if len(finite) else 0.0
                    out[r, got[0]] = got[1] - got[1].min() + top + 1.0
            return out

        return f


def _rerank_user(
    sc: _Scored, k: int, v: NewItemVectors, rr: tuple[Reranker, RerankItems, np.ndarray, np.ndarray]
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The re-ranker's candidates (columns) and scores for user ``k`` with new items:
    new items without a vector in the features (as served), and with their vectors."""
    reranker, items, cand, known = rr
    split = sc.split
    b = sc.vecs["blend"][k]
    scores = (cand @ b).astype(np.float64)
    scores[~known] = -np.inf
    scores[sc.cols[k]] = sc.scores[k]["blend"]
    n_top = reranker.n_candidates
    finite = np.flatnonzero(np.isfinite(scores))
    if len(finite) > n_top:
        finite = finite[np.argpartition(-scores[finite], n_top - 1)[:n_top]]
    top = finite[np.lexsort((finite, -scores[finite]))]
    recent = recent_events(split.histories[k])
    cids = candidate_ids([split.candidates[c] for c in top], recent, n_top)
    new_row = {i: j for j, i in enumerate(v.ids)}
    ids, vecs, stats = [], [], []
    for c in cids:
        r = items.row.get(c)
        if r is not None:
            vec, st = items.vectors[r], items.stats[r]
        elif c in new_row:  # no statistics of the training period
            vec, st = v.out[new_row[c]], np.zeros_like(items.stats[0])
        else:
            continue
        ids.append(c)
        vecs.append(vec)
        stats.append(st)
    dim, n_stats = items.vectors.shape[1], items.stats.shape[1]
    small = RerankItems(
        ids, np.array(vecs, np.float32).reshape(-1, dim),
        np.array(stats, np.float32).reshape(-1, n_stats),
    )  # fmt: skip
    short, long = sc.vecs["short"][k], sc.vecs["long"][k]
    x = candidate_features(small, short, long, b, cids, recent)
    hidden = {c for c in cids if c in new_row}
    x_hidden = candidate_features(small, short, long, b, cids, recent, hidden)
    cols = np.array([split.cand_index[c] for c in cids], np.int64)
    return (cols, reranker.score(x_hidden)), (cols, reranker.score(x))


def _subsets(split: EvalSplit, known: np.ndarray) -> dict[str, tuple[np.ndarray, list[np.ndarray]]]:
    """Users and targets of ``all``, ``unknown`` (targets new to the checkpoint), ``known``."""
    tg = split.targets[TaskKind.ALL]
    parts = {"all": tg, "unknown": [t[~known[t]] for t in tg], "known": [t[known[t]] for t in tg]}
    return {
        name: (np.flatnonzero([len(t) > 0 for t in ts]).astype(np.int64), ts)
        for name, ts in parts.items()
    }


def _results(
    split: EvalSplit, fns: dict[str, ScoreFn], known: np.ndarray, n_boot: int, seed: int
) -> dict[str, Any]:
    """Every method's summary on every subset (same bootstrap resamples per subset)."""
    out: dict[str, Any] = {}
    for name, (users, targets) in _subsets(split, known).items():
        if not len(users):
            out[name] = {"users": 0}
            continue
        per_user = {m: rank_metrics(f, users, targets) for m, f in fns.items()}
        out[name] = {"users": len(users), "methods": summarise(per_user, n_boot, seed)}
    return out


def _methods(
    sc: _Scored, cand: np.ndarray, known: np.ndarray, base: dict[str, ScoreFn]
) -> dict[str, ScoreFn]:
    """The methods of the section, in report order."""
    fns: dict[str, ScoreFn] = {}
    if "rerank" in base:
        fns.update(rerank=base["rerank"], rerank_new=sc.fn("rerank", cand, known))
        fns["rerank_new_vec"] = sc.fn("rerank_vec", cand, known)
    fns["blend"] = dot_scores(sc.split_vecs["blend"], cand, known)
    fns.update({f"{m}_new": sc.fn(m, cand, known) for m in _VEC})
    fns.update({m: base[m] for m in ("repeat_last", "item_knn", "popularity") if m in base})
    return fns


def _loo_run(
    frame: pd.DataFrame, split: EvalSplit, model: Any, params: NewItemParams,
    cats: dict[str, str], alpha: float, rr: Any, feed: bool,
) -> _Scored:  # fmt: skip
    """Score every user of ``split`` (role from its stats) with the estimator's state then."""
    vecs = user_vectors(model, split.histories, alpha)
    sc = _Scored(split, vecs)
    user_pos = {u: k for k, u in enumerate(split.users)}
    est = estimator_for(model, params, cats)
    for u, e in loo_walk(frame, str(split.stats["target_role"]), est, cats, feed):
        k = user_pos.get(u)
        if k is not None:
            sc.user(k, model, e.vectors(), alpha, rr)
    return sc


def loo_new_items(
    frame: pd.DataFrame, split: EvalSplit, model: Any, cand: np.ndarray, known: np.ndarray,
    base: dict[str, ScoreFn], rr: tuple[Reranker, RerankItems] | None, alpha: float,
    n_boot: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """The leave-one-out ``new_items`` section: knobs chosen on the valid role, test figures.

    Args:
        frame: The LOO frame (:func:`~interest_stream.models.loo.loo_frame`).
        split: Its test split; ``cand``/``known``: the candidates' vectors and known mask.
        model: The :class:`~interest_stream.models.model.InterestModel`.
        base: The report's score functions (``rerank``, baselines).
        rr: The checkpoint's re-ranker, if any.
    """
    from interest_stream.models.loo import loo_split

    t0 = time.perf_counter()
    cats = item_categories(frame)
    valid = loo_split(frame, "valid", split.candidates)
    grid = []
    for p in PARAM_GRID:
        sc = _loo_run(frame, valid, model, p, cats, alpha, None, True)
        users = valid.users_with_targets(TaskKind.ALL)
        per = rank_metrics(sc.fn("blend", cand, known), users, valid.targets[TaskKind.ALL])
        grid.append((float(per["ndcg@10"].mean()), p))
        log.info("new items on validation: %s -> blend_new NDCG@10 %.4f", p, grid[-1][0])
    best = max(grid, key=lambda g: g[0])[1]  # first of equals: the grid's order
    t1 = time.perf_counter()
    rr_full = None if rr is None else (*rr, cand, known)
    out = {}
    for name, feed in (("stream", False), ("feed", True)):
        sc = _loo_run(frame, split, model, best, cats, alpha, rr_full, feed)
        res = _results(split, _methods(sc, cand, known, base), known, n_boot, seed)
        out[name] = _section(best, grid, sc, res, LOO_RULE + (FEED_RULE if feed else ""))
    seconds = {"select_s": t1 - t0, "test_s": time.perf_counter() - t1}
    return {"variants": out, "seconds": seconds}


def temporal_new_items(
    split: EvalSplit, model: Any, cand: np.ndarray, known: np.ndarray,
    base: dict[str, ScoreFn], rr: tuple[Reranker, RerankItems] | None, alpha: float,
    n_boot: int, seed: int, params: NewItemParams | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The temporal ``new_items`` section: new-item vectors from every event before the cutoff."""
    t0 = time.perf_counter()
    params = params or NewItemParams()
    cats = item_categories(split.train)
    est = estimator_for(model, params, cats)
    seqs, _pos = _sequences(split.train.sort_values("ts", kind="stable"))
    for item, cat in cats.items():
        est.set_category(item, cat)
    for seq in seqs.values():
        _observe_all(est, seq, len(seq))
    v = est.vectors()
    model.set_extra_items(v.ids, v.inp)
    sc = _Scored(split, user_vectors(model, split.histories, alpha))
    model.set_extra_items([], np.zeros((0, v.inp.shape[1])))
    sc.split_vecs = user_vectors(model, split.histories, alpha)
    cols = np.array([split.cand_index.get(i, -1) for i in v.ids], np.int64)
    ok = cols >= 0
    rr_full = None if rr is None else (*rr, cand, known)
    for k in range(len(split.users)):
        sc.cols[k], sc.published[k] = cols[ok], int(ok.sum())
        sc.scores[k] = {m: v.out[ok] @ sc.vecs[m][k] for m in _VEC}
        if rr_full is not None:
            sc.rr[k], sc.rr_vec[k] = _rerank_user(sc, k, v, rr_full)
    res = _results(split, _methods(sc, cand, known, base), known, n_boot, seed)
    stream = _section(params, [], sc, res, TEMPORAL_RULE)
    return {"variants": {"stream": stream}, "seconds": {"test_s": time.perf_counter() - t0}}


LOO_RULE = (
    "new-item vectors from every train-role event plus the valid/test-role events before "
    "the user's target event in (ts, file row) order, as a live worker would have seen them"
)
TEMPORAL_RULE = "new-item vectors from every event before the cutoff"
FEED_RULE = (
    "; and an item feed: every item of the event file announced with its category from "
    "the start (the category prior)"
)


def _section(
    params: NewItemParams, grid: list[tuple[float, NewItemParams]], sc: _Scored,
    res: dict[str, Any], rule: str,
) -> dict[str, Any]:  # fmt: skip
    """The report's ``new_items`` section."""
    return {
        "rule": rule,
        "params": vars(params)
        if not hasattr(params, "__dataclass_fields__")
        else {f: getattr(params, f) for f in params.__dataclass_fields__},
        "validation_grid": [
            {"ndcg@10": s, **{f: getattr(p, f) for f in p.__dataclass_fields__}} for s, p in grid
        ],
        "published_new_items_mean": float(sc.published.mean()) if len(sc.published) else 0.0,
        "subsets": res,
    }


def new_items_section(
    protocol: str, split: EvalSplit, model_dir: Any, device: str | None, info: dict[str, Any],
    cand: np.ndarray, base: dict[str, ScoreFn], n_boot: int, seed: int,
    frame: pd.DataFrame | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Load the checkpoint (and its re-ranker) and compute the report's ``new_items`` section.

    Args:
        protocol: ``"loo"`` (then ``frame`` is the LOO frame) or ``"temporal"``.
        info: :func:`~interest_stream.models.eval_methods.model_vectors`' info (``alpha``,
            ``known``).
    """
    from interest_stream.core.rerank import load_reranker
    from interest_stream.models.model import InterestModel

    model = InterestModel.load(model_dir, device=device)
    rr = load_reranker(model_dir)
    alpha, known = float(info["alpha"]), info["known"]
    if protocol == "loo" and frame is not None:
        return loo_new_items(frame, split, model, cand, known, base, rr, alpha, n_boot, seed)
    return temporal_new_items(split, model, cand, known, base, rr, alpha, n_boot, seed)
