"""A local single-node Apache Kafka broker (KRaft mode) run from Maven Central jars.

No Kafka distribution or container is needed: :func:`install` resolves the broker's
runtime classpath (``org.apache.kafka:kafka_2.13`` plus a log4j2 backend) with Maven
into ``<home>/libs``, and :func:`start` runs ``java -cp '<home>/libs/*' kafka.Kafka``
as a detached process whose combined broker + controller node keeps its data,
logs and state under ``<data_dir>``::

    <data_dir>/
        server.properties     generated on every start
        log4j2.properties     copied from this package on every start
        broker.json           pid + ports of the running broker (removed by stop)
        kafka-logs/           KRaft metadata log and topic partitions
        logs/server.log       broker log (log4j2, rotated at 10 MB)
        logs/server.out       JVM stdout/stderr (warnings, crashes)

The quorum is static (``controller.quorum.voters``), so the controller port may
change between restarts of the same data directory.

Example:
    >>> cfg = BrokerConfig(data_dir=tmp_path, port=free_port())  # doctest: +SKIP
    >>> st = start(cfg)  # doctest: +SKIP
    >>> st.bootstrap  # doctest: +SKIP
    '127.0.0.1:40123'
    >>> stop(cfg)  # doctest: +SKIP
    True
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any

from interest_stream.core.errors import InterestStreamError

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "BrokerConfig",
    "BrokerStatus",
    "KafkaInstallError",
    "KafkaLocalError",
    "KafkaStartError",
    "free_port",
    "install",
    "is_installed",
    "parse_java_version",
    "render_properties",
    "server_properties",
    "start",
    "status",
    "stop",
]

logger = logging.getLogger(__name__)

DEFAULT_KAFKA_VERSION = "4.0.2"
"""Kafka version installed and run by default (``org.apache.kafka:kafka_2.13``)."""

MIN_JAVA_VERSION = 17
"""Kafka 4.0 brokers need Java 17 or newer."""

ENV_HOME = "INTEREST_KAFKA_HOME"
ENV_DATA_DIR = "INTEREST_KAFKA_DATA_DIR"

_CACHE_ROOT = Path("~/.cache/interest-stream")
_MARKER = ".installed.json"
_STATE = "broker.json"
_LOCK = ".broker.lock"
_MAIN_CLASS = "kafka.Kafka"
_STORAGE_TOOL = "kafka.tools.StorageTool"
_LOG_CONFIG = "log4j2.properties"

# Broker processes started by this interpreter, so that they can be reaped
# (no zombies) and waited on without polling.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class KafkaLocalError(InterestStreamError):
    """Root of the errors of the local Kafka broker helper."""


class KafkaInstallError(KafkaLocalError):
    """The broker's jars cannot be installed (no Maven, no Java, Maven Central unreachable)."""


class KafkaStartError(KafkaLocalError):
    """The broker cannot be started: port taken, bad Java, or it did not come up in time."""


def _default_home() -> Path:
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    return (_CACHE_ROOT / "kafka" / DEFAULT_KAFKA_VERSION).expanduser()


