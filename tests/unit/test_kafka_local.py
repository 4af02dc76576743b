"""Unit tests of streams.kafka_local: config, server.properties, install and state logic.

No broker, no Maven, no network: Maven is replaced by a fake ``mvn`` script and the
metadata probe talks to a tiny in-process TCP server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from interest_stream.core.errors import InterestStreamError
from interest_stream.streams.kafka_local import config, probe, process, properties
from interest_stream.streams.kafka_local import installer as install_mod
from interest_stream.streams.kafka_local.broker import (
    DEFAULT_KAFKA_VERSION,
    BrokerConfig,
    BrokerStatus,
    KafkaInstallError,
    KafkaLocalError,
    KafkaStartError,
    free_port,
    install,
    is_installed,
    parse_java_version,
    render_properties,
    server_properties,
    start,
    status,
    stop,
)


@pytest.fixture
def cfg(tmp_path: Path) -> BrokerConfig:
    return BrokerConfig(home=tmp_path / "home", data_dir=tmp_path / "data", port=free_port())


# --------------------------------------------------------------------------- config


def test_defaults_follow_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("INTEREST_KAFKA_HOME", raising=False)
    monkeypatch.delenv("INTEREST_KAFKA_DATA_DIR", raising=False)
    default = BrokerConfig()
    cache = Path("~/.cache/interest-stream").expanduser()
    assert default.home == cache / "kafka" / DEFAULT_KAFKA_VERSION
    assert default.data_dir == cache / "kafka-data"
    assert default.bootstrap == "127.0.0.1:9092"
    assert default.version == "4.0.2"
    assert default.message_max_bytes == 16 * 1024 * 1024

    monkeypatch.setenv("INTEREST_KAFKA_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("INTEREST_KAFKA_DATA_DIR", str(tmp_path / "d"))
    from_env = BrokerConfig()
    assert from_env.home == tmp_path / "h"
    assert from_env.data_dir == tmp_path / "d"
    # Explicit values beat the environment.
    assert BrokerConfig(home=tmp_path / "x").home == tmp_path / "x"


def test_paths_are_normalised(tmp_path: Path) -> None:
    c = BrokerConfig(home=str(tmp_path / "h"), data_dir="rel/data")  # type: ignore[arg-type]
    assert isinstance(c.home, Path) and c.home.is_absolute()
    assert c.data_dir == Path.cwd() / "rel" / "data"
    assert c.kafka_log_dir == c.data_dir / "kafka-logs"
    assert c.log_file == c.data_dir / "logs" / "server.log"
    assert c.state_file == c.data_dir / "broker.json"
    assert c.libs_dir == c.home / "libs"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": 0},
        {"port": 70000},
        {"controller_port": 9092},
        {"heap": "lots"},
        {"version": "latest"},
        {"message_max_bytes": 10},
        {"host": "0.0.0.0"},
        {"host": "::1"},
    ],
)
def test_invalid_config_is_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(KafkaLocalError):
        BrokerConfig(**kwargs)  # type: ignore[arg-type]


def test_errors_share_the_project_root() -> None:
    assert issubclass(KafkaLocalError, InterestStreamError)
    assert issubclass(KafkaInstallError, KafkaLocalError)
    assert issubclass(KafkaStartError, KafkaLocalError)


# --------------------------------------------------------------------------- properties


def test_server_properties_single_node_kraft(tmp_path: Path) -> None:
    c = BrokerConfig(data_dir=tmp_path, host="127.0.0.1", port=19092)
    props = server_properties(c, controller_port=19093)
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str(tmp_path / "kafka-logs")
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
    ):
        assert props[key] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["num.partitions"] == "4"
    assert props["auto.create.topics.enable"] == "true"
    assert props["log.cleaner.enable"] == "true"
    assert props["log.retention.ms"] == "-1"
    assert props["log.retention.bytes"] == "-1"
    # Room for the 10 MB payloads the tests push.
    assert int(props["message.max.bytes"]) == 16 * 1024 * 1024
    assert int(props["replica.fetch.max.bytes"]) >= int(props["message.max.bytes"])
    assert int(props["fetch.max.bytes"]) >= int(props["message.max.bytes"])
    assert int(props["socket.request.max.bytes"]) > int(props["message.max.bytes"])


def test_server_properties_large_messages_and_extra(tmp_path: Path) -> None:
    big = 200 * 1024 * 1024
    c = BrokerConfig(
        data_dir=tmp_path,
        message_max_bytes=big,
        extra={"num.partitions": "1", "log.segment.bytes": "1048576", "custom.key": "v"},
    )
    props = server_properties(c, controller_port=1234)
    assert props["message.max.bytes"] == str(big)
    assert int(props["fetch.max.bytes"]) >= big
    assert int(props["socket.request.max.bytes"]) >= 2 * big
    assert props["num.partitions"] == "1"  # extra wins
    assert props["log.segment.bytes"] == "1048576"
    assert props["custom.key"] == "v"


def test_render_properties_escapes() -> None:
    text = render_properties(
        {"a.b": "x", "path": "C:\\dir\\f", "odd key=": " lead", "multi": "l1\nl2"},
        header="line one\nline two",
    )
    lines = text.splitlines()
    assert lines[:2] == ["# line one", "# line two"]
    assert "a.b=x" in lines
    assert "path=C:\\\\dir\\\\f" in lines
    assert "odd\\ key\\==\\ lead" in lines
    assert "multi=l1\\nl2" in lines
    assert text.endswith("\n")


def test_cluster_id_looks_like_a_kafka_uuid() -> None:
    ids = {properties.new_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    for cid in ids:
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cid)


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15\nOpenJDK Runtime Environment', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ('openjdk version "25-ea" 2025-09-16', 25),
    ],
)
def test_parse_java_version(text: str, major: int) -> None:
    assert parse_java_version(text) == major


def test_parse_java_version_garbage() -> None:
    with pytest.raises(KafkaLocalError):
        parse_java_version("command not found")


def test_jvm_options_use_the_package_log_config(cfg: BrokerConfig) -> None:
    opts = properties.jvm_options(cfg, "INFO", "WARN")
    assert "-Xmx512m" in opts
    assert f"-Dkafka.logs.dir={cfg.logs_dir}" in opts
    assert opts[-2:] == ["-cp", f"{cfg.libs_dir}{os.sep}*"]


def test_package_data_is_shipped() -> None:
    pom = config.resource_text("pom.xml")
    assert "<artifactId>kafka_2.13</artifactId>" in pom
    assert "${kafka.version}" in pom
    assert "server.log" in config.resource_text("log4j2.properties")


# --------------------------------------------------------------------------- install


def _fake_mvn(bin_dir: Path, body: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    mvn = bin_dir / "mvn"
    mvn.write_text("#!/bin/sh\n" + body)
    mvn.chmod(mvn.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


_COPY_JARS = """
for arg in "$@"; do
  case "$arg" in
    -DoutputDirectory=*) out="${arg#-DoutputDirectory=}" ;;
    -Dkafka.version=*) ver="${arg#-Dkafka.version=}" ;;
  esac
