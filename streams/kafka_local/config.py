"""Configuration of the local Kafka broker: where it lives and runs, what it reports, its errors.

:class:`BrokerConfig` (paths, ports, heap, version) and :class:`BrokerStatus`
(what :func:`~interest_stream.streams.kafka_local.broker.status` found), the
errors of the helper, and two small utilities shared by its modules.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from interest_stream.core.errors import InterestStreamError
from interest_stream.core.jvm import MIN_JAVA_VERSION, locked

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "ENV_DATA_DIR",
    "ENV_HOME",
    "MIN_JAVA_VERSION",
    "BrokerConfig",
    "BrokerStatus",
    "KafkaInstallError",
    "KafkaLocalError",
    "KafkaStartError",
    "locked",
    "resource_text",
]

DEFAULT_KAFKA_VERSION = "4.0.2"
"""Kafka version installed and run by default (``org.apache.kafka:kafka_2.13``)."""

"""Kafka 4.0 brokers need Java 17 or newer."""

ENV_HOME = "INTEREST_KAFKA_HOME"
ENV_DATA_DIR = "INTEREST_KAFKA_DATA_DIR"

_CACHE_ROOT = Path("~/.cache/interest-stream")
_STATE = "broker.json"


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


def resource_text(name: str) -> str:
    """The text of a data file shipped in this package (``pom.xml``, ``log4j2.properties``)."""
    package = __package__ or "interest_stream.streams.kafka_local"
    return resources.files(package).joinpath(name).read_text("utf-8")
