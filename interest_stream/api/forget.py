"""Forgetting a user: the tombstone on the output topic and the hooks around it.

``DELETE /v1/users/{user_id}`` (admin) runs, in order:

1. :meth:`Publisher.tombstone` - a null value for the user on the compacted
   output topic, so downstream consumers and every API replica drop the user
   (each replica's consumer applies the tombstone); failing here answers 503
   and changes nothing;
2. the removal from this replica's user index (immediate, before the
   tombstone comes back through the consumer);
3. every :data:`ForgetHook` in ``ApiState.forget_hooks``.

**Worker-side state** (the Faust table's window and history, its changelog,
the re-encoder's caches) is deleted by the worker: the default hook,
:func:`worker_forget_hook`, publishes ``{"op": "forget", "user_id"}`` to the
worker's command topic (:mod:`interest_stream.streams.commands`, ``<app_id>.commands``) and waits
for the broker's ack. The worker then deletes the window (a changelog
tombstone), drops the user from the re-encoder and writes its own tombstone to
the output topic, so the tombstone is the user's last record there even if a
re-encode was in flight. Events of the user stamped before the command are
dropped; later ones start a new life (see :mod:`interest_stream.streams.commands`).

A hook that fails makes the DELETE answer 503: the call is idempotent, the
client retries it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from interest_stream.api.errors import PublishError
from interest_stream.core.records import tombstone
from interest_stream.core.settings import Settings
from interest_stream.streams.commands import AckedProducer, CommandError, CommandPublisher

__all__ = ["ForgetHook", "KafkaPublisher", "Publisher", "worker_forget_hook"]

logger = logging.getLogger(__name__)

ForgetHook = Callable[[str], None]
"""Called with the user id after the tombstone was published and the user removed."""


class Publisher(Protocol):
    """Writes tombstones to the output topic."""

    def tombstone(self, user_id: str) -> None:
        """Publish a null value keyed by ``user_id``; raise :class:`PublishError` on failure."""

    def close(self) -> None:
        """Flush and release the connection."""


def worker_forget_hook(settings: Settings) -> ForgetHook:
    """Default hook: a forget command to the worker's command topic (acks=all, lazy producer).

    The returned callable raises :class:`PublishError` when the broker does not
    acknowledge the command, and has a ``close()`` method.
    """
    publisher = CommandPublisher(settings)

    class _Hook:
        close = publisher.close

        def __call__(self, user_id: str) -> None:
            try:
                publisher.forget(user_id)
            except CommandError as exc:
                raise PublishError(str(exc)) from exc

        def __repr__(self) -> str:
            return f"worker_forget_hook({publisher.topic!r})"

    return _Hook()


class KafkaPublisher:
    """Tombstones through an acknowledged producer (acks=all, created on first use)."""

    def __init__(self, settings: Settings, *, timeout_s: float = 10.0) -> None:
        """Remember the settings; the producer connects on the first tombstone."""
        self.settings = settings
        self.timeout_s = timeout_s
        self._out = AckedProducer(settings, timeout_s=timeout_s)

    def tombstone(self, user_id: str) -> None:
        """See :meth:`Publisher.tombstone`."""
        try:
            self._out.send(self.settings.output_topic, *tombstone(user_id))
        except Exception as exc:
            raise PublishError(
                f"could not publish the tombstone of {user_id!r} to "
                f"{self.settings.output_topic!r}: {type(exc).__name__}: {exc}"
            ) from exc

    def close(self) -> None:
        """See :meth:`Publisher.close`."""
        self._out.close()
