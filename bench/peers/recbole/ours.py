"""Train and evaluate the product on the leave-one-out protocol, through its public CLI.

``interest-stream train --protocol loo --max-minutes <budget>`` with the flags docs/RESULTS.md
("Model quality") recommends per data set, then ``interest-stream evaluate --protocol loo
--json``; both as child processes of the main virtualenv, output logged beside the results.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from interest_stream.core.checkpoint import read_metrics

__all__ = ["DEFAULT_FLAGS", "METRICS", "epochs_of", "our_methods", "run_ours"]

DEFAULT_FLAGS = {
    "taobao": "--identity-dim 16 --revisit-dim 128 --lr 5e-3",
    "movielens": (
        "--trend --val-fraction 0.2 --lr 5e-3 --revisit-dim 512 --revisit-half-life-hours 100000"
    ),
}
"""Per data set ``train`` flags (docs/RESULTS.md, "Model quality"); ``--ours-flags`` overrides."""

METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr@10", "mrr@20")


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("interest-stream")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "interest_stream.cli"]


def _run_json(cmd: list[str], log_file: Path) -> tuple[dict[str, Any], float]:
    """Run ``cmd``; its last stdout line that is a JSON object, and the wall seconds."""
    t0 = time.perf_counter()
    with log_file.open("w") as err:
        err.write(f"$ {shlex.join(cmd)}\n")
        err.flush()
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, check=False)
    seconds = time.perf_counter() - t0
    with log_file.open("a") as fh:
        fh.write(out.stdout)
    if out.returncode != 0:
        raise RuntimeError(f"exit {out.returncode}: {shlex.join(cmd)} (log: {log_file})")
    text = out.stdout.strip()
    try:  # --json may print one indented object (evaluate) or one line (train)
        whole = json.loads(text)
        if isinstance(whole, dict):
            return whole, seconds
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                return parsed, seconds
    raise RuntimeError(f"no JSON from {shlex.join(cmd)} (log: {log_file})")


def epochs_of(model_dir: Path) -> int | None:
    phases = read_metrics(model_dir).get("phases") or {}
    total = 0
    for phase in phases.values() if isinstance(phases, dict) else []:
        history = phase.get("history") if isinstance(phase, dict) else None
        total += len(history) if isinstance(history, list) else 0
    return total or None


def our_methods(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{method: {metric: mean}}`` from an ``evaluate --json`` report.

    Takes ``report["methods"]`` or, when the report has tasks, the ``all`` task's (else the
    first task's); a metric may be a number or ``{"mean": ..., "ci95": [...]}``.
    """
    methods = report.get("methods")
    if not isinstance(methods, dict):
        tasks = report.get("tasks") or {}
        task = tasks.get("all") or tasks.get("loo") or next(iter(tasks.values()), {})
        methods = task.get("methods", {})
    out: dict[str, dict[str, float]] = {}
    for name, figures in methods.items():
        row: dict[str, float] = {}
        for metric, value in figures.items():
            mean = value.get("mean") if isinstance(value, dict) else value
            if isinstance(mean, int | float):
                row[metric.lower()] = float(mean)
        out[name] = row
    return out


def run_ours(
    events_file: Path, dataset: str, out_dir: Path, budget_minutes: float, flags: str, threads: int
) -> dict[str, Any]:
    """Train (``--protocol loo``) and evaluate (``--protocol loo``); every figure."""
    model_dir = out_dir / f"model-{dataset}"
    train_cmd = [
        *_cli(), "train", "--events", str(events_file), "--out", str(model_dir),
        "--protocol", "loo", "--max-minutes", f"{budget_minutes:g}",
        "--threads", str(threads), "--json", "--quiet", *shlex.split(flags),
    ]  # fmt: skip
    trained, train_wall = _run_json(train_cmd, out_dir / f"ours-train-{dataset}.log")
    eval_cmd = [
        *_cli(), "evaluate", "--events", str(events_file), "--model", str(model_dir),
        "--protocol", "loo", "--json", "--quiet",
    ]  # fmt: skip
    report, eval_wall = _run_json(eval_cmd, out_dir / f"ours-evaluate-{dataset}.log")
    (out_dir / f"ours-evaluate-{dataset}.json").write_text(json.dumps(report, indent=2))
    return {
        "train_command": shlex.join(train_cmd),
        "evaluate_command": shlex.join(eval_cmd),
        "train": trained,
        "train_seconds": float(trained.get("seconds", train_wall)),
        "train_wall_seconds": train_wall,
        "evaluate_wall_seconds": eval_wall,
        "epochs": epochs_of(model_dir),
        "best_epoch": trained.get("best_epoch"),
        "methods": our_methods(report),
        "protocol": report.get("protocol"),
        "split": report.get("split"),
    }
