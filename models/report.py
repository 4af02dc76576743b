"""The evaluation report on disk: ``quality-<name>.json``, tables ``.md`` and a chart ``.png``.

:func:`markdown_report` renders the report's tables (one per task: every method, every metric
with its 95% interval), as ``evaluate --markdown`` prints them. The chart needs matplotlib (the
optional ``bench`` extra); it is imported here only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from interest_stream.core.checkpoint import write_json
from interest_stream.models.errors import ModelError

__all__ = ["markdown_report", "write_report"]

log = logging.getLogger(__name__)


_MD_METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10", "mrr@20")


def _shown_methods(task: dict[str, Any]) -> list[str]:
    """A task's methods without the aliases of old names."""
    aliases = task.get("method_aliases") or {}
    return [m for m in task["methods"] if m not in aliases]


def markdown_report(report: dict[str, Any]) -> str:
    """The report's tables in markdown: per task, every method x Recall/NDCG/MRR @10/@20.

    Args:
        report: The dict returned by ``evaluate`` (either protocol).

    Returns:
        Markdown text (a heading line per task, then its table).
    """
    lines: list[str] = []
    proto = report.get("protocol", {})
    for task, res in report["tasks"].items():
        best = res.get("best_baseline")
        ratio = res.get("ndcg@10_ratio_vs_best_baseline", {}).get("blend", {})
        r = ratio.get("ratio", float("nan"))
        lo, hi = ratio.get("ci95", [float("nan"), float("nan")])
        head = (
            f"**{proto.get('name', 'temporal')}, {task} events** ({res['users']} users); "
            f"blend NDCG@10 / best baseline ({best}) = {r:.2f}x [95% CI {lo:.2f}, {hi:.2f}]"
        )
        rr = res.get("ndcg@10_ratio_vs_best_baseline", {}).get("rerank")
        if rr is not None:
            head += f"; rerank: {rr['ratio']:.2f}x [{rr['ci95'][0]:.2f}, {rr['ci95'][1]:.2f}]"
            rep = res.get("ndcg@10_ratio_vs_repeat_last", {}).get("rerank")
            if rep is not None and best != "repeat_last":
                head += (
                    f", vs repeat_last {rep['ratio']:.2f}x "
                    f"[{rep['ci95'][0]:.2f}, {rep['ci95'][1]:.2f}]"
                )
        lines.append(head)
        lines.append("")
        heads = [m.replace("recall", "Recall").replace("ndcg", "NDCG").replace("mrr", "MRR")
                 for m in _MD_METRICS]  # fmt: skip
        lines.append("| method | " + " | ".join(heads) + " |")
        lines.append("|---" * (len(_MD_METRICS) + 1) + "|")
        for method in _shown_methods(res):
            figs = res["methods"][method]
            cells = [
                f"{figs[k]['mean']:.4f} [{figs[k]['ci95'][0]:.4f}, {figs[k]['ci95'][1]:.4f}]"
                for k in _MD_METRICS
                if k in figs
            ]
            label = f"{method} (best baseline)" if method == best else method
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(
    report: dict[str, Any], out_dir: str | os.PathLike[str], name: str
) -> tuple[Path, Path]:
    """Write ``quality-<name>.json``, ``quality-<name>.md`` and a chart ``quality-<name>.png``.

    Args:
        report: The dict returned by ``evaluate`` (either protocol).
        out_dir: Target folder (created).
        name: File-name stem.

    Returns:
        ``(json_path, png_path)``.

    Raises:
        ModelError: matplotlib is not installed.
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
    (folder / f"quality-{name}.md").write_text(markdown_report(report), encoding="utf-8")

    tasks = list(report["tasks"])
    shown = ("ndcg@10", "recall@20", "mrr")
    fig, axes = plt.subplots(
        len(tasks), len(shown), figsize=(4.2 * len(shown), 3.4 * len(tasks)), squeeze=False
    )
    colors = {
        "short": "#9ecae1",
        "long": "#4292c6",
        "blend": "#08519c",
        "rerank": "#31a354",
        "popularity": "#bdbdbd",
        "recent_popularity": "#969696",
        "item_knn": "#fd8d3c",
        "repeat_last": "#e6550d",
    }
    for r, task in enumerate(tasks):
        methods = report["tasks"][task]["methods"]
        names = _shown_methods(report["tasks"][task])
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
    proto = report["protocol"]
    how = (
        "leave-one-out by time"
        if proto.get("name") == "loo"
        else f"temporal split at q={proto.get('cutoff_quantile')}"
    )
    fig.suptitle(f"{label}: {how}, full ranking, 95% bootstrap CI", fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    log.info("wrote %s and %s", json_path, png_path)
    return json_path, png_path
