"""The pieces both evaluation protocols share: the methods, their scores and their summaries.

:func:`model_vectors` encodes a split's test users through the public
:class:`~interest_stream.models.model.InterestModel` API (short, long, blend) and looks up the
candidates' item vectors; :func:`task_results` ranks every method on one task with
:func:`~interest_stream.models.metrics.rank_metrics` and summarises it with bootstrap intervals
(:func:`summarise`) and paired ratios against the best baseline. Used by
:mod:`interest_stream.models.evaluation` (temporal) and :mod:`interest_stream.models.loo_eval`.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from interest_stream.core.events import Interaction
from interest_stream.models.baselines import Baselines
from interest_stream.models.config import TaskKind
from interest_stream.models.metrics import METRIC_NAMES, bootstrap_ci, paired_ratio_ci, rank_metrics
from interest_stream.models.split import EvalSplit

__all__ = [
    "BASELINE_METHODS",
    "MODEL_METHODS",
    "RERANK_METHOD",
    "ScoreFn",
    "add_rerank",
    "candidate_vectors",
    "dot_scores",
    "machine_info",
    "model_vectors",
    "summarise",
    "task_results",
    "user_vectors",
]

log = logging.getLogger(__name__)

MODEL_METHODS = ("short", "long", "blend")
"""The model's vectors, in report order."""
RERANK_METHOD = "rerank"
"""The two-stage ranking (vector candidates + own recent items, re-ranked), when the
checkpoint has a re-ranker: the API's default ranking."""
BASELINE_METHODS = ("popularity", "recent_popularity", "item_knn", "repeat_last")
"""The baselines (:class:`~interest_stream.models.baselines.Baselines`), in report order."""
ScoreFn = Callable[[np.ndarray], np.ndarray]


def machine_info() -> dict[str, Any]:
    """Platform, CPU count, torch threads and load average, for the report."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg": list(load),
    }


def user_vectors(
    model: Any, histories: Sequence[Sequence[Interaction]], alpha: float
) -> dict[str, np.ndarray]:
    """Short, long and blended (``alpha``) vectors of histories, as the worker builds them.

    Args:
        model: An :class:`~interest_stream.models.model.InterestModel`.
        histories: Per user, every event before the ranking time (oldest first).
        alpha: Blend weight of the short vector.

    Returns:
        ``{"short", "long", "blend"}`` -> float32 ``[U, dim]``.
    """
    long_cap = int(model.config.get("train", {}).get("long_history_events", 200))
    s = model.encode_short([model.short_window(h) for h in histories])
    lo = model.encode_long([h[-long_cap:] for h in histories])
    return {"short": s, "long": lo, "blend": model.blend(s, lo, alpha)}


def candidate_vectors(model: Any, candidates: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Item vectors of a ranking universe: float32 ``[C, dim]`` (zero rows for items the
    checkpoint does not know) and bool ``[C]`` ``known``."""
    items = model.item_vectors()
    cand = np.zeros((len(candidates), model.dim), dtype=np.float32)
    known = np.zeros(len(candidates), dtype=bool)
    for col, item in enumerate(candidates):
        row = model.item_index.get(item)
        if row is not None:
            cand[col] = items[row]
            known[col] = True
    return cand, known


def model_vectors(
    split: EvalSplit, model_dir: str | os.PathLike[str], device: str | None, alpha: float | None
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any], dict[str, float]]:
    """Vectors of the test users and candidate item vectors, via the public API.

    Args:
        split: The split (test users' histories, candidates).
        model_dir: Checkpoint folder.
        device: Torch device of the encoder.
        alpha: Blend weight (``None``: the checkpoint's).

    Returns:
        ``(vectors, candidates, info, timing)``: ``{"short", "long", "blend"}`` ->
        float32 ``[U, dim]``; float32 ``[C, dim]`` (zero rows for items the checkpoint does
        not know); ``info`` with ``model_version``, ``alpha``,
        ``candidates_missing_from_model``, ``known`` (bool ``[C]``) and ``config``;
        seconds of loading and encoding.
    """
    from interest_stream.models.model import InterestModel

    t0 = time.perf_counter()
    model = InterestModel.load(model_dir, device=device)
    t1 = time.perf_counter()
    used_alpha = model.blend_alpha if alpha is None else alpha
    vecs = user_vectors(model, split.histories, used_alpha)
    t2 = time.perf_counter()
    cand, known = candidate_vectors(model, split.candidates)
    missing = int((~known).sum())
    if missing:
        log.warning("%d candidate items are not in the model's vocabulary", missing)
    info = {
        "model_version": model.model_version,
        "alpha": used_alpha,
        "candidates_missing_from_model": missing,
        "known": known,
        "config": model.config,
    }
    timing = {"model_load_s": t1 - t0, "encode_s": t2 - t1}
    return vecs, cand, info, timing


def dot_scores(v: np.ndarray, cand: np.ndarray, known: np.ndarray | None = None) -> ScoreFn:
    """Score function: users' vectors ``v[idx]`` against candidate vectors ``cand``.

    Args:
        v: float ``[U, dim]`` user vectors.
        cand: float ``[C, dim]`` candidate vectors.
        known: Optional bool ``[C]``; candidates outside it score ``-inf`` (never ranked
            above a scored item).

    Returns:
        ``idx -> float [len(idx), C]``.
    """
    unknown = None if known is None or bool(known.all()) else ~known

    def f(idx: np.ndarray) -> np.ndarray:
        res: np.ndarray = v[idx] @ cand.T
        if unknown is not None:
            res = res.astype(np.float64)
            res[:, unknown] = -np.inf
        return res

    return f


