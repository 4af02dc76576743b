"""Supervise the local cluster: start its nodes detached, wait for health, stop, report.

State of a running cluster: ``<data_dir>/cluster.json`` (one entry per node: pid,
ports), written by :func:`start`, removed by :func:`stop`; a lock file serialises
starts and stops of one data directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

from interest_stream.core import jvm
from interest_stream.index.opensearch_local.config import (
    ClusterConfig,
    ClusterStatus,
    NodeStatus,
    OpenSearchLocalError,
    OpenSearchStartError,
    locked,
)
from interest_stream.index.opensearch_local.installer import check_java, install
from interest_stream.index.opensearch_local.nodeconf import node_environment, write_node_config
from interest_stream.index.opensearch_local.probe import cluster_health, port_in_use
from interest_stream.index.opensearch_local.runas import (
    RunAs,
    check_reachable,
    chown_tree,
    command_prefix,
    resolve_user,
)

__all__ = ["kill_node", "start", "status", "stop"]

logger = logging.getLogger(__name__)

_LOCK = ".cluster.lock"
_MAIN_CLASS = "org.opensearch.bootstrap.OpenSearch"
_CHILDREN = jvm.Children("OpenSearch", OpenSearchLocalError)


def _log_file(cfg: ClusterConfig, i: int) -> Path:
    return cfg.node_dir(i) / "logs" / f"{cfg.cluster_name}.log"


def _out_file(cfg: ClusterConfig, i: int) -> Path:
    return cfg.node_dir(i) / "logs" / "stdout.log"


def _log_excerpt(cfg: ClusterConfig, i: int, lines: int = 30) -> str:
    return jvm.log_excerpt(
        (_log_file(cfg, i), _out_file(cfg, i)), lines, f"(no log in {cfg.node_dir(i) / 'logs'})"
    )


def _is_our_node(cfg: ClusterConfig, i: int, pid: int) -> bool:
    """Whether ``pid`` is a live OpenSearch started with node ``i``'s config folder."""
    if not _CHILDREN.alive(pid):
        return False
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    args = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
    conf = str(cfg.node_dir(i) / "config")
    return _MAIN_CLASS in args and any(conf in a for a in args)


def _read_state(cfg: ClusterConfig) -> dict[str, Any] | None:
    try:
        state = json.loads(cfg.state_file.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("nodes"), list) else None


def _write_state(cfg: ClusterConfig, state: dict[str, Any]) -> None:
    tmp = cfg.state_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
    tmp.replace(cfg.state_file)


def _running_nodes(cfg: ClusterConfig, state: dict[str, Any] | None) -> dict[int, dict[str, Any]]:
    """Entries of the state file whose node process still runs, by node index."""
    out: dict[int, dict[str, Any]] = {}
    for entry in (state or {}).get("nodes", []):
        i, pid = int(entry["index"]), int(entry["pid"])
        if _is_our_node(cfg, i, pid):
            out[i] = entry
    return out


def _make_status(cfg: ClusterConfig, state: dict[str, Any] | None) -> ClusterStatus:
    running = _running_nodes(cfg, state)
    count = len((state or {}).get("nodes", [])) or cfg.nodes
    nodes = [
        NodeStatus(
            name=cfg.node_name(i),
            pid=int(running[i]["pid"]) if i in running else None,
            running=i in running,
            http_port=int(running[i]["http_port"]) if i in running else cfg.http_port + i,
            transport_port=int(running[i]["transport_port"])
            if i in running
            else cfg.transport_port + i,
            log_file=_log_file(cfg, i),
        )
        for i in range(count)
    ]
    health = None
    for node in [n for n in nodes if n.running] or nodes[:1]:
        health = cluster_health(f"http://{cfg.host}:{node.http_port}", 5.0)
        if health is not None:
            break
    return ClusterStatus(
        url=f"http://{cfg.host}:{nodes[0].http_port}",
        health=str(health["status"]) if health else None,
        number_of_nodes=int(health.get("number_of_nodes", 0)) if health else 0,
        nodes=nodes,
        data_dir=cfg.data_dir,
        version=str((state or {}).get("version", cfg.version)),
    )


