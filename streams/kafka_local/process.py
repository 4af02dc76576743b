"""Supervise the local broker: start it detached, wait until it answers, stop it, report.

State of a running broker: ``<data_dir>/broker.json`` (pid, ports, version),
written by :func:`start`, removed by :func:`stop`; a lock file serialises
starts and stops of one data directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from interest_stream.core import jvm
from interest_stream.core.kafka import free_port
from interest_stream.streams.kafka_local.config import (
    BrokerConfig,
    BrokerStatus,
    KafkaLocalError,
    KafkaStartError,
    locked,
    resource_text,
)
from interest_stream.streams.kafka_local.installer import check_java, install
from interest_stream.streams.kafka_local.probe import metadata_ok, port_in_use
from interest_stream.streams.kafka_local.properties import (
    LOG_CONFIG,
    jvm_options,
    new_cluster_id,
    render_properties,
    server_properties,
)

__all__ = ["start", "status", "stop"]

logger = logging.getLogger(__name__)

_LOCK = ".broker.lock"
_MAIN_CLASS = "kafka.Kafka"
_STORAGE_TOOL = "kafka.tools.StorageTool"

# Broker processes started by this interpreter, so that they can be reaped
# (no zombies) and waited on without polling.
_CHILDREN = jvm.Children("Kafka broker", KafkaLocalError)


def _log_excerpt(cfg: BrokerConfig, lines: int) -> str:
    return jvm.log_excerpt(
        (cfg.log_file, cfg.out_file), lines, f"(no broker log in {cfg.logs_dir})"
    )


def _format_storage(cfg: BrokerConfig, java: str) -> None:
    """Format the KRaft log dir once (no-op when ``meta.properties`` exists)."""
    if (cfg.kafka_log_dir / "meta.properties").is_file():
        return
    cluster_id = new_cluster_id()
    cmd = [
        java,
        *jvm_options(cfg, "WARN", "WARN"),
        _STORAGE_TOOL,
        "format",
        "--cluster-id",
        cluster_id,
        "--config",
        str(cfg.properties_file),
        "--ignore-formatted",
    ]
    logger.info("formatting KRaft storage in %s (cluster id %s)", cfg.kafka_log_dir, cluster_id)
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, check=False, cwd=cfg.data_dir
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise KafkaStartError(f"cannot run the Kafka storage tool: {exc}") from exc
    if proc.returncode != 0:
        output = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        raise KafkaStartError(
            f"formatting the KRaft storage in {cfg.kafka_log_dir} failed "
            f"(exit {proc.returncode}):\n{output}"
        )


def _proc_cmdline(pid: int) -> list[str] | None:
    """Return the command line of ``pid``, or ``None`` if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return None
    except OSError:
        return None
    else:
        return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a] or None
    # No /proc (macOS): ask ps.
    ps = shutil.which("ps")
    if not ps:
        return None
    try:
        out = subprocess.run(
            [ps, "-o", "command=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.split() or None


def _is_our_broker(cfg: BrokerConfig, pid: int) -> bool:
    """Return whether ``pid`` is a live broker launched with this data dir's properties."""
    if not _CHILDREN.alive(pid):
        return False
    cmdline = _proc_cmdline(pid)
    if cmdline is None:
        return False
    return _MAIN_CLASS in cmdline and str(cfg.properties_file) in cmdline


def _read_state(cfg: BrokerConfig) -> dict[str, Any] | None:
    try:
        state = json.loads(cfg.state_file.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("pid"), int):
        return None
    return state


def _write_state(cfg: BrokerConfig, state: Mapping[str, Any]) -> None:
    tmp = cfg.state_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(state), indent=2), encoding="utf-8")
    tmp.replace(cfg.state_file)


def _clear_state(cfg: BrokerConfig) -> None:
    cfg.state_file.unlink(missing_ok=True)


def _running_state(cfg: BrokerConfig) -> dict[str, Any] | None:
    """Return the state of the live broker of this data dir; drop a stale state file."""
    state = _read_state(cfg)
    if state is None:
        return None
    if _is_our_broker(cfg, int(state["pid"])):
        return state
    return None


