"""A local single-node Apache Kafka broker (KRaft mode) run from Maven Central jars: the facade.

:func:`install` fetches the broker's jars with Maven into ``<home>/libs``;
:func:`start` runs ``java -cp '<home>/libs/*' kafka.Kafka`` detached, keeping data,
logs and state under ``<data_dir>`` (layout: docs/DESIGN.md, "Local Kafka");
:func:`stop` and :func:`status` find it again from its state file.

The work is done in :mod:`.config` (configuration, errors), :mod:`.installer`
(Maven, Java), :mod:`.properties` (``server.properties``), :mod:`.process`
(supervision) and :mod:`.probe` (the metadata wire probe); this module
re-exports their public names.

Example:
    >>> cfg = BrokerConfig(data_dir=tmp_path, port=free_port())  # doctest: +SKIP
    >>> start(cfg).bootstrap  # doctest: +SKIP
    '127.0.0.1:40123'
    >>> stop(cfg)  # doctest: +SKIP
    True
"""

from __future__ import annotations

from interest_stream.core.kafka import free_port
from interest_stream.streams.kafka_local.config import (
    DEFAULT_KAFKA_VERSION,
    BrokerConfig,
    BrokerStatus,
    KafkaInstallError,
    KafkaLocalError,
    KafkaStartError,
)
from interest_stream.streams.kafka_local.installer import install, is_installed, parse_java_version
from interest_stream.streams.kafka_local.process import start, status, stop
from interest_stream.streams.kafka_local.properties import render_properties, server_properties

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