def status(cfg: ClusterConfig | None = None) -> ClusterStatus:
    """Report on the nodes of ``cfg.data_dir`` and the cluster's health."""
    cfg = cfg or ClusterConfig()
    return _make_status(cfg, _read_state(cfg))


def _check_ports(cfg: ClusterConfig) -> None:
    for kind, ports in (("HTTP", cfg.http_ports), ("transport", cfg.transport_ports)):
        for port in ports:
            if port_in_use(cfg.host, port):
                what = (
                    "an OpenSearch node"
                    if kind == "HTTP" and cluster_health(f"http://{cfg.host}:{port}", 2.0)
                    else "another process"
                )
                raise OpenSearchStartError(
                    f"{kind} port {port} on {cfg.host} is already in use by {what} (not a node "
                    f"of {cfg.data_dir}): stop it or choose other ports (--port)"
                )


def start(
    cfg: ClusterConfig | None = None, timeout: float = 180.0, *, progress: bool = False
) -> ClusterStatus:
    """Start every node (installing first if needed) and wait for a yellow or green cluster.

    Idempotent when the cluster of ``cfg.data_dir`` already runs with the same nodes; when
    some of them run (another died or was killed), the others are started and rejoin.

    Raises:
        OpenSearchInstallError: The distribution cannot be installed.
        OpenSearchStartError: A port is taken, Java or the run-as user is unusable, the
            cluster of this data dir runs with other nodes, or it did not become healthy
            within ``timeout`` (the nodes are then stopped; the message ends with a log).
    """
    cfg = cfg or ClusterConfig()
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    with locked(cfg.data_dir / _LOCK):
        state = _read_state(cfg)
        running = _running_nodes(cfg, state)
        if running:
            if not set(running) <= set(range(cfg.nodes)) or any(
                int(e["http_port"]) != cfg.http_ports[i] for i, e in running.items()
            ):
                raise OpenSearchStartError(
                    f"the OpenSearch cluster of {cfg.data_dir} already runs with other nodes "
                    "or ports: stop it first"
                )
            assert state is not None
            if len(running) < cfg.nodes:  # a node died or was killed: it rejoins
                return _relaunch(cfg, state, running, timeout)
            _wait_healthy(cfg, running, timeout)
            return _make_status(cfg, state)
        _check_ports(cfg)
        install(cfg, progress=progress)
        java_home = check_java(OpenSearchStartError)
        user = resolve_user(cfg.run_as)
        for path in (cfg.dist_dir, cfg.data_dir):
            check_reachable(path, user)
        return _launch_all(cfg, java_home, user, timeout)


def _launch_all(cfg: ClusterConfig, java_home: Path, user: RunAs, timeout: float) -> ClusterStatus:
    state: dict[str, Any] = {"version": cfg.version, "started_at": time.time(), "nodes": []}
    started = time.monotonic()
    try:
        for i in range(cfg.nodes):
            pid = _launch_node(cfg, i, java_home, user)
            state["nodes"].append(
                {
                    "index": i,
                    "pid": pid,
                    "http_port": cfg.http_ports[i],
                    "transport_port": cfg.transport_ports[i],
                }
            )
            _write_state(cfg, state)
        _wait_healthy(cfg, {int(e["index"]): e for e in state["nodes"]}, timeout)
    except BaseException:
        for entry in state["nodes"]:
            with contextlib.suppress(OpenSearchLocalError):
                _CHILDREN.terminate(int(entry["pid"]), 10.0)
        cfg.state_file.unlink(missing_ok=True)
        raise
    logger.info(
        "OpenSearch cluster of %d node(s) healthy at %s after %.1fs",
        cfg.nodes,
        cfg.url,
        time.monotonic() - started,
    )
    return _make_status(cfg, state)


