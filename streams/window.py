"""Per-user behaviour window: bounded event-time history, counts, dedupe marks, codec.

A :class:`BehaviorWindow` is the value the worker keeps per user in its Faust
table: the latest ``long_history_events`` events in event-time order (the short
window, :meth:`BehaviorWindow.short`, is derived from them), lifetime and
event-time-decayed per-type counts, ``version`` / ``event_time``, and dedupe marks
(last source offset per ``"topic:partition"``, digests of recent event ids).
:meth:`BehaviorWindow.to_bytes` / :meth:`BehaviorWindow.from_bytes` are its codec
(``b"BW"`` + format version + zlib JSON; docs/DESIGN.md, "Behaviour window").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import zlib
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from typing import TYPE_CHECKING, Any

import orjson

from interest_stream.core.errors import InterestStreamError
from interest_stream.core.events import EVENT_TYPES, Event, Interaction

if TYPE_CHECKING:
    from interest_stream.core.settings import Settings

__all__ = [
    "BehaviorWindow",
    "StateCodecError",
    "WindowConfig",
    "WindowError",
    "event_id_digest",
    "tp_key",
]

MAGIC = b"BW"
CODEC_VERSION = 1
_HEADER = MAGIC + bytes([CODEC_VERSION])
_DIGEST_BYTES = 8
_TYPE_CODE: dict[str, int] = {t: i for i, t in enumerate(EVENT_TYPES)}
_CODES_TO_DIGITS = bytes.maketrans(bytes(range(10)), b"0123456789")
_DIGITS_TO_CODES = bytes.maketrans(b"0123456789", bytes(range(10)))
_MS_PER_HOUR = 3_600_000.0
_MS_PER_MINUTE = 60_000.0
# A decoded state larger than this is refused (a window holds at most 100k events).
_MAX_DECODED_BYTES = 64 * 1024 * 1024


class WindowError(InterestStreamError, ValueError):
    """A window was asked to do something inconsistent (e.g. another user's event)."""


class StateCodecError(InterestStreamError):
    """Stored window bytes cannot be decoded: corrupt, truncated or an unknown format.

    The worker never overwrites such a value silently; fix or delete the key
    (and its changelog record) after inspecting it.
    """


def tp_key(topic: str, partition: int) -> str:
    """The ``"topic:partition"`` key under which a window keeps its source offset."""
    return f"{topic}:{partition}"


def event_id_digest(event_id: str) -> bytes:
    """The 8-byte digest a window remembers for an ``event_id``."""
    return hashlib.blake2b(event_id.encode("utf-8"), digest_size=_DIGEST_BYTES).digest()


@dataclass(frozen=True, slots=True)
class WindowConfig:
    """Sizes of a window; see the fields of :class:`~interest_stream.core.settings.Settings`.

    Attributes:
        long_history_events: Most events kept in the history.
        short_window_events: Most events in the short-term window.
        short_window_minutes: Short-term window span before the newest event.
        long_half_life_hours: Half-life of the decayed counts (event time).
        dedupe_ids: Most recent event ids remembered (0 disables id dedupe).
    """

    long_history_events: int = 200
    short_window_events: int = 50
    short_window_minutes: float = 30.0
    long_half_life_hours: float = 72.0
    dedupe_ids: int = 256

    def __post_init__(self) -> None:
        if self.long_history_events < 1:
            raise WindowError("long_history_events must be at least 1")
        if self.short_window_events < 1:
            raise WindowError("short_window_events must be at least 1")
        if not self.short_window_minutes > 0:
            raise WindowError("short_window_minutes must be positive")
        if not self.long_half_life_hours > 0:
            raise WindowError("long_half_life_hours must be positive")
        if self.dedupe_ids < 0:
            raise WindowError("dedupe_ids must not be negative")

    @classmethod
    def from_settings(cls, settings: Settings) -> WindowConfig:
        """The window sizes configured in ``settings``."""
        return cls(
            long_history_events=settings.long_history_events,
            short_window_events=settings.short_window_events,
            short_window_minutes=settings.short_window_minutes,
            long_half_life_hours=settings.long_half_life_hours,
            dedupe_ids=settings.dedupe_ids,
        )

    @property
    def half_life_ms(self) -> float:
        """The decay half-life in milliseconds."""
        return self.long_half_life_hours * _MS_PER_HOUR


def _zero_counts() -> dict[str, int]:
    return dict.fromkeys(EVENT_TYPES, 0)


def _zero_decayed() -> dict[str, float]:
    return dict.fromkeys(EVENT_TYPES, 0.0)


@dataclass(slots=True, eq=False)
class BehaviorWindow:
    """One user's behaviour state (see the module docstring).

    Build an empty one with ``BehaviorWindow(user_id, config)``; feed it with
    :meth:`apply`. The history is stored column-wise (``items``, ``types``,
    ``times``), sorted by time; treat the attributes as read-only.

    Attributes:
        user_id: The user this window belongs to.
        config: Window sizes (not serialized; given again to :meth:`from_bytes`).
        items: Item ids of the history, oldest first.
        types: Event-type codes (index into ``EVENT_TYPES``) of the history.
        times: Event times (epoch ms) of the history, non-decreasing.
        type_counts: Exact lifetime count of applied events per type.
        decayed: Per-type counts decayed to ``decay_ref``.
        decay_ref: Time (ms) the decayed counts refer to (the newest event time).
        version: Number of applied events.
        event_time: Newest applied event time (ms), 0 before the first event.
        offsets: Last processed source offset per ``"topic:partition"``.
        recent_ids: Digests of the latest event ids, oldest first.
        fresh: ``(ts, item_id, type_code)`` of the events inserted since the owner began
            recording (it sets ``[]``; ``None``: not recording). Not serialized: the
            worker records one batch so that its hook knows which events are new even
            when they arrived out of time order (streams/new_items.py).
    """

    user_id: str
    config: WindowConfig = field(default_factory=WindowConfig)
    items: list[str] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    type_counts: dict[str, int] = field(default_factory=_zero_counts)
    decayed: dict[str, float] = field(default_factory=_zero_decayed)
    decay_ref: int = 0
    version: int = 0
    event_time: int = 0
    offsets: dict[str, int] = field(default_factory=dict)
    recent_ids: list[bytes] = field(default_factory=list)
    fresh: list[tuple[int, str, int]] | None = None

    def view(self) -> BehaviorWindow:
        """A copy of what encoding and records read (history, counts, version).

        The worker keeps mutating its cached windows while the re-encoder's
        thread reads the submitted ones; the re-encoder takes this copy so the
        thread never sees a half-applied event. Offsets and event ids are not
        copied (the copy is never applied to or written back).
        """
        return BehaviorWindow(
            self.user_id,
            self.config,
            self.items[:],
            self.types[:],
            self.times[:],
            dict(self.type_counts),
            dict(self.decayed),
            self.decay_ref,
            self.version,
            self.event_time,
        )

    # ------------------------------------------------------------------ updates
    def is_duplicate(
        self,
        event: Event,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> bool:
        """Whether :meth:`apply` would skip ``event`` as already seen."""
        if topic is not None and partition is not None and offset is not None:
            mark = self.offsets.get(tp_key(topic, partition))
            if mark is not None and offset <= mark:
                return True
        if event.event_id is not None and self.config.dedupe_ids > 0:
            return event_id_digest(event.event_id) in self.recent_ids
        return False

    def apply(
        self,
        event: Event,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> bool:
        """Apply one validated event, unless it is a duplicate.

        A duplicate is an event whose source ``offset`` is at or below the last
        one processed for its ``topic:partition``, or whose ``event_id`` is among
        the remembered recent ids. A skipped duplicate still advances the offset
        mark, so re-delivery of the same message is skipped again.

        Args:
            event: The validated event; its ``user_id`` must be this window's.
            topic: Source topic (with ``partition`` and ``offset``: offset dedupe).
            partition: Source partition.
            offset: Source offset.

        Returns:
            ``True`` if applied, ``False`` if skipped as a duplicate.

        Raises:
            WindowError: The event belongs to another user.
        """
        if event.user_id != self.user_id:
            raise WindowError(
                f"event of user {event.user_id!r} applied to the window of {self.user_id!r}"
            )
        if topic is not None and partition is not None and offset is not None:
            key = tp_key(topic, partition)
            mark = self.offsets.get(key)
            if mark is not None and offset <= mark:
                return False
            self.offsets[key] = offset
        cfg = self.config
        digest: bytes | None = None
        if event.event_id is not None and cfg.dedupe_ids > 0:
            digest = event_id_digest(event.event_id)
            if digest in self.recent_ids:
                return False
        self._insert(event)
        if digest is not None:
            self.recent_ids.append(digest)
            excess = len(self.recent_ids) - cfg.dedupe_ids
            if excess > 0:
                del self.recent_ids[:excess]
        return True

    def _insert(self, event: Event) -> None:
        cfg = self.config
        ts = event.ts
        code = _TYPE_CODE[event.event_type]
        pos = bisect_right(self.times, ts)
        if self.fresh is not None:
            self.fresh.append((ts, event.item_id, code))
        self.times.insert(pos, ts)
        self.items.insert(pos, event.item_id)
        self.types.insert(pos, code)
        excess = len(self.times) - cfg.long_history_events
        if excess > 0:
            del self.times[:excess]
            del self.items[:excess]
            del self.types[:excess]
        self.type_counts[event.event_type] = self.type_counts.get(event.event_type, 0) + 1
        half_life = cfg.half_life_ms
        if self.version == 0 or ts >= self.decay_ref:
            if self.version > 0 and ts > self.decay_ref:
                factor = math.exp2(-(ts - self.decay_ref) / half_life)
                for name in self.decayed:
                    self.decayed[name] *= factor
            self.decay_ref = ts
            self.decayed[event.event_type] = self.decayed.get(event.event_type, 0.0) + 1.0
        else:
            weight = math.exp2(-(self.decay_ref - ts) / half_life)
            self.decayed[event.event_type] = self.decayed.get(event.event_type, 0.0) + weight
        self.version += 1
        if ts > self.event_time:
            self.event_time = ts

    # ------------------------------------------------------------------- views
    def __len__(self) -> int:
        """Number of events in the history."""
        return len(self.times)

    def long(self) -> list[Interaction]:
        """The long-term history, oldest first (at most ``long_history_events``)."""
        return [
            Interaction(item, EVENT_TYPES[code], ts)
            for item, code, ts in zip(self.items, self.types, self.times, strict=True)
        ]

    def short(self, spec: tuple[int, float] | None = None) -> list[Interaction]:
        """The short-term window, oldest first.

        The latest ``short_window_events`` events dated within
        ``short_window_minutes`` of the newest event in the history; ``spec``
        (``(events, minutes)``, e.g. a checkpoint's) replaces the configured pair.
        """
        n = len(self.times)
        if n == 0:
            return []
        cfg = self.config
        max_events, minutes = spec or (cfg.short_window_events, cfg.short_window_minutes)
        newest = self.times[-1]
        lo = newest - minutes * _MS_PER_MINUTE
        start = max(n - max_events, bisect_left(self.times, lo))
        return [
            Interaction(self.items[i], EVENT_TYPES[self.types[i]], self.times[i])
            for i in range(start, n)
        ]

    def decayed_counts(self, at_ms: int | None = None) -> dict[str, float]:
        """Per-type decayed counts as of ``at_ms`` (default: the newest event time).

        Times before the newest event are treated as the newest event time.
        """
        if at_ms is None or at_ms <= self.decay_ref:
            return dict(self.decayed)
        factor = math.exp2(-(at_ms - self.decay_ref) / self.config.half_life_ms)
        return {name: value * factor for name, value in self.decayed.items()}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view of the window (for HTTP views and tools)."""
        return {
            "user_id": self.user_id,
            "version": self.version,
            "event_time": self.event_time,
            "type_counts": dict(self.type_counts),
            "decayed_counts": self.decayed_counts(),
            "history_events": len(self.times),
            "short": [i._asdict() for i in self.short()],
            "long": [i._asdict() for i in self.long()],
            "offsets": dict(self.offsets),
            "recent_event_ids": len(self.recent_ids),
        }

    # ------------------------------------------------------------------- codec
    def to_bytes(self) -> bytes:
        """Encode the window (see the module docstring for the format)."""
        times = self.times
        deltas = [times[0], *(b - a for a, b in pairwise(times))] if times else []
        body: dict[str, Any] = {
            "u": self.user_id,
            "n": self.version,
            "e": self.event_time,
            "c": [self.type_counts.get(t, 0) for t in EVENT_TYPES],
            "d": [self.decayed.get(t, 0.0) for t in EVENT_TYPES],
            "r": self.decay_ref,
            "o": self.offsets,
            "i": self.items,
            "y": bytes(self.types).translate(_CODES_TO_DIGITS).decode("ascii"),
            "t": deltas,
        }
        if self.recent_ids:
            body["h"] = base64.b64encode(b"".join(self.recent_ids)).decode("ascii")
        return _HEADER + zlib.compress(orjson.dumps(body), 1)

    @classmethod
    def from_bytes(cls, data: bytes, config: WindowConfig | None = None) -> BehaviorWindow:
        """Decode bytes written by :meth:`to_bytes`.

        Args:
            data: The encoded window.
            config: Window sizes to use from now on (default: ``WindowConfig()``);
                a stored history longer than ``config.long_history_events`` is cut
                to the latest events.

        Raises:
            StateCodecError: The bytes are not a window of a known format.
        """
        cfg = config if config is not None else WindowConfig()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise StateCodecError(f"window state must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < len(_HEADER) or data[:2] != MAGIC:
            raise StateCodecError("not a window state (bad magic bytes)")
        if data[2] != CODEC_VERSION:
            raise StateCodecError(f"unknown window state format version {data[2]}")
        try:
            dec = zlib.decompressobj()
            raw = dec.decompress(data[3:], _MAX_DECODED_BYTES)
            if dec.unconsumed_tail or not dec.eof:
                raise StateCodecError("window state is truncated or too large")
            body = orjson.loads(raw)
        except StateCodecError:
            raise
        except (zlib.error, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise StateCodecError(f"window state is corrupt: {exc}") from exc
        try:
            return cls._from_body(body, cfg)
        except StateCodecError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, binascii.Error) as exc:
            raise StateCodecError(f"window state has a bad structure: {exc!r}") from exc

    @classmethod
    def _from_body(cls, body: Any, cfg: WindowConfig) -> BehaviorWindow:
        if not isinstance(body, dict):
            raise StateCodecError("window state is not an object")
        user_id = body["u"]
        items = body["i"]
        codes = body["y"]
        deltas = body["t"]
        if not isinstance(user_id, str) or not isinstance(items, list):
            raise StateCodecError("window state: bad user id or item list")
        if not isinstance(codes, str) or not isinstance(deltas, list):
            raise StateCodecError("window state: bad type codes or time deltas")
        if not len(items) == len(codes) == len(deltas):
            raise StateCodecError("window state: history columns differ in length")
        if not all(type(i) is str for i in items):
            raise StateCodecError("window state: item ids must be strings")
        if codes and not (codes.isascii() and codes.isdigit()):
            raise StateCodecError("window state: bad event type codes")
        types = list(codes.encode("ascii").translate(_DIGITS_TO_CODES))
        if types and max(types) >= len(EVENT_TYPES):
            raise StateCodecError("window state: unknown event type code")
        if not all(type(d) is int for d in deltas) or (len(deltas) > 1 and min(deltas[1:]) < 0):
            raise StateCodecError("window state: time deltas must be non-negative ints")
        times = list(accumulate(deltas))
        counts = _checked_list(body["c"], int, "c")
        decayed = _checked_list(body["d"], float, "d")
        offsets = body["o"]
        if not isinstance(offsets, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in offsets.items()
        ):
            raise StateCodecError("window state: offsets must map strings to ints")
        blob = base64.b64decode(body.get("h", ""), validate=True)
        if len(blob) % _DIGEST_BYTES:
            raise StateCodecError("window state: event id digests have a bad length")
        recent = [blob[i : i + _DIGEST_BYTES] for i in range(0, len(blob), _DIGEST_BYTES)]
        version, event_time, decay_ref = body["n"], body["e"], body["r"]
        for name, value in (("n", version), ("e", event_time), ("r", decay_ref)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise StateCodecError(f"window state: field {name!r} must be a non-negative int")
        cut = max(0, len(times) - cfg.long_history_events)
        if cfg.dedupe_ids < len(recent):
            recent = recent[len(recent) - cfg.dedupe_ids :]
        return cls(
            user_id=user_id,
            config=cfg,
            items=items[cut:],
            types=types[cut:],
            times=times[cut:],
            type_counts=dict(zip(EVENT_TYPES, counts, strict=True)),
            decayed=dict(zip(EVENT_TYPES, decayed, strict=True)),
            decay_ref=decay_ref,
            version=version,
            event_time=event_time,
            offsets=dict(offsets),
            recent_ids=recent,
        )


def _checked_list(value: Any, kind: type, name: str) -> list[Any]:
    if not isinstance(value, list) or len(value) != len(EVENT_TYPES):
        raise StateCodecError(f"window state: field {name!r} must list {len(EVENT_TYPES)} values")
    out: list[Any] = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise StateCodecError(f"window state: field {name!r} holds a non-number")
        if kind is int and not isinstance(v, int):
            raise StateCodecError(f"window state: field {name!r} must hold ints")
        out.append(kind(v))
    return out