def add_rerank(
    fns: dict[str, ScoreFn],
    split: EvalSplit,
    model_dir: str | os.PathLike[str],
    vecs: dict[str, np.ndarray],
    cand: np.ndarray,
    known: np.ndarray,
) -> dict[str, Any] | None:
    """Add the ``rerank`` method (after ``blend``) when the checkpoint has a re-ranker.

    Returns:
        The re-ranker's description for the report (``None``: the checkpoint has none).
    """
    from interest_stream.core.rerank import load_reranker
    from interest_stream.models.rerank_fit import rerank_score_fn

    loaded = load_reranker(model_dir)
    if loaded is None:
        return None
    rr, items = loaded
    ordered = {m: f for m, f in fns.items() if m in MODEL_METHODS}
    ordered[RERANK_METHOD] = rerank_score_fn(split, vecs, cand, known, rr, items)
    ordered.update({m: f for m, f in fns.items() if m not in MODEL_METHODS})
    fns.clear()
    fns.update(ordered)
    return {"features": list(rr.feature_names), "n_candidates": rr.n_candidates,
            "weights": dict(zip(rr.feature_names, rr.weights.tolist(), strict=True)),
            "info": {k: v for k, v in rr.info.items() if k != "grid"}}  # fmt: skip


def method_fns(
    split: EvalSplit,
    model_dir: str | os.PathLike[str],
    vecs: dict[str, np.ndarray],
    cand: np.ndarray,
    known: np.ndarray,
    base: Baselines,
    *,
    mask_unknown: bool,
) -> tuple[dict[str, ScoreFn], dict[str, Any] | None]:
    """Every method's score function, in report order (vectors, ``rerank``, baselines).

    Args:
        mask_unknown: Candidates the checkpoint does not know score ``-inf`` for the
            vectors (the leave-one-out protocol).

    Returns:
        ``(fns, rerank)``: ``rerank`` describes the checkpoint's re-ranker (``None``: none).
    """
    mask = known if mask_unknown else None
    fns: dict[str, ScoreFn] = {m: dot_scores(vecs[m], cand, mask) for m in MODEL_METHODS}
    fns.update(popularity=base.popularity, recent_popularity=base.recent_popularity)
    fns.update(item_knn=base.item_knn, repeat_last=base.repeat_last)
    return fns, add_rerank(fns, split, model_dir, vecs, cand, known)


def summarise(
    per_user: dict[str, dict[str, np.ndarray]], n_boot: int, seed: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """Mean and 95% bootstrap interval of every per-user metric of every method.

    Returns:
        ``{method: {metric: {"mean": float, "ci95": [low, high]}}}``.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method, metrics in per_user.items():
        out[method] = {}
        for name in METRIC_NAMES:
            mean, lo, hi = bootstrap_ci(metrics[name], n_boot, seed)
            out[method][name] = {"mean": mean, "ci95": [lo, hi]}
    return out


def task_results(
    split: EvalSplit, task: TaskKind, fns: dict[str, ScoreFn], n_bootstrap: int, seed: int
) -> dict[str, Any]:
    """Every method's metrics on one task, the best baseline and the paired ratios.

    Args:
        split: The split.
        task: ``all`` or ``new`` (history removed from every ranking; no ``repeat_last``).
        fns: Method name -> score function over the split's candidates.
        n_bootstrap: Bootstrap resamples of users.
        seed: Bootstrap seed (the same resamples for every method).

    Returns:
        ``users``, ``mean_targets``, ``methods`` (see :func:`summarise`), ``best_baseline``
        (by NDCG@10) and ``ndcg@10_ratio_vs_best_baseline`` per model method.
    """
    users = split.users_with_targets(task)
    exclude = split.hist_items if task is TaskKind.NEW else None
    methods = [m for m in fns if not (task is TaskKind.NEW and m == "repeat_last")]
    per_user = {m: rank_metrics(fns[m], users, split.targets[task], exclude) for m in methods}
    summary = summarise(per_user, n_bootstrap, seed)
    baselines = [m for m in methods if m in BASELINE_METHODS]
    best = max(baselines, key=lambda m: summary[m]["ndcg@10"]["mean"])
    ratios, vs_repeat = {}, {}
    for m in (*MODEL_METHODS, RERANK_METHOD):
        if m not in per_user:
            continue
        r, lo, hi = paired_ratio_ci(
            per_user[m]["ndcg@10"], per_user[best]["ndcg@10"], n_bootstrap, seed
        )
        ratios[m] = {"ratio": r, "ci95": [lo, hi]}
        if "repeat_last" in per_user and summary["repeat_last"]["ndcg@10"]["mean"] > 0:
            r, lo, hi = paired_ratio_ci(
                per_user[m]["ndcg@10"], per_user["repeat_last"]["ndcg@10"], n_bootstrap, seed
            )
            vs_repeat[m] = {"ratio": r, "ci95": [lo, hi]}
    log.info(
        "%s task: %d users; blend NDCG@10 %.4f, best baseline %s %.4f (ratio %.2f)",
        task.value,
        len(users),
        summary["blend"]["ndcg@10"]["mean"],
        best,
        summary[best]["ndcg@10"]["mean"],
        ratios["blend"]["ratio"],
    )
    return {
        "users": len(users),
        "mean_targets": float(np.mean([len(split.targets[task][u]) for u in users]))
        if len(users)
        else 0.0,
        "methods": summary,
        "best_baseline": best,
        "ndcg@10_ratio_vs_best_baseline": ratios,
        **({"ndcg@10_ratio_vs_repeat_last": vs_repeat} if vs_repeat else {}),
    }
