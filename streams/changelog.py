"""Read the worker's state from outside: every user's latest window, from the changelog topic.

For tools, tests and benchmarks; the worker itself never calls this.
"""

from __future__ import annotations

from interest_stream.core.kafka import TopicReadError, iter_to_end
from interest_stream.core.settings import Settings
from interest_stream.streams.positions import is_reserved_key
from interest_stream.streams.topics import WorkerError, changelog_topic
from interest_stream.streams.window import BehaviorWindow, WindowConfig

__all__ = ["read_changelog_windows"]


def read_changelog_windows(
    settings: Settings, *, timeout_s: float = 60.0
) -> dict[str, BehaviorWindow]:
    """Latest window per user, read from the table's changelog topic (no consumer group).

    Reads every partition from the beginning up to the end offsets at call time;
    deleted users (tombstones) and reserved keys (positions records) are left out.

    Raises:
        WorkerError: The changelog topic does not exist or could not be read in time.
        StateCodecError: A latest value is corrupt.
    """
    topic = changelog_topic(settings)
    latest: dict[bytes, bytes | None] = {}
    try:
        # iterated, not listed: only the latest value of each key is kept in memory
        for rec in iter_to_end(settings, topic, timeout_s=timeout_s):
            if rec.key is not None:
                latest[rec.key] = rec.value
    except TopicReadError as exc:
        raise WorkerError(str(exc)) from exc
    config = WindowConfig.from_settings(settings)
    return {
        key.decode("utf-8"): BehaviorWindow.from_bytes(value, config)
        for key, value in latest.items()
        if value is not None and not is_reserved_key(key)
    }
