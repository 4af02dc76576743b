"""A local single-node Apache Kafka 4 broker (KRaft) run from Maven Central jars.

Used by ``interest-stream kafka start|stop|status`` and by the integration tests'
session fixture. Public names: :mod:`interest_stream.streams.kafka_local.broker`.
"""

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
