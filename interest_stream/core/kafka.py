"""Kafka helpers shared by the worker, the tools and the tests (bottom layer).

* :func:`faust_credentials` -- the Faust broker credentials of the settings;
* :func:`free_port` -- a TCP port free right now;
* :func:`read_to_end` / :func:`iter_to_end` -- every record of a topic up to its
  end offsets at call time (no consumer group).

Imports only :mod:`interest_stream.core` and third-party packages.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from interest_stream.core.errors import InterestStreamError
from interest_stream.core.settings import Settings

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

__all__ = [
    "TopicReadError",
    "TopicRecord",
    "faust_credentials",
    "free_port",
    "iter_to_end",
    "read_to_end",
]


class TopicReadError(InterestStreamError):
    """A topic does not exist, or could not be read to its end in time."""


@dataclass(frozen=True, slots=True)
class TopicRecord:
    """One record read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now.

    Args:
        host: Address to bind to.

    Returns:
        A port number chosen by the OS (it may be taken again by the time it is used).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """Faust ``broker_credentials`` for the settings' security protocol.

    Returns:
        ``None`` for ``PLAINTEXT``, :class:`faust.SSLCredentials` for ``SSL``, else
        :class:`faust.SASLCredentials` (with a TLS context for ``SASL_SSL``).
    """
    import faust

    proto = settings.kafka_security_protocol
    if proto == "PLAINTEXT":
        return None
    ctx: ssl.SSLContext | None = None
    if proto in ("SSL", "SASL_SSL"):
        cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        ctx = ssl.create_default_context(cafile=cafile)
        if settings.kafka_ssl_certfile:
            keyfile = str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None
            ctx.load_cert_chain(str(settings.kafka_ssl_certfile), keyfile)
    if proto == "SSL":
        assert ctx is not None
        return faust.SSLCredentials(ctx)
    password = settings.kafka_sasl_password
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=password.get_secret_value() if password is not None else None,
        ssl_context=ctx,
        mechanism=settings.kafka_sasl_mechanism,
    )


def iter_to_end(
    settings: Settings, topic: str, *, timeout_s: float = 60.0
) -> Iterator[TopicRecord]:
    """Yield every record of ``topic`` from the beginning to the end offsets at call time.

    A kafka-python consumer without a group is assigned all partitions; records
    come in order within each partition. The consumer is closed when the
    iteration ends or is abandoned.

    Raises:
        TopicReadError: The topic does not exist, or the end was not reached
            within ``timeout_s``.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=32 * 1024 * 1024,
        **settings.kafka_client_config(),
    )
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise TopicReadError(f"topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise TopicReadError(f"reading {topic} timed out after {timeout_s}s")
            for tp, records in consumer.poll(timeout_ms=500, max_records=10_000).items():
                for rec in records:
                    if rec.offset < end[tp]:
                        yield TopicRecord(
                            topic, tp.partition, rec.offset, rec.key, rec.value, rec.timestamp
                        )
            for tp in list(remaining):
                if consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        consumer.close()


def read_to_end(settings: Settings, topic: str, *, timeout_s: float = 60.0) -> list[TopicRecord]:
    """Every record of ``topic`` up to the end offsets at call time (see :func:`iter_to_end`).

    Raises:
        TopicReadError: The topic does not exist or could not be read in time.
    """
    return list(iter_to_end(settings, topic, timeout_s=timeout_s))
