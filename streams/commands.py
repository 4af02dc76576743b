"""Commands to the stream worker: the command topic, its records, and a publisher.

The command topic (``INTEREST_COMMAND_TOPIC``, default ``<app_id>.commands``) is
co-partitioned with the event topics (same partition count, key = user_id), so a
command reaches the worker that holds the user's window. Record (JSON value, key =
user_id)::

    {"op": "forget", "user_id": "<id>", "requested_at": <epoch ms>}

``forget`` deletes the user's window; its forget time is the command's Kafka
timestamp, and earlier-stamped events of the user are dropped (docs/ARCHITECTURE.md,
"Forgetting a user").
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from interest_stream.core.errors import InterestStreamError
from interest_stream.core.settings import Settings

__all__ = [
    "FORGET",
    "AckedProducer",
    "CommandError",
    "CommandPublisher",
    "ForgetCommand",
    "command_topic",
    "encode_forget",
    "parse_command",
]

log = logging.getLogger(__name__)

FORGET = "forget"
MAX_ID_CHARS = 128


class CommandError(InterestStreamError):
    """A command record is malformed, or it could not be published."""


@dataclass(frozen=True, slots=True)
class ForgetCommand:
    """Forget ``user_id`` (everything the worker holds about it)."""

    user_id: str
    requested_at: int


def command_topic(settings: Settings) -> str:
    """The worker's command topic (``INTEREST_COMMAND_TOPIC`` or ``<app_id>.commands``)."""
    return settings.command_topic or f"{settings.app_id}.commands"


def encode_forget(user_id: str, requested_at: int | None = None) -> bytes:
    """The JSON value of a forget command."""
    at = int(time.time() * 1000) if requested_at is None else int(requested_at)
    body = {"op": FORGET, "user_id": user_id, "requested_at": at}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_command(value: bytes | None, key: bytes | None) -> ForgetCommand:
    """Decode and check one command record.

    Raises:
        CommandError: Not JSON, unknown ``op``, a bad ``user_id``, or a key that
            differs from the user id (the command would reach the wrong partition).
    """
    if value is None:
        raise CommandError("command value is null")
    try:
        obj: Any = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandError(f"command is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise CommandError("command is not a JSON object")
    op = obj.get("op")
    if op != FORGET:
        raise CommandError(f"unknown command op {op!r}; known: {FORGET!r}")
    user = obj.get("user_id")
    if not isinstance(user, str) or not 1 <= len(user) <= MAX_ID_CHARS:
        raise CommandError(f"user_id must be a string of 1-{MAX_ID_CHARS} characters")
    if key is None or key != user.encode("utf-8"):
        raise CommandError("the message key must equal user_id")
    at = obj.get("requested_at", 0)
    if isinstance(at, bool) or not isinstance(at, int):
        raise CommandError("requested_at must be epoch milliseconds (int)")
    return ForgetCommand(user, at)


class AckedProducer:
    """A kafka-python producer for rare sends that must be acknowledged (acks=all).

    Created on the first send (the API starts without a broker), shared by the
    threads of a process; every send waits for the broker's ack. Used for admin
    commands and tombstones.
    """

    def __init__(self, settings: Settings, *, timeout_s: float = 10.0) -> None:
        """Remember the settings; the producer connects on the first send."""
        self.settings = settings
        self.timeout_s = timeout_s
        self._producer: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._producer is None:
                from kafka import KafkaProducer

                self._producer = KafkaProducer(
                    bootstrap_servers=self.settings.kafka_bootstrap.split(","),
                    acks="all",
                    linger_ms=0,
                    max_block_ms=int(self.timeout_s * 1000),
                    request_timeout_ms=int(self.timeout_s * 1000),
                    reconnect_backoff_max_ms=1000,
                    **self.settings.kafka_client_config(),
                )
            return self._producer

    def send(self, topic: str, key: bytes, value: bytes | None) -> None:
        """Send one record and wait for its ack (raises what kafka-python raises)."""
        self._get().send(topic, key=key, value=value).get(timeout=self.timeout_s)

    def close(self) -> None:
        """Flush and release the connection."""
        with self._lock:
            if self._producer is not None:
                try:
                    self._producer.close(timeout=5)
                except Exception:  # pragma: no cover - best effort
                    log.debug("producer close failed", exc_info=True)
                self._producer = None


class CommandPublisher:
    """Sends commands to the worker through an :class:`AckedProducer`."""

    def __init__(self, settings: Settings, *, timeout_s: float = 10.0) -> None:
        """Remember the settings; the producer connects on the first command."""
        self.settings = settings
        self.topic = command_topic(settings)
        self.timeout_s = timeout_s
        self._out = AckedProducer(settings, timeout_s=timeout_s)

    def forget(self, user_id: str) -> None:
        """Publish a forget command for ``user_id`` and wait for the broker's ack.

        Raises:
            CommandError: The broker did not acknowledge it in time.
        """
        try:
            self._out.send(self.topic, user_id.encode("utf-8"), encode_forget(user_id))
        except Exception as exc:
            raise CommandError(
                f"could not publish the forget command of {user_id!r} to {self.topic!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def __call__(self, user_id: str) -> None:
        """Use as a forget hook of the API (same as :meth:`forget`)."""
        self.forget(user_id)

    def close(self) -> None:
        """Flush and release the connection."""
        self._out.close()