def _default_data_dir() -> Path:
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    return (_CACHE_ROOT / "kafka-data").expanduser()


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how the local broker runs.

    Attributes:
        home: Install directory holding ``libs/`` (the broker's jars) and the
            Maven pom. Default ``~/.cache/interest-stream/kafka/4.0.2``, or
            ``$INTEREST_KAFKA_HOME``.
        data_dir: Directory of the KRaft log dirs, the broker log, and the state
            file. Default ``~/.cache/interest-stream/kafka-data``, or
            ``$INTEREST_KAFKA_DATA_DIR``.
        host: Address the broker listens on and advertises to clients.
        port: Client (``PLAINTEXT``) port.
        controller_port: KRaft controller port; ``None`` picks a free port at start.
        heap: JVM maximum heap (``-Xmx``), e.g. ``"512m"``.
        version: Kafka version (``org.apache.kafka:kafka_2.13``) to install and run.
        message_max_bytes: Largest record batch the broker accepts
            (``message.max.bytes``); fetch and socket limits are raised to match.
        extra: ``server.properties`` overrides applied last.
    """

    home: Path = field(default_factory=_default_home)
    data_dir: Path = field(default_factory=_default_data_dir)
    host: str = "127.0.0.1"
    port: int = 9092
    controller_port: int | None = None
    heap: str = "512m"
    version: str = DEFAULT_KAFKA_VERSION
    message_max_bytes: int = 16 * 1024 * 1024
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Normalise paths and validate the values.

        Raises:
            KafkaLocalError: A port, the heap size or the version is invalid.
        """
        object.__setattr__(self, "home", Path(self.home).expanduser().absolute())
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().absolute())
        object.__setattr__(self, "extra", dict(self.extra))
        for name, value in (("port", self.port), ("controller_port", self.controller_port)):
            if value is not None and not 0 < value < 65536:
                raise KafkaLocalError(f"{name} must be in 1..65535, got {value}")
        if self.controller_port is not None and self.controller_port == self.port:
            raise KafkaLocalError(f"controller_port must differ from the client port {self.port}")
        if not self.host or ":" in self.host or self.host in ("0.0.0.0", "*"):  # noqa: S104
            raise KafkaLocalError(
                f"host must be an IPv4 address or host name that clients can reach "
                f"(it is advertised to them), got {self.host!r}"
            )
        if not re.fullmatch(r"\d+[kKmMgG]?", self.heap):
            raise KafkaLocalError(f"heap must look like '512m' or '1g', got {self.heap!r}")
        if not re.fullmatch(r"\d+\.\d+\.\d+(?:[-.][\w.-]+)?", self.version):
            raise KafkaLocalError(f"version must look like '4.0.2', got {self.version!r}")
        if self.message_max_bytes < 1024:
            raise KafkaLocalError(
                f"message_max_bytes must be at least 1024, got {self.message_max_bytes}"
            )

    @property
    def bootstrap(self) -> str:
        """Client bootstrap address, ``host:port``."""
        return f"{self.host}:{self.port}"

    @property
    def libs_dir(self) -> Path:
        """Directory of the broker's jars."""
        return self.home / "libs"

    @property
    def kafka_log_dir(self) -> Path:
        """KRaft ``log.dirs`` (metadata log and topic partitions)."""
        return self.data_dir / "kafka-logs"

    @property
    def logs_dir(self) -> Path:
        """Directory of the broker's own log files."""
        return self.data_dir / "logs"

    @property
    def log_file(self) -> Path:
        """The broker log (log4j2)."""
        return self.logs_dir / "server.log"

    @property
    def out_file(self) -> Path:
        """JVM stdout/stderr of the broker process."""
        return self.logs_dir / "server.out"

    @property
    def properties_file(self) -> Path:
        """The generated ``server.properties``."""
        return self.data_dir / "server.properties"

    @property
    def state_file(self) -> Path:
        """JSON file recording the running broker's pid and ports."""
        return self.data_dir / _STATE


