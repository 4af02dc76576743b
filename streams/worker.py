"""The stream worker: Kafka events -> per-user behaviour windows in a Faust table.

``interest-stream worker`` (or ``python -m interest_stream.streams.worker``) runs one process of
a Faust app; start N of them with the same ``INTEREST_APP_ID`` to share the
partitions (a consumer group). Per batch of up to ``INTEREST_BATCH_MAX`` messages
(``Stream.take_events``, waiting at most ``INTEREST_BATCH_WITHIN_MS``):

1. each message is admitted only at its partition's *source position* (the next
   offset the state has applied, :mod:`streams.positions`); an older one is a
   duplicate, and records the stream skipped are read from the broker and
   applied first -- nothing is ever stepped over;
2. it is validated (:func:`interest_stream.core.events.parse_event`); an invalid one
   goes to ``INTEREST_DLQ_TOPIC`` as a :func:`~interest_stream.core.events.dlq_record`;
3. a valid event is applied to its user's window (duplicates by ``event_id`` or
   by the window's per-partition offset mark are skipped);
4. touched windows, then each partition's positions record, are produced to the
   changelog (``<app_id>-windows-changelog``, explicit partition = the user's);
   once the broker acknowledged all of them (``acks=all``) they are written to
   the local store with their changelog offsets, and the positions become
   *durable*: the only offsets Faust commits (:func:`streams.faust_compat.own_commits`);
5. the ``on_batch`` hook (:class:`BatchHook`) gets every written window.

Exactly-once effect on state follows (why, and the Faust behaviour it guards
against: docs/ARCHITECTURE.md, "Exactly-once state"). The DLQ is
at-least-once. Unexpected errors half-way stop the process at once without
committing (``os._exit(70)``); SIGTERM/SIGINT stop gracefully.

**Forgetting a user** (right to be forgotten): the agent also consumes the
command topic (:mod:`streams.commands`, co-partitioned with the event topics).
A ``forget`` command deletes the user's window (a tombstone in the changelog,
so recovery never brings it back), stores a suppression record (forget time =
the command's Kafka timestamp, and its offset) in the ``forgotten`` table, and
calls the ``on_forget`` hook (the re-encoder drops the user and writes a
tombstone to the output topic). Events of that user stamped before the forget
time are dropped (``interest_worker_events_forgotten_total``); later ones
start a new window. A re-delivered command changes nothing but is announced to
the hook again (its tombstone is idempotent). See :mod:`streams.commands`.

HTTP (Faust's web server on ``127.0.0.1:INTEREST_WORKER_WEB_PORT``):
``GET /windows/{user_id}/`` (the window, or 404 when unknown or on a partition
this worker does not hold), ``GET /assignment/``, ``GET /healthz/`` and
``GET /metrics`` (Prometheus text).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import socket
import ssl
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol, cast

import faust
from faust.types import TP, EventT, StreamT
from faust.types.auth import CredentialsT
from faust.types.tuples import Message
from faust.web import Request, Response, View
from mode import BaseSignalT
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from interest_stream.core.errors import ConfigError, InterestStreamError, InvalidEvent
from interest_stream.core.events import dlq_record, parse_event
from interest_stream.core.settings import Settings, load_settings
from interest_stream.streams import faust_compat
from interest_stream.streams.commands import (
    CommandError,
    command_topic,
    ensure_command_topic,
    parse_command,
)
from interest_stream.streams.positions import (
    POSITIONS_KEY,
    OffsetReader,
    PositionsError,
    SourceRecord,
    decode_positions,
    encode_positions,
    is_reserved_key,
)
from interest_stream.streams.window import BehaviorWindow, StateCodecError, WindowConfig

__all__ = [
    "FORGOTTEN_TABLE",
    "TABLE_NAME",
    "BatchHook",
    "BatchResult",
    "ForgetHook",
    "WindowWorker",
    "WorkerError",
    "WorkerMetrics",
    "changelog_topic",
    "check_topics",
    "create_app",
    "forgotten_changelog_topic",
    "main",
    "read_changelog_windows",
    "run_worker",
    "worker_info_path",
]

log = logging.getLogger(__name__)

TABLE_NAME = "windows"
FORGOTTEN_TABLE = "forgotten"
FAIL_STOP_EXIT_CODE = 70
#: Decoded windows kept in memory per worker (about 25 KB each at 200 events).
CACHE_WINDOWS = 4096
_METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST.split(";charset")[0].split("; charset")[0]
#: RocksDB memory of the (tiny) forgotten-users table, per partition (MB).
FORGOTTEN_TABLE_MEMORY_MB = 4


def rocksdb_options(memory_mb: int) -> dict[str, Any]:
    """Faust RocksDB options spending about ``memory_mb`` per partition database.

    Half goes to the block cache, a quarter to each of the two memtables. Every
    partition the worker holds opens its own database, so a worker's RocksDB
    memory is about ``memory_mb`` times the partitions it holds (the worker also
    keeps its own LRU of decoded windows, :data:`CACHE_WINDOWS`).
    """
    mb = 1024 * 1024
    return {
        "driver": "rocksdict",
        "write_buffer_size": max(1, memory_mb // 4) * mb,
        "max_write_buffer_number": 2,
        "block_cache_size": max(1, memory_mb // 2) * mb,
    }


class WorkerError(InterestStreamError):
    """The worker cannot start or run (topics missing or not co-partitioned, bad store)."""


class BatchHook(Protocol):
    """Called after each batch with every window written in it (user_id -> window).

    The windows' changelog records are already acknowledged when the hook runs,
    and the batch's source offsets are committed only after it returns, so a crash
    inside the hook re-delivers the batch (its users are then passed again).
    The hook may be a plain or an ``async`` function; it must not modify the
    windows. An exception is logged and counted, and processing goes on.
    """

    def __call__(self, windows: Mapping[str, BehaviorWindow], /) -> Awaitable[None] | None:
        """Handle the windows of one batch."""
        ...


class ForgetHook(Protocol):
    """Called after each batch with the users forgotten in it (user_id -> forget time, ms).

    The windows' tombstones are acknowledged when the hook runs; the hook runs
    before :class:`BatchHook` (a user forgotten and active again in the same
    batch is first forgotten, then passed with its new window). Exceptions are
    logged and counted like the batch hook's.
    """

    def __call__(self, users: Mapping[str, int], /) -> Awaitable[None] | None:
        """Handle the users forgotten in one batch."""
        ...


class WorkerMetrics:
    """Prometheus metrics of one worker, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "interest_worker_events_consumed", "Messages taken from the event topics.", registry=r
        )
        self.applied = Counter(
            "interest_worker_events_applied", "Events applied to a window.", registry=r
        )
        self.duplicates = Counter(
            "interest_worker_events_duplicate",
            "Valid events skipped as duplicates (offset mark or event_id).",
            registry=r,
        )
        self.dlq = Counter(
            "interest_worker_events_dlq", "Messages sent to the dead-letter topic.", registry=r
        )
        self.forgotten = Counter(
            "interest_worker_users_forgotten",
            "Forget commands applied (a user's window deleted).",
            registry=r,
        )
        self.forgotten_events = Counter(
            "interest_worker_events_forgotten",
            "Events dropped because they predate their user's forget command.",
            registry=r,
        )
        self.state_errors = Counter(
            "interest_worker_state_errors",
            "Events sent to the DLQ because the stored window could not be decoded.",
            registry=r,
        )
        self.windows_written = Counter(
            "interest_worker_windows_written", "Windows written to the changelog.", registry=r
        )
        self.hook_errors = Counter(
            "interest_worker_batch_hook_errors",
            "Exceptions raised by the on_batch hook.",
            registry=r,
        )
        self.source_holes = Counter(
            "interest_worker_source_holes",
            "Times the stream skipped records of a partition (read from the broker instead).",
            registry=r,
        )
        self.source_gaps = Counter(
            "interest_worker_source_gaps",
            "Skipped offsets without a record (transaction markers, compaction, retention).",
            registry=r,
        )
        self.filled = Counter(
            "interest_worker_events_filled",
            "Records the stream skipped that the worker read from the broker and applied.",
            registry=r,
        )
        self.batch_size = Histogram(
            "interest_worker_batch_size",
            "Messages per batch.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "interest_worker_batch_apply_seconds",
            "Time to validate, apply and durably write one batch (s).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.first_consumed = Gauge(
            "interest_worker_first_consumed_timestamp_seconds",
            "Wall clock when this process took its first batch (0 before).",
            registry=r,
        )
        self.last_applied = Gauge(
            "interest_worker_last_applied_timestamp_seconds",
            "Wall clock when this process last finished a batch (0 before).",
            registry=r,
        )
        self.assigned = Gauge(
            "interest_worker_assigned_partitions",
            "Event-topic partitions this worker holds.",
            registry=r,
        )

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)


