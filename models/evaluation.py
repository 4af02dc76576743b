"""Evaluation: ``interest-stream evaluate`` = :func:`evaluate`.

One global temporal cutoff (:mod:`interest_stream.models.split`); every method
ranks every item known at the cutoff (full ranking) for the test users. Tasks:
``all`` (every target item) and ``new`` (items absent from the user's history,
history removed from every ranking). Methods: the model's ``short``, ``long`` and
``blend`` vectors (through :class:`~interest_stream.models.model.InterestModel`)
and the baselines of :mod:`interest_stream.models.baselines`. Metrics per user
(:mod:`interest_stream.models.metrics`) with 95% bootstrap intervals; a
cold-start table when the checkpoint has text-only items. A checkpoint trained
on events at or after the cutoff is refused. The leave-one-out protocol is
:mod:`interest_stream.models.loo_eval`. Protocol details: docs/DESIGN.md.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from interest_stream.core.checkpoint import (
    load_item_meta,
    load_item_vectors,
    read_config,
    read_metrics,
)
from interest_stream.models.baselines import Baselines
from interest_stream.models.config import TaskKind
from interest_stream.models.errors import DataError, ModelError
from interest_stream.models.eval_methods import (
    MODEL_METHODS,
    RERANK_METHOD,
    ScoreFn,
    machine_info,
    method_fns,
    model_vectors,
    summarise,
    task_results,
)
from interest_stream.models.metrics import rank_metrics
from interest_stream.models.new_items_eval import new_items_section
from interest_stream.models.report import write_report
from interest_stream.models.split import EvalSplit, cutoff_time, make_split

__all__ = ["METHOD_ALIASES", "evaluate"]

log = logging.getLogger(__name__)

METHOD_ALIASES = {"own_recent": "repeat_last"}
"""Old method names still present in the temporal report (same figures as the new name)."""


def _cold_start(
    split: EvalSplit,
    events_after: pd.DataFrame,
    model_dir: str | os.PathLike[str],
    vecs: dict[str, np.ndarray],
    n_boot: int,
    seed: int,
) -> dict[str, Any] | None:
    """Rank only the cold items (known from text, first seen after the cutoff)."""
    ids, vectors, _cfg = load_item_vectors(model_dir)
    meta = load_item_meta(model_dir)
    cold = [i for i in ids if meta.get(i, {}).get("cold") and i not in split.cand_index]
    if not cold:
        return None
    cold_index = {item: c for c, item in enumerate(cold)}
    row_of = {item: r for r, item in enumerate(ids)}
    cold_vecs = vectors[[row_of[i] for i in cold]]
    user_pos = {u: k for k, u in enumerate(split.users)}
    tgt: list[np.ndarray] = [np.zeros(0, np.int64) for _ in split.users]
    sub = events_after[
        events_after["item_id"].isin(cold_index) & events_after["user_id"].isin(user_pos)
    ]
    for u, g in sub.groupby("user_id"):
        tgt[user_pos[str(u)]] = np.unique([cold_index[i] for i in g["item_id"].astype(str)])
    users = np.flatnonzero([len(t) > 0 for t in tgt]).astype(np.int64)
    if len(users) == 0:
        return {"cold_items": len(cold), "users": 0}
    # content baseline: the user's category profile (MovieLens: first genre)
    cats = sorted({str(m.get("category", "")) for m in meta.values()})
    cat_col = {c: k for k, c in enumerate(cats)}
    cold_cat = np.array([cat_col[str(meta.get(i, {}).get("category", ""))] for i in cold])
    rng = np.random.default_rng(seed)
    jitter = rng.random(len(cold)) * 1e-6
    prof = np.zeros((len(split.users), len(cats)))
    for k, h in enumerate(split.histories):
        for e in h:
            prof[k, cat_col.get(str(meta.get(e.item_id, {}).get("category", "")), 0)] += 1.0
    rand_scores = rng.random((len(split.users), len(cold)))

    def method(v: np.ndarray) -> ScoreFn:
        def f(idx: np.ndarray) -> np.ndarray:
            res: np.ndarray = v[idx] @ cold_vecs.T
            return res

        return f

    fns: dict[str, ScoreFn] = {name: method(vecs[name]) for name in MODEL_METHODS}
    fns["category_profile"] = lambda idx: prof[idx][:, cold_cat] + jitter[None, :]
    fns["random"] = lambda idx: rand_scores[idx]
    per_user = {name: rank_metrics(fn, users, tgt) for name, fn in fns.items()}
    return {
        "cold_items": len(cold),
        "users": len(users),
        "mean_targets": float(np.mean([len(tgt[u]) for u in users])),
        "methods": summarise(per_user, n_boot, seed),
    }


def evaluate(
    events: pd.DataFrame,
    model_dir: str | os.PathLike[str],
    cutoff_quantile: float = 0.8,
    *,
    horizon_days: float | None = None,
    alpha: float | None = None,
    tasks: Sequence[TaskKind | str] = ("all", "new"),
    n_bootstrap: int = 1000,
    seed: int = 0,
    recent_days: float = 1.0,
    device: str | None = "auto",
    out_dir: str | os.PathLike[str] | None = None,
    name: str = "eval",
    dataset: str | None = None,
    new_items: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint against the baselines on a temporal split.

    Args:
        events: Canonical events (the whole file: the split happens here).
        model_dir: Checkpoint folder trained on events before the cutoff.
        cutoff_quantile: Cutoff at this quantile of event time.
        horizon_days: Targets within this many days after the cutoff (``None`` = all).
        alpha: Blend weight of the short vector (default: the checkpoint's).
        tasks: ``all`` and/or ``new``.
        n_bootstrap: Bootstrap resamples of users.
        seed: Seed of the bootstrap.
        recent_days: Window of the recent-popularity baseline.
        device: Torch device of the encoder.
        out_dir: If given, write ``quality-<name>.json`` and ``quality-<name>.png`` there.
        name: File-name stem of the report.
        dataset: Label of the data set in the report.
        new_items: Also the ``new_items`` section (:mod:`.new_items_eval`; else ``None``).

    Returns:
        Every figure as a JSON-able dict (see ``docs/RESULTS.md``).

    Raises:
        ModelError: The checkpoint saw events at or after the cutoff (leak).
        DataError: No test users.
    """
    t0 = time.perf_counter()
    task_list = [TaskKind(t) for t in tasks]
    cfg = read_config(model_dir)
    cutoff = cutoff_time(events["ts"], cutoff_quantile)
    _refuse_leak(cfg, model_dir, cutoff, cutoff_quantile)
    horizon_ms = None if horizon_days is None else int(horizon_days * 86_400_000)
    split = make_split(events, cutoff, horizon_ms)
    if not split.users:
        raise DataError("no user has events both before and after the cutoff")
    t_split = time.perf_counter()
    vecs, cand, info, timing = model_vectors(split, model_dir, device, alpha)
    base = Baselines(split, recent_days=recent_days)
    t_base = time.perf_counter()
    fns, rerank = method_fns(split, model_dir, vecs, cand, info["known"], base, mask_unknown=False)
    results = {t.value: task_results(split, t, fns, n_bootstrap, seed) for t in task_list}
    for res in results.values():
        _add_aliases(res)
    cold = _cold_section(cfg, events, cutoff, horizon_ms, split, model_dir, vecs, n_bootstrap, seed)
    t_end = time.perf_counter()
    protocol = {
        "cutoff_quantile": cutoff_quantile, "cutoff_ts": cutoff, "horizon_days": horizon_days,
        "alpha": info["alpha"], "n_bootstrap": n_bootstrap, "bootstrap_seed": seed,
        "recent_days": recent_days,
    }  # fmt: skip
    seconds = {
        "split": t_split - t0, **timing, "baselines_setup": t_base - t_split, "total": t_end - t0,
    }  # fmt: skip
    report = _report(dataset, model_dir, cfg, info, protocol, split, base, results, cold, seconds)
    report["default_ranking"] = RERANK_METHOD if rerank is not None else "blend"
    report["rerank"] = rerank
    report["new_items"] = new_items_section(
        "temporal", split, model_dir, device, info, cand, fns, n_bootstrap, seed
    ) if new_items else None  # fmt: skip
    if out_dir is not None:
        write_report(report, out_dir, name)
    return report


