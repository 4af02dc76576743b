"""Decoding the output topic's records (``user-interest``) for the API's user store.

A record is ``key = user_id`` and a JSON value::

    {"user_id", "version", "event_time", "updated_at", "model_version",
     "short": [floats], "long": [floats]}

optionally with ``recent_items`` / ``purchased`` (lists of item ids) that the
recommendations endpoint can exclude (the worker sends ``recent`` as
``[item_id, event_type, ts]`` triples; their item ids serve as ``recent_items``),
and ``produced_at`` (Kafka time of the newest source event) for freshness.
A null value is a tombstone: forget the user named by the key. Anything else
is *malformed*: :func:`decode_record`
raises :class:`MalformedRecord` with the reason, the consumer counts and logs
it, and goes on.

:func:`plan_batch` reduces a batch of decoded messages to at most one action
per user, keeping the semantics of applying them one by one (the highest
version wins, a tombstone clears what came before it).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from interest_stream.core.errors import InterestStreamError
from interest_stream.index.user_index import UserRecord

__all__ = [
    "MAX_ID_CHARS",
    "BatchPlan",
    "MalformedRecord",
    "Tombstone",
    "decode_record",
    "encode_record",
    "plan_batch",
]

MAX_ID_CHARS = 128


class MalformedRecord(InterestStreamError, ValueError):
    """An output-topic record that does not follow the output-record contract."""


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A null value: forget ``user_id``."""

    user_id: str


def _reject_constant(name: str) -> Any:
    raise MalformedRecord(f"JSON constant {name} is not allowed")


def _opt_int(obj: dict[str, Any], name: str) -> int | None:
    v = obj.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise MalformedRecord(f"{name} must be an integer (epoch ms) or null")
    return v


def _vector(obj: dict[str, Any], name: str, dim: int | None) -> np.ndarray:
    raw = obj.get(name)
    if not isinstance(raw, list) or not raw:
        raise MalformedRecord(f"{name} must be a non-empty list of numbers")
    arr = np.array(raw)
    if arr.ndim != 1 or arr.dtype.kind not in "fi":
        raise MalformedRecord(f"{name} must be a flat list of numbers")
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise MalformedRecord(f"{name} holds non-finite or out-of-range values")
    if dim is not None and out.size != dim:
        raise MalformedRecord(f"{name} has dimension {out.size}, the index has {dim}")
    return out


def _id_list(obj: dict[str, Any], name: str) -> tuple[str, ...]:
    v = obj.get(name)
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(i, str) for i in v):
        raise MalformedRecord(f"{name} must be a list of item id strings")
    # item ids repeat across millions of users: one string object per item id
    return tuple(sys.intern(i) for i in v)


def decode_record(
    key: bytes | None, value: bytes | None, *, dim: int | None
) -> UserRecord | Tombstone:
    """Decode one message of the output topic.

    Args:
        key: Message key (the user id, UTF-8).
        value: JSON value, or ``None`` for a tombstone.
        dim: Expected vector dimension (``None``: any, but short and long must agree).

    Raises:
        MalformedRecord: With the reason.
    """
    key_text: str | None = None
    if key is not None:
        try:
            key_text = key.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedRecord("key is not UTF-8") from exc
    if value is None:
        if not key_text:
            raise MalformedRecord("tombstone without a key")
        return Tombstone(key_text)
    try:
        obj = json.loads(value, parse_constant=_reject_constant)
    except MalformedRecord:
        raise
    except (ValueError, RecursionError) as exc:  # includes UnicodeDecodeError
        raise MalformedRecord(f"value is not JSON: {str(exc)[:120]}") from exc
    if not isinstance(obj, dict):
        raise MalformedRecord(f"value must be a JSON object, got {type(obj).__name__}")
    user_id = obj.get("user_id")
    if not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_ID_CHARS:
        raise MalformedRecord(f"user_id must be a string of 1-{MAX_ID_CHARS} characters")
    if key_text is not None and key_text != user_id:
        raise MalformedRecord("key differs from user_id")
    version = obj.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise MalformedRecord("version must be a non-negative integer")
    short = _vector(obj, "short", dim)
    long = _vector(obj, "long", dim if dim is not None else short.size)
    model_version = obj.get("model_version")
    if model_version is not None and not isinstance(model_version, str):
        raise MalformedRecord("model_version must be a string or null")
    return UserRecord(
        user_id=user_id,
        version=version,
        short=short,
        long=long,
        event_time=_opt_int(obj, "event_time"),
        updated_at=_opt_int(obj, "updated_at"),
        model_version=model_version,
        recent_items=_id_list(obj, "recent_items") or _recent_ids(obj),
        purchased=_id_list(obj, "purchased"),
        produced_at=_opt_int(obj, "produced_at"),
    )


def _recent_ids(obj: dict[str, Any]) -> tuple[str, ...]:
    """Item ids of the worker's ``recent`` field (``[[item_id, event_type, ts], ...]``)."""
    v = obj.get("recent")
    if v is None:
        return ()
    if not isinstance(v, list) or not all(
        isinstance(e, list) and e and isinstance(e[0], str) for e in v
    ):
        raise MalformedRecord("recent must be a list of [item_id, event_type, ts]")
    return tuple(dict.fromkeys(sys.intern(e[0]) for e in v))


def encode_record(record: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON of an output record (for tests, benchmarks, tools)."""
    for name in ("short", "long"):
        vec = record.get(name)
        if vec is not None and any(not math.isfinite(float(x)) for x in vec):
            raise ValueError(f"{name} holds non-finite values")
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass
class BatchPlan:
    """At most one action per user for a batch of messages.

    Attributes:
        remove: Users to forget first (a tombstone was the last word, or came
            before a newer upsert in the batch).
        upsert: Records to upsert after the removals (one per user).
        superseded: Records dropped because a later or newer one of the same
            user won within the batch (counted as stale).
    """

    remove: list[str] = field(default_factory=list)
    upsert: list[UserRecord] = field(default_factory=list)
    superseded: int = 0


def plan_batch(items: Iterable[UserRecord | Tombstone]) -> BatchPlan:
    """Reduce decoded messages (in offset order) to one action per user."""
    last: dict[str, UserRecord | None] = {}  # None = tombstone
    cleared: set[str] = set()
    superseded = 0
    for it in items:
        if isinstance(it, Tombstone):
            if last.get(it.user_id) is not None:
                superseded += 1
            last[it.user_id] = None
            cleared.add(it.user_id)
            continue
        prev = last.get(it.user_id)
        if prev is not None:
            superseded += 1
            if it.version < prev.version:
                continue
        last[it.user_id] = it
    plan = BatchPlan(superseded=superseded)
    for uid, rec in last.items():
        if uid in cleared:
            plan.remove.append(uid)
        if rec is not None:
            plan.upsert.append(rec)
    return plan


def records_dims(records: Sequence[UserRecord]) -> set[int]:
    """The distinct vector dimensions in ``records``."""
    return {int(r.short.size) for r in records}