def changelog_topic(settings: Settings) -> str:
    """Name of the windows table's changelog topic (Faust's ``<app_id>-windows-changelog``)."""
    return f"{settings.app_id}-{TABLE_NAME}-changelog"


def forgotten_changelog_topic(settings: Settings) -> str:
    """Changelog topic of the forgotten-users table (``<app_id>-forgotten-changelog``)."""
    return f"{settings.app_id}-{FORGOTTEN_TABLE}-changelog"


def worker_info_path(settings: Settings) -> Path:
    """File where a running worker writes its pid and web address (JSON)."""
    return Path(settings.state_dir) / "worker.json"


def check_topics(settings: Settings) -> int:
    """Create missing topics and return the event topics' common partition count.

    Raises:
        WorkerError: The event topics are not co-partitioned, or the changelog
            topic exists with another partition count.
        streams.topics.KafkaUnavailable: No broker answers.
    """
    from interest_stream.streams.topics import (
        TopicError,
        admin_client,
        ensure_topics,
        partition_counts,
    )

    try:
        counts = ensure_topics(settings)
    except TopicError as exc:
        raise WorkerError(f"{exc} (INTEREST_EVENT_TOPICS)") from exc
    event_counts = {t: counts.get(t) for t in settings.event_topics}
    distinct = set(event_counts.values())
    if None in distinct or len(distinct) != 1:
        raise WorkerError(
            "the event topics must exist and have the same partition count "
            f"(co-partitioned by user_id); found {event_counts} (INTEREST_EVENT_TOPICS)"
        )
    n = int(next(iter(distinct)))  # type: ignore[arg-type]
    try:
        ensure_command_topic(settings, n)
    except CommandError as exc:
        raise WorkerError(str(exc)) from exc
    admin = admin_client(settings)
    internal = [changelog_topic(settings), forgotten_changelog_topic(settings)]
    try:
        cl = partition_counts(admin, internal)
    finally:
        admin.close()
    for topic in internal:
        have = cl.get(topic)
        if have is not None and have != n:
            raise WorkerError(
                f"changelog topic {topic} has {have} partitions but the event "
                f"topics have {n}; use a new INTEREST_APP_ID or recreate the changelog"
            )
    return n


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _credentials(settings: Settings) -> CredentialsT | None:
    proto = settings.kafka_security_protocol
    if proto == "PLAINTEXT":
        return None
    ctx: ssl.SSLContext | None = None
    if proto in ("SSL", "SASL_SSL"):
        cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        ctx = ssl.create_default_context(cafile=cafile)
        if settings.kafka_ssl_certfile:
            keyfile = str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None
            ctx.load_cert_chain(str(settings.kafka_ssl_certfile), keyfile)
    if proto == "SSL":
        assert ctx is not None
        return faust.SSLCredentials(ctx)
    password = settings.kafka_sasl_password
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=password.get_secret_value() if password is not None else None,
        ssl_context=ctx,
        mechanism=settings.kafka_sasl_mechanism,
    )