def _cold_section(
    cfg: dict[str, Any],
    events: pd.DataFrame,
    cutoff: int,
    horizon_ms: int | None,
    split: EvalSplit,
    model_dir: str | os.PathLike[str],
    vecs: dict[str, np.ndarray],
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any] | None:
    """The cold-start section when the checkpoint has cold (text-only) items, else ``None``."""
    if int(cfg.get("n_cold_items", 0)) <= 0:
        return None
    after = events[events["ts"] >= cutoff]
    if horizon_ms is not None:
        after = after[after["ts"] < cutoff + horizon_ms]
    return _cold_start(split, after, model_dir, vecs, n_bootstrap, seed)


def _add_aliases(res: dict[str, Any]) -> None:
    """Add :data:`METHOD_ALIASES` to a task's methods (the report keeps its old keys)."""
    methods = res["methods"]
    aliases = {old: new for old, new in METHOD_ALIASES.items() if new in methods}
    for old, new in aliases.items():
        methods[old] = methods[new]
    res["method_aliases"] = aliases


def _refuse_leak(
    cfg: dict[str, Any], model_dir: str | os.PathLike[str], cutoff: int, cutoff_quantile: float
) -> None:
    """Raise ModelError when the checkpoint saw events at or after the cutoff."""
    train_max = cfg.get("split", {}).get("train_max_ts")
    if train_max is None or int(train_max) >= cutoff:
        how = (
            " (it was trained with --protocol loo: evaluate it with --protocol loo)"
            if cfg.get("split", {}).get("protocol") == "loo"
            else ""
        )
        raise ModelError(
            f"{model_dir}: the model was trained on events up to ts={train_max}, at or after "
            f"the evaluation cutoff {cutoff} (quantile {cutoff_quantile}); that would leak the "
            f"future{how}. Train with --cutoff-quantile <= the evaluation's, on the same file."
        )


