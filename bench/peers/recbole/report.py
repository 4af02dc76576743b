"""The one table (markdown) of a peer run, and the machine's state beside it."""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["LoadSampler", "collect", "machine", "markdown_table"]

COLUMNS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "mrr@10")
OUR_METHODS = ("rerank", "blend", "short", "long", "repeat_last")
"""Our rows, in order: the default ranking (``rerank``, when the checkpoint has a re-ranker),
then the vectors alone, then the ``repeat_last`` baseline."""
"""The product's rows in the table (every method's figures are in the JSON)."""


class LoadSampler:
    """Samples the 1-minute load average every ``period`` seconds in a daemon thread."""

    def __init__(self, period: float = 15.0) -> None:
        self.period = period
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), os.getloadavg()[0]))
            self._stop.wait(self.period)

    def start(self) -> LoadSampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Stop; mean and max of the samples."""
        self._stop.set()
        self._thread.join(timeout=self.period + 1)
        loads = [v for _, v in self.samples]
        return {
            "samples": len(loads),
            "period_s": self.period,
            "mean_1min": sum(loads) / len(loads) if loads else None,
            "max_1min": max(loads) if loads else None,
        }


def machine() -> dict[str, Any]:
    """Platform, CPU count and load average now."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
    }


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _row(ds: str, method: str, m: dict[str, float], seconds: float | None, epochs: Any) -> str:
    cells = [ds, method, *(_fmt(m.get(c)) for c in COLUMNS)]
    cells += ["–" if seconds is None else f"{seconds:.0f}", "–" if epochs is None else str(epochs)]
    return "| " + " | ".join(cells) + " |"


def dataset_rows(name: str, result: dict[str, Any]) -> list[str]:
    """Table rows of one data set: the peers, then the product's methods."""
    label = f"{name} ({result['export']['users']} users)"
    rows = []
    for model, info in (result.get("peers") or {}).get("models", {}).items():
        fit = info.get("fit") or {}
        epochs = f"{fit.get('epochs')} (best {fit.get('best_epoch')}, {fit.get('stopped_by')})"
        rows.append(_row(label, f"RecBole {model}", info.get("test", {}),
                         fit.get("train_seconds"), epochs))  # fmt: skip
        label = ""
    ours = result.get("ours")
    if ours:
        for method in OUR_METHODS:
            if method in ours["methods"]:
                trained = method != "repeat_last"
                rows.append(_row(label, f"interest-stream {method}", ours["methods"][method],
                                 ours["train_seconds"] if trained else None,
                                 ours["epochs"] if trained else None))  # fmt: skip
                label = ""
    return rows


def ratios(result: dict[str, Any]) -> str:
    """NDCG@10 of every row over RecBole SASRec's (empty without both)."""
    peers = (result.get("peers") or {}).get("models", {})
    base = peers.get("SASRec", {}).get("test", {}).get("ndcg@10")
    if not base:
        return ""
    parts = [f"RecBole {m} {i['test']['ndcg@10'] / base:.2f}x"
             for m, i in peers.items() if m != "SASRec" and "test" in i]  # fmt: skip
    ours = result.get("ours") or {}
    parts += [f"{m} {ours['methods'][m]['ndcg@10'] / base:.2f}x"
              for m in OUR_METHODS if m in ours.get("methods", {})]  # fmt: skip
    return "NDCG@10 / RecBole SASRec: " + ", ".join(parts)


def markdown_table(results: dict[str, Any]) -> str:
    """The run's table: every data set, peers and ours, then ratios and the run's conditions."""
    head = ["data set", "method", "Recall@10", "NDCG@10", "Recall@20", "NDCG@20", "MRR@10",
            "training s", "epochs"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for name, result in results["datasets"].items():
        lines += dataset_rows(name, result)
        note = ratios(result)
        if note:
            notes.append(f"* {name}: {note}")
    run = results["run"]
    load = run.get("load") or {}
    notes.append(
        f"* budget {run['budget_minutes']:g} min per model; seed {run['seed']}; "
        f"{run['threads']} torch threads; {run['machine']['cpu_count']} CPUs; load average "
        f"(1 min) mean {_fmt(load.get('mean_1min'), 2)}, max {_fmt(load.get('max_1min'), 2)} "
        f"over the run; {run['started_utc']} – {run.get('finished_utc', '?')}"
    )
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def collect(out_dir: Path) -> dict[str, Any]:
    """Rebuild a run's results from its folder (also a run that was stopped before its end).

    Reads ``peers-<name>.json`` (written after each RecBole model), ``ours-evaluate-<name>.json``,
    the JSON line of ``ours-train-<name>.log`` and ``data/<name>/roles.tsv``.
    """
    from bench.peers.recbole.ours import epochs_of, our_methods
    from bench.peers.recbole.splitcheck import read_roles

    saved = out_dir / "peers.json"
    run = json.loads(saved.read_text())["run"] if saved.exists() else None
    datasets: dict[str, Any] = {}
    for roles in sorted(out_dir.glob("data/*/roles.tsv")):
        name = roles.parent.name
        result: dict[str, Any] = {"export": {"users": len({r[1] for r in read_roles(roles)})}}
        peers = out_dir / f"peers-{name}.json"
        if peers.exists():
            result["peers"] = json.loads(peers.read_text())
        report = out_dir / f"ours-evaluate-{name}.json"
        train_log = out_dir / f"ours-train-{name}.log"
        if report.exists() and train_log.exists():
            lines = [x for x in train_log.read_text().splitlines() if x.startswith("{")]
            trained = json.loads(lines[-1]) if lines else {}
            result["ours"] = {
                "methods": our_methods(json.loads(report.read_text())),
                "train_seconds": trained.get("seconds"),
                "epochs": epochs_of(out_dir / f"model-{name}"),
            }
        datasets[name] = result
    run = run or {"budget_minutes": float("nan"), "seed": "?", "threads": "?",
                  "started_utc": "?", "machine": machine()}  # fmt: skip
    return {"run": run, "datasets": datasets}


if __name__ == "__main__":
    import sys

    print(markdown_table(collect(Path(sys.argv[1]))))
