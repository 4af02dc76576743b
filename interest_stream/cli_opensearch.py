"""``interest-stream opensearch start|install|stop|status|sink``: the OpenSearch user store.

``start|stop|status|install`` drive a local cluster (1 node by default, ``--nodes N``)
from Maven Central artifacts through :mod:`interest_stream.index.opensearch_local`;
``sink`` writes the output topic into the cluster (:mod:`interest_stream.sink`).
``status`` exits with 1 when no node answers. Exit codes and ``--json``: see
:mod:`interest_stream.cli_common`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from interest_stream.cli_common import (
    EXIT_FAILURE,
    bootstrap_option,
    cli_settings,
    emit,
    guard,
    json_option,
)
from interest_stream.core.settings import load_settings

__all__ = ["opensearch_group"]

_LOOPBACK = ("127.0.0.1", "localhost")


@click.group("opensearch")
def opensearch_group() -> None:
    """The OpenSearch user store: a local cluster for development and tests, and the sink."""


def _cluster_cfg(
    port: int | None, data_dir: Path | None, nodes: int | None = None, heap: str | None = None
) -> Any:
    from interest_stream.index.opensearch_local import ClusterConfig

    kwargs: dict[str, Any] = {}
    if port is None:
        # default: the port of INTEREST_OPENSEARCH_URL when it points at this machine
        url = urlsplit(load_settings().opensearch_url)
        if url.hostname in _LOOPBACK and url.port:
            port = url.port
    if port is not None:
        kwargs["http_port"] = port
        kwargs["transport_port"] = port + 100
    for name, value in (("data_dir", data_dir), ("nodes", nodes), ("heap", heap)):
        if value is not None:
            kwargs[name] = value
    return ClusterConfig(**kwargs)


_port_opt = click.option(
    "--port",
    type=click.IntRange(1, 65435),
    default=None,
    help="HTTP port of node 0; node i uses port+i, transport port+100+i "
    "(default: the port of INTEREST_OPENSEARCH_URL, else 9200).",
)
_data_opt = click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Nodes' data, config and logs [env INTEREST_OPENSEARCH_DATA_DIR].",
)


def _human(d: dict[str, Any]) -> str:
    lines = [
        f"{d['url']}  health {d['health'] or 'unreachable'}, "
        f"{d['number_of_nodes']} node(s) in the cluster"
    ]
    for n in d["nodes"]:
        state = f"running, pid {n['pid']}" if n["running"] else "not running"
        lines.append(
            f"  {n['name']}: http {n['http_port']}, transport {n['transport_port']} "
            f"({state}; log {n['log_file']})"
        )
    return "\n".join(lines)


@opensearch_group.command("start")
@_port_opt
@_data_opt
@click.option("--nodes", type=click.IntRange(1, 9), default=1, help="Number of nodes.")
@click.option("--heap", default="512m", help="JVM heap per node (-Xms = -Xmx).")
@click.option("--timeout", type=float, default=240.0, help="Seconds to wait for health.")
@json_option
def os_start(
    port: int | None, data_dir: Path | None, nodes: int, heap: str, timeout: float, as_json: bool
) -> None:
    """Install (first time, from Maven Central) and start the cluster; print its URL."""
    from interest_stream.index.opensearch_local import start

    def run() -> dict[str, Any]:
        cli_settings()
        st = start(_cluster_cfg(port, data_dir, nodes, heap), timeout, progress=not as_json)
        return dict(st.to_dict())

    emit(guard(as_json, run), as_json, _human)


@opensearch_group.command("install")
@json_option
def os_install(as_json: bool) -> None:
    """Fetch OpenSearch, the k-NN plugin and lang-painless from Maven Central (once)."""
    from interest_stream.index.opensearch_local import install

    def run() -> str:
        cli_settings()
        return str(install(_cluster_cfg(None, None), progress=not as_json))

    home = guard(as_json, run)
    emit({"home": home}, as_json, lambda d: f"opensearch installed in {d['home']}")


@opensearch_group.command("stop")
@_port_opt
@_data_opt
@json_option
def os_stop(port: int | None, data_dir: Path | None, as_json: bool) -> None:
    """Stop every node started by `opensearch start` (idempotent)."""
    from interest_stream.index.opensearch_local import stop

    stopped = guard(as_json, lambda: stop(_cluster_cfg(port, data_dir)))
    emit(
        {"stopped": bool(stopped)}, as_json, lambda d: "stopped" if d["stopped"] else "not running"
    )


@opensearch_group.command("status")
@_port_opt
@_data_opt
@json_option
def os_status(port: int | None, data_dir: Path | None, as_json: bool) -> None:
    """Show the cluster's health (green/yellow/red), its nodes and its URL."""
    from interest_stream.index.opensearch_local import status

    st = guard(as_json, lambda: status(_cluster_cfg(port, data_dir)).to_dict())
    emit(st, as_json, _human)
    if not st.get("answering"):
        sys.exit(EXIT_FAILURE)


@opensearch_group.command("sink")
@bootstrap_option
@click.option("--url", default=None, help="OpenSearch URL [env INTEREST_OPENSEARCH_URL].")
@click.option(
    "--index", "index_name", default=None, help="Index name [env INTEREST_OPENSEARCH_INDEX]."
)
@click.option(
    "--model-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Checkpoint giving the dimension and blend weight [env INTEREST_MODEL_DIR].",
)
def os_sink(
    bootstrap: str | None, url: str | None, index_name: str | None, model_dir: Path | None
) -> None:
    """Write the output topic into OpenSearch (consumer group <app_id>.opensearch-sink)."""
    from interest_stream.sink import run_sink

    def run() -> None:
        s = cli_settings(
            kafka_bootstrap=bootstrap,
            opensearch_url=url,
            opensearch_index=index_name,
            model_dir=model_dir,
        )
        run_sink(s)

    guard(False, run)
