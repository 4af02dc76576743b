"""Unit tests of index.opensearch_local: config, node settings, descriptor, user, ports.

No JVM, no Maven: what is generated for the nodes and the checks made before a start.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from interest_stream.core.kafka import free_port
from interest_stream.index.errors import VectorIndexError
from interest_stream.index.opensearch_local import (
    ClusterConfig,
    OpenSearchLocalError,
    OpenSearchStartError,
    node_settings,
    nodeconf,
    painless_descriptor,
    runas,
    start,
    status,
    stop,
)


def _cfg(tmp_path: Path, **kw: object) -> ClusterConfig:
    return ClusterConfig(home=tmp_path / "home", data_dir=tmp_path / "data", **kw)  # type: ignore[arg-type]


def test_errors_are_project_errors() -> None:
    assert issubclass(OpenSearchStartError, OpenSearchLocalError)
    assert issubclass(OpenSearchLocalError, VectorIndexError)


def test_config_validates(tmp_path: Path) -> None:
    for bad in (
        {"nodes": 0},
        {"nodes": 10},
        {"heap": "lots"},
        {"http_port": 0},
        {"http_port": 9300, "transport_port": 9300},
        {"host": "0.0.0.0"},
        {"run_as": "Bad User"},
    ):
        with pytest.raises(OpenSearchLocalError):
            _cfg(tmp_path, **bad)
    cfg = _cfg(tmp_path, nodes=3, http_port=19200, transport_port=19300)
    assert cfg.http_ports == [19200, 19201, 19202]
    assert cfg.transport_ports == [19300, 19301, 19302]
    assert cfg.url == "http://127.0.0.1:19200"
    assert cfg.node_dir(2) == tmp_path / "data" / "node-2"


def test_defaults_follow_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INTEREST_OPENSEARCH_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("INTEREST_OPENSEARCH_DATA_DIR", str(tmp_path / "d"))
    cfg = ClusterConfig()
    assert (cfg.home, cfg.data_dir) == (tmp_path / "h", tmp_path / "d")
    assert cfg.run_as == ("interest-os" if os.geteuid() == 0 else None)


def test_one_node_is_single_node_and_n_nodes_discover_each_other(tmp_path: Path) -> None:
    one = node_settings(_cfg(tmp_path), 0)
    assert one["discovery.type"] == "single-node"
    assert "discovery.seed_hosts" not in one
    cfg = _cfg(tmp_path, nodes=2, http_port=19200, transport_port=19300)
    s1 = node_settings(cfg, 1)
    assert s1["node.name"] == "node-1" and s1["http.port"] == 19201
    assert s1["transport.port"] == 19301
    assert s1["discovery.seed_hosts"] == ["127.0.0.1:19300", "127.0.0.1:19301"]
    assert s1["cluster.initial_cluster_manager_nodes"] == ["node-0", "node-1"]
    assert s1["path.data"] == str(tmp_path / "data" / "node-1" / "data")
    yaml = nodeconf.render_yaml(s1, "x")
    assert 'discovery.seed_hosts: ["127.0.0.1:19300", "127.0.0.1:19301"]' in yaml


def test_node_config_sets_the_heap_and_the_knn_library_path(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, heap="256m")
    conf = cfg.dist_dir / "config"
    conf.mkdir(parents=True)
    (conf / "jvm.options").write_text(
        "-Xms1g\n-Xmx1g\n-XX:+UseG1GC\n-XX:HeapDumpPath=data\n"
        "9-:-Xlog:gc*:file=logs/gc.log:utctime\n-XX:ErrorFile=logs/hs_err_pid%p.log\n"
    )
    (conf / "log4j2.properties").write_text("status = error\n")
    out = nodeconf.write_node_config(cfg, 0)
    jvm = (out / "jvm.options").read_text()
    assert "-Xms1g" not in jvm and "-Xms256m" in jvm and "-Xmx256m" in jvm
    assert "-XX:+UseG1GC" in jvm
    node = cfg.node_dir(0)
    assert f"-XX:HeapDumpPath={node}/data" in jvm and f"file={node}/logs/gc.log" in jvm
    assert f"-XX:ErrorFile={node}/logs/hs_err" in jvm
    env = nodeconf.node_environment(cfg, 0, Path("/usr/lib/jvm/x"))
    lib = str(cfg.dist_dir / "plugins" / "opensearch-knn" / "lib")
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == lib
    assert f"-Djava.library.path={lib}" in env["OPENSEARCH_JAVA_OPTS"]
    assert env["OPENSEARCH_PATH_CONF"] == str(out)


def test_painless_descriptor_names_the_module_class() -> None:
    text = painless_descriptor("2.19.1")
    props = dict(line.split("=", 1) for line in text.splitlines())
    assert props["name"] == "lang-painless"
    assert props["classname"] == "org.opensearch.painless.PainlessPlugin"
    assert props["opensearch.version"] == props["version"] == "2.19.1"


def test_unreachable_folder_is_named() -> None:
    base = Path(tempfile.mkdtemp(prefix="os-reach-"))  # pytest's tmp root is 0700
    base.chmod(0o755)
    closed = base / "closed"
    (closed / "inner").mkdir(parents=True)
    closed.chmod(0o700)
    user = runas.RunAs("nobody-like", uid=os.geteuid() + 4242, gid=4242, groups=(4242,))
    with pytest.raises(OpenSearchStartError, match=r"cannot enter .*closed"):
        runas.check_reachable(closed / "inner", user)
    closed.chmod(0o755)
    runas.check_reachable(closed / "inner", user)
    runas.check_reachable(closed / "inner", runas.RunAs(None, 0, 0, ()))
    shutil.rmtree(base)


def test_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        cfg = _cfg(tmp_path, http_port=port, transport_port=free_port())
        with pytest.raises(OpenSearchStartError, match=f"HTTP port {port} .* in use"):
            start(cfg, timeout=1)


def test_missing_java_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from interest_stream.index.opensearch_local import installer

    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(OpenSearchStartError, match="Java not found"):
        installer.check_java(OpenSearchStartError)


def test_status_and_stop_without_a_cluster(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, http_port=free_port(), transport_port=free_port())
    st = status(cfg)
    assert not st.running and st.health is None and not st.answering
    assert st.to_dict()["nodes"][0]["running"] is False
    assert stop(cfg) is False
    # a stale state file (dead pid) is not a running node
    cfg.data_dir.mkdir(parents=True)
    cfg.state_file.write_text(
        json.dumps({"nodes": [{"index": 0, "pid": 2**22 + 7, "http_port": 1, "transport_port": 2}]})
    )
    assert not status(cfg).running
    assert stop(cfg) is False
