"""The ``interest-stream`` console script: one thin click layer over the packages.

Exit codes: 0 success; 1 a failure while running; 2 bad usage or configuration
(click's own usage errors too); 3 Kafka unreachable; 4 a missing or invalid
input (event file, model checkpoint). Every error is printed as one line
``error: ...`` on stderr (with ``--json``: a JSON object ``{"error": ...}``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from interest_stream import __version__
from interest_stream.core.benchmarks import load_bench
from interest_stream.core.errors import ConfigError, EventFileError, InterestStreamError
from interest_stream.core.settings import Settings, load_settings, settings_table
from interest_stream.logs import configure_logging
from interest_stream.models import cli as models_cli

__all__ = ["main"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_KAFKA = 3
EXIT_INPUT = 4


def _exit_code(exc: InterestStreamError) -> int:
    from interest_stream.streams.topics import KafkaUnavailable

    if isinstance(exc, KafkaUnavailable):
        return EXIT_KAFKA
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, EventFileError):
        return EXIT_INPUT
    try:
        from interest_stream.models.errors import ModelError
    except ImportError:  # pragma: no cover - models extra missing
        return EXIT_FAILURE
    if isinstance(exc, ModelError):
        return EXIT_INPUT
    return EXIT_FAILURE


def _fail(exc: BaseException, as_json: bool) -> NoReturn:
    code = _exit_code(exc) if isinstance(exc, InterestStreamError) else EXIT_FAILURE
    if as_json:
        click.echo(json.dumps({"error": str(exc), "type": type(exc).__name__}), err=True)
    else:
        click.echo(f"error: {exc}", err=True)
    sys.exit(code)


def _emit(data: Any, as_json: bool, human: Callable[[Any], str] | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    elif human is not None:
        click.echo(human(data))
    else:
        click.echo(json.dumps(data, indent=2, default=str))


def json_option(f: F) -> F:
    """``--json``: machine-readable output on stdout."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON (machine-readable).")(f)


def _settings(**overrides: Any) -> Settings:
    clean = {k: v for k, v in overrides.items() if v is not None}
    s = load_settings(**clean)
    configure_logging(s.log_level, json_lines=s.log_json)
    return s


