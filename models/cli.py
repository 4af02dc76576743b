"""Click commands of the model verbs (``python -m interest_stream.models``, mounted by the CLI).

``interest-stream train``, ``interest-stream evaluate`` and
``interest-stream bench encoder`` are thin layers over :func:`interest_stream.models.train`,
:func:`interest_stream.models.evaluate` and ``bench.encoder``; the
commands here are those layers, so the coordinator's CLI can simply do::

    from interest_stream.models.cli import bench_encoder_cmd, evaluate_cmd, train_cmd
    main.add_command(train_cmd, "train")
    main.add_command(evaluate_cmd, "evaluate")
    bench.add_command(bench_encoder_cmd, "encoder")
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["bench_encoder_cmd", "evaluate_cmd", "main", "train_cmd"]


def _setup_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=logging.INFO if verbose else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )


def _item_text(value: str | None, events: str) -> str | None:
    if value is None or value == "none":
        return None
    if value == "auto":
        from interest_stream.models.text import find_item_text

        found = find_item_text(events)
        return None if found is None else str(found)
    return value


def _train_defaults() -> dict[str, Any]:
    from interest_stream.models.config import EncoderConfig, TrainConfig

    t, e = TrainConfig(), EncoderConfig()
    return {
        **{
            k: getattr(t, k)
            for k in (
                "epochs",
                "patience",
                "batch_size",
                "lr",
                "seed",
                "cutoff_quantile",
                "val_fraction",
                "long_horizon_hours",
                "blend_alpha",
                "next_item_rate",
                "short_window_minutes",
            )
        },
        "dim": e.dim,
        "d_model": e.d_model,
        "dropout": e.dropout,
        "identity_dim": e.identity_dim,
        "revisit_dim": e.revisit_dim,
        "revisit_half_life_hours": e.revisit_half_life_hours,
        "trend": e.trend,
        "short_max_len": e.short_max_len,
        "n_layers_short": e.n_layers_short,
        "long_half_life_hours": e.long_half_life_hours,
    }


_D = _train_defaults()


@click.command("train", context_settings={"show_default": True})
@click.option(
    "--events",
    "events_path",
    required=True,
    type=click.Path(exists=True),
    help="Event file (canonical CSV/Parquet, Taobao or MovieLens u.data).",
)
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Checkpoint folder.")
@click.option("--epochs", default=_D["epochs"], help="Most epochs of the early-stopping phase.")
@click.option(
    "--patience", default=_D["patience"], help="Epochs without improvement before stopping."
)
@click.option("--batch-size", default=_D["batch_size"], help="Next-item examples per step.")
@click.option("--lr", default=_D["lr"], help="AdamW learning rate.")
@click.option("--seed", default=_D["seed"], help="Random seed.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--threads", default=None, type=int, help="torch threads (default: torch's).")
@click.option(
    "--cutoff-quantile",
    default=_D["cutoff_quantile"],
    help="Train on events before this quantile of time (1.0 = all events).",
)
@click.option(
    "--val-fraction",
    default=_D["val_fraction"],
    help="Share of the training period to validate on (0 = no early stopping).",
)
@click.option(
    "--val-task",
    default="all",
    type=click.Choice(["all", "new"]),
    help="Validation task of early stopping.",
)
@click.option("--no-refit", is_flag=True, help="Keep the early-stopped model (no retraining).")
@click.option("--dim", default=_D["dim"], help="Size of the item / interest vectors.")
@click.option(
    "--identity-dim",
    default=_D["identity_dim"],
    help="Coordinates of the item vectors that are a fixed random item code.",
)
@click.option(
    "--revisit-dim",
    default=_D["revisit_dim"],
    type=click.IntRange(min=0),
    help="Size of the revisit channel appended to every vector (0 = none; see docs).",
)
@click.option(
    "--revisit-half-life-hours",
    default=_D["revisit_half_life_hours"],
    type=click.FloatRange(min=0.0, min_open=True),
    help="Recency half-life of the revisit channel.",
)
@click.option(
    "--trend/--no-trend",
    default=_D["trend"],
    help="Append a trend coordinate (recent item popularity; window and gain chosen on "
    "validation).",
)
@click.option(
    "--revisit-gain",
    default=None,
    type=float,
    help="Fixed revisit gain, negative to push the user's own items down "
    "(default: chosen on the validation split).",
)
@click.option("--d-model", default=_D["d_model"], help="Transformer width.")
@click.option("--dropout", default=_D["dropout"], help="Dropout of the transformer layers.")
@click.option(
    "--long-horizon-hours",
    default=_D["long_horizon_hours"],
    help="Horizon of the next-days objective.",
)
@click.option(
    "--long-half-life-hours",
    default=_D["long_half_life_hours"],
    type=float,
    help="Recency half-life of the long-term pooling (none = no decay).",
)
@click.option(
    "--item-text",
    default="auto",
    help="Item text for cold start: auto (MovieLens u.item beside the events), none, "
    "a MovieLens folder or an item_id,text CSV.",
)
@click.option("--loss", default="auto", type=click.Choice(["auto", "full", "sampled"]))
@click.option(
    "--seen-items",
    default="auto",
    type=click.Choice(["auto", "plain", "hard_negatives", "masked"]),
    help="History items in the softmax (auto: masked for --val-task new).",
)
@click.option("--blend-alpha", default=_D["blend_alpha"], help="Blend weight while training.")
@click.option(
    "--no-select-alpha", is_flag=True, help="Keep --blend-alpha (no choice on validation)."
)
@click.option(
    "--sample-half-life-days",
    default=None,
    type=float,
    help="Recency weighting of training examples (none = all equal).",
)
@click.option(
    "--next-item-rate", default=_D["next_item_rate"], help="Share of next-item examples per epoch."
)
@click.option(
    "--scalar-lr-mult",
    default=20.0,
    help="Learning-rate multiplier of the scalar gains (TrainConfig default: 1).",
)
@click.option("--short-max-len", default=_D["short_max_len"], help="Short path window cap.")
@click.option(
    "--short-window-minutes",
    default=_D["short_window_minutes"],
    type=click.FloatRange(min=0.0, min_open=True),
    help="Short window: events within this many minutes of the newest (stored in the "
    "checkpoint; evaluate uses the checkpoint's value).",
)
@click.option("--layers-short", default=_D["n_layers_short"], help="Short path layers.")
@click.option("--max-minutes", default=None, type=float, help="Wall-clock budget.")
@click.option(
    "--protocol",
    default="temporal",
    type=click.Choice(["temporal", "loo"]),
    help="temporal: train before --cutoff-quantile; loo: train on each user's events but "
    "the last two, validate on the second-last (see docs/DESIGN.md).",
)
@click.option(
    "--no-rerank",
    is_flag=True,
    help="Do not fit the repeat-aware re-ranker (fit on the validation split by default).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars or logs.")
def train_cmd(**opts: Any) -> None:
    """Train the interest encoder on an event file and write a checkpoint folder."""
    quiet: bool = opts["quiet"]
    _setup_logging(not quiet)
    from interest_stream.core.eventfile import read_events
    from interest_stream.models.training import train

    cfg = _train_config(opts)
    events = read_events(opts["events_path"])
    res = train(events, opts["out_dir"], cfg, progress=not quiet)
    out = {
        "out_dir": str(res.out_dir),
        "model_version": res.model_version,
        "best_epoch": res.best_epoch,
        "val_ndcg@10": res.val_ndcg10,
        "seconds": round(res.seconds, 1),
    }
    click.echo(
        json.dumps(out)
        if opts["as_json"]
        else f"wrote {res.out_dir} ({res.model_version}) in {res.seconds:.0f}s; "
        f"best epoch {res.best_epoch}, validation NDCG@10 {res.val_ndcg10}"
    )


def _train_config(o: dict[str, Any]) -> Any:
    """The :class:`~interest_stream.models.config.TrainConfig` of ``train_cmd``'s options."""
    from interest_stream.models.config import (
        EncoderConfig,
        LossKind,
        SeenItems,
        TaskKind,
        TrainConfig,
    )

    enc = EncoderConfig(
        dim=o["dim"],
        d_model=o["d_model"],
        dropout=o["dropout"],
        identity_dim=o["identity_dim"],
        revisit_dim=o["revisit_dim"],
        revisit_half_life_hours=o["revisit_half_life_hours"],
        trend=o["trend"],
        long_half_life_hours=o["long_half_life_hours"],
        short_max_len=o["short_max_len"],
        n_layers_short=o["layers_short"],
    )
    max_minutes = o["max_minutes"]
    return TrainConfig(
        encoder=enc,
        epochs=o["epochs"],
        patience=o["patience"],
        batch_size=o["batch_size"],
        lr=o["lr"],
        seed=o["seed"],
        device=o["device"],
        threads=o["threads"],
        cutoff_quantile=o["cutoff_quantile"],
        val_fraction=o["val_fraction"],
        val_task=TaskKind(o["val_task"]),
        refit=not o["no_refit"],
        long_horizon_hours=o["long_horizon_hours"],
        item_text_path=_item_text(o["item_text"], o["events_path"]),
        loss=LossKind(o["loss"]),
        seen_items=SeenItems(o["seen_items"]),
        blend_alpha=o["blend_alpha"],
        select_alpha=not o["no_select_alpha"],
        sample_half_life_days=o["sample_half_life_days"],
        next_item_rate=o["next_item_rate"],
        short_window_minutes=o["short_window_minutes"],
        scalar_lr_mult=o["scalar_lr_mult"],
        max_train_seconds=None if max_minutes is None else 60 * max_minutes,
        revisit_gain=o["revisit_gain"],
        protocol=o["protocol"],
        rerank=not o["no_rerank"],
    )


