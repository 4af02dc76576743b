"""Configuration of the local OpenSearch cluster: where it lives and runs, its errors, its status.

:class:`ClusterConfig` (paths, ports, node count, heap, versions, run-as user) and
:class:`ClusterStatus` (what :func:`~interest_stream.index.opensearch_local.cluster.status`
found). Layout and decisions: docs/DESIGN.md, "Local OpenSearch".
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from interest_stream.core.jvm import MIN_JAVA_VERSION, locked
from interest_stream.index.errors import VectorIndexError

__all__ = [
    "DEFAULT_KNN_VERSION",
    "DEFAULT_OPENSEARCH_VERSION",
    "DEFAULT_RUN_AS",
    "ENV_DATA_DIR",
    "ENV_HOME",
    "MIN_JAVA_VERSION",
    "ClusterConfig",
    "ClusterStatus",
    "NodeStatus",
    "OpenSearchInstallError",
    "OpenSearchLocalError",
    "OpenSearchStartError",
    "locked",
    "resource_text",
]

DEFAULT_OPENSEARCH_VERSION = "2.19.1"
"""OpenSearch version (``org.opensearch.distribution.integ-test-zip:opensearch``)."""
DEFAULT_KNN_VERSION = "2.19.1.0"
"""k-NN plugin version (``org.opensearch.plugin:opensearch-knn``), matching the engine."""
"""OpenSearch 2.x runs on Java 11+; the project already needs 17 for Kafka."""
DEFAULT_RUN_AS = "interest-os"
"""Unprivileged system user the nodes run as when started by root (created if missing)."""

ENV_HOME = "INTEREST_OPENSEARCH_HOME"
ENV_DATA_DIR = "INTEREST_OPENSEARCH_DATA_DIR"

_STATE = "cluster.json"


class OpenSearchLocalError(VectorIndexError):
    """Root of the errors of the local OpenSearch helper."""


class OpenSearchInstallError(OpenSearchLocalError):
    """The distribution cannot be installed (no Maven, no Java, Maven Central unreachable)."""


class OpenSearchStartError(OpenSearchLocalError):
    """A node cannot be started: port taken, bad Java, unusable user, or it did not come up."""


def _is_root() -> bool:
    return os.geteuid() == 0


def _default_home() -> Path:
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    # root's home is usually 0700: the unprivileged node user could not read it there
    root = Path("/var/cache/interest-stream") if _is_root() else Path("~/.cache/interest-stream")
    return (root / "opensearch" / DEFAULT_OPENSEARCH_VERSION).expanduser()


def _default_data_dir() -> Path:
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    if _is_root():
        return Path("/var/lib/interest-stream/opensearch")
    return Path("~/.cache/interest-stream/opensearch-data").expanduser()


def _default_run_as() -> str | None:
    return DEFAULT_RUN_AS if _is_root() else None


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how the local cluster runs.

    Attributes:
        home: Install directory (``dist/``: the distribution with the k-NN plugin
            and the ``lang-painless`` module). Default
            ``~/.cache/interest-stream/opensearch/<version>`` (``/var/cache/...`` as
            root), or ``$INTEREST_OPENSEARCH_HOME``.
        data_dir: One ``node-<i>/`` folder per node (config, data, logs) and the
            state file. Default ``~/.cache/interest-stream/opensearch-data``
            (``/var/lib/interest-stream/opensearch`` as root), or
            ``$INTEREST_OPENSEARCH_DATA_DIR``.
        host: Address every node binds and publishes (loopback: plain http).
        http_port: HTTP port of node 0; node ``i`` uses ``http_port + i``.
        transport_port: Transport port of node 0; node ``i`` uses ``transport_port + i``.
        nodes: Number of nodes (all cluster-manager eligible and data nodes).
        heap: JVM heap per node (``-Xms`` = ``-Xmx``), e.g. ``"512m"``.
        version: OpenSearch version.
        knn_version: k-NN plugin version.
        cluster_name: ``cluster.name``.
        run_as: User the nodes run as; default ``interest-os`` when root (OpenSearch
            refuses to run as root), else ``None`` (the current user).
    """

    home: Path = field(default_factory=_default_home)
    data_dir: Path = field(default_factory=_default_data_dir)
    host: str = "127.0.0.1"
    http_port: int = 9200
    transport_port: int = 9300
    nodes: int = 1
    heap: str = "512m"
    version: str = DEFAULT_OPENSEARCH_VERSION
    knn_version: str = DEFAULT_KNN_VERSION
    cluster_name: str = "interest-stream"
    run_as: str | None = field(default_factory=_default_run_as)

    def __post_init__(self) -> None:
        """Normalise paths and validate the values.

        Raises:
            OpenSearchLocalError: A port, the node count, the heap or a version is invalid.
        """
        object.__setattr__(self, "home", Path(self.home).expanduser().absolute())
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().absolute())
        if not 1 <= self.nodes <= 9:
            raise OpenSearchLocalError(f"nodes must be in 1..9, got {self.nodes}")
        for name, base in (("http_port", self.http_port), ("transport_port", self.transport_port)):
            if not (0 < base and base + self.nodes - 1 < 65536):
                raise OpenSearchLocalError(f"{name} must leave room for {self.nodes} ports")
        if set(self.http_ports) & set(self.transport_ports):
            raise OpenSearchLocalError("the HTTP and transport port ranges overlap")
        if not self.host or ":" in self.host or self.host in ("0.0.0.0", "*"):  # noqa: S104
            raise OpenSearchLocalError(f"host must be an address clients reach, got {self.host!r}")
        if not re.fullmatch(r"\d+[mMgG]", self.heap):
            raise OpenSearchLocalError(f"heap must look like '512m' or '1g', got {self.heap!r}")
        if not re.fullmatch(r"\d+\.\d+\.\d+", self.version):
            raise OpenSearchLocalError(f"version must look like '2.19.1', got {self.version!r}")
        if not re.fullmatch(r"\d+\.\d+\.\d+\.\d+", self.knn_version):
            raise OpenSearchLocalError(
                f"knn_version must look like '2.19.1.0', got {self.knn_version!r}"
            )
        if self.run_as is not None and not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", self.run_as):
            raise OpenSearchLocalError(f"run_as must be a user name, got {self.run_as!r}")

    @property
    def http_ports(self) -> list[int]:
        """HTTP port of each node."""
        return [self.http_port + i for i in range(self.nodes)]

    @property
    def transport_ports(self) -> list[int]:
        """Transport port of each node."""
        return [self.transport_port + i for i in range(self.nodes)]

    @property
    def url(self) -> str:
        """HTTP address of node 0."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def dist_dir(self) -> Path:
        """``OPENSEARCH_HOME``: the assembled distribution."""
        return self.home / "dist"

    @property
    def state_file(self) -> Path:
        """JSON file recording the running nodes (pids, ports)."""
        return self.data_dir / _STATE

    def node_name(self, i: int) -> str:
        """Name of node ``i``."""
        return f"node-{i}"

    def node_dir(self, i: int) -> Path:
        """Folder of node ``i``: ``config/``, ``data/``, ``logs/``."""
        return self.data_dir / self.node_name(i)


@dataclass(frozen=True)
class NodeStatus:
    """One node of the local cluster, as found in the state file."""

    name: str
    pid: int | None
    running: bool
    http_port: int
    transport_port: int
    log_file: Path

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "name": self.name,
            "pid": self.pid,
            "running": self.running,
            "http_port": self.http_port,
            "transport_port": self.transport_port,
            "log_file": str(self.log_file),
        }


@dataclass(frozen=True)
class ClusterStatus:
    """What :func:`status` (and :func:`start`) found.

    Attributes:
        url: HTTP address of node 0.
        health: ``green``/``yellow``/``red`` from ``_cluster/health``, or ``None``
            when no node answers.
        number_of_nodes: Nodes in the cluster as node 0 sees it (0 when unreachable).
        nodes: The nodes started from this data directory.
        data_dir: The cluster's data directory.
        version: OpenSearch version of the install.
    """

    url: str
    health: str | None
    number_of_nodes: int
    nodes: list[NodeStatus]
    data_dir: Path
    version: str

    @property
    def running(self) -> bool:
        """Whether any node of this data directory runs."""
        return any(n.running for n in self.nodes)

    @property
    def answering(self) -> bool:
        """Whether the cluster answered a health request."""
        return self.health is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "url": self.url,
            "health": self.health,
            "answering": self.answering,
            "running": self.running,
            "number_of_nodes": self.number_of_nodes,
            "nodes": [n.to_dict() for n in self.nodes],
            "data_dir": str(self.data_dir),
            "version": self.version,
        }


def resource_text(name: str) -> str:
    """The text of a data file shipped in this package (``pom.xml``, ...)."""
    package = __package__ or "interest_stream.index.opensearch_local"
    return resources.files(package).joinpath(name).read_text("utf-8")