def _guard(as_json: bool, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except InterestStreamError as exc:
        _fail(exc, as_json)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


class _Group(click.Group):
    """The root group: a project error from any verb becomes one line and an exit code.

    Verbs that run through :func:`_guard` already do this; the handler here
    covers the rest (e.g. the model verbs mounted from :mod:`models.cli`).
    """

    def invoke(self, ctx: click.Context) -> Any:
        # the verb's own arguments (click empties ctx.args before running the verb)
        argv = [*getattr(ctx, "_protected_args", []), *ctx.args]
        try:
            return super().invoke(ctx)
        except InterestStreamError as exc:
            _fail(exc, "--json" in argv)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


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
    s = _guard(as_json, _settings)
    _emit(s.safe_dump(), True)


# --------------------------------------------------------------------------- kafka
@main.group("kafka")
def kafka_group() -> None:
    """A local single-node Apache Kafka (KRaft) for development, tests and the demo."""


def _broker_cfg(port: int | None, data_dir: Path | None) -> Any:
    from interest_stream.streams.kafka_local.broker import BrokerConfig

    kwargs: dict[str, Any] = {}
    if port is None:
        # default: the port of INTEREST_KAFKA_BOOTSTRAP when it points at this machine
        first = load_settings().kafka_bootstrap.split(",")[0].strip()
        host, _, text = first.rpartition(":")
        if host in ("127.0.0.1", "localhost", "::1", "[::1]") and text.isdigit():
            port = int(text)
    if port is not None:
        kwargs["port"] = port
    if data_dir is not None:
        kwargs["data_dir"] = data_dir
    return BrokerConfig(**kwargs)


_port_opt = click.option(
    "--port", type=click.IntRange(1, 65535), default=None,
    help="Broker port (default: the port of INTEREST_KAFKA_BOOTSTRAP, else 9092).",
)  # fmt: skip
_data_opt = click.option(
    "--data-dir", type=click.Path(path_type=Path), default=None,
    help="Broker data and logs [env INTEREST_KAFKA_DATA_DIR].",
)  # fmt: skip


def _status_line(st: dict[str, Any]) -> str:
    if st.get("answering") and not st.get("running"):
        return f"{st['bootstrap']}  (answering; not started by interest-stream)"
    if st.get("answering"):
        return f"{st['bootstrap']}  (running, pid {st.get('pid')}, logs {st.get('log_file')})"
    if st.get("running"):
        return f"{st['bootstrap']}  (process {st.get('pid')} running but not answering yet)"
    return "not running"


@kafka_group.command("start")
@_port_opt
@_data_opt
@click.option("--timeout", type=float, default=120.0, help="Seconds to wait for the broker.")
@json_option
def kafka_start(port: int | None, data_dir: Path | None, timeout: float, as_json: bool) -> None:
    """Install (first time, from Maven Central) and start Kafka; print the bootstrap address."""
    from interest_stream.streams.kafka_local import broker

    def run() -> dict[str, Any]:
        cfg = _broker_cfg(port, data_dir)
        st = broker.start(cfg, timeout=timeout, progress=not as_json)
        return dict(st.to_dict())

    st = _guard(as_json, run)
    _emit(st, as_json, lambda d: d["bootstrap"])


@kafka_group.command("install")
@json_option
def kafka_install(as_json: bool) -> None:
    """Fetch Apache Kafka's jars from Maven Central (once; later calls are no-ops)."""
    from interest_stream.streams.kafka_local import broker

    home = _guard(as_json, lambda: broker.install(_broker_cfg(None, None), progress=not as_json))
    _emit({"home": str(home)}, as_json, lambda d: f"kafka installed in {d['home']}")


@kafka_group.command("stop")
@_port_opt
@_data_opt
@json_option
def kafka_stop(port: int | None, data_dir: Path | None, as_json: bool) -> None:
    """Stop the local Kafka started by `kafka start` (idempotent)."""
    from interest_stream.streams.kafka_local import broker

    stopped = _guard(as_json, lambda: broker.stop(_broker_cfg(port, data_dir)))
    _emit(
        {"stopped": bool(stopped)}, as_json, lambda d: "stopped" if d["stopped"] else "not running"
    )


@kafka_group.command("status")
@_port_opt
@_data_opt
@click.option("--lines", type=int, default=20, help="Log lines to show.")
@json_option
def kafka_status(port: int | None, data_dir: Path | None, lines: int, as_json: bool) -> None:
    """Show whether the local Kafka runs and answers, and the tail of its log."""
    from interest_stream.streams.kafka_local import broker

    st = _guard(as_json, lambda: broker.status(_broker_cfg(port, data_dir)).to_dict())

    def human(d: dict[str, Any]) -> str:
        tail = "\n".join(d.get("log_tail", [])[-lines:])
        return _status_line(d) + (f"\n--- {d.get('log_file')}\n{tail}" if tail else "")

    _emit(st, as_json, human)
    if not st.get("answering"):
        sys.exit(EXIT_KAFKA)


# --------------------------------------------------------------------------- topics
@main.command("topics")
@click.option("--bootstrap", default=None, help="Kafka bootstrap [env INTEREST_KAFKA_BOOTSTRAP].")
@json_option
def topics_cmd(bootstrap: str | None, as_json: bool) -> None:
    """Create the event, DLQ and output topics if missing (idempotent)."""
    from interest_stream.streams.topics import ensure_topics

    counts = _guard(as_json, lambda: ensure_topics(_settings(kafka_bootstrap=bootstrap)))
    _emit(counts, as_json, lambda d: "\n".join(f"{t}: {n} partitions" for t, n in d.items()))


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
@click.option("--bootstrap", default=None, help="Kafka bootstrap [env INTEREST_KAFKA_BOOTSTRAP].")
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
        s = _settings(kafka_bootstrap=bootstrap)
        df = read_events(events_path, fmt)  # type: ignore[arg-type]
        if limit is not None:
            df = df.head(limit)
        if not no_create_topics:
            ensure_topics(s)
        stats = replay_events(df, s, topic=topic, rate=rate, speed=speed, progress=not as_json)
        return stats.to_dict()

    out = _guard(as_json, run)
    _emit(
        out, as_json, lambda d: f"sent {d['sent']} events in {d['seconds']:.1f}s ({d['rate']} ev/s)"
    )


# --------------------------------------------------------------------------- worker
@main.command("worker")
@click.option("--bootstrap", default=None, help="Kafka bootstrap [env INTEREST_KAFKA_BOOTSTRAP].")
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
        s = _settings(
            kafka_bootstrap=bootstrap,
            state_dir=state_dir,
            model_dir=model_dir,
            worker_web_port=web_port,
        )
        code = run_worker(s)
        if code:
            sys.exit(code)

    _guard(False, run)


# --------------------------------------------------------------------------- serve
@main.command("serve")
@click.option("--host", default=None, help="Bind address [env INTEREST_API_HOST].")
@click.option("--port", type=int, default=None, help="Port [env INTEREST_API_PORT].")
@click.option("--bootstrap", default=None, help="Kafka bootstrap [env INTEREST_KAFKA_BOOTSTRAP].")
@click.option("--model-dir", type=click.Path(path_type=Path), default=None,
              help="Checkpoint for the item index [env INTEREST_MODEL_DIR].")  # fmt: skip
def serve_cmd(
    host: str | None, port: int | None, bootstrap: str | None, model_dir: Path | None
) -> None:
    """Run the HTTP API (consumes the output topic into FAISS indexes)."""
    from interest_stream.api import serve

    def run() -> None:
        s = _settings(api_host=host, api_port=port, kafka_bootstrap=bootstrap, model_dir=model_dir)
        serve(s)

    _guard(False, run)


# --------------------------------------------------------------------------- train / evaluate
# The model verbs live beside the code they drive (models/cli.py) and are mounted
# here, so `interest-stream train|evaluate|bench encoder` and `python -m interest_stream.models`
# are the same commands; errors reach the user through _Group.invoke.
main.add_command(models_cli.train_cmd, "train")
main.add_command(models_cli.evaluate_cmd, "evaluate")


# --------------------------------------------------------------------------- bench
@main.group("bench")
def bench_group() -> None:
    """Benchmarks that print measured figures next to a baseline from the same run."""


bench_group.add_command(models_cli.bench_encoder_cmd, "encoder")


@bench_group.command("ingest")
@click.option("--events", "events_path", type=click.Path(path_type=Path), default=None,
              help="Event file (default: the shared Taobao user_histories slice).")  # fmt: skip
@click.option("--bootstrap", default=None, help="Kafka bootstrap [env INTEREST_KAFKA_BOOTSTRAP].")
@json_option
def bench_ingest_cmd(events_path: Path | None, bootstrap: str | None, as_json: bool) -> None:
    """Events/s the worker applies vs a bare aiokafka consumer on the same topics."""
    from interest_stream.core.eventfile import read_events, shared_data_dir

    def run() -> dict[str, Any]:
        bench_ingest = load_bench("ingest").bench_ingest

        s = _settings(kafka_bootstrap=bootstrap)
        path = events_path or shared_data_dir() / "taobao-userbehavior" / "user_histories.csv.gz"
        return dict(bench_ingest(s, read_events(path)))

    _emit(_guard(as_json, run), as_json)


@bench_group.command("pipeline")
@click.option("--events", "events_path", type=click.Path(path_type=Path), default=None,
              help="Event file (default: the shared Taobao user_histories slice).")  # fmt: skip
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True,
              help="Checkpoint the worker encodes with.")  # fmt: skip