@click.command("evaluate", context_settings={"show_default": True})
@click.option("--events", "events_path", required=True, type=click.Path(exists=True))
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True))
@click.option(
    "--protocol",
    default="temporal",
    type=click.Choice(["temporal", "loo"]),
    help="temporal: one global cutoff, tasks all and new; loo: leave-one-out by time, "
    "each user's last event, task all (see docs/DESIGN.md).",
)
@click.option("--cutoff-quantile", default=0.8, help="Temporal cutoff (ignored by loo).")
@click.option(
    "--horizon-days", default=None, type=float, help="Targets within N days (temporal only)."
)
@click.option("--alpha", default=None, type=float, help="Blend weight (default: trained).")
@click.option("--bootstrap", "n_bootstrap", default=1000)
@click.option(
    "--out",
    "out_dir",
    default=None,
    type=click.Path(),
    help="Write quality-<name>.json, .md and .png here.",
)
@click.option("--name", default=None, help="Report name (default: the event file's stem).")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option(
    "--new-items",
    is_flag=True,
    help="Also score items unknown to the checkpoint with co-occurrence vectors, as a live "
    "worker would have them (the report's new_items section; minutes on Taobao).",
)
@click.option("--json", "as_json", is_flag=True, help="Print every figure as JSON.")
@click.option("--markdown", "as_markdown", is_flag=True, help="Print the tables as markdown.")
@click.option("--quiet", is_flag=True)
def evaluate_cmd(**o: Any) -> None:
    """Evaluate a checkpoint against baselines with full ranking (temporal split or LOO)."""
    _setup_logging(not o["quiet"])
    from interest_stream.core.eventfile import read_events

    stem = o["name"] or Path(o["events_path"]).name.split(".")[0]
    common = {
        "alpha": o["alpha"],
        "n_bootstrap": o["n_bootstrap"],
        "device": o["device"],
        "out_dir": o["out_dir"],
        "name": stem,
        "dataset": stem,
        "new_items": o["new_items"],
    }
    events = read_events(o["events_path"])
    if o["protocol"] == "loo":
        from interest_stream.models.loo_eval import evaluate_loo

        rep = evaluate_loo(events, o["model_dir"], **common)
    else:
        from interest_stream.models.evaluation import evaluate

        rep = evaluate(
            events, o["model_dir"], o["cutoff_quantile"], horizon_days=o["horizon_days"], **common
        )
    _print_report(rep, o["as_json"], o["as_markdown"])


