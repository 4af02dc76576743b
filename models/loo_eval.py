"""Leave-one-out evaluation: ``interest-stream evaluate --protocol loo`` = :func:`evaluate_loo`.

The field's protocol (SASRec, BERT4Rec, RecBole): per user (>= 3 events, order (ts, row)) the
last event is the test target and every earlier event the input history
(:func:`~interest_stream.models.loo.loo_frame`, :func:`~interest_stream.models.loo.loo_split`).
Every method ranks every item of the frame (full ranking, history not masked); items the
checkpoint does not know score ``-inf`` for the model's vectors (the item index cannot return
them). Baselines are fit on every non-test event. Task ``all`` only. A checkpoint is accepted
only if it was trained with ``--protocol loo`` on the same split (fingerprint) or, trained
with the temporal protocol, ended before the earliest test event; otherwise :class:`ModelError`.
Definition and decisions: docs/DESIGN.md ("Evaluation protocol").
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from typing import Any

import pandas as pd

from interest_stream.core.checkpoint import read_config, read_metrics
from interest_stream.models.baselines import Baselines
from interest_stream.models.config import TaskKind
from interest_stream.models.errors import ModelError
from interest_stream.models.eval_methods import (
    RERANK_METHOD,
    machine_info,
    method_fns,
    model_vectors,
    task_results,
)
from interest_stream.models.loo import loo_fingerprint, loo_frame, loo_split
from interest_stream.models.new_items_eval import new_items_section
from interest_stream.models.report import write_report

__all__ = ["check_loo_checkpoint", "evaluate_loo"]

log = logging.getLogger(__name__)


def check_loo_checkpoint(
    cfg: dict[str, Any], model_dir: str | os.PathLike[str], frame: pd.DataFrame,
    fingerprint: dict[str, Any],
) -> None:  # fmt: skip
    """Refuse a checkpoint that may have trained on this split's test events.

    Args:
        cfg: The checkpoint's ``config.json``.
        model_dir: The checkpoint folder (for messages).
        frame: The LOO frame of the evaluation's events.
        fingerprint: :func:`~interest_stream.models.loo.loo_fingerprint` of ``frame``.

    Raises:
        ModelError: An LOO checkpoint of another split, or a temporal checkpoint whose
            training period reaches the earliest test event.
    """
    split = cfg.get("split", {})
    if split.get("protocol") == "loo":
        theirs = split.get("loo") or {}
        diff = sorted(k for k in fingerprint if theirs.get(k) != fingerprint[k])
        if diff:
            what = ", ".join(
                f"{k} {str(theirs.get(k))[:16]} in training vs {str(fingerprint[k])[:16]} here"
                for k in diff
            )
            raise ModelError(
                f"{model_dir}: trained with --protocol loo on another data set or split "
                f"({what}); "
                "its training events may include this split's test events. Train with "
                "--protocol loo on the same event file."
            )
        return
    first_test = int(frame.loc[frame["role"] == "test", "ts"].min())
    train_max = split.get("train_max_ts")
    if train_max is None or int(train_max) >= first_test:
        raise ModelError(
            f"{model_dir}: trained with the temporal protocol on events up to ts={train_max}, "
            f"at or after the earliest leave-one-out test event (ts={first_test}): it may "
            "have trained on the test events. Train with --protocol loo on the same event file."
        )


def evaluate_loo(
    events: pd.DataFrame,
    model_dir: str | os.PathLike[str],
    *,
    alpha: float | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    recent_days: float = 1.0,
    min_events: int = 3,
    device: str | None = "auto",
    out_dir: str | os.PathLike[str] | None = None,
    name: str = "eval",
    dataset: str | None = None,
    new_items: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint against the baselines with leave-one-out by time.

    Args:
        events: Canonical events (the whole file: the split happens here).
        model_dir: Checkpoint folder (``train --protocol loo`` on the same file).
        alpha: Blend weight of the short vector (default: the checkpoint's).
        n_bootstrap: Bootstrap resamples of users.
        seed: Seed of the bootstrap.
        recent_days: Window of ``recent_popularity`` before the newest non-test event.
        min_events: Users with fewer events are left out (>= 3).
        device: Torch device of the encoder.
        out_dir: If given, write ``quality-<name>.json``, ``.md`` and ``.png`` there.
        name: File-name stem of the report.
        dataset: Label of the data set in the report.
        new_items: Also the ``new_items`` section (``None`` without it).

    Returns:
        The report (same shape as the temporal one; ``tasks`` holds ``all`` only).

    Raises:
        ModelError: The checkpoint may have seen the test events (see
            :func:`check_loo_checkpoint`).
        DataError: No user has ``min_events`` events.
    """
    t0 = time.perf_counter()
    cfg = read_config(model_dir)
    frame = loo_frame(events, min_events)
    fingerprint = loo_fingerprint(frame, min_events)
    check_loo_checkpoint(cfg, model_dir, frame, fingerprint)
    split = loo_split(frame, "test")
    t_split = time.perf_counter()
    vecs, cand, info, timing = model_vectors(split, model_dir, device, alpha)
    base = Baselines(split, recent_days=recent_days)
    t_base = time.perf_counter()
    known = info["known"]
    fns, rerank = method_fns(split, model_dir, vecs, cand, known, base, mask_unknown=True)
    results = {"all": task_results(split, TaskKind.ALL, fns, n_bootstrap, seed)}
    t_end = time.perf_counter()
    tgt_known = sum(bool(known[t[0]]) for t in split.targets[TaskKind.ALL] if len(t))
    stats = {**split.stats, "input_events": len(events), "targets_known_to_model": tgt_known}
    seconds = {"split": t_split - t0, **timing, "baselines_setup": t_base - t_split,
               "total": t_end - t0}  # fmt: skip
    report = {
        "dataset": dataset,
        "model_dir": str(model_dir),
        "model_version": info["model_version"],
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "protocol": _protocol(fingerprint, info, n_bootstrap, seed, recent_days),
        "split": stats,
        "recent_popularity_events": base.recent_events,
        "tasks": results,
        "default_ranking": RERANK_METHOD if rerank is not None else "blend",
        "rerank": rerank,
        "cold_start": None,
        "model_training": _training_info(cfg, model_dir),
        "candidates_missing_from_model": info["candidates_missing_from_model"],
        "seconds": seconds,
        "machine": machine_info(),
    }
    report["new_items"] = new_items_section(
        "loo", split, model_dir, device, info, cand, fns, n_bootstrap, seed, frame
    ) if new_items else None  # fmt: skip
    if out_dir is not None:
        write_report(report, out_dir, name)
    return report