def _relaunch(
    cfg: ClusterConfig, state: dict[str, Any], running: dict[int, dict[str, Any]], timeout: float
) -> ClusterStatus:
    """Start the nodes of a running cluster that are not running; wait until all have joined."""
    missing = [i for i in range(cfg.nodes) if i not in running]
    for i in missing:
        for port in (cfg.http_ports[i], cfg.transport_ports[i]):
            if port_in_use(cfg.host, port):
                raise OpenSearchStartError(
                    f"port {port} of node {cfg.node_name(i)} on {cfg.host} is in use by "
                    "another process: stop it first"
                )
    java_home = check_java(OpenSearchStartError)
    user = resolve_user(cfg.run_as)
    nodes = dict(running)
    for i in missing:
        logger.info("node %s of %s is not running: starting it", cfg.node_name(i), cfg.data_dir)
        nodes[i] = {
            "index": i,
            "pid": _launch_node(cfg, i, java_home, user),
            "http_port": cfg.http_ports[i],
            "transport_port": cfg.transport_ports[i],
        }
    state = {**state, "nodes": [nodes[i] for i in sorted(nodes)]}
    _write_state(cfg, state)
    _wait_healthy(cfg, nodes, timeout)
    return _make_status(cfg, state)


def _launch_node(cfg: ClusterConfig, i: int, java_home: Path, user: RunAs) -> int:
    write_node_config(cfg, i)
    chown_tree(cfg.node_dir(i), user)
    cmd = [*command_prefix(user), str(cfg.dist_dir / "bin" / "opensearch")]
    logger.info(
        "starting OpenSearch node %s at http://%s:%d (data in %s)",
        cfg.node_name(i),
        cfg.host,
        cfg.http_ports[i],
        cfg.node_dir(i),
    )
    return _CHILDREN.launch(
        cmd, _out_file(cfg, i), cfg.node_dir(i), node_environment(cfg, i, java_home)
    )


def _wait_healthy(cfg: ClusterConfig, nodes: dict[int, dict[str, Any]], timeout: float) -> None:
    """Wait until node 0 reports every node and a yellow or green status."""
    deadline = time.monotonic() + timeout
    url = f"http://{cfg.host}:{nodes[min(nodes)]['http_port']}"
    while True:
        for i, entry in nodes.items():
            if not _CHILDREN.alive(int(entry["pid"])):
                code = _CHILDREN.exit_note(int(entry["pid"]))
                raise OpenSearchStartError(
                    f"OpenSearch node {cfg.node_name(i)} (pid {entry['pid']}) exited{code} "
                    f"before the cluster was healthy\n" + _log_excerpt(cfg, i)
                )
        health = cluster_health(url, 5.0)
        if (
            health
            and health["status"] in ("yellow", "green")
            and int(health.get("number_of_nodes", 0)) >= len(nodes)
        ):
            return
        if time.monotonic() >= deadline:
            raise OpenSearchStartError(
                f"the OpenSearch cluster at {url} was not healthy within {timeout:g}s "
                f"(last health: {health}); it was stopped\n" + _log_excerpt(cfg, min(nodes))
            )
        time.sleep(0.5)


def stop(cfg: ClusterConfig | None = None, timeout: float = 60.0) -> bool:
    """Stop every node of ``cfg.data_dir`` (SIGTERM, SIGKILL after ``timeout``); idempotent.

    Returns:
        True if a running node was stopped.
    """
    cfg = cfg or ClusterConfig()
    if not cfg.data_dir.is_dir():
        return False
    with locked(cfg.data_dir / _LOCK):
        running = _running_nodes(cfg, _read_state(cfg))
        for i, entry in sorted(running.items()):
            logger.info("stopping OpenSearch node %s (pid %s)", cfg.node_name(i), entry["pid"])
            _CHILDREN.terminate(int(entry["pid"]), timeout)
        cfg.state_file.unlink(missing_ok=True)
        return bool(running)


def kill_node(cfg: ClusterConfig, i: int) -> int | None:
    """SIGKILL node ``i`` (fault tests); return its pid, or ``None`` if it did not run.

    The state file keeps the node: :func:`stop` skips it, :func:`start` of the same
    nodes starts it again (it rejoins the cluster with its data).
    """
    entry = _running_nodes(cfg, _read_state(cfg)).get(i)
    if entry is None:
        return None
    pid = int(entry["pid"])
    jvm.signal_group(pid, signal.SIGKILL)
    _CHILDREN.wait_dead(pid, 10.0)
    return pid