def _make_status(cfg: BrokerConfig, state: Mapping[str, Any] | None, probe: bool) -> BrokerStatus:
    bootstrap = str(state["bootstrap"]) if state else cfg.bootstrap
    return BrokerStatus(
        running=state is not None,
        answering=metadata_ok(bootstrap, 5.0) if probe else False,
        pid=int(state["pid"]) if state else None,
        bootstrap=bootstrap,
        version=str(state.get("version", cfg.version)) if state else cfg.version,
        data_dir=cfg.data_dir,
        log_file=cfg.log_file,
        log_tail=jvm.tail(cfg.log_file, 20),
        controller_port=int(state["controller_port"]) if state else None,
        started_at=float(state["started_at"]) if state else None,
    )


def status(cfg: BrokerConfig | None = None) -> BrokerStatus:
    """Report on the broker of ``cfg.data_dir`` and whether ``bootstrap`` answers.

    Args:
        cfg: Broker configuration; default ``BrokerConfig()``.

    Returns:
        The status; ``answering`` probes the running broker's address, or
        ``cfg.bootstrap`` when none runs (so another broker there is noticed).
    """
    cfg = cfg or BrokerConfig()
    return _make_status(cfg, _running_state(cfg), probe=True)


def start(
    cfg: BrokerConfig | None = None, timeout: float = 90.0, *, progress: bool = False
) -> BrokerStatus:
    """Start the broker (installing it first if needed) and wait until it answers.

    Idempotent: when the broker of ``cfg.data_dir`` already runs on ``cfg.port``,
    its status is returned (after waiting for it to answer if it is still starting).

    Args:
        cfg: Broker configuration; default ``BrokerConfig()``.
        timeout: Seconds to wait for the broker to answer a metadata request
            (the install, if any, is not counted).
        progress: Passed to :func:`install`.

    Returns:
        The status of the answering broker.

    Raises:
        KafkaInstallError: The jars cannot be installed.
        KafkaStartError: The port is taken by another process, the broker of this
            data dir runs on another port, Java is unusable, or the broker did not
            answer within ``timeout`` (it is then killed; the message ends with the
            broker log's last 40 lines).
    """
    cfg = cfg or BrokerConfig()
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    with locked(cfg.data_dir / _LOCK):
        state = _running_state(cfg)
        if state is not None:
            if int(state["port"]) != cfg.port or str(state["host"]) != cfg.host:
                raise KafkaStartError(
                    f"the Kafka broker of {cfg.data_dir} already runs at {state['bootstrap']} "
                    f"(pid {state['pid']}), not {cfg.bootstrap}: stop it first"
                )
            logger.info("Kafka broker already running (pid %s)", state["pid"])
            _wait_answering(cfg, state, timeout)
            return _answering_status(cfg, state)
        _clear_state(cfg)
        controller_port = _check_ports(cfg)
        install(cfg, progress=progress)
        java = check_java(KafkaStartError)
        return _launch(cfg, java, controller_port, timeout)


def _answering_status(cfg: BrokerConfig, state: Mapping[str, Any]) -> BrokerStatus:
    return dataclasses.replace(_make_status(cfg, state, probe=False), answering=True)


def _check_ports(cfg: BrokerConfig) -> int:
    """Check that the client and controller ports are free; return the controller port."""
    if port_in_use(cfg.host, cfg.port):
        what = "a Kafka broker" if metadata_ok(cfg.bootstrap, 2.0) else "another process"
        raise KafkaStartError(
            f"port {cfg.port} on {cfg.host} is already in use by {what} (not the Kafka "
            f"broker of {cfg.data_dir}): stop it or choose another port"
        )
    controller_port = cfg.controller_port
    if controller_port is None:
        controller_port = free_port(cfg.host)
        while controller_port == cfg.port:
            controller_port = free_port(cfg.host)
    elif port_in_use(cfg.host, controller_port):
        raise KafkaStartError(
            f"controller port {controller_port} on {cfg.host} is already in use by another "
            "process: stop it or choose another controller_port"
        )
    return controller_port


