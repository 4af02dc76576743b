"""``interest-stream kafka start|install|stop|status``: the local development broker.

A single-node Apache Kafka (KRaft) from Maven Central jars, driven through
:mod:`interest_stream.streams.kafka_local.broker`. ``--port`` defaults to the port
of ``INTEREST_KAFKA_BOOTSTRAP`` when that names this machine, else 9092.
``status`` exits with 3 when no broker answers. Exit codes and ``--json``: see
:mod:`interest_stream.cli_common`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from interest_stream.cli_common import EXIT_KAFKA, emit, guard, json_option
from interest_stream.core.settings import load_settings

__all__ = ["kafka_group"]

_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


@click.group("kafka")
def kafka_group() -> None:
    """A local single-node Apache Kafka (KRaft) for development, tests and the demo."""


def _broker_cfg(port: int | None, data_dir: Path | None) -> Any:
    from interest_stream.streams.kafka_local.broker import BrokerConfig

    kwargs: dict[str, Any] = {}
    if port is None:
        # default: the port of INTEREST_KAFKA_BOOTSTRAP when it points at this machine
        first = load_settings().kafka_bootstrap.split(",")[0].strip()
        host, _, text = first.rpartition(":")
        if host in _LOOPBACK and text.isdigit():
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

    st = guard(as_json, run)
    emit(st, as_json, lambda d: d["bootstrap"])


@kafka_group.command("install")
@json_option
def kafka_install(as_json: bool) -> None:
    """Fetch Apache Kafka's jars from Maven Central (once; later calls are no-ops)."""
    from interest_stream.streams.kafka_local import broker

    home = guard(as_json, lambda: broker.install(_broker_cfg(None, None), progress=not as_json))
    emit({"home": str(home)}, as_json, lambda d: f"kafka installed in {d['home']}")


@kafka_group.command("stop")
@_port_opt
@_data_opt
@json_option
def kafka_stop(port: int | None, data_dir: Path | None, as_json: bool) -> None:
    """Stop the local Kafka started by `kafka start` (idempotent)."""
    from interest_stream.streams.kafka_local import broker

    stopped = guard(as_json, lambda: broker.stop(_broker_cfg(port, data_dir)))
    emit(
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

    st = guard(as_json, lambda: broker.status(_broker_cfg(port, data_dir)).to_dict())

    def human(d: dict[str, Any]) -> str:
        tail = "\n".join(d.get("log_tail", [])[-lines:])
        return _status_line(d) + (f"\n--- {d.get('log_file')}\n{tail}" if tail else "")

    emit(st, as_json, human)
    if not st.get("answering"):
        sys.exit(EXIT_KAFKA)
