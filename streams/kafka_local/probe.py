"""Wire probes of the local broker: is a port taken, does a Kafka broker answer there."""

from __future__ import annotations

import errno
import logging
import socket
import struct

from interest_stream.streams.kafka_local.config import KafkaStartError

__all__ = ["metadata_ok", "port_in_use"]

logger = logging.getLogger(__name__)


def port_in_use(host: str, port: int) -> bool:
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