@click.option(
    "--rates", default="1000,2000", help="Fixed replay rates (events/s), comma-separated."
)
@click.option(
    "--naive-events",
    type=click.IntRange(min=1),
    default=2000,
    help="Events pushed through the naive per-event floor.",
)
@click.option(
    "--load-rps",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Also load the API with mixed queries at this rate during a replay (0 = skip).",
)
@click.option(
    "--load-seconds", type=click.FloatRange(min=1), default=60.0, help="Length of the load phase."
)
@click.option(
    "--load-event-rate",
    type=click.FloatRange(min=1),
    default=500.0,
    help="Events/s the worker applies during the load phase.",
)
@click.option(
    "--scale-users",
    type=click.IntRange(min=0),
    default=0,
    help="Also fill the worker with this many synthetic users (0 = skip).",
)
@click.option(
    "--scale-events-per-user",
    type=click.IntRange(min=1),
    default=4,
    help="Latest events kept per synthetic user in the scale phase.",
)
@click.option("--bootstrap", default=None, help="Kafka bootstrap [env INTEREST_KAFKA_BOOTSTRAP].")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the JSON here.")
@click.option(
    "--charts",
    type=click.Path(path_type=Path),
    default=None,
    help="Write throughput/freshness PNGs into this folder.",
)
@json_option
def bench_pipeline_cmd(
    events_path: Path | None,
    model_dir: Path,
    rates: str,
    naive_events: int,
    load_rps: float,
    load_seconds: float,
    load_event_rate: float,
    scale_users: int,
    scale_events_per_user: int,
    bootstrap: str | None,
    out: Path | None,
    charts: Path | None,
    as_json: bool,
) -> None:
    """Whole system: applied events/s, re-encodes/s, freshness, RSS; ceiling and floor."""
    from interest_stream.core.eventfile import read_events, shared_data_dir

    def run() -> dict[str, Any]:
        bench_pipeline = load_bench("pipeline").bench_pipeline

        s = _settings(kafka_bootstrap=bootstrap)
        path = events_path or shared_data_dir() / "taobao-userbehavior" / "user_histories.csv.gz"
        rs = tuple(float(x) for x in rates.split(",") if x.strip())
        res = bench_pipeline(
            s,
            read_events(path),
            model_dir,
            rates=rs,
            naive_events=naive_events,
            scale_users=scale_users,
            scale_events_per_user=scale_events_per_user,
            load_rps=load_rps,
            load_seconds=load_seconds,
            load_event_rate=load_event_rate,
        )
        if charts is not None:
            write_charts = load_bench("pipeline").write_charts
            res["charts"] = [str(p) for p in write_charts(res, charts)]
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(res, indent=2))
        return dict(res)

    _emit(_guard(as_json, run), as_json)


