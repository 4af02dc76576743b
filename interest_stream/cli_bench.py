"""``interest-stream bench encoder|ingest|pipeline|index|api|serve|explain``: the benchmark verbs.

Each benchmark prints its measured figures next to a baseline from the same run.
The benchmark code is not installed with the package: each verb loads it lazily
from the checkout's ``bench/`` folder through
:func:`interest_stream.core.benchmarks.load_bench` (outside a checkout that is a
configuration error, exit 2). ``bench encoder`` is mounted from
:mod:`interest_stream.models.cli`. Exit codes and ``--json``: see
:mod:`interest_stream.cli_common`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from interest_stream.cli_common import bootstrap_option, cli_settings, emit, guard, json_option
from interest_stream.core.benchmarks import load_bench
from interest_stream.core.errors import ConfigError
from interest_stream.models import cli as models_cli

__all__ = ["bench_group"]


def _default_events() -> Path:
    from interest_stream.core.eventfile import shared_data_dir

    return shared_data_dir() / "taobao-userbehavior" / "user_histories.csv.gz"


@click.group("bench")
def bench_group() -> None:
    """Benchmarks that print measured figures next to a baseline from the same run."""


bench_group.add_command(models_cli.bench_encoder_cmd, "encoder")

_events_opt = click.option(
    "--events", "events_path", type=click.Path(path_type=Path), default=None,
    help="Event file (default: the shared Taobao user_histories slice).",
)  # fmt: skip


@bench_group.command("ingest")
@_events_opt
@bootstrap_option
@json_option
def bench_ingest_cmd(events_path: Path | None, bootstrap: str | None, as_json: bool) -> None:
    """Events/s the worker applies vs a bare aiokafka consumer on the same topics."""
    from interest_stream.core.eventfile import read_events

    def run() -> dict[str, Any]:
        bench_ingest = load_bench("ingest").bench_ingest

        s = cli_settings(kafka_bootstrap=bootstrap)
        return dict(bench_ingest(s, read_events(events_path or _default_events())))

    emit(guard(as_json, run), as_json)


@bench_group.command("pipeline")
@_events_opt
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True,
              help="Checkpoint the worker encodes with.")  # fmt: skip
@click.option("--rates", default="1000,2000",
              help="Fixed replay rates (events/s), comma-separated.")  # fmt: skip
@click.option("--naive-events", type=click.IntRange(min=1), default=2000,
              help="Events pushed through the naive per-event floor.")  # fmt: skip
@click.option("--load-rps", type=click.FloatRange(min=0), default=0.0,
              help="Also load the API with mixed queries at this rate during a replay "
              "(0 = skip).")  # fmt: skip
@click.option("--load-seconds", type=click.FloatRange(min=1), default=60.0,
              help="Length of the load phase.")  # fmt: skip
@click.option("--load-event-rate", type=click.FloatRange(min=1), default=500.0,
              help="Events/s the worker applies during the load phase.")  # fmt: skip
@click.option("--scale-users", type=click.IntRange(min=0), default=0,
              help="Also fill the worker with this many synthetic users (0 = skip).")  # fmt: skip
@click.option("--scale-events-per-user", type=click.IntRange(min=1), default=4,
              help="Latest events kept per synthetic user in the scale phase.")  # fmt: skip
@click.option("--users", type=click.IntRange(min=0), default=0,
              help="Skewed-traffic mode: draw each event's user from a Zipf over this many "
              "users cloned from the file's real users, with probe events (0 = replay the "
              "file, the default).")  # fmt: skip
@click.option("--zipf", type=click.FloatRange(min=0.01), default=1.1,
              help="Zipf exponent of the users' activity (with --users).")  # fmt: skip
@click.option("--seconds", type=click.FloatRange(min=1), default=60.0,
              help="Length of each fixed-rate phase (with --users).")  # fmt: skip
@click.option("--backlog", type=click.IntRange(min=1), default=200_000,
              help="Events of the catch-up backlog (with --users).")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=1), default=1,
              help="Worker processes sharing the partitions (with --users).")  # fmt: skip
@bootstrap_option
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the JSON here.")
@click.option("--charts", type=click.Path(path_type=Path), default=None,
              help="Write throughput/freshness PNGs into this folder.")  # fmt: skip
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
    users: int,
    zipf: float,
    seconds: float,
    backlog: int,
    workers: int,
    bootstrap: str | None,
    out: Path | None,
    charts: Path | None,
    as_json: bool,
) -> None:
    """Whole system: applied events/s, re-encodes/s, freshness, RSS; ceiling and floor."""
    from interest_stream.core.eventfile import read_events

    def run() -> dict[str, Any]:
        bench_pipeline = load_bench("pipeline").bench_pipeline

        s = cli_settings(kafka_bootstrap=bootstrap)
        path = events_path or _default_events()
        rs = tuple(float(x) for x in rates.split(",") if x.strip())
        if users > 0:
            res = load_bench("pipeline_zipf").bench_pipeline_zipf(
                s, read_events(path), model_dir, users=users, zipf=zipf, rates=rs,
                seconds=seconds, backlog=backlog, naive_events=naive_events, workers=workers,
            )  # fmt: skip
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(res, indent=2))
            return dict(res)
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

    emit(guard(as_json, run), as_json)


@bench_group.command("index")
@click.option("--users", type=int, default=1_000_000, help="Synthetic users.")
@click.option("--dim", type=int, default=64, help="Vector dimension.")
@json_option
def bench_index_cmd(users: int, dim: int, as_json: bool) -> None:
    """Audience query latency/recall over synthetic users, and upsert throughput."""

    def run() -> dict[str, Any]:
        bench_index = load_bench("index").bench_index

        cli_settings()
        return dict(bench_index(n_users=users, dim=dim, progress=not as_json))

    emit(guard(as_json, run), as_json)


@bench_group.command("serve")
@click.option("--store", type=click.Choice(["faiss", "opensearch", "both"]), default="both",
              help="Which user store(s) to measure, in the same run.")  # fmt: skip
@click.option("--users", type=click.IntRange(min=1), default=100_000, help="Synthetic users.")
@click.option("--dim", type=click.IntRange(min=2), default=192, help="Vector dimension.")
@click.option("--rate", type=click.FloatRange(min=1), default=500.0,
              help="GET interest requests/s (open loop).")  # fmt: skip
@click.option("--seconds", type=click.FloatRange(min=1), default=15.0,
              help="Length of the GET phase per store.")  # fmt: skip
@click.option("--queries", type=click.IntRange(min=2), default=200,
              help="Audience queries per store (recall@100 against exact search).")  # fmt: skip
@click.option("--sinks", type=click.IntRange(min=1), default=1,
              help="Sink processes writing the users into OpenSearch.")  # fmt: skip
@click.option("--probes", type=click.IntRange(min=1), default=10,
              help="Write->searchable probes per store.")  # fmt: skip
@click.option("--refresh", default=None,
              help="OpenSearch refresh interval while the sink writes the users (e.g. 30s; "
              "default: the index's 1s).")  # fmt: skip
@click.option("--index", "hnsw", default="",
              help="The OpenSearch index's HNSW and the API's ef_search, e.g. m=16,"
              "ef_construction=128,ef_search=800,encoder=sq (default: the store's).")  # fmt: skip
@click.option("--ef-sweep", default="",
              help="Comma-separated ef_search values: recall@100 and latency of each, per "
              "horizon, straight against the cluster.")  # fmt: skip
@click.option("--shards", type=click.IntRange(min=1), default=1,
              help="Primary shards of the OpenSearch index.")  # fmt: skip
@click.option("--index-setting", "index_settings", multiple=True,
              help="More index settings as key=value, set before the sinks start (e.g. "
              "knn.advanced.approximate_threshold=10000); repeatable.")  # fmt: skip
@click.option("--lean-ab", type=click.IntRange(min=0), default=0,
              help="Rounds of GET interest alternating between the replica and one without "
              "the lean paths (create_app(fast_path=False)), after the probes.")  # fmt: skip
@bootstrap_option
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write the JSON here.")
@json_option
def bench_serve_cmd(
    store: str,
    users: int,
    dim: int,
    rate: float,
    seconds: float,
    queries: int,
    sinks: int,
    probes: int,
    refresh: str | None,
    hnsw: str,
    ef_sweep: str,
    shards: int,
    index_settings: tuple[str, ...],
    lean_ab: int,
    bootstrap: str | None,
    out: Path | None,
    as_json: bool,
) -> None:
    """User store FAISS vs OpenSearch: API memory, upserts/s, GET and audience latency,
    recall@100, write->searchable delay (needs a broker and, for opensearch, a cluster)."""

    def run() -> dict[str, Any]:
        from interest_stream.index.opensearch_mapping import HnswParams

        bench_serve = load_bench("serve").bench_serve

        s = cli_settings(kafka_bootstrap=bootstrap)
        stores = ("faiss", "opensearch") if store == "both" else (store,)
        efs = [int(x) for x in ef_sweep.split(",") if x.strip()]
        res = bench_serve(
            s, stores=stores, n_users=users, dim=dim, rate=rate, seconds=seconds,
            queries=queries, sinks=sinks, probes=probes, refresh=refresh,
            hnsw=HnswParams.parse(hnsw) if hnsw else None, efs=efs, shards=shards,
            index_settings={k: v for k, _, v in (kv.partition("=") for kv in index_settings)},
            lean_ab=lean_ab,
        )  # fmt: skip
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(res, indent=2))
        return dict(res)

    emit(guard(as_json, run), as_json)


@bench_group.command("api")
@click.option("--users", type=int, default=100_000, help="Users in the index.")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=None,
              help="Checkpoint for the item catalogue (default: synthetic).")  # fmt: skip
@click.option("--rate", type=float, default=500.0, help="Open-loop request rate.")
@click.option("--duration", type=float, default=20.0, help="Seconds per phase.")
@click.option("--endpoints", default="interest,recommendations",
              help="Comma-separated: interest, recommendations, mixed (all routes in "
              "production shares).")  # fmt: skip
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
        known, bench_api = api_bench.ENDPOINTS, api_bench.bench_api

        cli_settings()
        eps = tuple(e.strip() for e in endpoints.split(",") if e.strip())
        unknown = sorted(set(eps) - set(known))
        if unknown or not eps:
            raise ConfigError(f"--endpoints: unknown {unknown}, choose from {sorted(known)}")
        res = bench_api(
            n_users=users, model_dir=model_dir, rate=rate, duration=duration, endpoints=eps
        )
        return dict(res)

    emit(guard(as_json, run), as_json)


@bench_group.command("explain")
@_events_opt
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True,
              help="Checkpoint to explain (and the worker's in the latency part).")  # fmt: skip
@click.option("--users", type=click.IntRange(min=1), default=200,
              help="Users sampled for the faithfulness test.")  # fmt: skip
@click.option("--k", type=click.IntRange(min=1), default=10, help="Items explained per user.")
@click.option("--seed", type=int, default=0, help="Seed of the samples and random removals.")
@click.option("--rate", type=click.FloatRange(min=1), default=50.0,
              help="Requests/s of each latency phase.")  # fmt: skip
@click.option("--seconds", type=click.FloatRange(min=1), default=60.0,
              help="Length of each latency phase.")  # fmt: skip
@click.option("--event-rate", type=click.FloatRange(min=1), default=200.0,
              help="Events/s replayed during the latency phases.")  # fmt: skip
@click.option(
    "--cache-users",
    type=click.IntRange(min=0),
    default=0,
    help="The worker's INTEREST_EXPLAIN_CACHE_USERS (0 = every request encodes).",
)
@click.option("--skip-latency", is_flag=True, help="Only the faithfulness part (no broker).")
@bootstrap_option
@click.option("--charts", type=click.Path(path_type=Path), default=None,
              help="Write the deletion-curve PNG and the JSON into this folder.")  # fmt: skip
@json_option
def bench_explain_cmd(
    events_path: Path | None,
    model_dir: Path,
    users: int,
    k: int,
    seed: int,
    rate: float,
    seconds: float,
    event_rate: float,
    cache_users: int,
    skip_latency: bool,
    bootstrap: str | None,
    charts: Path | None,
    as_json: bool,
) -> None:
    """Explanations: occlusion's faithfulness (deletion test) and explain=true latency."""
    from interest_stream.core.eventfile import read_events

    def run() -> dict[str, Any]:
        bench_explain = load_bench("explain").bench_explain

        s = cli_settings(kafka_bootstrap=bootstrap)
        res = bench_explain(
            s, read_events(events_path or _default_events()), model_dir, users=users, k=k,
            seed=seed, rate=rate, seconds=seconds, event_rate=event_rate,
            cache_users=cache_users, skip_latency=skip_latency, charts=charts,
            progress=not as_json,
        )  # fmt: skip
        return dict(res)

    emit(guard(as_json, run), as_json)
