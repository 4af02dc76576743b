"""The re-encode loop: users touched by events are re-encoded together and published.

:meth:`Reencoder.submit` queues touched windows, coalesced per user; :meth:`Reencoder.run`
flushes every ``INTEREST_FLUSH_MS`` (or at ``INTEREST_ENCODE_BATCH_MAX`` users): one batched
model call (short vectors always, long vectors when due: extended from the user's cached
incremental state if the model has ``encode_long_states``; a state of another model version
is never reused), then one output record per user (:mod:`interest_stream.core.records`).
:meth:`submit` blocks once ``max_pending`` users wait (back-pressure);
:meth:`Reencoder.maybe_reload` swaps in a new checkpoint. Design notes: docs/DESIGN.md
("Re-encode loop").
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from prometheus_client import CollectorRegistry

from interest_stream.core import records
from interest_stream.core.checkpoint import checkpoint_version
from interest_stream.core.events import Interaction
from interest_stream.streams.metrics import ReencodeMetrics
from interest_stream.streams.window import BehaviorWindow

__all__ = [
    "Encoder",
    "Publish",
    "ReencodeMetrics",
    "Reencoder",
    "build_record",
    "checkpoint_version",
]

log = logging.getLogger(__name__)


class Encoder(Protocol):
    """What the loop needs from a model (``models.InterestModel`` satisfies it).

    An encoder with a ``short_window_spec`` attribute (``(max events, minutes)``, the
    checkpoint's) gets short windows cut with it instead of the worker's settings.
    """

    model_version: str
    dim: int

    def encode_short(self, histories: Sequence[Sequence[Interaction]]) -> np.ndarray:
        """Short-term vectors, float32 ``[B, dim]``."""
        ...

    def encode_long(self, histories: Sequence[Sequence[Interaction]]) -> np.ndarray:
        """Long-term vectors, float32 ``[B, dim]``."""
        ...


class IncrementalEncoder(Encoder, Protocol):
    """An encoder that also extends cached long-term states (``models.InterestModel``)."""

    def encode_long_states(
        self, histories: Sequence[Sequence[Interaction]], states: Sequence[Any]
    ) -> tuple[np.ndarray, list[Any]]:
        """Long-term vectors and new opaque states (``None`` = none) from the old ones."""
        ...


Publish = Callable[[Sequence[tuple[bytes, bytes | None]]], Awaitable[None]]
"""Sends ``(key, value)`` records to the output topic; waits until they are queued."""


def build_record(
    user_id: str,
    window: BehaviorWindow,
    short: np.ndarray,
    long: np.ndarray,
    model_version: str,
    *,
    produced_at: int | None = None,
    now_ms: int | None = None,
) -> dict[str, Any]:
    """The output record (:func:`interest_stream.core.records.build_record`) of a window."""
    # read the window's columns directly: building 200 Interaction objects per
    # record cost ~6% of the worker's event-loop time at 5,000 events/s
    return records.build_record(
        user_id,
        version=window.version,
        event_time=window.event_time,
        updated_at=int(time.time() * 1000) if now_ms is None else now_ms,
        model_version=model_version,
        short=short,
        long=long,
        items=window.items,
        types=window.types,
        times=window.times,
        counts=window.type_counts,
        produced_at=produced_at,
    )


def _state_of(entry: _LongEntry | None, model_version: str) -> Any:
    """The cached incremental state of a user, if the model in use made it."""
    if entry is None or entry.model_version != model_version:
        return None
    return entry.state


def _close_model(model: object) -> None:
    """Release a model's resources if it has any (e.g. an encoder process)."""
    close = getattr(model, "close", None)
    if callable(close):
        close()


@dataclass
class _Pending:
    window: BehaviorWindow
    produced_at: int | None


@dataclass
class _Encoded:
    batch: list[tuple[str, _Pending]]
    model_version: str
    short: np.ndarray
    long: np.ndarray


@dataclass(slots=True)
class _LongEntry:
    """A user's cached long vector, when it is due again, and the model's state behind it."""

    due: float
    vector: np.ndarray
    state: Any
    model_version: str


async def _settle(task: asyncio.Task[int]) -> None:
    """Wait for a publish task; a failure is logged (its users were re-queued)."""
    try:
        await task
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("publishing a re-encode flush failed; its users wait again")
        await asyncio.sleep(1.0)


class Reencoder:
    """Coalescing, batching re-encoder with back-pressure and hot model reload.

    Args:
        model: The encoder in use.
        publish: Coroutine sending records to the output topic.
        flush_ms: Longest a touched user waits before its flush starts.
        batch_max: Most users per model call.
        long_refresh_s: Least seconds between two long-term encodes of a user.
        max_pending: Users waiting beyond which :meth:`submit` blocks.
        long_cache_users: Bound of the cached long-term vectors (LRU).
        long_refresh_per_flush: Most cached long vectors refreshed by one flush
            (default ``batch_max // 8``, at least 1); the rest keep theirs one flush longer.
        loader: Loads a checkpoint folder (for hot reload).
        registry: Prometheus registry for the loop's metrics (default: a private one).
    """

    def __init__(
        self,
        model: Encoder,
        publish: Publish,
        *,
        flush_ms: int = 20,
        batch_max: int = 512,
        long_refresh_s: float = 60.0,
        max_pending: int | None = None,
        long_cache_users: int = 200_000,
        long_refresh_per_flush: int | None = None,
        loader: Callable[[Path], Encoder] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.model = model
        self._publish = publish
        self.flush_s = flush_ms / 1000.0
        self.batch_max = batch_max
        self.long_refresh_s = long_refresh_s
        self.max_pending = max_pending or batch_max * 16
        self._long_cache_users = long_cache_users
        self.long_refresh_per_flush = max(1, long_refresh_per_flush or batch_max // 8)
        self._rng = random.Random(0x10A6)  # noqa: S311  (load spreading, not security)
        self._loader = loader
        self._pending: dict[str, _Pending] = {}
        # user -> its long vector, refresh time and incremental state (LRU order)
        self._long: OrderedDict[str, _LongEntry] = OrderedDict()
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
        self._stopping = False
        self.flushes = 0
        self.metrics = ReencodeMetrics(registry)
        self.metrics.model.labels(model.model_version).set(1)

    # ------------------------------------------------------------------ intake
    @property
    def pending(self) -> int:
        """Users waiting to be re-encoded."""
        return len(self._pending)

    async def submit(
        self,
        windows: Mapping[str, BehaviorWindow],
        produced_at: Mapping[str, int] | None = None,
    ) -> None:
        """Queue touched users (their newest windows); blocks while the queue is full."""
        while len(self._pending) >= self.max_pending and not self._stopping:
            self._room.clear()
            await self._room.wait()
        t0 = time.perf_counter()
        for user, window in windows.items():
            ts = produced_at.get(user) if produced_at else None
            old = self._pending.get(user)
            if old is not None and old.produced_at is not None:
                ts = old.produced_at if ts is None else max(ts, old.produced_at)
            # coalesce: the newest window replaces the older one, keeping queue position;
            # a copy, since the worker goes on applying events to its own object
            self._pending[user] = _Pending(window.view(), ts)
        self.metrics.stage_seconds.labels("submit").inc(time.perf_counter() - t0)
        self.metrics.pending.set(len(self._pending))
        if self._pending:
            self._wakeup.set()

    def forget(self, user_id: str) -> None:
        """Drop a user from the queue and the caches (right to be forgotten)."""
        self._pending.pop(user_id, None)
        self._long.pop(user_id, None)

    # ------------------------------------------------------------------ encoding
    def _take(self) -> list[tuple[str, _Pending]]:
        batch: list[tuple[str, _Pending]] = []
        for user in list(self._pending)[: self.batch_max]:
            batch.append((user, self._pending.pop(user)))
        self.metrics.pending.set(len(self._pending))
        if len(self._pending) < self.max_pending:
            self._room.set()
        return batch

    def _long_due(self, cached: Sequence[_LongEntry | None]) -> list[int]:
        """Rows needing a long encode: every user without one, plus the most overdue
        ``long_refresh_per_flush`` refreshes."""
        now = time.monotonic()
        missing = [i for i, c in enumerate(cached) if c is None]
        overdue = sorted((c.due, i) for i, c in enumerate(cached) if c is not None and c.due <= now)
        return sorted(missing + [i for _, i in overdue[: self.long_refresh_per_flush]])

    def _encode(
        self, model: Encoder, batch: list[tuple[str, _Pending]]
    ) -> tuple[np.ndarray, np.ndarray, list[int], list[Any]]:
        """Short vectors for all, long vectors for the users due (runs in the encode thread).

        Returns:
            ``(short, long, due, states)``: ``due`` are the rows whose long vector is new,
            ``states`` their new incremental states (``None`` without one).
        """
        cached = [self._long.get(user) for user, _ in batch]
        t0 = time.perf_counter()
        spec = getattr(model, "short_window_spec", None)  # the checkpoint's short window
        short = model.encode_short([p.window.short(spec) for _, p in batch])
        t1 = time.perf_counter()
        due = self._long_due(cached)
        long = np.empty_like(short)
        states: list[Any] = []
        if due:
            histories = [batch[i][1].window.long() for i in due]
            extend = getattr(model, "encode_long_states", None)
            if callable(extend):
                version = model.model_version
                prior = [_state_of(cached[i], version) for i in due]
                long[due], states = extend(histories, prior)
            else:
                long[due] = model.encode_long(histories)
                states = [None] * len(due)
        fresh_rows = set(due)
        for i, c in enumerate(cached):
            if i not in fresh_rows and c is not None:
                long[i] = c.vector
        m = self.metrics
        m.stage_seconds.labels("short").inc(t1 - t0)
        m.stage_seconds.labels("long").inc(time.perf_counter() - t1)
        incremental = sum(st is not None for st in states)
        m.long_paths.labels("incremental").inc(incremental)
        m.long_paths.labels("full").inc(len(due) - incremental)
        m.reencoded.labels("short").inc(len(batch))
        m.reencoded.labels("long").inc(len(due))
        return short, long, due, states

    def _remember_long(
        self,
        batch: list[tuple[str, _Pending]],
        long: np.ndarray,
        due: Sequence[int],
        states: Sequence[Any],
        model_version: str,
    ) -> None:
        if model_version != self.model.model_version:
            return  # encoded by a model swapped out meanwhile: cache nothing of it
        now = time.monotonic()
        for i, state in zip(due, states, strict=True):
            user = batch[i][0]
            jitter = 0.75 + 0.5 * self._rng.random()
            due_at = now + self.long_refresh_s * jitter
            self._long[user] = _LongEntry(due_at, long[i].copy(), state, model_version)
        for user, _ in batch:
            if user in self._long:
                self._long.move_to_end(user)
        while len(self._long) > self._long_cache_users:
            self._long.popitem(last=False)

    def _requeue(self, batch: list[tuple[str, _Pending]]) -> None:
        """Nobody is lost: the users wait again (unless a newer window already does)."""
        for user, pending in batch:
            self._pending.setdefault(user, pending)
        self.metrics.pending.set(len(self._pending))
        self._wakeup.set()

    async def _encode_batch(self, batch: list[tuple[str, _Pending]]) -> _Encoded:
        model = self.model
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            short, long, due, states = await loop.run_in_executor(
                self._executor, self._encode, model, batch
            )
        except BaseException:
            self._requeue(batch)
            raise
        self.metrics.encode_ms.observe((time.perf_counter() - t0) * 1000.0)
        self.metrics.batch_users.observe(len(batch))
        self._remember_long(batch, long, due, states, model.model_version)
        return _Encoded(batch, model.model_version, short, long)

    async def _publish_batch(self, enc: _Encoded) -> int:
        t1 = time.perf_counter()
        now_ms = int(time.time() * 1000)
        try:
            out = [
                (
                    records.encode_key(user),
                    records.dumps_record(
                        build_record(
                            user,
                            p.window,
                            enc.short[i],
                            enc.long[i],
                            enc.model_version,
                            produced_at=p.produced_at,
                            now_ms=now_ms,
                        )
                    ),
                )
                for i, (user, p) in enumerate(enc.batch)
            ]
            t2 = time.perf_counter()
            self.metrics.stage_seconds.labels("records").inc(t2 - t1)
            await self._publish(out)
            self.metrics.stage_seconds.labels("publish").inc(time.perf_counter() - t2)
        except BaseException:
            self._requeue(enc.batch)
            raise
        self.metrics.publish_ms.observe((time.perf_counter() - t1) * 1000.0)
        self.metrics.published.inc(len(out))
        self.flushes += 1
        return len(out)

    async def flush_once(self) -> int:
        """Encode and publish up to one batch; returns the users published."""
        batch = self._take()
        if not batch:
            return 0
        return await self._publish_batch(await self._encode_batch(batch))

    async def run(self) -> None:
        """Flush loop: wait for work, give it ``flush_ms`` to coalesce, encode, publish.

        Pipelined: while one flush's records are built and wait for Kafka's acks, the
        next batch is already encoding. A flush's records are sent only after the
        previous flush's were acknowledged, so a user's records stay in order.
        """
        inflight: asyncio.Task[int] | None = None
        try:
            while not self._stopping:
                if not self._pending:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), timeout=1.0)
                    except TimeoutError:
                        continue
                    if len(self._pending) < self.batch_max:
                        await asyncio.sleep(self.flush_s)
                batch = self._take()
                if not batch:
                    continue
                try:
                    encoded = await self._encode_batch(batch)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("re-encode flush failed; retrying in 1 s")
                    await asyncio.sleep(1.0)
                    continue
                if inflight is not None:
                    await _settle(inflight)
                inflight = asyncio.ensure_future(self._publish_batch(encoded))
        finally:
            if inflight is not None and not inflight.done():
                await _settle(inflight)

    async def drain(self, timeout: float = 30.0) -> None:
        """Flush everything pending (at shutdown)."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            await self.flush_once()

    def close(self) -> None:
        """Stop the loop and the encode thread."""
        self._stopping = True
        self._room.set()
        self._wakeup.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        _close_model(self.model)

    # ------------------------------------------------------------------ hot reload
    async def maybe_reload(self, model_dir: Path) -> bool:
        """Swap in the checkpoint in ``model_dir`` if its version differs; True if swapped."""
        version = checkpoint_version(model_dir)
        if version is None or version == self.model.model_version or self._loader is None:
            return False
        loader = self._loader
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(self._executor, loader, model_dir)
        except Exception:
            log.exception("new checkpoint %s in %s cannot be loaded; keeping %s",
                          version, model_dir, self.model.model_version)  # fmt: skip
            return False
        if new.dim != self.model.dim:
            log.warning(
                "checkpoint %s has dim %d, the running model %d: swapping anyway; "
                "API replicas must load the same checkpoint",
                new.model_version, new.dim, self.model.dim,
            )  # fmt: skip
        self.metrics.model.labels(self.model.model_version).set(0)
        old, self.model = self.model, new
        # closed after any flush already queued on the encode thread with the old model
        loop.run_in_executor(self._executor, _close_model, old)
        self.metrics.model.labels(new.model_version).set(1)
        self._long.clear()
        log.info("model %s swapped in; re-encoding users progressively", new.model_version)
        return True

    async def sweep(
        self,
        windows: AsyncIterator[tuple[str, BehaviorWindow]] | Iterable[tuple[str, BehaviorWindow]],
        *,
        per_second: float = 2000.0,
    ) -> int:
        """Submit every given user at a bounded pace (after a model swap); returns the count."""
        n = 0
        chunk: dict[str, BehaviorWindow] = {}
        step = max(1, int(per_second * 0.1))

        async def push() -> None:
            await self.submit(dict(chunk))
            chunk.clear()
            await asyncio.sleep(0.1)

        if hasattr(windows, "__aiter__"):
            async for user, window in windows:
                chunk[user] = window
                n += 1
                if len(chunk) >= step:
                    await push()
        else:
            for user, window in windows:
                chunk[user] = window
                n += 1
                if len(chunk) >= step:
                    await push()
        if chunk:
            await push()
        return n
