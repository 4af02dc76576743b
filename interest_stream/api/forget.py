"""Forgetting a user: the tombstone on the output topic and the hooks around it.

``DELETE /v1/users/{user_id}`` (admin) runs, in order:

1. :meth:`Publisher.tombstone` - a null value for the user on the compacted
   output topic, so downstream consumers and every API replica drop the user
   (each replica's consumer applies the tombstone); failing here answers 503
   and changes nothing;
2. the removal from this replica's user index (immediate, before the
   tombstone comes back through the consumer);
3. every :data:`ForgetHook` in ``ApiState.forget_hooks``.

**Worker-side state** (the Faust table's windows and history, its changelog)
is not deleted from here yet: the worker owns that state, and the plan is a
command topic (e.g. ``<app_id>.commands`` with ``{"op": "forget", "user_id"}``)
that the worker consumes. Until it exists, the default hook
:func:`worker_forget_pending` only logs; add the publishing hook to
``forget_hooks`` (or pass ``forget_hooks=`` to ``create_app``) when the worker
side lands. Note that until then the worker may republish the user on its next event.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from interest_stream.api.errors import PublishError
from interest_stream.settings import Settings

__all__ = ["ForgetHook", "KafkaPublisher", "Publisher", "worker_forget_pending"]

logger = logging.getLogger(__name__)

ForgetHook = Callable[[str], None]
"""Called with the user id after the tombstone was published and the user removed."""


class Publisher(Protocol):
    """Writes tombstones to the output topic."""

    def tombstone(self, user_id: str) -> None:
        """Publish a null value keyed by ``user_id``; raise :class:`PublishError` on failure."""

    def close(self) -> None:
        """Flush and release the connection."""


def worker_forget_pending(user_id: str) -> None:
    """Default hook: the worker-side deletion is not wired yet (see the module docstring)."""
    logger.info(
        "forgot user %r in the API and the output topic; worker-side state deletion "
        "is not wired yet (command topic pending)",
        user_id,
    )


class KafkaPublisher:
    """Tombstones through a lazily created kafka-python producer (acks=all)."""

    def __init__(self, settings: Settings, *, timeout_s: float = 10.0) -> None:
        """Remember the settings; the producer connects on the first tombstone."""
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
                    **self.settings.kafka_client_config(),
                )
            return self._producer

    def tombstone(self, user_id: str) -> None:
        """See :meth:`Publisher.tombstone`."""
        try:
            fut = self._get().send(self.settings.output_topic, key=user_id.encode(), value=None)
            fut.get(timeout=self.timeout_s)
        except Exception as exc:
            raise PublishError(
                f"could not publish the tombstone of {user_id!r} to "
                f"{self.settings.output_topic!r}: {type(exc).__name__}: {exc}"
            ) from exc

    def close(self) -> None:
        """See :meth:`Publisher.close`."""
        with self._lock:
            if self._producer is not None:
                try:
                    self._producer.close(timeout=5)
                except Exception:  # pragma: no cover - best effort
                    logger.debug("producer close failed", exc_info=True)
                self._producer = None
