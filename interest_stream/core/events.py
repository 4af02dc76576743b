"""The event contract: what a valid event is, and what the DLQ receives otherwise.

An event is a JSON object on a Kafka topic, keyed by ``user_id``::

    {"user_id": "u1", "item_id": "i9", "event_type": "view", "ts": 1511544070000,
     "event_id": "optional-dedupe-key"}

:func:`parse_event` turns raw Kafka bytes into an :class:`Event` or raises
:class:`~interest_stream.core.errors.InvalidEvent` naming the field and the reason;
:func:`dlq_record` builds the dead-letter record for a rejected payload.
Decisions (documented in the README):

* ``user_id``/``item_id`` are strings of 1-128 characters without control
  characters; numbers are refused, not coerced, so ids never change meaning.
* ``ts`` is epoch milliseconds (an integer, not a bool, not a float with a
  fraction) or an ISO-8601 string (no zone = UTC). Values below 1e11 look like
  epoch *seconds* and are refused with that hint; values more than
  ``max_future_ms`` after the wall clock are refused.
* ``event_type`` may be omitted on a topic named ``events.<type>``; when both
  are present they must agree. ``pv`` means view and ``buy`` purchase.
* The message key, when present, must equal ``user_id`` (state is partitioned
  by the key). Extra fields are ignored.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from interest_stream.core.errors import InvalidEvent

__all__ = [
    "EVENT_TYPES",
    "EVENT_TYPE_ALIASES",
    "MAX_ID_CHARS",
    "MIN_TS_MS",
    "Event",
    "Interaction",
    "dlq_record",
    "normalize_event_type",
    "parse_event",
    "parse_ts",
    "topic_event_type",
    "validate_event",
]

EVENT_TYPES: tuple[str, ...] = ("view", "click", "cart", "fav", "purchase")
EVENT_TYPE_ALIASES: dict[str, str] = {"pv": "view", "buy": "purchase"}
MAX_ID_CHARS = 128
MIN_TS_MS = 100_000_000_000  # 1973-03-03; smaller values are almost surely seconds
DLQ_RAW_MAX_BYTES = 256 * 1024

_TOPIC_TYPE = re.compile(r"(?:^|\.)events\.([a-z]+)$")


class Interaction(NamedTuple):
    """One event as the encoder sees it: what, how, when (epoch ms)."""

    item_id: str
    event_type: str
    ts: int


@dataclass(frozen=True, slots=True)
class Event:
    """A validated event."""

    user_id: str
    item_id: str
    event_type: str
    ts: int
    event_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON object of this event."""
        out: dict[str, Any] = {
            "user_id": self.user_id,
            "item_id": self.item_id,
            "event_type": self.event_type,
            "ts": self.ts,
        }
        if self.event_id is not None:
            out["event_id"] = self.event_id
        return out

    def to_json(self) -> bytes:
        """The canonical JSON bytes of this event (compact, UTF-8)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()

    @property
    def interaction(self) -> Interaction:
        """The (item_id, event_type, ts) triple the encoder consumes."""
        return Interaction(self.item_id, self.event_type, self.ts)


def normalize_event_type(value: str) -> str | None:
    """The canonical event type for ``value`` (aliases resolved), or ``None`` if unknown."""
    v = value.strip().lower()
    v = EVENT_TYPE_ALIASES.get(v, v)
    return v if v in EVENT_TYPES else None


def topic_event_type(topic: str | None) -> str | None:
    """The event type implied by a topic named ``events.<type>``, else ``None``.

    A namespaced name such as ``shop1.events.view`` implies its type too.
    """
    if not topic:
        return None
    m = _TOPIC_TYPE.search(topic)
    if not m:
        return None
    return normalize_event_type(m.group(1))


def _reject_constant(name: str) -> Any:
    raise InvalidEvent(f"JSON constant {name} is not allowed", None)


def _check_id(obj: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    if name not in obj or obj[name] is None:
        if required:
            raise InvalidEvent(f"missing required field {name!r}", name)
        return None
    value = obj[name]
    if not isinstance(value, str):
        raise InvalidEvent(f"{name} must be a string, got {type(value).__name__}", name)
    if not value:
        raise InvalidEvent(f"{name} must not be empty", name)
    if len(value) > MAX_ID_CHARS:
        raise InvalidEvent(
            f"{name} is {len(value)} characters long; the limit is {MAX_ID_CHARS}", name
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEvent(f"{name} is not valid Unicode (lone surrogate)", name) from exc
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise InvalidEvent(f"{name} contains control characters", name)
    return value


def parse_ts(value: Any, *, now_ms: int | None = None, max_future_ms: int = 86_400_000) -> int:
    """Validate an event time and return it in epoch milliseconds.

    Args:
        value: Epoch milliseconds (int) or an ISO-8601 string (no zone = UTC).
        now_ms: The wall clock in ms (default: now); bounds far-future times.
        max_future_ms: How far after ``now_ms`` an event may be dated.

    Raises:
        InvalidEvent: With ``field == "ts"`` and the reason.
    """
    if isinstance(value, bool):
        raise InvalidEvent("ts must be epoch milliseconds or ISO-8601, got a boolean", "ts")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidEvent("ts must be a finite number", "ts")
        if not value.is_integer():
            raise InvalidEvent("ts must be whole epoch milliseconds", "ts")
        value = int(value)
    if isinstance(value, int):
        ts = value
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 64:
            raise InvalidEvent("ts string is empty or too long for ISO-8601", "ts")
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise InvalidEvent(f"ts {text[:64]!r} is not ISO-8601", "ts") from exc
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ts = int(dt.timestamp() * 1000)
    elif value is None:
        raise InvalidEvent("missing required field 'ts'", "ts")
    else:
        raise InvalidEvent(
            f"ts must be epoch milliseconds or ISO-8601, got {type(value).__name__}", "ts"
        )
    if ts < 0:
        raise InvalidEvent(f"ts {ts} is negative", "ts")
    if ts < MIN_TS_MS:
        raise InvalidEvent(
            f"ts {ts} is before 1973; it looks like epoch seconds, send milliseconds", "ts"
        )
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if ts > now + max_future_ms:
        raise InvalidEvent(f"ts {ts} is more than {max_future_ms} ms in the future", "ts")
    return ts


def validate_event(
    obj: Any,
    *,
    topic: str | None = None,
    key: str | None = None,
    max_future_ms: int = 86_400_000,
    now_ms: int | None = None,
) -> Event:
    """Validate a decoded JSON value as an event.

    Args:
        obj: The decoded JSON value.
        topic: The source topic; ``events.<type>`` implies the event type.
        key: The message key as text, if the message had one.
        max_future_ms: See :func:`parse_ts`.
        now_ms: The wall clock in ms (default: now).

    Raises:
        InvalidEvent: Naming the field and the reason.
    """
    if not isinstance(obj, dict):
        raise InvalidEvent(f"event must be a JSON object, got {type(obj).__name__}", None)
    user_id = _check_id(obj, "user_id")
    item_id = _check_id(obj, "item_id")
    assert user_id is not None and item_id is not None
    implied = topic_event_type(topic)
    raw_type = obj.get("event_type")
    if raw_type is None:
        if implied is None:
            raise InvalidEvent(
                "missing required field 'event_type' (only optional on events.<type> topics)",
                "event_type",
            )
        event_type = implied
    else:
        if not isinstance(raw_type, str):
            raise InvalidEvent(
                f"event_type must be a string, got {type(raw_type).__name__}", "event_type"
            )
        norm = normalize_event_type(raw_type)
        if norm is None:
            raise InvalidEvent(
                f"unknown event_type {raw_type[:40]!r}; expected one of "
                + ", ".join(EVENT_TYPES)
                + " (aliases pv, buy)",
                "event_type",
            )
        if implied is not None and norm != implied:
            raise InvalidEvent(f"event_type {norm!r} contradicts topic {topic!r}", "event_type")
        event_type = norm
    ts = parse_ts(obj.get("ts"), now_ms=now_ms, max_future_ms=max_future_ms)
    event_id = _check_id(obj, "event_id", required=False)
    if key is not None and key != user_id:
        raise InvalidEvent("message key must equal user_id", "key")
    return Event(user_id, item_id, event_type, ts, event_id)


def parse_event(
    raw: bytes | None,
    *,
    topic: str | None = None,
    key: bytes | None = None,
    max_bytes: int = 65_536,
    max_future_ms: int = 86_400_000,
    now_ms: int | None = None,
) -> Event:
    """Parse and validate the raw value of a Kafka message.

    Args:
        raw: The message value.
        topic: The source topic (``events.<type>`` implies the type).
        key: The raw message key; when present it must equal ``user_id``.
        max_bytes: Larger payloads are refused before decoding.
        max_future_ms: See :func:`parse_ts`.
        now_ms: The wall clock in ms (default: now).

    Raises:
        InvalidEvent: Naming the field (or ``None``) and the reason.
    """
    if raw is None:
        raise InvalidEvent("message has no value (tombstone)", None)
    if len(raw) > max_bytes:
        raise InvalidEvent(
            f"payload of {len(raw)} bytes exceeds the limit of {max_bytes} "
            "(INTEREST_MAX_EVENT_BYTES)",
            None,
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"payload is not UTF-8: {exc.reason} at byte {exc.start}", None) from exc
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except InvalidEvent:
        raise
    except (ValueError, RecursionError) as exc:
        raise InvalidEvent(f"payload is not valid JSON: {str(exc)[:200]}", None) from exc
    key_text: str | None = None
    if key is not None:
        try:
            key_text = key.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEvent("message key is not UTF-8", "key") from exc
    return validate_event(
        obj, topic=topic, key=key_text, max_future_ms=max_future_ms, now_ms=now_ms
    )


def _utf8_prefix(body: bytes, *, allow_cut: bool) -> str | None:
    """``body`` as text; a cut payload may end inside a character (up to 3 bytes)."""
    for cut in range(4 if allow_cut else 1):
        try:
            return body[: len(body) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def dlq_record(
    error: str,
    field: str | None,
    *,
    topic: str | None,
    partition: int | None,
    offset: int | None,
    raw: bytes | None,
    raw_max_bytes: int = DLQ_RAW_MAX_BYTES,
) -> dict[str, Any]:
    """The dead-letter record for a rejected payload.

    ``raw`` is the original value as text, or base64 when it is not UTF-8.
    Payloads longer than ``raw_max_bytes`` are cut there; the record then says
    ``raw_truncated: true`` and carries the full payload's size and SHA-256.
    """
    data = raw or b""
    rec: dict[str, Any] = {
        "error": error,
        "field": field,
        "source": {"topic": topic, "partition": partition, "offset": offset},
    }
    truncated = len(data) > raw_max_bytes
    body = data[:raw_max_bytes] if truncated else data
    text = _utf8_prefix(body, allow_cut=truncated)
    if text is not None:
        rec["raw"] = text
        rec["raw_encoding"] = "utf-8"
    else:
        rec["raw"] = base64.b64encode(body).decode("ascii")
        rec["raw_encoding"] = "base64"
    if raw is None:
        rec["raw"] = None
    if truncated:
        rec["raw_truncated"] = True
        rec["raw_bytes"] = len(data)
        rec["raw_sha256"] = hashlib.sha256(data).hexdigest()
    return rec