def _report(
    dataset: str | None, model_dir: str | os.PathLike[str], cfg: dict[str, Any],
    info: dict[str, Any], protocol: dict[str, Any], split: EvalSplit, base: Baselines,
    results: dict[str, Any], cold: dict[str, Any] | None, seconds: dict[str, float],
) -> dict[str, Any]:  # fmt: skip
    """The report dict (see :func:`evaluate`)."""
    cutoff = protocol["cutoff_ts"]
    train_cfg = info["config"].get("train", {})
    return {
        "dataset": dataset,
        "model_dir": str(model_dir),
        "model_version": info["model_version"],
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "protocol": {
            "name": "temporal",
            "cutoff_quantile": protocol["cutoff_quantile"],
            "cutoff_ts": cutoff,
            "cutoff_utc": pd.Timestamp(cutoff, unit="ms", tz="UTC").isoformat(),
            **{k: protocol[k] for k in ("horizon_days", "alpha", "n_bootstrap")},
            **{k: protocol[k] for k in ("bootstrap_seed", "recent_days")},
            "ranking": "full ranking over every item with an event before the cutoff",
            "targets": "distinct items touched after the cutoff (known items only); "
            "'new' = not in the user's history, history removed from rankings",
            "short_window": {
                "events": train_cfg.get("short_window_events"),
                "minutes": train_cfg.get("short_window_minutes"),
            },
        },
        "split": split.stats,
        "recent_popularity_events": base.recent_events,
        "tasks": results,
        "cold_start": cold,
        "model_training": {
            "train_seconds": _train_seconds(model_dir),
            "train_cutoff_ts": cfg.get("split", {}).get("train_cutoff_ts"),
            "seed": cfg.get("seed"),
            "best_epoch": _best_epoch(model_dir),
            "encoder": cfg.get("encoder"),
        },
        "candidates_missing_from_model": info["candidates_missing_from_model"],
        "seconds": seconds,
        "machine": machine_info(),
    }


def _train_seconds(model_dir: str | os.PathLike[str]) -> float | None:
    value = read_metrics(model_dir).get("train_seconds")
    return None if value is None else float(value)


def _best_epoch(model_dir: str | os.PathLike[str]) -> int | None:
    value = read_metrics(model_dir).get("best_epoch")
    return None if value is None else int(value)
