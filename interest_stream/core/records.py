"""The output-record contract: one JSON record per user on the compacted output topic.

A message is ``key = user_id`` (UTF-8) and a JSON value (docs/CONTRACTS.md)::

    {"user_id", "version", "event_time", "updated_at", "model_version",
     "short": [floats], "long": [floats],
     "recent": [[item_id, event_type, ts], ...], "purchased": [item_id, ...],
     "counts": {event_type: n}, "produced_at": epoch ms (optional)}

A null value is a tombstone: forget the user named by the key. Every reader
(the re-encoder writes, the API and the Python client read) goes through this
module: :func:`build_record` / :func:`dumps_record` / :func:`encode_record` write,
:func:`decode_record` reads and validates (raising :class:`MalformedRecord`),
:func:`plan_batch` applies the topic's semantics (the highest version wins, a
tombstone clears what came before it). The HTTP answer bodies built from records
(:class:`InterestOut` ...) are plain pydantic models, so the client needs no FastAPI.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import BaseModel, Field

from interest_stream.core.errors import InterestStreamError
from interest_stream.core.events import EVENT_TYPES, MAX_ID_CHARS
from interest_stream.core.explanations import (
    EventShare,
    ExplainedCategory,
    ExplainedItem,
    ExplainInfo,
    Explanation,
    HorizonExplain,
    TermShare,
)

__all__ = [
    "HORIZONS",
    "MAX_ID_CHARS",
    "PURCHASED_IN_RECORD",
    "RANKINGS",
    "RECENT_IN_RECORD",
    "AudienceOut",
    "BatchPlan",
    "EventShare",
    "ExplainInfo",
    "ExplainedCategory",
    "ExplainedItem",
    "Explanation",
    "ForgetOut",
    "Horizon",
    "HorizonExplain",
    "InterestOut",
    "MalformedRecord",
    "Ranking",
    "RecommendationsOut",
    "ScoredItem",
    "ScoredUser",
    "SimilarOut",
    "TermShare",
    "Tombstone",
    "UserRecord",
    "build_record",
    "decode_record",
    "dumps_record",
    "encode_key",
    "encode_record",
    "plan_batch",
    "tombstone",
]

Horizon = Literal["short", "long", "blend"]
"""Which user vector: short-term, long-term, or their blend."""
HORIZONS: Final[tuple[str, ...]] = get_args(Horizon)
Ranking = Literal["rerank", "vector"]
"""How ``/recommendations`` ranked: the learned re-ranker or the vector alone."""
RANKINGS: Final[tuple[str, ...]] = get_args(Ranking)

RECENT_IN_RECORD = 20
"""Latest events a record carries in ``recent``."""
PURCHASED_IN_RECORD = 50
"""Most item ids a record carries in ``purchased``."""
_PURCHASE = EVENT_TYPES.index("purchase")


class MalformedRecord(InterestStreamError, ValueError):
    """An output-topic record that does not follow the output-record contract."""


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A null value: forget ``user_id``."""

    user_id: str


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One user's interest, as published on the output topic (decoded).

    Attributes:
        user_id: The user.
        version: Grows with every applied event of the user.
        short: Short-term interest vector ``[dim]`` (float32).
        long: Long-term interest vector ``[dim]`` (float32).
        event_time: Newest applied event's time (epoch ms).
        updated_at: When the vectors were written (epoch ms).
        model_version: Version of the encoder that produced the vectors.
        recent_items: Items the user interacted with recently (optional field).
        purchased: Items the user bought (optional field).
        produced_at: Kafka time (epoch ms) of the newest source event behind
            these vectors, when the worker sent it; used to measure freshness
            and not stored in the index.
        recent: The record's ``recent`` events ``(item_id, event_type, ts)``, oldest
            first (empty when the record has none); the re-ranker's input.
    """

    user_id: str
    version: int
    short: npt.NDArray[np.float32]
    long: npt.NDArray[np.float32]
    event_time: int | None = None
    updated_at: int | None = None
    model_version: str | None = None
    recent_items: tuple[str, ...] = ()
    purchased: tuple[str, ...] = ()
    produced_at: int | None = None
    recent: tuple[tuple[str, str, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The output-record JSON object (the ``/interest`` answer)."""
        return {
            "user_id": self.user_id,
            "version": self.version,
            "event_time": self.event_time,
            "updated_at": self.updated_at,
            "model_version": self.model_version,
            "short": self.short.tolist(),
            "long": self.long.tolist(),
        }


# --------------------------------------------------------------------------- writing
def _floats(vec: npt.NDArray[Any]) -> list[float]:
    out: list[float] = np.round(vec.astype(np.float64), 6).tolist()  # C loop, same floats
    return out


def build_record(
    user_id: str,
    *,
    version: int,
    event_time: int,
    updated_at: int,
    model_version: str,
    short: npt.NDArray[Any],
    long: npt.NDArray[Any],
    items: Sequence[str],
    types: Sequence[int],
    times: Sequence[int],
    counts: Mapping[str, int],
    produced_at: int | None = None,
) -> dict[str, Any]:
    """The output record of a user from its window's columns (oldest event first).

    ``items`` / ``types`` (indexes into ``EVENT_TYPES``) / ``times`` are aligned;
    ``recent`` gets the latest :data:`RECENT_IN_RECORD` events (newest last),
    ``purchased`` the item ids bought (at most :data:`PURCHASED_IN_RECORD`, newest last).
    """
    purchased: list[str] = []
    seen: set[str] = set()
    for k in range(len(types) - 1, -1, -1):
        if types[k] == _PURCHASE and items[k] not in seen:
            seen.add(items[k])
            purchased.append(items[k])
            if len(purchased) >= PURCHASED_IN_RECORD:
                break
    first = max(0, len(times) - RECENT_IN_RECORD)
    rec: dict[str, Any] = {
        "user_id": user_id,
        "version": int(version),
        "event_time": int(event_time),
        "updated_at": updated_at,
        "model_version": model_version,
        "short": _floats(short),
        "long": _floats(long),
        "recent": [
            [items[k], EVENT_TYPES[types[k]], int(times[k])] for k in range(first, len(times))
        ],
        "purchased": purchased[::-1],
        "counts": dict(counts),
    }
    if produced_at is not None:
        rec["produced_at"] = int(produced_at)
    return rec