def _exit_now(reason: str) -> NoReturn:
    log.critical("stopping at once without committing offsets: %s", reason)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(FAIL_STOP_EXIT_CODE)


@dataclass(frozen=True, slots=True)
class _Forgotten:
    """Suppression record of a forgotten user: forget time (ms) and the command's offset."""

    at_ms: int
    offset: int

    def to_bytes(self) -> bytes:
        return json.dumps({"at": self.at_ms, "offset": self.offset}).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> _Forgotten:
        obj = json.loads(raw)
        return cls(int(obj["at"]), int(obj["offset"]))


@dataclass(slots=True)
class _Touched:
    window: BehaviorWindow | None  # None: deleted by a forget command in this batch
    event: EventT[Any]
    applied: int = 0
    forgotten: _Forgotten | None = None
    forgotten_dirty: bool = False


def _blank(window: BehaviorWindow) -> bool:
    """A window created for this batch to which nothing was applied (no event, no mark)."""
    return window.version == 0 and not window.offsets and not window.recent_ids


def _ts_ms(message: Message) -> int:
    return round((message.timestamp or 0.0) * 1000)


@dataclass(slots=True)
class BatchResult:
    """What one batch did: messages taken, events applied, duplicates, DLQ records, windows."""

    consumed: int = 0
    applied: int = 0
    duplicates: int = 0
    dlq: int = 0
    windows: dict[str, BehaviorWindow] = field(default_factory=dict)
    forgotten: dict[str, int] = field(default_factory=dict)
    forgotten_events: int = 0
    filled: int = 0