def _print_report(rep: dict[str, Any], as_json: bool, as_markdown: bool) -> None:
    """Print an evaluation report as JSON, markdown tables or one line per method."""
    if as_json:
        click.echo(json.dumps(rep, indent=2))
        return
    if as_markdown:
        from interest_stream.models.report import markdown_report

        click.echo(markdown_report(rep))
        return
    for task, res in rep["tasks"].items():
        click.echo(f"{task} events ({res['users']} users), best baseline {res['best_baseline']}")
        aliases = res.get("method_aliases") or {}
        for method, figs in res["methods"].items():
            if method in aliases:
                continue
            cells = "  ".join(
                f"{k} {v['mean']:.4f} [{v['ci95'][0]:.4f}, {v['ci95'][1]:.4f}]"
                for k, v in figs.items()
            )
            click.echo(f"  {method:18s} {cells}")


@click.command("encoder", context_settings={"show_default": True})
@click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(exists=True),
    help="Checkpoint (default: the default architecture, untrained).",
)
@click.option("--batch-sizes", default="1,64,512")
@click.option("--users", "n_users", default=2048)
@click.option("--threads", default=None, type=int)
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--json", "as_json", is_flag=True)
def bench_encoder_cmd(
    model_dir: str | None,
    batch_sizes: str,
    n_users: int,
    threads: int | None,
    device: str,
    as_json: bool,
) -> None:
    """Users encoded per second (short and long path) per batch size vs a per-user loop."""
    from interest_stream.core.benchmarks import load_bench

    bench_encoder = load_bench("encoder").bench_encoder

    sizes = tuple(int(x) for x in batch_sizes.split(","))
    res = bench_encoder(model_dir, sizes, n_users=n_users, threads=threads, device=device)
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    for kind, r in res["results"].items():
        cells = "  ".join(f"b={k}: {v:,.0f}/s" for k, v in r["batch"].items())
        click.echo(f"{kind:11s} {cells}  per-user loop: {r['per_user_loop']:,.0f}/s")


@click.group()
def main() -> None:
    """Model verbs (train, evaluate, bench-encoder) without the full CLI."""


main.add_command(train_cmd, "train")
main.add_command(evaluate_cmd, "evaluate")
main.add_command(bench_encoder_cmd, "bench-encoder")


def run(argv: list[str] | None = None) -> Any:
    """Entry point of ``python -m interest_stream.models``."""
    return main.main(args=argv if argv is not None else sys.argv[1:], prog_name="models")
