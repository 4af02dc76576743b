"""The evaluation report on disk: ``quality-<name>.json`` and a bar chart ``.png``.

The chart needs matplotlib (the optional ``bench`` extra); it is imported here only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from interest_stream.core.checkpoint import write_json
from interest_stream.models.errors import ModelError

__all__ = ["write_report"]

log = logging.getLogger(__name__)


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