done
echo "Downloading from central: kafka_2.13-$ver.jar"
mkdir -p "$out"
touch "$out/kafka_2.13-$ver.jar" "$out/kafka-clients-$ver.jar"
echo call >> "$(dirname "$0")/calls"
"""


def test_install_runs_mvn_once_then_is_cached(
    cfg: BrokerConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_mvn(tmp_path / "bin", _COPY_JARS)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(install_mod, "check_java", lambda error: "java")
    assert not is_installed(cfg)

    libs = install(cfg)
    assert libs == cfg.libs_dir
    assert (libs / "kafka_2.13-4.0.2.jar").is_file()
    assert is_installed(cfg)
    marker = json.loads((cfg.home / ".installed.json").read_text())
    assert marker["version"] == "4.0.2"
    assert "kafka-clients-4.0.2.jar" in marker["jars"]
    assert "kafka_2.13" in (cfg.home / "pom.xml").read_text()
    assert "Downloading from central" in (cfg.home / "install.log").read_text()

    install(cfg, progress=True)
    assert (tmp_path / "bin" / "calls").read_text().count("call") == 1

    # Another version in the same home is a fresh install.
    other = BrokerConfig(home=cfg.home, data_dir=cfg.data_dir, version="4.0.1")
    assert not is_installed(other)
    install(other)
    assert (cfg.libs_dir / "kafka_2.13-4.0.1.jar").is_file()
    assert not (cfg.libs_dir / "kafka_2.13-4.0.2.jar").exists()
    assert not list(cfg.home.glob("libs.tmp-*"))


def test_install_failure_quotes_mvn_output(
    cfg: BrokerConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_mvn(
        tmp_path / "bin",
        'echo "[ERROR] Could not transfer artifact org.apache.kafka:kafka_2.13:4.0.2 from/to '
        'central: repo.maven.apache.org: Unknown host"\nexit 1\n',
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(install_mod, "check_java", lambda error: "java")
    with pytest.raises(KafkaInstallError, match="Unknown host") as info:
        install(cfg)
    assert "Maven Central" in str(info.value)
    assert not is_installed(cfg)
    assert not cfg.libs_dir.exists()


def test_install_without_mvn(cfg: BrokerConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install_mod, "check_java", lambda error: "java")
    monkeypatch.setattr(install_mod.shutil, "which", lambda name: None)
    with pytest.raises(KafkaInstallError, match="mvn"):
        install(cfg)


def test_old_java_is_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    with pytest.raises(KafkaStartError, match="Java 11"):
        install_mod.check_java(KafkaStartError)


# --------------------------------------------------------------------------- state


def test_status_and_stop_without_a_broker(cfg: BrokerConfig) -> None:
    st = status(cfg)
    assert st == BrokerStatus(
        running=False,
        answering=False,
        pid=None,
        bootstrap=cfg.bootstrap,
        version=cfg.version,
        data_dir=cfg.data_dir,
        log_file=cfg.log_file,
        log_tail=[],
    )
    assert json.loads(json.dumps(st.to_dict()))["bootstrap"] == cfg.bootstrap
    assert stop(cfg) is False
    assert stop(cfg) is False


def test_stale_state_is_ignored_and_cleaned(cfg: BrokerConfig) -> None:
    cfg.data_dir.mkdir(parents=True)
    # A pid that exited, and the pid of a live process that is not a broker.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid in (dead.pid, os.getpid()):
        cfg.state_file.write_text(
            json.dumps({"pid": pid, "host": cfg.host, "port": cfg.port, "bootstrap": "x:1"})
        )
        assert status(cfg).running is False
        assert stop(cfg) is False
        assert not cfg.state_file.exists()


def test_log_tail(cfg: BrokerConfig) -> None:
    cfg.logs_dir.mkdir(parents=True)
    cfg.log_file.write_text("".join(f"line {i}\n" for i in range(100)))
    st = status(cfg)
    assert st.log_tail == [f"line {i}" for i in range(80, 100)]


def test_start_refuses_a_taken_port(cfg: BrokerConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_install(*args: object, **kwargs: object) -> Path:
        raise AssertionError("must fail before installing")

    monkeypatch.setattr(process, "install", no_install)
    monkeypatch.setattr(process, "metadata_ok", lambda bootstrap, timeout: False)
    with socket.socket() as sock:
        sock.bind((cfg.host, 0))
        sock.listen()
        taken = sock.getsockname()[1]
        busy = BrokerConfig(home=cfg.home, data_dir=cfg.data_dir, port=taken)
        with pytest.raises(KafkaStartError, match=f"port {taken} .*another process"):
            start(busy)
        with pytest.raises(KafkaStartError, match=f"controller port {taken}"):
            start(
                BrokerConfig(
                    home=cfg.home, data_dir=cfg.data_dir, controller_port=taken, port=free_port()
                )
            )


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# --------------------------------------------------------------------------- probe


@pytest.fixture
def fake_broker() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server answering one Metadata v4 request with one broker, then EOF."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.1)
    requests: list[bytes] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            with conn:
                (size,) = struct.unpack(">i", conn.recv(4))
                data = b""
                while len(data) < size:
                    data += conn.recv(size - len(data))
                requests.append(data)
                (corr,) = struct.unpack_from(">i", data, 4)
                host = b"127.0.0.1"
                body = struct.pack(">iii", corr, 0, 1) + struct.pack(">ih", 1, len(host)) + host
                body += struct.pack(">ih", 9092, -1) + struct.pack(">hii", -1, 1, 0)
                conn.sendall(struct.pack(">i", len(body)) + body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], requests
    done.set()
    thread.join(timeout=5)
    server.close()


def test_metadata_probe(fake_broker: tuple[int, list[bytes]]) -> None:
    port, requests = fake_broker
    assert probe.metadata_ok(f"127.0.0.1:{port}", 2.0) is True
    api_key, version = struct.unpack_from(">hh", requests[0])
    assert (api_key, version) == (3, 4)
    assert probe.metadata_ok(f"127.0.0.1:{free_port()}", 1.0) is False


def test_metadata_probe_rejects_non_kafka() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert probe.metadata_ok(f"127.0.0.1:{server.getsockname()[1]}", 2.0) is False
    finally:
        server.close()
        thread.join(timeout=5)
