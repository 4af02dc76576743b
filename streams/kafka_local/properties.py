"""What the local broker runs with: its ``server.properties``, JVM options and cluster id."""

from __future__ import annotations

import base64
import os
import re
import uuid
from collections.abc import Mapping

from interest_stream.streams.kafka_local.config import BrokerConfig

__all__ = [
    "LOG_CONFIG",
    "jvm_options",
    "new_cluster_id",
    "render_properties",
    "server_properties",
]

#: The log4j2 configuration file, copied into the data directory on every start.
LOG_CONFIG = "log4j2.properties"


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


def new_cluster_id() -> str:
    """Return a random KRaft cluster id (base64url of a UUID, as Kafka's Uuid does)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cid.startswith("-"):
            return cid


def jvm_options(cfg: BrokerConfig, log_level: str, console_level: str) -> list[str]:
    """JVM arguments of the broker and its storage tool, up to the main class."""
    return [
        f"-Xmx{cfg.heap}",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-XX:+ExitOnOutOfMemoryError",
        "-XX:-UsePerfData",
        "-Djava.awt.headless=true",
        # Keep logging while Kafka's own shutdown hook runs (log4j2 would stop first).
        "-Dlog4j2.shutdownHookEnabled=false",
        f"-Dlog4j2.configurationFile={cfg.data_dir / LOG_CONFIG}",
        f"-Dkafka.logs.dir={cfg.logs_dir}",
        f"-Dinterest.kafka.log.level={log_level}",
        f"-Dinterest.kafka.console.level={console_level}",
        "-cp",
        f"{cfg.libs_dir}{os.sep}*",
    ]