@dataclass(frozen=True)
class BrokerStatus:
    """What :func:`status` (and :func:`start`) found.

    Attributes:
        running: A broker process started from this data directory is alive.
        answering: A Kafka broker at ``bootstrap`` answered a metadata request
            (it may be another broker when ``running`` is false).
        pid: Process id of the running broker, else ``None``.
        bootstrap: Client bootstrap address, ``host:port``.
        version: Kafka version of the running broker (else the configured one).
        data_dir: The broker's data directory.
        log_file: The broker log.
        log_tail: Last lines of the broker log.
        controller_port: KRaft controller port of the running broker, else ``None``.
        started_at: Unix time the running broker was launched, else ``None``.
    """

    running: bool
    answering: bool
    pid: int | None
    bootstrap: str
    version: str
    data_dir: Path
    log_file: Path
    log_tail: list[str] = field(default_factory=list)
    controller_port: int | None = None
    started_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (paths as strings)."""
        return {
            "running": self.running,
            "answering": self.answering,
            "pid": self.pid,
            "bootstrap": self.bootstrap,
            "version": self.version,
            "data_dir": str(self.data_dir),
            "log_file": str(self.log_file),
            "log_tail": list(self.log_tail),
            "controller_port": self.controller_port,
            "started_at": self.started_at,
        }


# --------------------------------------------------------------------------- helpers


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now.

    Args:
        host: Address to bind to.

    Returns:
        A port number chosen by the OS (it may be taken again by the time it is used).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_in_use(host: str, port: int) -> bool:
    """Return whether something listens on ``host:port`` (bind test, as the JVM does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise KafkaStartError(f"cannot listen on {host}:{port}: {exc}") from exc
    return False


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        buf += chunk
    return bytes(buf)


def _metadata_ok(bootstrap: str, timeout: float) -> bool:
    """Return whether a Kafka broker at ``bootstrap`` answers a metadata request.

    Sends a ``Metadata`` v4 request (no topics; supported by Kafka 1.0 to 4.x) on a
    plain socket and checks that the answer lists at least one broker. A raw
    request keeps the probe fast, dependency-free and quiet in the logs.
    """
    host, _, port_text = bootstrap.rpartition(":")
    correlation_id = 0x1F5
    client_id = b"interest-stream-kafka-local"
    request = (
        struct.pack(">hhih", 3, 4, correlation_id, len(client_id))  # Metadata v4 header
        + client_id
        + struct.pack(">ib", 0, 0)  # topics: empty array; allow_auto_topic_creation: false
    )
    try:
        with socket.create_connection((host.strip("[]"), int(port_text)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
            if not 12 <= size <= 16 * 1024 * 1024:
                return False
            payload = _recv_exactly(sock, size)
    except (OSError, ValueError) as exc:
        logger.debug("metadata probe of %s failed: %r", bootstrap, exc)
        return False
    got_id, _throttle_ms, brokers = struct.unpack_from(">iii", payload, 0)
    return bool(got_id == correlation_id and brokers > 0)


def _tail(path: Path, lines: int) -> list[str]:
    """Return the last ``lines`` lines of a text file (empty if missing)."""
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            return [line.rstrip("\n") for line in deque(fh, maxlen=lines)]
    except OSError:
        return []


def _log_excerpt(cfg: BrokerConfig, lines: int) -> str:
    parts: list[str] = []
    log_tail = _tail(cfg.log_file, lines)
    if log_tail:
        parts.append(f"--- last {len(log_tail)} lines of {cfg.log_file} ---")
        parts.extend(log_tail)
    out_tail = _tail(cfg.out_file, lines)
    if out_tail:
        parts.append(f"--- last {len(out_tail)} lines of {cfg.out_file} ---")
        parts.extend(out_tail)
    return "\n".join(parts) if parts else f"(no broker log in {cfg.logs_dir})"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _resource_text(name: str) -> str:
    package = __package__ or "interest_stream.streams.kafka_local"
    return resources.files(package).joinpath(name).read_text("utf-8")


# --------------------------------------------------------------------------- java


def _java_executable() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if not found:
        raise KafkaStartError(
            f"Java not found: set JAVA_HOME or put `java` (version {MIN_JAVA_VERSION}+) on PATH"
        )
    return found


def parse_java_version(text: str) -> int:
    """Return the feature version from ``java -version`` output (``1.8`` -> 8).

    Args:
        text: Output of ``java -version`` (it prints to stderr).

    Returns:
        The Java feature version, e.g. 17.

    Raises:
        KafkaLocalError: No version string in ``text``.
    """
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        raise KafkaLocalError(f"cannot read the Java version from: {text.strip()[:200]!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))
    return major


def _check_java(error: type[KafkaLocalError]) -> str:
    """Return the java executable, checked to be version 17 or newer."""
    try:
        java = _java_executable()
        proc = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
        version = parse_java_version(proc.stderr + proc.stdout)
    except (KafkaLocalError, OSError, subprocess.SubprocessError) as exc:
        raise error(f"cannot run Java: {exc}") from exc
    if version < MIN_JAVA_VERSION:
        raise error(
            f"{java} is Java {version}; Kafka 4 needs Java {MIN_JAVA_VERSION}+ "
            "(set JAVA_HOME to a newer JDK)"
        )
    return java


# --------------------------------------------------------------------------- install


def is_installed(cfg: BrokerConfig) -> bool:
    """Return whether ``cfg.home`` holds a complete install of ``cfg.version``.

    Args:
        cfg: Broker configuration.

    Returns:
        True when the install marker names ``cfg.version`` and the jars are there.
    """
    try:
        marker = json.loads((cfg.home / _MARKER).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("version") == cfg.version
        and (cfg.libs_dir / f"kafka_2.13-{cfg.version}.jar").is_file()
    )


def install(cfg: BrokerConfig | None = None, progress: bool = False) -> Path:
    """Download the broker's jars from Maven Central into ``cfg.home/libs``.

    A no-op when already installed (see :func:`is_installed`). Maven's output is
    kept in ``<home>/install.log``.

    Args:
        cfg: Broker configuration; default ``BrokerConfig()``.
        progress: Run Maven verbosely and log each of its lines at INFO
            (DEBUG otherwise), so a CLI can show the download progress.

    Returns:
        The directory holding the jars.

    Raises:
        KafkaInstallError: Maven or Java is missing, or Maven failed (the message
            quotes the end of its output).
    """
    cfg = cfg or BrokerConfig()
    if is_installed(cfg):
        return cfg.libs_dir
    cfg.home.mkdir(parents=True, exist_ok=True)
    with _locked(cfg.home / ".install.lock"):
        if is_installed(cfg):
            return cfg.libs_dir
        _check_java(KafkaInstallError)
        mvn = shutil.which("mvn")
        if not mvn:
            raise KafkaInstallError(
                "Maven (`mvn`) not found on PATH: install Maven 3.6+ to download the "
                f"Kafka {cfg.version} jars, or point {ENV_HOME} at an existing install"
            )
        pom = cfg.home / "pom.xml"
        pom.write_text(_resource_text("pom.xml"), encoding="utf-8")
        staging = cfg.home / f"libs.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            mvn,
            "-B",
            *([] if progress else ["-q"]),
            "-f",
            str(pom),
            f"-Dkafka.version={cfg.version}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        logger.info("installing Kafka %s jars into %s (mvn)", cfg.version, cfg.libs_dir)
        started = time.monotonic()
        rc, tail = _run_logged(cmd, cfg.home / "install.log", progress)
        if rc != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise KafkaInstallError(
                f"mvn could not download the Kafka {cfg.version} jars (exit {rc}); is Maven "
                f"Central reachable? Full output in {cfg.home / 'install.log'}; last lines:\n"
                + "\n".join(tail)
            )
        jar = staging / f"kafka_2.13-{cfg.version}.jar"
        if not jar.is_file():
            shutil.rmtree(staging, ignore_errors=True)
            raise KafkaInstallError(f"mvn finished but {jar.name} is missing from {staging}")
        shutil.rmtree(cfg.libs_dir, ignore_errors=True)
        staging.rename(cfg.libs_dir)
        jars = sorted(p.name for p in cfg.libs_dir.glob("*.jar"))
        marker = {"version": cfg.version, "jars": jars, "installed_at": time.time()}
        (cfg.home / _MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        logger.info(
            "installed %d jars for Kafka %s in %.1fs",
            len(jars),
            cfg.version,
            time.monotonic() - started,
        )
        return cfg.libs_dir


def _run_logged(cmd: list[str], log_path: Path, verbose: bool) -> tuple[int, list[str]]:
    """Run ``cmd``, copy its output to ``log_path`` and the logger; return (rc, tail)."""
    tail: deque[str] = deque(maxlen=30)
    level = logging.INFO if verbose else logging.DEBUG
    with log_path.open("w", encoding="utf-8") as log_fh:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log_fh.write(line)
            text = line.rstrip("\n")
            # Strip ANSI colours Maven may emit even in batch mode.
            text = re.sub(r"\x1b\[[0-9;]*m", "", text)
            if text:
                tail.append(text)
                logger.log(level, "mvn: %s", text)
        rc = proc.wait()
    return rc, list(tail)


# --------------------------------------------------------------------------- config


def server_properties(cfg: BrokerConfig, controller_port: int) -> dict[str, str]:
    """Return the ``server.properties`` of a single-node KRaft broker + controller.

    Args:
        cfg: Broker configuration (``cfg.extra`` is applied last).
        controller_port: Port of the ``CONTROLLER`` listener.

    Returns:
        Property names mapped to values, in a stable order.
    """
    mmb = cfg.message_max_bytes
    props: dict[str, str] = {
        # KRaft combined mode, static single-voter quorum.
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{cfg.host}:{controller_port}",
        "listeners": f"PLAINTEXT://{cfg.host}:{cfg.port},CONTROLLER://{cfg.host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{cfg.host}:{cfg.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(cfg.kafka_log_dir),
        # Single node: every internal topic has one replica.
        "num.partitions": "4",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "8",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        "delete.topic.enable": "true",
        # Large records (tests push 10 MB payloads).
        "message.max.bytes": str(mmb),
        "replica.fetch.max.bytes": str(mmb),
        "replica.fetch.response.max.bytes": str(max(mmb, 10 * 1024 * 1024)),
        "fetch.max.bytes": str(max(mmb, 55 * 1024 * 1024)),
        "socket.request.max.bytes": str(max(2 * mmb, 100 * 1024 * 1024)),
        # Keep everything: records with old event timestamps must not expire.
        "log.retention.ms": "-1",
        "log.retention.bytes": "-1",
        # Compacted topics (changelogs, tables) are used.
        "log.cleaner.enable": "true",
        "log.cleaner.threads": "1",
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        # A small, fast-starting local node.
        "num.network.threads": "2",
        "num.io.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "num.replica.fetchers": "1",
        "background.threads": "4",
        "log.segment.bytes": str(256 * 1024 * 1024),
        # After a restart the controller keeps the previous incarnation of the broker
        # registered until its session expires: a short session makes restarts fast.
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "4000",
    }
    props.update({str(k): str(v) for k, v in cfg.extra.items()})
    return props


def _escape(text: str, key: bool = False) -> str:
    """Escape a key or value for the Java properties format."""
    out = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    out = out.replace("\t", "\\t").replace("\f", "\\f")
    if key:
        out = re.sub(r"([=: #!])", r"\\\1", out)
    elif out.startswith((" ", "#", "!")):
        out = "\\" + out
    return out


def render_properties(props: Mapping[str, str], header: str = "") -> str:
    """Render a Java ``.properties`` file.

    Args:
        props: Property names mapped to values.
        header: Optional comment put at the top (one ``#`` line per line).

    Returns:
        The file text.
    """
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [f"{_escape(k, key=True)}={_escape(v)}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


def _new_cluster_id() -> str:
    """Return a random KRaft cluster id (base64url of a UUID, as Kafka's Uuid does)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cid.startswith("-"):
            return cid


def _jvm_options(cfg: BrokerConfig, log_level: str, console_level: str) -> list[str]:
    return [
        f"-Xmx{cfg.heap}",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-XX:+ExitOnOutOfMemoryError",
        "-XX:-UsePerfData",
        "-Djava.awt.headless=true",
        # Keep logging while Kafka's own shutdown hook runs (log4j2 would stop first).
        "-Dlog4j2.shutdownHookEnabled=false",
        f"-Dlog4j2.configurationFile={cfg.data_dir / _LOG_CONFIG}",
        f"-Dkafka.logs.dir={cfg.logs_dir}",
        f"-Dinterest.kafka.log.level={log_level}",
        f"-Dinterest.kafka.console.level={console_level}",
        "-cp",
        f"{cfg.libs_dir}{os.sep}*",
    ]


def _format_storage(cfg: BrokerConfig, java: str) -> None:
    """Format the KRaft log dir once (no-op when ``meta.properties`` exists)."""
    if (cfg.kafka_log_dir / "meta.properties").is_file():
        return
    cluster_id = _new_cluster_id()
    cmd = [
        java,
        *_jvm_options(cfg, "WARN", "WARN"),
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


# --------------------------------------------------------------------------- processes


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


def _alive(pid: int) -> bool:
    """Return whether ``pid`` runs (reaping it if it is our exited child)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _is_our_broker(cfg: BrokerConfig, pid: int) -> bool:
    """Return whether ``pid`` is a live broker launched with this data dir's properties."""
    if not _alive(pid):
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


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_dead(pid: int, timeout: float) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        try:
            child.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            return False
        _CHILDREN.pop(pid, None)
        return True
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM the broker's process group; SIGKILL it after ``timeout`` seconds."""
    _signal_group(pid, signal.SIGTERM)
    if _wait_dead(pid, timeout):
        return
    logger.warning("Kafka broker pid %d still runs %.0fs after SIGTERM; killing it", pid, timeout)
    _signal_group(pid, signal.SIGKILL)
    if not _wait_dead(pid, 10.0):
        raise KafkaLocalError(f"Kafka broker pid {pid} survived SIGKILL")


def _make_status(cfg: BrokerConfig, state: Mapping[str, Any] | None, probe: bool) -> BrokerStatus:
    bootstrap = str(state["bootstrap"]) if state else cfg.bootstrap
    return BrokerStatus(
        running=state is not None,
        answering=_metadata_ok(bootstrap, 5.0) if probe else False,
        pid=int(state["pid"]) if state else None,
        bootstrap=bootstrap,
        version=str(state.get("version", cfg.version)) if state else cfg.version,
        data_dir=cfg.data_dir,
        log_file=cfg.log_file,
        log_tail=_tail(cfg.log_file, 20),
        controller_port=int(state["controller_port"]) if state else None,
        started_at=float(state["started_at"]) if state else None,
    )


# --------------------------------------------------------------------------- public API


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
    with _locked(cfg.data_dir / _LOCK):
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
        java = _check_java(KafkaStartError)
        return _launch(cfg, java, controller_port, timeout)


def _answering_status(cfg: BrokerConfig, state: Mapping[str, Any]) -> BrokerStatus:
    return dataclasses.replace(_make_status(cfg, state, probe=False), answering=True)


def _check_ports(cfg: BrokerConfig) -> int:
    """Check that the client and controller ports are free; return the controller port."""
    if _port_in_use(cfg.host, cfg.port):
        what = "a Kafka broker" if _metadata_ok(cfg.bootstrap, 2.0) else "another process"
        raise KafkaStartError(
            f"port {cfg.port} on {cfg.host} is already in use by {what} (not the Kafka "
            f"broker of {cfg.data_dir}): stop it or choose another port"
        )
    controller_port = cfg.controller_port
    if controller_port is None:
        controller_port = free_port(cfg.host)
        while controller_port == cfg.port:
            controller_port = free_port(cfg.host)
    elif _port_in_use(cfg.host, controller_port):
        raise KafkaStartError(
            f"controller port {controller_port} on {cfg.host} is already in use by another "
            "process: stop it or choose another controller_port"
        )
    return controller_port


def _launch(cfg: BrokerConfig, java: str, controller_port: int, timeout: float) -> BrokerStatus:
    cfg.logs_dir.mkdir(parents=True, exist_ok=True)
    cfg.kafka_log_dir.mkdir(parents=True, exist_ok=True)
    (cfg.data_dir / _LOG_CONFIG).write_text(_resource_text(_LOG_CONFIG), encoding="utf-8")
    props = server_properties(cfg, controller_port)
    cfg.properties_file.write_text(
        render_properties(
            props, "Generated by interest-stream (streams.kafka_local); rewritten on every start."
        ),
        encoding="utf-8",
    )
    _format_storage(cfg, java)

    cmd = [java, *_jvm_options(cfg, "INFO", "WARN"), _MAIN_CLASS, str(cfg.properties_file)]
    logger.info(
        "starting Kafka %s broker at %s (data in %s)", cfg.version, cfg.bootstrap, cfg.data_dir
    )
    started = time.monotonic()
    out_fh: IO[bytes]
    with cfg.out_file.open("ab") as out_fh:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out_fh,
            stderr=subprocess.STDOUT,
            cwd=cfg.data_dir,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    state: dict[str, Any] = {
        "pid": proc.pid,
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
            _terminate(proc.pid, 5.0)
        _clear_state(cfg)
        raise
    logger.info(
        "Kafka broker pid %d answering at %s after %.1fs",
        proc.pid,
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
        if not _alive(pid):
            child = _CHILDREN.pop(pid, None)
            code = f" with exit code {child.returncode}" if child is not None else ""
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
        if _metadata_ok(bootstrap, min(remaining, 5.0)):
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
    with _locked(cfg.data_dir / _LOCK):
        state = _running_state(cfg)
        if state is None:
            _clear_state(cfg)
            return False
        pid = int(state["pid"])
        logger.info("stopping Kafka broker pid %d (%s)", pid, state["bootstrap"])
        started = time.monotonic()
        _terminate(pid, timeout)
        _clear_state(cfg)
        logger.info("Kafka broker pid %d stopped in %.1fs", pid, time.monotonic() - started)
        return True
