"""The stream worker: Kafka events -> per-user behaviour windows in a Faust table.

``interest-stream worker`` (``python -m interest_stream.streams.worker``) runs one process of
a Faust app; processes with one ``INTEREST_APP_ID`` share the partitions. Each batch is
admitted at its partitions' source positions, validated (invalid -> ``INTEREST_DLQ_TOPIC``),
applied, written to the changelog and acknowledged before its offsets may be committed:
exactly-once effect on state (docs/ARCHITECTURE.md, "Exactly-once state"). Unexpected
errors half-way exit at once (code 70) without committing; SIGTERM/SIGINT stop gracefully.
Also: :mod:`.topics`, :mod:`.store`, :mod:`.batch`, :mod:`.views`, :mod:`.metrics`,
:mod:`.changelog`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, cast

import faust
from faust.types import TP, EventT, StreamT
from faust.types.tuples import Message
from mode import BaseSignalT

from interest_stream.core.errors import ConfigError, InvalidEvent
from interest_stream.core.events import parse_event
from interest_stream.core.kafka import faust_credentials, free_port
from interest_stream.core.settings import Settings, load_settings
from interest_stream.streams import faust_compat
from interest_stream.streams.batch import (
    BatchHook,
    BatchResult,
    ForgetHook,
    Touched,
    apply_command,
    blank,
    changelog_records,
    dlq_value,
    stop_recording,
    ts_ms,
)
from interest_stream.streams.commands import command_topic
from interest_stream.streams.metrics import WorkerMetrics
from interest_stream.streams.positions import OffsetReader, SourceRecord, is_reserved_key
from interest_stream.streams.store import WindowStore
from interest_stream.streams.topics import WorkerError, check_topics
from interest_stream.streams.views import add_views
from interest_stream.streams.window import BehaviorWindow, StateCodecError, WindowConfig

__all__ = [
    "BatchHook",
    "BatchResult",
    "ForgetHook",
    "WindowWorker",
    "WorkerError",
    "main",
    "run_worker",
    "worker_info_path",
]

log = logging.getLogger(__name__)

FAIL_STOP_EXIT_CODE = 70


def worker_info_path(settings: Settings) -> Path:
    """File where a running worker writes its pid and web address (JSON)."""
    return Path(settings.state_dir) / "worker.json"


def _exit_now(reason: str) -> NoReturn:
    log.critical("stopping at once without committing offsets: %s", reason)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(FAIL_STOP_EXIT_CODE)


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

    Raises:
        WorkerError: The topics cannot be used (see :func:`check_topics`).
        ConfigError: Untested faust-streaming / aiokafka versions.
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
        self.web_port = settings.worker_web_port or free_port()
        self.event_topics = frozenset(settings.event_topics)
        self._fail_stop = fail_stop
        self._started_consuming = False
        self._reader = OffsetReader(settings)
        self._commands = command_topic(settings)
        self.app = self._build_app()
        self.store = WindowStore(self.app, settings, self.config, self.partitions)
        self.table = self.store.table
        self.forgotten_table = self.store.forgotten_table
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
        self.app.on_partitions_assigned.connect(self._on_assigned)
        add_views(self.app, self)

    # ------------------------------------------------------------------ setup
    def _build_app(self) -> faust.App:
        s = self.settings
        brokers = [f"kafka://{h.strip()}" for h in s.kafka_bootstrap.split(",") if h.strip()]
        faust_compat.install_fetch_wait_patch()
        faust_compat.install_recovery_seek_guard()
        app = faust.App(
            s.app_id,
            broker=brokers,
            broker_credentials=faust_credentials(s),
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
        self.store.clear()

    async def _on_assigned(
        self, sender: Any, /, *args: Any, signal: BaseSignalT[Any], **kwargs: Any
    ) -> None:
        assigned: set[TP] = args[0] if args else kwargs.get("assigned", set())
        sources = self.event_topics | {self._commands}
        faust_compat.consider_for_commit(
            self.app.consumer, [tp for tp in assigned if tp.topic in sources]
        )

    def _durable_offset(self, tp: TP) -> int | None:
        """The offset Faust may commit for ``tp``: the changelog covers everything below it."""
        msg = Message(tp.topic, tp.partition, 0, 0.0, 0, None, None, None, None, tp=tp)
        return self.store.committable_offset(tp, faust.Event(self.app, None, None, None, msg))

    async def _admit(
        self, ev: EventT[Any], batch_pos: dict[int, dict[str, int]]
    ) -> list[EventT[Any]]:
        """The messages to apply for ``ev``, in order: ``[ev]``, or ``[skipped..., ev]``.

        A message is applied only at or below its partition's position (every
        earlier offset applied or without a record); one below is re-delivered
        and goes through as before (the window's offset mark skips it). When the
        stream skipped offsets, the skipped records are read from the broker and
        come first; nothing is ever stepped over (docs/ARCHITECTURE.md).

        Raises:
            PositionsError: The skipped records could not be read (fail-stop).
        """
        msg = ev.message
        pos = batch_pos.get(msg.partition)
        if pos is None:
            pos = batch_pos[msg.partition] = dict(self.store.positions(msg.partition, ev))
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
        ts = rec.timestamp_ms / 1000.0
        msg = Message(tp.topic, tp.partition, rec.offset, ts, 0, None, rec.key, rec.value, None,
                      tp=tp)  # fmt: skip
        return faust.Event(self.app, rec.key, rec.value, None, msg)

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
        return self.store.read(key, event, table)

    async def _process(self, events: Sequence[EventT[Any]]) -> BatchResult:
        started = time.perf_counter()
        if not self._started_consuming:
            self._started_consuming = True
            self.metrics.first_consumed.set(time.time())
        res = BatchResult(consumed=len(events))
        touched: dict[tuple[int, str], Touched] = {}
        dlq_out: list[tuple[bytes | None, bytes]] = []
        batch_pos: dict[int, dict[str, int]] = {}
        admitted: list[EventT[Any]] = []
        for ev in events:
            admitted.extend(await self._admit(ev, batch_pos))
        res.filled = len(admitted) - len(events)
        for ev in admitted:
            if ev.message.topic == self._commands:
                apply_command(ev, touched, dlq_out, res, self.store, self.metrics)
            else:
                self._event(ev, touched, dlq_out, res)
        res.dlq = len(dlq_out)
        with self.metrics.timed("changelog"):
            await self._write(touched, dlq_out, batch_pos)
        self.store.durable.update(batch_pos)
        for ck, slot in touched.items():
            if slot.window is None:
                self.store.cache.pop(ck, None)
            elif blank(slot.window):
                continue  # e.g. only pre-forget events of a forgotten user: it stays gone
            else:
                res.windows[ck[1]] = slot.window
                self.store.remember(ck, slot.window)
        self._count(res, len(touched), started)
        if self.on_forget is not None and res.forgotten:
            await self._call(self.on_forget, res.forgotten, "on_forget hook failed for %d users")
        if self.on_batch is not None and res.windows:
            await self._call_hook(res.windows)
        stop_recording(touched.values())
        self.store.committable.update(batch_pos)
        return res

    def _count(self, res: BatchResult, touched: int, started: float) -> None:
        """Add one batch to the metrics."""
        m = self.metrics
        m.consumed.inc(res.consumed)
        m.forgotten_events.inc(res.forgotten_events)
        m.applied.inc(res.applied)
        m.duplicates.inc(res.duplicates)
        m.filled.inc(res.filled)
        m.dlq.inc(res.dlq)
        m.windows_written.inc(touched)
        m.batch_size.observe(res.consumed)
        m.batch_seconds.observe(time.perf_counter() - started)
        m.last_applied.set(time.time())

    def _event(
        self,
        ev: EventT[Any],
        touched: dict[tuple[int, str], Touched],
        dlq_out: list[tuple[bytes | None, bytes]],
        res: BatchResult,
    ) -> None:
        """Apply one event-topic message (invalid ones go to ``dlq_out``)."""
        s = self.settings
        msg = ev.message
        try:
            event = parse_event(msg.value, topic=msg.topic, key=msg.key,
                                max_bytes=s.max_event_bytes,
                                max_future_ms=s.max_future_ms)  # fmt: skip
        except InvalidEvent as exc:
            dlq_out.append(dlq_value(exc.message, exc.field, msg))
            return
        slot = touched.get((msg.partition, event.user_id))
        if slot is None:
            try:
                window: BehaviorWindow | None = self.store.load_window(event.user_id, ev)
            except StateCodecError as exc:
                log.error("stored window of user %r is corrupt: %s", event.user_id, exc)
                self.metrics.state_errors.inc()
                error = f"stored window of user {event.user_id!r} is corrupt: {exc}"
                dlq_out.append(dlq_value(error, "state", msg))
                return
            forgotten = self.store.load_forgotten(event.user_id, ev)
            slot = Touched(window, ev, forgotten=forgotten)
            touched[(msg.partition, event.user_id)] = slot
        if slot.forgotten is not None and ts_ms(msg) < slot.forgotten.at_ms:
            res.forgotten_events += 1  # pre-forget data: never applied
            return
        if slot.window is None:  # forgotten earlier in this batch: a new life
            slot.window = BehaviorWindow(event.user_id, self.config, fresh=[])
        if slot.window.apply(event, msg.topic, msg.partition, msg.offset):
            slot.applied += 1
            res.applied += 1
        else:
            res.duplicates += 1

    async def _write(
        self,
        touched: Mapping[tuple[int, str], Touched],
        dlq_out: Sequence[tuple[bytes | None, bytes]],
        batch_pos: Mapping[int, dict[str, int]],
    ) -> None:
        """Produce changelog + DLQ records, await acks, then update the local store."""
        st = self.store
        records = changelog_records(
            touched, batch_pos, st.durable, st.changelog, st.forgotten_changelog
        )
        producer = self.app.producer
        pending: list[Awaitable[Any]] = []
        for topic, partition, key, value in records:
            pending.append(await producer.send(topic, key, value, partition, None, None))
        for key_or_none, value in dlq_out:
            pending.append(
                await producer.send(self.settings.dlq_topic, key_or_none, value, None, None, None)
            )
        acks = await asyncio.gather(*pending)
        st.apply_acked(self.app, records, [meta.offset for meta in acks[: len(records)]])

    async def _call_hook(self, windows: Mapping[str, BehaviorWindow]) -> None:
        assert self.on_batch is not None
        await self._call(self.on_batch, windows, "on_batch hook failed for %d windows")

    async def _call(self, hook: Callable[[Any], Any], arg: Mapping[str, Any], what: str) -> None:
        """Call a hook (plain or async); log and count its exception."""
        try:
            result = hook(arg)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.metrics.hook_errors.inc()
            log.exception(what, len(arg))

    # ------------------------------------------------------------------ views
    def held_partitions(self) -> set[int]:
        """Event-topic partitions this worker actively holds."""
        try:
            actives = self.app.assignor.assigned_actives()
        except Exception:  # before the first assignment
            return set()
        return {tp.partition for tp in actives if tp.topic in self.event_topics}

    def read_window(self, user_id: str) -> BehaviorWindow | None:
        """The window of ``user_id`` if it lives on a partition this worker holds.

        Raises:
            StateCodecError: The stored bytes are corrupt.
        """
        key = user_id.encode("utf-8")
        if is_reserved_key(key):
            return None
        raw = self.store.read(key, None)
        if raw is None:
            return None
        window = BehaviorWindow.from_bytes(raw, self.config)
        parts = {int(k.rsplit(":", 1)[1]) for k in window.offsets}
        if not parts & self.held_partitions():
            return None
        return window


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