def _launch(cfg: BrokerConfig, java: str, controller_port: int, timeout: float) -> BrokerStatus:
    cfg.logs_dir.mkdir(parents=True, exist_ok=True)
    cfg.kafka_log_dir.mkdir(parents=True, exist_ok=True)
    (cfg.data_dir / LOG_CONFIG).write_text(resource_text(LOG_CONFIG), encoding="utf-8")
    props = server_properties(cfg, controller_port)
    cfg.properties_file.write_text(
        render_properties(
            props, "Generated by interest-stream (streams.kafka_local); rewritten on every start."
        ),
        encoding="utf-8",
    )
    _format_storage(cfg, java)

    cmd = [java, *jvm_options(cfg, "INFO", "WARN"), _MAIN_CLASS, str(cfg.properties_file)]
    logger.info(
        "starting Kafka %s broker at %s (data in %s)", cfg.version, cfg.bootstrap, cfg.data_dir
    )
    started = time.monotonic()
    pid = _CHILDREN.launch(cmd, cfg.out_file, cfg.data_dir)
    state: dict[str, Any] = {
        "pid": pid,
        "host": cfg.host,
        "port": cfg.port,
        "controller_port": controller_port,
        "bootstrap": cfg.bootstrap,
        "version": cfg.version,
        "home": str(cfg.home),
        "java": java,
        "started_at": time.time(),
    }
    _write_state(cfg, state)
    try:
        _wait_answering(cfg, state, timeout)
    except BaseException:
        with contextlib.suppress(KafkaLocalError):
            _CHILDREN.terminate(pid, 5.0)
        _clear_state(cfg)
        raise
    logger.info(
        "Kafka broker pid %d answering at %s after %.1fs",
        pid,
        cfg.bootstrap,
        time.monotonic() - started,
    )
    return _answering_status(cfg, state)


def _wait_answering(cfg: BrokerConfig, state: Mapping[str, Any], timeout: float) -> None:
    """Wait until the broker of ``state`` answers metadata; raise KafkaStartError if not."""
    pid = int(state["pid"])
    bootstrap = str(state["bootstrap"])
    deadline = time.monotonic() + timeout
    while True:
        if not _CHILDREN.alive(pid):
            code = _CHILDREN.exit_note(pid)
            raise KafkaStartError(
                f"the Kafka broker (pid {pid}) exited{code} before answering at {bootstrap}\n"
                + _log_excerpt(cfg, 40)
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KafkaStartError(
                f"the Kafka broker (pid {pid}) did not answer at {bootstrap} within "
                f"{timeout:g}s; it was stopped\n" + _log_excerpt(cfg, 40)
            )
        if metadata_ok(bootstrap, min(remaining, 5.0)):
            return
        time.sleep(min(0.25, max(deadline - time.monotonic(), 0.0)))


def stop(cfg: BrokerConfig | None = None, timeout: float = 30.0) -> bool:
    """Stop the broker of ``cfg.data_dir``: SIGTERM, then SIGKILL after ``timeout``.

    Idempotent.

    Args:
        cfg: Broker configuration; default ``BrokerConfig()``.
        timeout: Seconds to wait for a clean shutdown before SIGKILL.

    Returns:
        True if a running broker was stopped, False if none was running.

    Raises:
        KafkaLocalError: The process survived SIGKILL.
    """
    cfg = cfg or BrokerConfig()
    if not cfg.data_dir.is_dir():
        return False
    with locked(cfg.data_dir / _LOCK):
        state = _running_state(cfg)
        if state is None:
            _clear_state(cfg)
            return False
        pid = int(state["pid"])
        logger.info("stopping Kafka broker pid %d (%s)", pid, state["bootstrap"])
        started = time.monotonic()
        _CHILDREN.terminate(pid, timeout)
        _clear_state(cfg)
        logger.info("Kafka broker pid %d stopped in %.1fs", pid, time.monotonic() - started)
        return True
