"""The ``interest-stream`` console script (``interest_stream.cli:main``): one thin click layer.

Verbs: ``config``, ``kafka ...`` (:mod:`interest_stream.cli_kafka`), ``opensearch ...``
(:mod:`interest_stream.cli_opensearch`), ``topics``,
``replay``, ``worker``, ``serve``, ``train`` and ``evaluate`` (mounted from
:mod:`interest_stream.models.cli`), ``bench ...`` (:mod:`interest_stream.cli_bench`)
and ``demo``. Settings come from ``INTEREST_*`` environment variables; options on
the command line win. Exit codes (docs/CONTRACTS.md, "CLI"): 0 success; 1 a
failure while running; 2 bad usage or configuration; 3 Kafka unreachable; 4 a
missing or invalid input (event file, model checkpoint). Every error is one line
``error: ...`` on stderr (with ``--json``: a JSON object ``{"error", "type"}``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from interest_stream import __version__
from interest_stream.cli_bench import bench_group
from interest_stream.cli_common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_INPUT,
    EXIT_KAFKA,
    bootstrap_option,
    cli_settings,
    emit,
    fail,
    guard,
    interrupted,
    json_option,
)
from interest_stream.cli_kafka import kafka_group
from interest_stream.cli_opensearch import opensearch_group
from interest_stream.core.errors import InterestStreamError
from interest_stream.core.settings import settings_table
from interest_stream.models import cli as models_cli

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_INPUT", "EXIT_KAFKA", "main"]


class _Group(click.Group):
    """The root group: a project error from any verb becomes one line and an exit code.

    Verbs that run through :func:`~interest_stream.cli_common.guard` already do
    this; the handler here covers the rest (e.g. the model verbs mounted from
    :mod:`interest_stream.models.cli`).
    """

    def invoke(self, ctx: click.Context) -> Any:
        # the verb's own arguments (click empties ctx.args before running the verb)
        argv = [*getattr(ctx, "_protected_args", []), *ctx.args]
        try:
            return super().invoke(ctx)
        except InterestStreamError as exc:
            fail(exc, "--json" in argv)
        except KeyboardInterrupt:
            interrupted()


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.version_option(__version__, prog_name="interest-stream")
def main() -> None:
    """interest-stream: streaming real-time user-interest vectors.

    Settings come from INTEREST_* environment variables (see `interest-stream config`);
    options given on the command line win over them.
    """


# --------------------------------------------------------------------------- config
@main.command("config")
@click.option("--markdown", is_flag=True, help="Print the settings table (README format).")
@json_option
def config_cmd(markdown: bool, as_json: bool) -> None:
    """Show the effective settings (secrets masked), or the table of every setting."""
    if markdown:
        click.echo(settings_table())
        return
    s = guard(as_json, cli_settings)
    emit(s.safe_dump(), True)


main.add_command(kafka_group, "kafka")
main.add_command(opensearch_group, "opensearch")


# --------------------------------------------------------------------------- topics
@main.command("topics")
@bootstrap_option
@json_option
def topics_cmd(bootstrap: str | None, as_json: bool) -> None:
    """Create the event, DLQ and output topics if missing (idempotent)."""
    from interest_stream.streams.topics import ensure_topics

    counts = guard(as_json, lambda: ensure_topics(cli_settings(kafka_bootstrap=bootstrap)))
    emit(counts, as_json, lambda d: "\n".join(f"{t}: {n} partitions" for t, n in d.items()))


# --------------------------------------------------------------------------- replay
_events_opt = click.option(
    "--events", "events_path", required=True, type=click.Path(path_type=Path),
    help="Event file: canonical CSV/Parquet (gzip ok), or a shared Taobao / MovieLens file.",
)  # fmt: skip
_format_opt = click.option(
    "--format", "fmt", type=click.Choice(["auto", "canonical", "taobao", "movielens"]),
    default="auto", help="Layout of the event file.",
)  # fmt: skip


@main.command("replay")
@_events_opt
@_format_opt
@click.option("--rate", type=float, default=None, help="Events per second (default: max).")
@click.option("--speed", type=float, default=None, help="Replay event time N times faster.")
@click.option("--topic", default=None, help="One topic for all events (default: by type).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N events.")
@bootstrap_option
@click.option("--no-create-topics", is_flag=True, help="Do not create missing topics first.")
@json_option
def replay_cmd(
    events_path: Path,
    fmt: str,
    rate: float | None,
    speed: float | None,
    topic: str | None,
    limit: int | None,
    bootstrap: str | None,
    no_create_topics: bool,
    as_json: bool,
) -> None:
    """Publish an event file to Kafka (key = user_id, JSON values), with a progress bar."""
    from interest_stream.core.eventfile import read_events
    from interest_stream.streams.replay import replay_events
    from interest_stream.streams.topics import ensure_topics

    def run() -> dict[str, Any]:
        s = cli_settings(kafka_bootstrap=bootstrap)
        df = read_events(events_path, fmt)  # type: ignore[arg-type]
        if limit is not None:
            df = df.head(limit)
        if not no_create_topics:
            ensure_topics(s)
        stats = replay_events(df, s, topic=topic, rate=rate, speed=speed, progress=not as_json)
        return stats.to_dict()

    out = guard(as_json, run)
    emit(
        out, as_json, lambda d: f"sent {d['sent']} events in {d['seconds']:.1f}s ({d['rate']} ev/s)"
    )


# --------------------------------------------------------------------------- worker
@main.command("worker")
@bootstrap_option
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              help="RocksDB state folder [env INTEREST_STATE_DIR].")  # fmt: skip
@click.option("--model-dir", type=click.Path(path_type=Path), default=None,
              help="Checkpoint to encode with [env INTEREST_MODEL_DIR].")  # fmt: skip
@click.option("--web-port", type=int, default=None,
              help="Metrics/health port [env INTEREST_WORKER_WEB_PORT].")  # fmt: skip
def worker_cmd(
    bootstrap: str | None, state_dir: Path | None, model_dir: Path | None, web_port: int | None
) -> None:
    """Run a stream worker (Faust app); run N of them for N-way scale-out."""
    from interest_stream.service import run as run_worker

    def run() -> None:
        s = cli_settings(
            kafka_bootstrap=bootstrap,
            state_dir=state_dir,
            model_dir=model_dir,
            worker_web_port=web_port,
        )
        code = run_worker(s)
        if code:
            sys.exit(code)

    guard(False, run)


# --------------------------------------------------------------------------- serve
@main.command("serve")
@click.option("--host", default=None, help="Bind address [env INTEREST_API_HOST].")
@click.option("--port", type=int, default=None, help="Port [env INTEREST_API_PORT].")
@bootstrap_option
@click.option("--model-dir", type=click.Path(path_type=Path), default=None,
              help="Checkpoint for the item index [env INTEREST_MODEL_DIR].")  # fmt: skip
def serve_cmd(
    host: str | None, port: int | None, bootstrap: str | None, model_dir: Path | None
) -> None:
    """Run the HTTP API (consumes the output topic into FAISS indexes)."""
    from interest_stream.api import serve

    def run() -> None:
        s = cli_settings(
            api_host=host, api_port=port, kafka_bootstrap=bootstrap, model_dir=model_dir
        )
        serve(s)

    guard(False, run)


# --------------------------------------------------------------------------- train / evaluate
# The model verbs live beside the code they drive (models/cli.py) and are mounted
# here, so `interest-stream train|evaluate|bench encoder` and `python -m interest_stream.models`
# are the same commands; errors reach the user through _Group.invoke.
main.add_command(models_cli.train_cmd, "train")
main.add_command(models_cli.evaluate_cmd, "evaluate")
main.add_command(bench_group, "bench")


# --------------------------------------------------------------------------- demo
@main.command("demo")
@click.option("--events", "events_path", type=click.Path(path_type=Path), default=None,
              help="Event file (default: the shared Taobao user_histories slice).")  # fmt: skip
@click.option("--rate", type=float, default=1500.0, help="Replay pace, events per second.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Replay only N events.")
@click.option("--duration", type=float, default=None,
              help="Non-interactive: stay up N seconds after the first replay pass (and after "
                   "the full model is live, when one trains), then stop.")  # fmt: skip
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path(".interest-stream/demo"),
              help="Model, state and logs of the demo.")  # fmt: skip
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs.")
@click.option("--retrain", is_flag=True, help="Train even if a checkpoint exists.")
@click.option("--full-train-seconds", type=click.FloatRange(min=1), default=300.0,
              help="Budget of the full model's background training.")  # fmt: skip
@json_option
def demo_cmd(
    events_path: Path | None,
    rate: float,
    limit: int | None,
    duration: float | None,
    work_dir: Path,
    epochs: int | None,
    retrain: bool,
    full_train_seconds: float,
    as_json: bool,
) -> None:
    """Everything end to end on the bundled sample: Kafka, models, worker, API, replay."""
    from interest_stream.demo import DemoOptions, run_demo

    def say(text: str) -> None:
        click.echo(text, err=as_json)

    def run() -> dict[str, Any]:
        s = cli_settings()
        opts = DemoOptions(
            events=events_path,
            work_dir=work_dir,
            rate=rate,
            duration=duration,
            limit=limit,
            epochs=epochs,
            retrain=retrain,
            full_train_seconds=full_train_seconds,
            say=say,
        )
        return run_demo(s, opts)

    emit(guard(as_json, run), as_json)


if __name__ == "__main__":  # pragma: no cover
    main()
