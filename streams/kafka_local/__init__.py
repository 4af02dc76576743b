"""A local single-node Apache Kafka 4 broker (KRaft) run from Maven Central jars.

Used by ``interest-stream kafka start|stop|status`` and by the integration tests'
session fixture. Public names: :mod:`interest_stream.streams.kafka_local.broker`.
"""

from interest_stream.streams.kafka_local.broker import *  # noqa: F403  (the facade's public names, listed once there)
from interest_stream.streams.kafka_local.broker import __all__ as __all__
