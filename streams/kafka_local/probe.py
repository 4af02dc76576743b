"""Wire probes of a broker: is a port taken, does anything listen, does Kafka answer there.

All of them are quiet: plain sockets (no Kafka client, so no "Connection refused"
log lines) and bounded by a timeout. :func:`broker_answers` is the quick check the
demo runs before deciding to start a local broker; :func:`quiet_kafka_logs` hushes
kafka-python's connection logs for a probe that needs a real client (TLS, SASL).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import Iterator

from interest_stream.core import jvm
from interest_stream.streams.kafka_local.config import KafkaStartError

__all__ = ["broker_answers", "listening", "metadata_ok", "port_in_use", "quiet_kafka_logs"]

logger = logging.getLogger(__name__)


def port_in_use(host: str, port: int) -> bool:
    """Return whether something listens on ``host:port`` (bind test, as the JVM does)."""
    return jvm.port_in_use(host, port, KafkaStartError)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        buf += chunk
    return bytes(buf)


def metadata_ok(bootstrap: str, timeout: float) -> bool:
    """Return whether a Kafka broker at ``bootstrap`` answers a metadata request.

    Sends a ``Metadata`` v4 request (no topics; Kafka 1.0 to 4.x) on a plain
    socket and checks that the answer lists at least one broker.
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


def _split(address: str) -> tuple[str, int] | None:
    host, _, port_text = address.strip().rpartition(":")
    if not host or not port_text.isdigit():
        return None
    return host.strip("[]"), int(port_text)


def listening(bootstrap: str, timeout: float = 0.5) -> str | None:
    """The first ``host:port`` of ``bootstrap`` that accepts a TCP connection, else ``None``.

    A plain connect per address (``timeout`` seconds each): on this machine a
    closed port is refused at once, so the answer takes milliseconds.
    """
    for address in bootstrap.split(","):
        parts = _split(address)
        if parts is None:
            continue
        try:
            with socket.create_connection(parts, timeout=timeout):
                return address.strip()
        except OSError as exc:
            logger.debug("nothing listens at %s: %r", address, exc)
    return None


def broker_answers(bootstrap: str, timeout: float = 2.0) -> bool | None:
    """Whether a Kafka broker answers at ``bootstrap``, without a Kafka client.

    Returns:
        ``None`` when nothing listens at any address (a TCP connect, < 1 s);
        ``True`` when the first listening address answers a ``Metadata``
        request (:func:`metadata_ok`); ``False`` when something listens there
        but does not speak Kafka in plain text (another service, or TLS).
    """
    address = listening(bootstrap)
    if address is None:
        return None
    return metadata_ok(address, timeout)


@contextlib.contextmanager
def quiet_kafka_logs() -> Iterator[None]:
    """Silence kafka-python's loggers (connection refused, bootstrap retries) for a block."""
    kafka_logger = logging.getLogger("kafka")
    level = kafka_logger.level
    kafka_logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        kafka_logger.setLevel(level)