def _protocol(
    fingerprint: dict[str, Any], info: dict[str, Any], n_bootstrap: int, seed: int,
    recent_days: float,
) -> dict[str, Any]:  # fmt: skip
    """The report's ``protocol`` section."""
    train_cfg = info["config"].get("train", {})
    return {
        "name": "loo",
        **fingerprint,
        "alpha": info["alpha"],
        "n_bootstrap": n_bootstrap,
        "bootstrap_seed": seed,
        "recent_days": recent_days,
        "ranking": "full ranking over every item of the users with >= min_events events; "
        "history not masked; items unknown to the checkpoint score -inf for the model",
        "targets": "each user's last event (order: ts, then file row); history = every "
        "earlier event; baselines fit on every non-test event",
        "short_window": {
            "events": train_cfg.get("short_window_events"),
            "minutes": train_cfg.get("short_window_minutes"),
        },
    }


def _training_info(cfg: dict[str, Any], model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint's training facts for the report."""
    metrics = read_metrics(model_dir)
    split = cfg.get("split", {})
    return {
        "protocol": split.get("protocol", "temporal"),
        "train_seconds": metrics.get("train_seconds"),
        "train_events": split.get("train_events"),
        "seed": cfg.get("seed"),
        "best_epoch": metrics.get("best_epoch"),
        "encoder": cfg.get("encoder"),
    }