class WindowWorker:
    """The Faust app of the worker and the state it serves (see the module docstring).

    Args:
        settings: Process settings.
        on_batch: Optional hook called with the windows written by each batch.
        on_forget: Optional hook called with the users forgotten by each batch.
        partitions: Partition count of the event topics; looked up (and the
            topics created if missing) with :func:`check_topics` when ``None``.
        fail_stop: Called when a batch fails half-way; must not return
            (default: log and ``os._exit(70)``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        on_batch: BatchHook | None = None,
        on_forget: ForgetHook | None = None,
        partitions: int | None = None,
        fail_stop: Callable[[str], NoReturn] = _exit_now,
    ) -> None:
        faust_compat.check_versions(settings.allow_untested_faust)
        self.settings = settings
        self.config = WindowConfig.from_settings(settings)
        self.partitions = partitions if partitions is not None else check_topics(settings)
        self.on_batch = on_batch
        self.on_forget = on_forget
        self.metrics = WorkerMetrics()
        self.web_port = settings.worker_web_port or _free_port()
        self._fail_stop = fail_stop
        self._started_consuming = False
        # Source positions (streams.positions) acknowledged in the changelog, per
        # partition: topic -> next offset. Read lazily from the store; cleared on
        # every rebalance.
        self._durable: dict[int, dict[str, int]] = {}
        # The same once the batch's hooks returned: what Faust commits
        # (faust_compat.own_commits), so a crash in a hook re-delivers the batch.
        self._committable: dict[int, dict[str, int]] = {}
        self._reader = OffsetReader(settings)
        # Decoded windows of recently touched users, (partition, user_id) -> window.
        # Always equal to the durable state (a failed write stops the process);
        # cleared on every rebalance, before table recovery may change the store.
        self._cache: OrderedDict[tuple[int, str], BehaviorWindow] = OrderedDict()
        self._event_topics = frozenset(settings.event_topics)
        self._changelog = changelog_topic(settings)
        self._forgotten_changelog = forgotten_changelog_topic(settings)
        self._commands = command_topic(settings)
        self.app = self._build_app()
        self.table = self.app.Table(
            TABLE_NAME,
            partitions=self.partitions,
            key_type=bytes,
            value_type=bytes,
            options=rocksdb_options(settings.state_memory_mb)
            if settings.store == "rocksdb"
            else None,
            help="user_id -> BehaviorWindow bytes (streams.window)",
        )
        self.forgotten_table = self.app.Table(
            FORGOTTEN_TABLE,
            partitions=self.partitions,
            key_type=bytes,
            value_type=bytes,
            options=rocksdb_options(FORGOTTEN_TABLE_MEMORY_MB)
            if settings.store == "rocksdb"
            else None,
            help="user_id -> forget time and command offset of a forgotten user",
        )
        self.source = self.app.topic(
            *settings.event_topics,
            self._commands,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )
        self.app.agent(self.source, name="interest_stream.apply_events")(self._agent)
        self.app.on_partitions_revoked.connect(self._on_rebalance)
        self.app.on_partitions_assigned.connect(self._on_rebalance)
        self._add_views()

    # ------------------------------------------------------------------ setup
    def _build_app(self) -> faust.App:
        s = self.settings
        brokers = [f"kafka://{h.strip()}" for h in s.kafka_bootstrap.split(",") if h.strip()]
        faust_compat.install_fetch_wait_patch()
        app = faust.App(
            s.app_id,
            broker=brokers,
            broker_credentials=_credentials(s),
            store="memory://" if s.store == "memory" else "rocksdb://",
            datadir=str(s.state_dir),
            version=1,
            autodiscover=False,
            env_prefix="INTEREST_FAUST_",
            topic_partitions=self.partitions,
            topic_disable_leader=True,
            consumer_auto_offset_reset="earliest",
            processing_guarantee="at_least_once",
            producer_acks=-1,
            stream_buffer_maxsize=max(4096, 2 * s.batch_max),
            web_enabled=True,
            web_bind="127.0.0.1",
            web_host="127.0.0.1",
            web_port=self.web_port,
        )
        setattr(app, faust_compat.FETCH_WAIT_ATTR, s.fetch_max_wait_ms)
        return app

    def check_store(self) -> None:
        """Make sure the RocksDB table store uses the rocksdict driver.

        Raises:
            WorkerError: Another driver (python-rocksdb) was chosen.
        """
        store = self.table.data
        if self.settings.store == "rocksdb" and not getattr(store, "use_rocksdict", False):
            raise WorkerError(
                f"the RocksDB table store uses {type(store).__module__} without rocksdict; "
                "install rocksdict (pip install rocksdict)"
            )

    # ----------------------------------------------------------- processing
    async def _on_rebalance(
        self, sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any
    ) -> None:
        self._cache.clear()
        self._durable.clear()
        self._committable.clear()

    def _durable_offset(self, tp: TP) -> int | None:
        """The offset Faust may commit for ``tp``: the changelog covers everything below it."""
        return self._committable.get(tp.partition, {}).get(tp.topic)

    def _positions(self, partition: int, event: EventT[Any]) -> dict[str, int]:
        """The durable positions of ``partition`` (read from the store on first use)."""
        known = self._durable.get(partition)
        if known is not None:
            return known
        raw = self._read_stored(POSITIONS_KEY, event)
        positions: dict[str, int] = {}
        if raw is not None:
            try:
                positions = decode_positions(raw)
            except PositionsError as exc:
                log.error("partition %d: %s; starting from the committed offsets", partition, exc)
        self._durable[partition] = positions
        return positions

    async def _admit(
        self, ev: EventT[Any], batch_pos: dict[int, dict[str, int]]
    ) -> list[EventT[Any]]:
        """The messages to apply for ``ev``, in order: ``[ev]``, or ``[skipped..., ev]``.

        A message is applied only at or below its partition's position (every
        earlier offset applied or without a record); one below is re-delivered
        and goes through as before (the window's offset mark skips it, and its
        user is written and passed to the hooks again). When the stream skipped offsets
        (it can drop fetched messages around a rebalance, see
        docs/ARCHITECTURE.md), the skipped records are read from the broker and
        come first; nothing is ever stepped over.

        Raises:
            PositionsError: The skipped records could not be read (fail-stop).
        """
        msg = ev.message
        pos = batch_pos.get(msg.partition)
        if pos is None:
            pos = batch_pos[msg.partition] = dict(self._positions(msg.partition, ev))
        offset = msg.offset
        nxt = pos.get(msg.topic)
        if nxt is None:  # first message of this topic-partition: start at the committed offset
            nxt = faust_compat.committed_offset(self.app.consumer, msg.tp) or 0
        if offset <= nxt:
            pos[msg.topic] = max(nxt, offset + 1)
            return [ev]
        pos[msg.topic] = offset + 1
        records = await asyncio.to_thread(self._reader.read, msg.topic, msg.partition, nxt, offset)
        if records:
            self.metrics.source_holes.inc()
            log.warning(
                "%s: the stream skipped %d records at %d..%d; read them from the broker",
                msg.tp,
                len(records),
                nxt,
                offset - 1,
            )
        self.metrics.source_gaps.inc(offset - nxt - len(records))
        return [*(self._event_of(msg.tp, r) for r in records), ev]

    def _event_of(self, tp: TP, rec: SourceRecord) -> EventT[Any]:
        """A Faust event for a record read by :class:`~streams.positions.OffsetReader`."""
        msg = Message(
            tp.topic,
            tp.partition,
            rec.offset,
            rec.timestamp_ms / 1000.0,
            0,
            None,
            rec.key,
            rec.value,
            None,
            tp=tp,
        )
        return faust.Event(self.app, rec.key, rec.value, None, msg)

    def _load_window(self, user_id: str, event: EventT[Any]) -> BehaviorWindow:
        """The window of ``user_id`` in the partition of ``event`` (a new one if none).

        Raises:
            StateCodecError: The stored bytes are corrupt.
        """
        ck = (event.message.partition, user_id)
        window = self._cache.get(ck)
        if window is not None:
            self._cache.move_to_end(ck)
            return window
        raw = self._read_stored(user_id.encode("utf-8"), event)
        if raw is None:
            return BehaviorWindow(user_id, self.config)
        return BehaviorWindow.from_bytes(raw, self.config)

    def _load_forgotten(self, user_id: str, event: EventT[Any] | None) -> _Forgotten | None:
        """The suppression record of ``user_id`` (``None`` if the user was never forgotten)."""
        raw = self._read_stored(user_id.encode("utf-8"), event, self.forgotten_table)
        if raw is None:
            return None
        try:
            return _Forgotten.from_bytes(raw)
        except (ValueError, KeyError, TypeError):
            log.error("suppression record of user %r is corrupt; ignoring it", user_id)
            return None

    def is_forgotten(self, user_id: str) -> bool:
        """Whether ``user_id`` has a suppression record on a partition this worker holds."""
        return self._load_forgotten(user_id, None) is not None

    def _remember(self, key: tuple[int, str], window: BehaviorWindow) -> None:
        self._cache[key] = window
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_WINDOWS:
            self._cache.popitem(last=False)

    async def _agent(self, stream: StreamT[bytes]) -> None:
        faust_compat.own_commits(self.app.consumer, self._durable_offset)
        s = self.settings
        # take_events is on faust.Stream but missing from the StreamT interface
        within = s.batch_within_ms / 1000.0
        batches = cast(faust.Stream[bytes], stream).take_events(s.batch_max, within)
        async for events in batches:
            await self.process_batch(events)

    async def process_batch(self, events: Sequence[EventT[Any]]) -> BatchResult:
        """Validate, apply and durably write one batch (fail-stop on unexpected errors)."""
        try:
            return await self._process(events)
        except asyncio.CancelledError:
            self._fail_stop("batch cancelled half-way; its messages must not be committed")
        except Exception as exc:
            log.exception("batch of %d messages failed", len(events))
            self._fail_stop(f"batch failed: {exc!r}")

    def _read_stored(
        self, key: bytes, event: EventT[Any] | None, table: Any = None
    ) -> bytes | None:
        """The stored bytes of ``key`` in the partition of ``event`` (any partition if None)."""
        store = (self.table if table is None else table).data
        with faust_compat.current_event(event):
            value = store.get(key)
        return bytes(value) if value is not None else None

    def _dlq_value(
        self, error: str, field_name: str | None, message: Message
    ) -> tuple[bytes | None, bytes]:
        rec = dlq_record(
            error,
            field_name,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            raw=message.value,
        )
        return message.key, json.dumps(rec, separators=(",", ":"), ensure_ascii=False).encode()

    async def _process(self, events: Sequence[EventT[Any]]) -> BatchResult:
        s = self.settings
        m = self.metrics
        started = time.perf_counter()
        if not self._started_consuming:
            self._started_consuming = True
            m.first_consumed.set(time.time())
        res = BatchResult(consumed=len(events))
        touched: dict[tuple[int, str], _Touched] = {}
        dlq_out: list[tuple[bytes | None, bytes]] = []
        batch_pos: dict[int, dict[str, int]] = {}
        admitted: list[EventT[Any]] = []
        for ev in events:
            admitted.extend(await self._admit(ev, batch_pos))
        res.filled = len(admitted) - len(events)
        for ev in admitted:
            msg = ev.message
            if msg.topic == self._commands:
                self._command(ev, touched, dlq_out, res)
                continue
            try:
                event = parse_event(
                    msg.value,
                    topic=msg.topic,
                    key=msg.key,
                    max_bytes=s.max_event_bytes,
                    max_future_ms=s.max_future_ms,
                )
            except InvalidEvent as exc:
                dlq_out.append(self._dlq_value(exc.message, exc.field, msg))
                continue
            slot = touched.get((msg.partition, event.user_id))
            if slot is None:
                try:
                    window: BehaviorWindow | None = self._load_window(event.user_id, ev)
                except StateCodecError as exc:
                    log.error("stored window of user %r is corrupt: %s", event.user_id, exc)
                    m.state_errors.inc()
                    dlq_out.append(
                        self._dlq_value(
                            f"stored window of user {event.user_id!r} is corrupt: {exc}",
                            "state",
                            msg,
                        )
                    )
                    continue
                slot = touched[(msg.partition, event.user_id)] = _Touched(
                    window, ev, forgotten=self._load_forgotten(event.user_id, ev)
                )
            if slot.forgotten is not None and _ts_ms(msg) < slot.forgotten.at_ms:
                res.forgotten_events += 1  # pre-forget data: never applied
                continue
            if slot.window is None:  # forgotten earlier in this batch: a new life
                slot.window = BehaviorWindow(event.user_id, self.config)
            if slot.window.apply(event, msg.topic, msg.partition, msg.offset):
                slot.applied += 1
                res.applied += 1
            else:
                res.duplicates += 1
        res.dlq = len(dlq_out)
        await self._write(touched, dlq_out, batch_pos)
        self._durable.update(batch_pos)
        for ck, slot in touched.items():
            if slot.window is None:
                self._cache.pop(ck, None)
            elif _blank(slot.window):
                continue  # e.g. only pre-forget events of a forgotten user: it stays gone
            else:
                res.windows[ck[1]] = slot.window
                self._remember(ck, slot.window)
        m.consumed.inc(res.consumed)
        m.forgotten_events.inc(res.forgotten_events)
        m.applied.inc(res.applied)
        m.duplicates.inc(res.duplicates)
        m.filled.inc(res.filled)
        m.dlq.inc(res.dlq)
        m.windows_written.inc(len(touched))
        m.batch_size.observe(res.consumed)
        m.batch_seconds.observe(time.perf_counter() - started)
        m.last_applied.set(time.time())
        if self.on_forget is not None and res.forgotten:
            await self._call_forget_hook(res.forgotten)
        if self.on_batch is not None and res.windows:
            await self._call_hook(res.windows)
        self._committable.update(batch_pos)
        return res

    def _command(
        self,
        ev: EventT[Any],
        touched: dict[tuple[int, str], _Touched],
        dlq_out: list[tuple[bytes | None, bytes]],
        res: BatchResult,
    ) -> None:
        """Apply one command-topic message (see :mod:`streams.commands`)."""
        msg = ev.message
        try:
            cmd = parse_command(msg.value, msg.key)
        except CommandError as exc:
            dlq_out.append(self._dlq_value(str(exc), "command", msg))
            return
        ck = (msg.partition, cmd.user_id)
        slot = touched.get(ck)
        if slot is None:
            # the window is not read: the forget replaces it by a tombstone anyway
            slot = touched[ck] = _Touched(None, ev, forgotten=self._load_forgotten(cmd.user_id, ev))
        at_ms = _ts_ms(msg)
        if slot.forgotten is not None and msg.offset <= slot.forgotten.offset:
            # re-delivered after a crash: already applied. Announce it again (the output
            # tombstone may have died with the crash) unless a new life began since.
            res.duplicates += 1
            alive = slot.window is not None or (
                self._read_stored(cmd.user_id.encode("utf-8"), ev) is not None
            )
            if not alive:
                res.forgotten[cmd.user_id] = slot.forgotten.at_ms
            return
        slot.window = None
        slot.forgotten = _Forgotten(at_ms, msg.offset)
        slot.forgotten_dirty = True
        res.forgotten[cmd.user_id] = at_ms
        self.metrics.forgotten.inc()
        log.info("forgetting user %r (command at %d ms)", cmd.user_id, at_ms)

    async def _write(
        self,
        touched: Mapping[tuple[int, str], _Touched],
        dlq_out: Sequence[tuple[bytes | None, bytes]],
        batch_pos: Mapping[int, dict[str, int]],
    ) -> None:
        """Produce changelog + DLQ records, await acks, then update the local store.

        Each partition's positions record comes after its windows, so the
        changelog never holds a position ahead of the windows it covers.
        """
        producer = self.app.producer
        pending: list[Awaitable[Any]] = []
        records: list[tuple[str, int, bytes, bytes | None]] = []
        for (partition, user_id), slot in touched.items():
            key = user_id.encode("utf-8")
            if slot.window is not None and _blank(slot.window) and not slot.forgotten_dirty:
                continue  # nothing applied to a user without a window: nothing to store
            if slot.window is not None or slot.forgotten_dirty:
                value = None if slot.window is None else slot.window.to_bytes()
                records.append((self._changelog, partition, key, value))
            if slot.forgotten_dirty and slot.forgotten is not None:
                records.append(
                    (self._forgotten_changelog, partition, key, slot.forgotten.to_bytes())
                )
        for partition, pos in batch_pos.items():
            if pos != self._durable.get(partition):
                records.append((self._changelog, partition, POSITIONS_KEY, encode_positions(pos)))
        for topic, partition, key, value in records:
            pending.append(await producer.send(topic, key, value, partition, None, None))
        for key_or_none, value in dlq_out:
            pending.append(
                await producer.send(self.settings.dlq_topic, key_or_none, value, None, None, None)
            )
        acks = await asyncio.gather(*pending)
        now = time.time()
        batches: dict[str, list[EventT[Any]]] = {}
        for (topic, partition, key, value), meta in zip(records, acks[: len(records)], strict=True):
            tp = TP(topic, partition)
            msg = Message(topic, partition, meta.offset, now, 0, None, key, value, None, tp=tp)
            batches.setdefault(topic, []).append(faust.Event(self.app, key, value, None, msg))
        if batches.get(self._changelog):
            self.table.apply_changelog_batch(batches[self._changelog])
        if batches.get(self._forgotten_changelog):
            self.forgotten_table.apply_changelog_batch(batches[self._forgotten_changelog])

    async def _call_forget_hook(self, users: Mapping[str, int]) -> None:
        assert self.on_forget is not None
        try:
            result = self.on_forget(users)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.metrics.hook_errors.inc()
            log.exception("on_forget hook failed for %d users", len(users))

    async def _call_hook(self, windows: Mapping[str, BehaviorWindow]) -> None:
        assert self.on_batch is not None
        try:
            result = self.on_batch(windows)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.metrics.hook_errors.inc()
            log.exception("on_batch hook failed for %d windows", len(windows))

    # ------------------------------------------------------------------ views
    def held_partitions(self) -> set[int]:
        """Event-topic partitions this worker actively holds."""
        try:
            actives = self.app.assignor.assigned_actives()
        except Exception:  # before the first assignment
            return set()
        return {tp.partition for tp in actives if tp.topic in self._event_topics}

    def read_window(self, user_id: str) -> BehaviorWindow | None:
        """The window of ``user_id`` if it lives on a partition this worker holds.

        Raises:
            StateCodecError: The stored bytes are corrupt.
        """
        key = user_id.encode("utf-8")
        if is_reserved_key(key):
            return None
        raw = self._read_stored(key, None)
        if raw is None:
            return None
        window = BehaviorWindow.from_bytes(raw, self.config)
        parts = {int(k.rsplit(":", 1)[1]) for k in window.offsets}
        if not parts & self.held_partitions():
            return None
        return window

    def _add_views(self) -> None:
        app = self.app
        worker = self

        @app.page("/windows/{user_id}/")
        async def window_view(view: View, request: Request, user_id: str) -> Response:
            try:
                window = worker.read_window(user_id)
            except StateCodecError as exc:
                return view.json({"error": "corrupt state", "detail": str(exc)}, status=500)
            if window is None:
                return view.json(
                    {
                        "error": "not found",
                        "detail": f"user {user_id!r} has no window on a partition of this worker",
                    },
                    status=404,
                )
            return view.json(window.to_dict())

        @app.page("/assignment/")
        async def assignment_view(view: View, request: Request) -> Response:
            held = sorted(worker.held_partitions())
            worker.metrics.assigned.set(len(held))
            try:
                standbys = sorted({tp.partition for tp in app.assignor.assigned_standbys()})
            except Exception:
                standbys = []
            return view.json(
                {
                    "app_id": worker.settings.app_id,
                    "partitions": held,
                    "standby_partitions": standbys,
                    "partition_count": worker.partitions,
                    "topics": sorted(worker._event_topics),
                    "rebalancing": bool(app.rebalancing),
                }
            )

        @app.page("/healthz/")
        async def health_view(view: View, request: Request) -> Response:
            return view.json(
                {
                    "status": "ok",
                    "pid": os.getpid(),
                    "state": app.state,
                    "rebalancing": bool(app.rebalancing),
                    "partitions": len(worker.held_partitions()),
                }
            )

        @app.page("/metrics")
        async def metrics_view(view: View, request: Request) -> Response:
            worker.metrics.assigned.set(len(worker.held_partitions()))
            # aiohttp wants the charset apart from the content type
            return view.bytes(worker.metrics.render(), content_type=_METRICS_CONTENT_TYPE)

        del window_view, assignment_view, health_view, metrics_view


def create_app(
    settings: Settings,
    *,
    on_batch: BatchHook | None = None,
    partitions: int | None = None,
) -> faust.App:
    """The worker's Faust app (see :class:`WindowWorker`)."""
    return WindowWorker(settings, on_batch=on_batch, partitions=partitions).app