@bench_group.command("index")
@click.option("--users", type=int, default=1_000_000, help="Synthetic users.")
@click.option("--dim", type=int, default=64, help="Vector dimension.")
@json_option
def bench_index_cmd(users: int, dim: int, as_json: bool) -> None:
    """Audience query latency/recall over synthetic users, and upsert throughput."""

    def run() -> dict[str, Any]:
        bench_index = load_bench("index").bench_index

        _settings()
        return dict(bench_index(n_users=users, dim=dim, progress=not as_json))

    _emit(_guard(as_json, run), as_json)


@bench_group.command("api")
@click.option("--users", type=int, default=100_000, help="Users in the index.")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Checkpoint for the item catalogue (default: synthetic).")  # fmt: skip
@click.option("--rate", type=float, default=500.0, help="Open-loop request rate.")
@click.option("--duration", type=float, default=20.0, help="Seconds per phase.")
@click.option(
    "--endpoints",
    default="interest,recommendations",
    help="Comma-separated: interest, recommendations, mixed (all routes in production shares).",
)
@json_option
def bench_api_cmd(
    users: int,
    model_dir: Path | None,
    rate: float,
    duration: float,
    endpoints: str,
    as_json: bool,
) -> None:
    """API latency p50/p99 and throughput under a loopback load generator."""

    def run() -> dict[str, Any]:
        api_bench = load_bench("api")
        ENDPOINTS, bench_api = api_bench.ENDPOINTS, api_bench.bench_api

        _settings()
        eps = tuple(e.strip() for e in endpoints.split(",") if e.strip())
        unknown = sorted(set(eps) - set(ENDPOINTS))
        if unknown or not eps:
            raise ConfigError(f"--endpoints: unknown {unknown}, choose from {sorted(ENDPOINTS)}")
        res = bench_api(
            n_users=users, model_dir=model_dir, rate=rate, duration=duration, endpoints=eps
        )
        return dict(res)

    _emit(_guard(as_json, run), as_json)


# --------------------------------------------------------------------------- demo
@main.command("demo")
@click.option("--events", "events_path", type=click.Path(path_type=Path), default=None,
              help="Event file (default: the shared Taobao user_histories slice).")  # fmt: skip
@click.option("--rate", type=float, default=1500.0, help="Replay pace, events per second.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Replay only N events.")
@click.option("--duration", type=float, default=None,
              help="Non-interactive: stay up N seconds after the replay, then stop.")  # fmt: skip
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path(".interest-stream/demo"),
              help="Model, state and logs of the demo.")  # fmt: skip
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs.")
@click.option("--retrain", is_flag=True, help="Train even if a checkpoint exists.")
@json_option
def demo_cmd(
    events_path: Path | None,
    rate: float,
    limit: int | None,
    duration: float | None,
    work_dir: Path,
    epochs: int | None,
    retrain: bool,
    as_json: bool,
) -> None:
    """Everything end to end on the bundled sample: Kafka, training, worker, API, replay."""
    from interest_stream.demo import DemoOptions, run_demo

    def say(text: str) -> None:
        click.echo(text, err=as_json)

    def run() -> dict[str, Any]:
        s = _settings()
        opts = DemoOptions(
            events=events_path,
            work_dir=work_dir,
            rate=rate,
            duration=duration,
            limit=limit,
            epochs=epochs,
            retrain=retrain,
            say=say,
        )
        return run_demo(s, opts)

    _emit(_guard(as_json, run), as_json)


if __name__ == "__main__":  # pragma: no cover
    main()