def dumps_record(record: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of an output record, unchecked (the re-encoder's hot path).

    orjson: ~10x less CPU than the standard library for a record of two 192-d vectors
    (the floats parse back to the same values; only spellings such as ``1e-7`` differ).
    """
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_record(record: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of an output record; refuses non-finite vector values.

    Raises:
        ValueError: ``short`` or ``long`` holds NaN or infinity.
    """
    for name in ("short", "long"):
        vec = record.get(name)
        if vec is not None and any(not math.isfinite(float(x)) for x in vec):
            raise ValueError(f"{name} holds non-finite values")
    return dumps_record(record)


def encode_key(user_id: str) -> bytes:
    """The message key of a user's records and tombstone."""
    return user_id.encode("utf-8")


def tombstone(user_id: str) -> tuple[bytes, None]:
    """``(key, None)``: the message that forgets ``user_id`` on the compacted topic."""
    return encode_key(user_id), None


# --------------------------------------------------------------------------- reading
def _opt_int(obj: dict[str, Any], name: str) -> int | None:
    v = obj.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise MalformedRecord(f"{name} must be an integer (epoch ms) or null")
    return v


def _vector(obj: dict[str, Any], name: str, dim: int | None) -> npt.NDArray[np.float32]:
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


def _recent_events(obj: dict[str, Any]) -> tuple[tuple[str, str, int], ...]:
    """The ``recent`` field as ``(item_id, event_type, ts)`` tuples; empty when absent or
    when an entry lacks a string type or an integer time (the ids are checked by
    :func:`_recent_ids`)."""
    v = obj.get("recent")
    if not isinstance(v, list):
        return ()
    out = []
    for e in v:
        if not (isinstance(e, list) and len(e) >= 3 and isinstance(e[0], str)
                and isinstance(e[1], str) and isinstance(e[2], int)
                and not isinstance(e[2], bool)):  # fmt: skip
            return ()
        out.append((sys.intern(e[0]), sys.intern(e[1]), e[2]))
    return tuple(out)


def _key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedRecord("key is not UTF-8") from exc


def _reject_constant(name: str) -> Any:
    raise MalformedRecord(f"JSON constant {name} is not allowed")


def _json_slow(value: bytes) -> Any:
    """The standard parser, for the message of a value orjson refused."""
    try:
        return json.loads(value, parse_constant=_reject_constant)
    except MalformedRecord:
        raise
    except (ValueError, RecursionError) as exc:  # includes UnicodeDecodeError
        raise MalformedRecord(f"value is not JSON: {str(exc)[:120]}") from exc


def _json_object(value: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(value)  # ~7x less CPU than json.loads for two 192-d vectors
    except ValueError:  # orjson.JSONDecodeError: the standard parser names the fault
        obj = _json_slow(value)
    if not isinstance(obj, dict):
        raise MalformedRecord(f"value must be a JSON object, got {type(obj).__name__}")
    return obj


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
    key_text = _key_text(key)
    if value is None:
        if not key_text:
            raise MalformedRecord("tombstone without a key")
        return Tombstone(key_text)
    obj = _json_object(value)
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
        recent=_recent_events(obj),
    )


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


# --------------------------------------------------------------------------- HTTP answers
class InterestOut(BaseModel):
    """A user's current interest: the output record of the user-interest topic."""

    user_id: str
    version: int = Field(description="Grows with every applied event of the user.")
    event_time: int | None = Field(description="Newest applied event's time (epoch ms).")
    updated_at: int | None = Field(description="When the vectors were written (epoch ms).")
    model_version: str | None
    short: list[float] = Field(description="Short-term interest vector.")
    long: list[float] = Field(description="Long-term interest vector.")
    explain: dict[str, HorizonExplain] | None = Field(
        None, description="Only with explain=true: 'short' and 'long'."
    )


class ScoredItem(BaseModel):
    """An item and its inner-product score."""

    item_id: str
    score: float
    because: Explanation | None = Field(None, description="Only with explain=true.")


class ScoredUser(BaseModel):
    """A user and its inner-product score."""

    user_id: str
    score: float
    because: Explanation | None = Field(None, description="Only with explain=true.")
    explain: ExplainInfo | None = Field(None, description="Only with explain=true.")


class RecommendationsOut(BaseModel):
    """The items nearest a user's interest vector."""

    user_id: str
    horizon: Horizon
    ranking: Ranking = Field(
        "vector",
        description="'rerank': the two-stage ranking (the vectors' candidates and the "
        "user's recent items, re-scored by the checkpoint's re-ranker; scores are its "
        "scores); 'vector': inner product with the horizon's vector.",
    )
    items: list[ScoredItem]
    explain: ExplainInfo | None = Field(None, description="Only with explain=true.")


class SimilarOut(BaseModel):
    """The items nearest an item (itself excluded)."""

    item_id: str
    items: list[ScoredItem]


class AudienceOut(BaseModel):
    """The users whose interest is nearest the item/ad."""

    users: list[ScoredUser]


class ForgetOut(BaseModel):
    """What ``DELETE /v1/users/{user_id}`` did."""

    user_id: str
    removed: bool = Field(description="Whether this replica held the user.")
    tombstone: bool = Field(description="Whether the tombstone reached the output topic.")