def run_worker(
    settings: Settings,
    *,
    on_batch: BatchHook | None = None,
    worker: WindowWorker | None = None,
) -> int:
    """Run one worker process until SIGTERM/SIGINT; returns the exit code.

    Writes ``<state_dir>/worker.json`` (pid, web address) for tools and tests.

    Args:
        settings: Process settings.
        on_batch: Hook for a worker built here (ignored when ``worker`` is given).
        worker: An already built worker (e.g. a subclass with a re-encode loop).

    Raises:
        WorkerError: The topics cannot be used (see :func:`check_topics`).
    """
    if worker is None:
        worker = WindowWorker(settings, on_batch=on_batch)
    worker.check_store()
    state_dir = Path(settings.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "pid": os.getpid(),
        "app_id": settings.app_id,
        "web": f"http://127.0.0.1:{worker.web_port}",
        "web_port": worker.web_port,
        "partition_count": worker.partitions,
        "store": settings.store,
    }
    worker_info_path(settings).write_text(json.dumps(info))
    log.info("worker %s starting: web on 127.0.0.1:%d", settings.app_id, worker.web_port)
    faust_worker = faust.Worker(
        worker.app,
        loglevel=settings.log_level,
        redirect_stdouts=False,
        quiet=True,
    )
    try:
        faust_worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def read_changelog_windows(
    settings: Settings, *, timeout_s: float = 60.0
) -> dict[str, BehaviorWindow]:
    """Latest window per user, read from the table's changelog topic (no consumer group).

    Reads every partition from the beginning up to the end offsets at call time.

    Raises:
        WorkerError: The changelog topic does not exist or could not be read in time.
        StateCodecError: A latest value is corrupt.
    """
    from kafka import KafkaConsumer, TopicPartition

    topic = changelog_topic(settings)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        **settings.kafka_client_config(),
    )
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise WorkerError(f"changelog topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        latest: dict[bytes, bytes | None] = {}
        deadline = time.monotonic() + timeout_s
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining:
            if time.monotonic() > deadline:
                raise WorkerError(f"reading {topic} timed out after {timeout_s}s")
            for tp, records in consumer.poll(timeout_ms=500, max_records=10_000).items():
                for rec in records:
                    if rec.offset < end[tp]:
                        latest[rec.key] = rec.value
                if consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
            for tp in list(remaining):
                if consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        consumer.close()
    config = WindowConfig.from_settings(settings)
    return {
        key.decode("utf-8"): BehaviorWindow.from_bytes(value, config)
        for key, value in latest.items()
        if value is not None and not is_reserved_key(key)
    }


def main() -> None:
    """``python -m interest_stream.streams.worker``: run a worker configured by the environment."""
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    level = max(logging.WARNING, logging.getLevelName(settings.log_level))
    logging.getLogger("kafka").setLevel(level)
    try:
        code = run_worker(settings)
    except ConfigError as exc:  # e.g. untested faust-streaming / aiokafka versions
        log.error("%s", exc)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    main()
