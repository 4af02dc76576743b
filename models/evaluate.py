"""Evaluation: ``interest-stream evaluate`` = :func:`evaluate`.

Protocol (:mod:`models.split`): one global cutoff at the ``cutoff_quantile`` of
event time; test users have events on both sides; their history is every
event before the cutoff; targets are the distinct items they touch after it
(within ``horizon_days`` if given), restricted to the items known at the cutoff,
which every method ranks in full. Two tasks:

* ``all`` — every target counts (re-views, re-purchases);
* ``new`` — only items absent from the user's history; history items are
  removed from every method's ranking.

Methods, all on the same split in the same run:

* the model's ``short`` vector (the short window the worker would use: latest
  <= 50 events within 30 minutes of the newest, as trained), ``long`` vector
  (latest <= 200 events) and ``blend`` (:func:`models.blend`, the checkpoint's
  alpha), through the public :class:`~models.model.InterestModel` API;
* baselines (:mod:`models.baselines`): global popularity, recent popularity
  (last day before the cutoff), item-to-item co-occurrence kNN, and the user's
  own most recent items (``all`` task only).

Metrics (:mod:`models.metrics`): Recall@10, Recall@20, NDCG@10, MRR per user,
averaged over users, with 95% percentile-bootstrap intervals (1,000 resamples
of users, the same resamples for every method) and the paired ratio of the
blended vector's NDCG@10 to the best baseline's. When the checkpoint has
cold items (item text), a cold-start table ranks only the items first seen
after the cutoff. :func:`write_report` writes the JSON and a PNG chart.

The model must not have seen events at or after the evaluation cutoff; a
checkpoint trained on later events is refused.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from interest_stream.models._callable import make_callable
from interest_stream.models.baselines import Baselines
from interest_stream.models.checkpoint import load_item_meta, read_config, write_json
from interest_stream.models.config import TaskKind
from interest_stream.models.errors import DataError, ModelError
from interest_stream.models.metrics import METRIC_NAMES, bootstrap_ci, paired_ratio_ci, rank_metrics
from interest_stream.models.split import EvalSplit, cutoff_time, make_split

__all__ = ["evaluate", "markdown_tables", "write_report"]

log = logging.getLogger(__name__)

MODEL_METHODS = ("short", "long", "blend")
BASELINE_METHODS = ("popularity", "recent_popularity", "item_knn", "own_recent")
ScoreFn = Callable[[np.ndarray], np.ndarray]


def _machine() -> dict[str, Any]:
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


def _model_vectors(
    split: EvalSplit, model_dir: str | os.PathLike[str], device: str | None, alpha: float | None
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any], dict[str, float]]:
    """Vectors of the test users and candidate item vectors, via the public API."""
    from interest_stream.models.model import InterestModel

    t0 = time.perf_counter()
    model = InterestModel.load(model_dir, device=device)
    long_cap = int(model.config.get("train", {}).get("long_history_events", 200))
    shorts = [model.short_window(h) for h in split.histories]
    longs = [h[-long_cap:] for h in split.histories]
    t1 = time.perf_counter()
    s = model.encode_short(shorts)
    lo = model.encode_long(longs)
    t2 = time.perf_counter()
    used_alpha = model.blend_alpha if alpha is None else alpha
    vecs = {"short": s, "long": lo, "blend": model.blend(s, lo, used_alpha)}
    items = model.item_vectors()
    cand = np.zeros((len(split.candidates), model.dim), dtype=np.float32)
    missing = 0
    for col, item in enumerate(split.candidates):
        row = model.item_index.get(item)
        if row is None:
            missing += 1
        else:
            cand[col] = items[row]
    if missing:
        log.warning("%d candidate items are not in the model's vocabulary (zero vectors)", missing)
    info = {
        "model_version": model.model_version,
        "alpha": used_alpha,
        "candidates_missing_from_model": missing,
        "config": model.config,
    }
    timing = {"model_load_s": t1 - t0, "encode_s": t2 - t1}
    return vecs, cand, info, timing


def _summarise(
    per_user: dict[str, dict[str, np.ndarray]], n_boot: int, seed: int
) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method, metrics in per_user.items():
        out[method] = {}
        for name in METRIC_NAMES:
            mean, lo, hi = bootstrap_ci(metrics[name], n_boot, seed)
            out[method][name] = {"mean": mean, "ci95": [lo, hi]}
    return out


def _cold_start(
    split: EvalSplit,
    events_after: pd.DataFrame,
    model_dir: str | os.PathLike[str],
    vecs: dict[str, np.ndarray],
    n_boot: int,
    seed: int,
) -> dict[str, Any] | None:
    """Rank only the cold items (known from text, first seen after the cutoff)."""
    from interest_stream.models.checkpoint import load_item_vectors

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
        "methods": _summarise(per_user, n_boot, seed),
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
    train_max = cfg.get("split", {}).get("train_max_ts")
    if train_max is None or int(train_max) >= cutoff:
        raise ModelError(
            f"{model_dir}: the model was trained on events up to ts={train_max}, at or after "
            f"the evaluation cutoff {cutoff} (quantile {cutoff_quantile}); that would leak the "
            "future. Train with --cutoff-quantile <= the evaluation's, on the same file."
        )
    horizon_ms = None if horizon_days is None else int(horizon_days * 86_400_000)
    split = make_split(events, cutoff, horizon_ms)
    if not split.users:
        raise DataError("no user has events both before and after the cutoff")
    t_split = time.perf_counter()
    vecs, cand, info, timing = _model_vectors(split, model_dir, device, alpha)
    base = Baselines(split, recent_days=recent_days)
    t_base = time.perf_counter()

    def model_fn(v: np.ndarray) -> ScoreFn:
        def f(idx: np.ndarray) -> np.ndarray:
            res: np.ndarray = v[idx] @ cand.T
            return res

        return f

    fns: dict[str, ScoreFn] = {m: model_fn(vecs[m]) for m in MODEL_METHODS}
    fns.update(
        {
            "popularity": base.popularity,
            "recent_popularity": base.recent_popularity,
            "item_knn": base.item_knn,
            "own_recent": base.own_recent,
        }
    )
    results: dict[str, Any] = {}
    for task in task_list:
        users = split.users_with_targets(task)
        exclude = split.hist_items if task is TaskKind.NEW else None
        methods = [m for m in fns if not (task is TaskKind.NEW and m == "own_recent")]
        per_user = {m: rank_metrics(fns[m], users, split.targets[task], exclude) for m in methods}
        summary = _summarise(per_user, n_bootstrap, seed)
        baselines = [m for m in methods if m in BASELINE_METHODS]
        best = max(baselines, key=lambda m: summary[m]["ndcg@10"]["mean"])
        ratios = {}
        for m in MODEL_METHODS:
            r, lo, hi = paired_ratio_ci(
                per_user[m]["ndcg@10"], per_user[best]["ndcg@10"], n_bootstrap, seed
            )
            ratios[m] = {"ratio": r, "ci95": [lo, hi]}
        results[task.value] = {
            "users": len(users),
            "mean_targets": float(np.mean([len(split.targets[task][u]) for u in users]))
            if len(users)
            else 0.0,
            "methods": summary,
            "best_baseline": best,
            "ndcg@10_ratio_vs_best_baseline": ratios,
        }
        log.info(
            "%s task: %d users; blend NDCG@10 %.4f, best baseline %s %.4f (ratio %.2f)",
            task.value,
            len(users),
            summary["blend"]["ndcg@10"]["mean"],
            best,
            summary[best]["ndcg@10"]["mean"],
            ratios["blend"]["ratio"],
        )
    cold = None
    if int(cfg.get("n_cold_items", 0)) > 0:
        after = events[events["ts"] >= cutoff]
        if horizon_ms is not None:
            after = after[after["ts"] < cutoff + horizon_ms]
        cold = _cold_start(split, after, model_dir, vecs, n_bootstrap, seed)
    t_end = time.perf_counter()
    report: dict[str, Any] = {
        "dataset": dataset,
        "model_dir": str(model_dir),
        "model_version": info["model_version"],
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "protocol": {
            "cutoff_quantile": cutoff_quantile,
            "cutoff_ts": cutoff,
            "cutoff_utc": pd.Timestamp(cutoff, unit="ms", tz="UTC").isoformat(),
            "horizon_days": horizon_days,
            "alpha": info["alpha"],
            "n_bootstrap": n_bootstrap,
            "bootstrap_seed": seed,
            "recent_days": recent_days,
            "ranking": "full ranking over every item with an event before the cutoff",
            "targets": "distinct items touched after the cutoff (known items only); "
            "'new' = not in the user's history, history removed from rankings",
            "short_window": {
                "events": info["config"].get("train", {}).get("short_window_events"),
                "minutes": info["config"].get("train", {}).get("short_window_minutes"),
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
        "seconds": {
            "split": t_split - t0,
            **timing,
            "baselines_setup": t_base - t_split,
            "total": t_end - t0,
        },
        "machine": _machine(),
    }
    if out_dir is not None:
        write_report(report, out_dir, name)
    return report


def _metrics_json(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    from interest_stream.models.checkpoint import METRICS_FILE, read_json

    path = Path(model_dir) / METRICS_FILE
    if not path.exists():
        return {}
    data = read_json(path)
    return data if isinstance(data, dict) else {}


def _train_seconds(model_dir: str | os.PathLike[str]) -> float | None:
    value = _metrics_json(model_dir).get("train_seconds")
    return None if value is None else float(value)


def _best_epoch(model_dir: str | os.PathLike[str]) -> int | None:
    value = _metrics_json(model_dir).get("best_epoch")
    return None if value is None else int(value)


def write_report(
    report: dict[str, Any], out_dir: str | os.PathLike[str], name: str
) -> tuple[Path, Path]:
    """Write ``quality-<name>.json`` and a bar chart ``quality-<name>.png``.

    Args:
        report: The dict returned by :func:`evaluate`.
        out_dir: Target folder (created).
        name: File-name stem.

    Returns:
        ``(json_path, png_path)``.
    """
    try:
        import matplotlib
    except ImportError as exc:  # plotting is the optional `bench` extra
        raise ModelError("charts need matplotlib: pip install 'interest-stream[bench]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / f"quality-{name}.json"
    png_path = folder / f"quality-{name}.png"
    write_json(json_path, report)

    tasks = list(report["tasks"])
    shown = ("ndcg@10", "recall@20", "mrr")
    fig, axes = plt.subplots(
        len(tasks), len(shown), figsize=(4.2 * len(shown), 3.4 * len(tasks)), squeeze=False
    )
    colors = {
        "short": "#9ecae1",
        "long": "#4292c6",
        "blend": "#08519c",
        "popularity": "#bdbdbd",
        "recent_popularity": "#969696",
        "item_knn": "#fd8d3c",
        "own_recent": "#e6550d",
    }
    for r, task in enumerate(tasks):
        methods = report["tasks"][task]["methods"]
        names = list(methods)
        for c, metric in enumerate(shown):
            ax = axes[r][c]
            means = [methods[m][metric]["mean"] for m in names]
            lows = [methods[m][metric]["mean"] - methods[m][metric]["ci95"][0] for m in names]
            highs = [methods[m][metric]["ci95"][1] - methods[m][metric]["mean"] for m in names]
            ax.bar(
                range(len(names)),
                means,
                yerr=[lows, highs],
                capsize=3,
                color=[colors.get(m, "#777777") for m in names],
            )
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels([m.replace("_", "\n") for m in names], fontsize=7)
            users = report["tasks"][task]["users"]
            ax.set_title(f"{task} events: {metric} (n={users})", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
    label = report.get("dataset") or name
    fig.suptitle(
        f"{label}: temporal split at q={report['protocol']['cutoff_quantile']}, "
        "full ranking, 95% bootstrap CI",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    log.info("wrote %s and %s", json_path, png_path)
    return json_path, png_path


def markdown_tables(report: dict[str, Any]) -> str:
    """The report's figures as Markdown tables (mean and 95% CI per method and metric).

    Args:
        report: The dict returned by :func:`evaluate`.

    Returns:
        Markdown text: one table per task, plus the cold-start table when present.
    """
    lines: list[str] = []
    metrics = ("ndcg@10", "recall@10", "recall@20", "mrr")

    def table(title: str, methods: dict[str, Any], best: str | None) -> None:
        lines.append(title)
        lines.append("")
        lines.append(
            "| method | "
            + " | ".join(
                m.upper() if m == "mrr" else m.replace("ndcg", "NDCG").replace("recall", "Recall")
                for m in metrics
            )
            + " |"
        )
        lines.append("|---|" + "---|" * len(metrics))
        for name, figs in methods.items():
            label = f"**{name}**" if name == "blend" else name
            if name == best:
                label += " (best baseline)"
            cells = [
                f"{figs[m]['mean']:.4f} [{figs[m]['ci95'][0]:.4f}, {figs[m]['ci95'][1]:.4f}]"
                for m in metrics
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")

    for task, res in report["tasks"].items():
        ratio = res["ndcg@10_ratio_vs_best_baseline"]["blend"]
        title = (
            f"**{task} events** — {res['users']} test users, {res['mean_targets']:.1f} targets "
            f"per user; blend NDCG@10 / best baseline ({res['best_baseline']}) = "
            f"**{ratio['ratio']:.2f}x** [95% CI {ratio['ci95'][0]:.2f}, "
            f"{ratio['ci95'][1]:.2f}]"
        )
        table(title, res["methods"], res["best_baseline"])
    cold = report.get("cold_start")
    if cold and cold.get("methods"):
        table(
            f"**cold-start items** — ranking only the {cold['cold_items']} items first seen "
            f"after the cutoff ({cold['users']} users)",
            cold["methods"],
            None,
        )
    return "\n".join(lines)


make_callable(__name__, "evaluate")
