"""The project's exception root and the errors shared by every package.

Every error raised on purpose by interest-stream derives from
:class:`InterestStreamError`, so a caller can catch the whole family at once.
Packages define their own subclasses in their own modules.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EventFileError",
    "InterestStreamError",
    "InvalidEvent",
    "KafkaUnavailable",
]


class InterestStreamError(Exception):
    """Root of every error interest-stream raises on purpose."""


class ConfigError(InterestStreamError, ValueError):
    """A setting or a parameter has a value that cannot work.

    The message names the setting (and its environment variable) to change.
    """


class InvalidEvent(InterestStreamError, ValueError):
    """An event does not follow the event contract.

    Attributes:
        field: The offending field, or ``None`` when the whole payload is bad
            (not JSON, not an object, too large, wrong key).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class EventFileError(InterestStreamError):
    """An event file cannot be read: missing, unknown layout or bad rows."""


class KafkaUnavailable(InterestStreamError):
    """The Kafka bootstrap servers do not answer."""
