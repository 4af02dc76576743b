"""The worker's explanations service: which of a user's events drive a score (numpy only).

:class:`Explainer` answers ``POST /explain/``: it cuts the user's window into occlusion
units, encodes their variants in the worker's encoder and scores them
(:mod:`.attribution`: the method; :mod:`.explain_rerank`: the re-ranker's score).
Concurrent requests are **batched**: while the encoder works on one batch, new requests
queue, and the next batch encodes all of them in one call (``encode_variants_many``);
a full queue answers :class:`ExplainBusy` at once (the web view's 429) instead of
queueing without bound. Design and measurements: docs/DESIGN.md ("Explanations").
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from interest_stream.core.errors import InterestStreamError
from interest_stream.core.new_items import ExtraItemInputs
from interest_stream.core.records import HORIZONS
from interest_stream.streams.attribution import (
    Plan,
    Scorer,
    Unit,
    VariantEncoder,
    Variants,
    VectorScorer,
    align,
    encode_batch,
    encode_units,
    explain_window,
    occlusion_units,
    plan_units,
)
from interest_stream.streams.window import BehaviorWindow

__all__ = [
    "BATCH_MAX",
    "DEFAULT_LONG_EVENTS",
    "MAX_PENDING",
    "ExplainBusy",
    "ExplainError",
    "Explainer",
    "Scorer",
    "Unit",
    "VariantEncoder",
    "Variants",
    "VectorScorer",
    "encode_units",
    "explain_window",
    "occlusion_units",
]

log = logging.getLogger(__name__)

DEFAULT_LONG_EVENTS = 50
"""Newest events of the long history occluded one by one; older ones form one group."""
MAX_TARGETS = 1000
CACHE_USERS = 2048
BATCH_MAX = 16
"""Windows encoded in one call of the encoder at most."""
MAX_PENDING = 16
"""Windows waiting for the encoder at most; one more is refused (:class:`ExplainBusy`)."""


class ExplainError(InterestStreamError, ValueError):
    """A request the explainer cannot answer (bad targets, unknown horizon)."""


class ExplainBusy(InterestStreamError):
    """The explanation queue is full: answer "busy" now rather than late."""


@dataclass
class _Cached:
    key: tuple[Any, ...]
    variants: Variants


@dataclass
class _Job:
    key: tuple[Any, ...]
    user: str
    model: Any
    plan: Plan
    future: asyncio.Future[Variants]


@dataclass
class Explainer:
    """Explains users of the worker's windows with the encoder in use (see the module).

    Args:
        model: Returns the encoder in use (the re-encoder's, swapped on hot reload).
        cache_users: Encoded variants kept (LRU; key: user, window version, model
            version, horizon, long_events), so repeated questions cost a matrix product;
            0 = no cache.
        metrics: The worker's metrics (``interest_worker_explain_*``), if any.
        loader: Loads an encoder of its own for explanations (e.g. a second encoder
            process, so explanations do not queue behind the re-encode flushes); loaded
            in the background on the first explanation (or :meth:`start`) and after a
            model swap, the shared encoder answers meanwhile. ``None``: always the
            shared one.
        batch_max: Windows encoded in one encoder call at most.
        max_pending: Windows waiting at most; beyond, :meth:`explain` raises
            :class:`ExplainBusy` (0 = no bound).
    """

    model: Any
    cache_users: int = CACHE_USERS
    metrics: Any = None
    loader: Any = None
    batch_max: int = BATCH_MAX
    max_pending: int = MAX_PENDING
    _cache: OrderedDict[str, _Cached] = field(default_factory=OrderedDict)
    _executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="explain")
    )
    _loading: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="explain-load")
    )
    _own: Any = None
    _pending_load: Any = None
    _loaded_for: str | None = None
    _queue: list[_Job] = field(default_factory=list)
    _extras: ExtraItemInputs = field(default_factory=ExtraItemInputs)
    _extras_for: str | None = None
    _extras_lock: threading.Lock = field(default_factory=threading.Lock)
    _drain: asyncio.Task[None] | None = None
    hits: int = 0
    misses: int = 0
    rejected: int = 0
    batches: int = 0

    def _encoder(self) -> Any:
        """The encoder to explain with: the own one when it has the shared one's version."""
        shared = self.model()
        if self.loader is None:
            return shared
        own = self._own
        if own is not None and own.model_version == shared.model_version:
            return own
        # one load per shared model version (a failed or mismatched load is not retried
        # until the re-encoder swaps models)
        if self._loaded_for != shared.model_version and (
            self._pending_load is None or self._pending_load.done()
        ):
            self._loaded_for = shared.model_version
            self._pending_load = self._loading.submit(self._load, shared.model_version)
        return shared

    def _load(self, version: str) -> None:
        try:
            new = self.loader()
        except Exception:
            log.exception("loading the explanations' own encoder failed; using the shared one")
            return
        with self._extras_lock:
            old, self._own = self._own, new
            ids, rows = self._extras.arrays(0) if new.model_version == self._extras_for else ([], 0)
        self._send_extras(new, ids, rows)
        if new.model_version != version:
            log.info("explanations' encoder %s loaded (shared: %s)", new.model_version, version)
        close = getattr(old, "close", None)
        if callable(close):
            close()

    def update_extra_items(self, ids: list[str], inputs: Any) -> None:
        """New items' input rows (as the re-encoder's encoder gets them): kept, and sent to
        the own encoder (now if loaded, else when it loads; blocking: call off the loop)."""
        version = self.model().model_version  # the rows are the shared checkpoint's
        with self._extras_lock:
            if version != self._extras_for:
                self._extras, self._extras_for = ExtraItemInputs(), version
            self._extras.merge(ids, inputs)
            own = self._own
        if own is not None and own.model_version == version:
            self._send_extras(own, ids, inputs)

    @staticmethod
    def _send_extras(encoder: Any, ids: list[str], inputs: Any) -> None:
        update = getattr(encoder, "update_extra_items", None)
        if ids and callable(update):
            try:
                update(ids, inputs)
            except Exception:  # explanations then see those items as unknown (OOV)
                log.exception("the explanations' encoder did not take %d new items", len(ids))

    def start(self) -> None:
        """Start loading the own encoder (when there is a loader)."""
        if self.loader is not None and self._pending_load is None:
            self._loaded_for = self.model().model_version
            self._pending_load = self._loading.submit(self._load, self._loaded_for)

    def forget(self, user_id: str) -> None:
        """Drop a user's cached variants."""
        self._cache.pop(user_id, None)

    async def explain(
        self,
        window: BehaviorWindow,
        targets: np.ndarray,
        *,
        horizon: str = "blend",
        weight: float = 0.5,
        long_events: int = DEFAULT_LONG_EVENTS,
        top: int = 5,
        scorer: Scorer | None = None,
    ) -> dict[str, Any]:
        """The explanation of ``window`` for ``targets`` (``[T, dim]``), off the event loop.

        Raises:
            ExplainError: Bad horizon or targets of another dimension.
            ExplainBusy: The queue of windows waiting for the encoder is full.
        """
        model = self._encoder()
        if horizon not in HORIZONS:
            raise ExplainError(f"horizon must be one of {', '.join(HORIZONS)}")
        t = np.asarray(targets, dtype=np.float32)
        if t.ndim != 2 or t.shape[1] != int(model.dim) or not 0 < t.shape[0] <= MAX_TARGETS:
            raise ExplainError(
                f"targets must be 1..{MAX_TARGETS} vectors of dimension {model.dim}, "
                f"got shape {list(t.shape)}"
            )
        if not np.isfinite(t).all():
            raise ExplainError("targets must be finite")
        t0 = time.perf_counter()
        user = window.user_id
        key = (window.version, model.model_version, horizon, long_events)
        hit = self._cache.get(user)
        cached = hit is not None and hit.key == key
        if hit is not None and cached:
            self.hits += 1
            self._cache.move_to_end(user)
            variants = hit.variants
        else:
            variants = await self._variants(window, model, key, horizon, long_events)
        sc = scorer or VectorScorer(horizon, weight)
        results = explain_window(variants, sc, t, top)
        if self.metrics is not None:
            self.metrics.explains.labels("hit" if cached else "miss").inc()
            self.metrics.explain_ms.observe((time.perf_counter() - t0) * 1000.0)
        return {
            "user_id": user,
            "version": window.version,
            "model_version": model.model_version,
            "horizon": horizon,
            "history_events": len(variants.history),
            "occluded": sum(not u.group for u in variants.units),
            "older_events": sum(len(u.indices) for u in variants.units if u.group),
            "results": results,
        }

    async def _variants(
        self, window: BehaviorWindow, model: Any, key: tuple[Any, ...], horizon: str, n_long: int
    ) -> Variants:
        """The window's encoded variants: queued for the next batch (or joined to a
        queued job of the same user and key)."""
        user = window.user_id
        for job in self._queue:
            if job.user == user and job.key == key:
                return await asyncio.shield(job.future)
        if self.max_pending and len(self._queue) >= self.max_pending:
            self.rejected += 1
            if self.metrics is not None:
                self.metrics.explains.labels("busy").inc()
            raise ExplainBusy(f"{len(self._queue)} explanations are waiting for the encoder")
        self.misses += 1
        history = window.long()
        # the short window as the re-encoder cuts it: with the checkpoint's span
        start = len(history) - len(window.short(getattr(model, "short_window_spec", None)))
        units, _ = occlusion_units(len(history), start, horizon, n_long)
        loop = asyncio.get_running_loop()
        job = _Job(
            key, user, model, plan_units(history, start, units, horizon), loop.create_future()
        )
        self._queue.append(job)
        if self._drain is None or self._drain.done():
            self._drain = loop.create_task(self._run_batches())
        variants = await asyncio.shield(job.future)
        if self.cache_users > 0:
            self._cache[user] = _Cached(key, variants)
            self._cache.move_to_end(user)
            while len(self._cache) > self.cache_users:
                self._cache.popitem(last=False)
        return variants

    async def _run_batches(self) -> None:
        """Encode the queue batch by batch (one encoder call per batch, same model)."""
        while self._queue:
            model = self._queue[0].model
            batch = [j for j in self._queue if j.model is model][: self.batch_max]
            taken = {id(j) for j in batch}
            self._queue = [j for j in self._queue if id(j) not in taken]
            self.batches += 1
            if self.metrics is not None and hasattr(self.metrics, "explain_batch"):
                self.metrics.explain_batch.observe(len(batch))
            try:
                got = await self._encode(model, [j.plan for j in batch])
            except Exception as exc:  # every waiting request gets the encoder's error
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            for j, v in zip(batch, got, strict=True):
                if not j.future.done():
                    j.future.set_result(v)

    async def _encode(self, model: Any, plans: list[Plan]) -> list[Variants]:
        """One encoder call for ``plans``: an encoder process's future awaited on the loop
        (no thread hop), else :func:`encode_batch` on the explain thread (also when the
        child died: that path replaces it and retries once)."""
        loop = asyncio.get_running_loop()
        submit = getattr(model, "submit_variants_many", None)
        if callable(submit):
            try:
                raw = await asyncio.wrap_future(submit([p.job for p in plans]))
            except BrokenProcessPool:
                log.warning("the explanations' encoder process died; retrying once")
            else:
                dim = int(model.dim)
                return [align(p, s, lo, dim) for p, (s, lo) in zip(plans, raw, strict=True)]
        return await loop.run_in_executor(self._executor, encode_batch, model, plans)

    def close(self) -> None:
        """Stop the explain threads and the own encoder."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._loading.shutdown(wait=False, cancel_futures=True)
        close = getattr(self._own, "close", None)
        if callable(close):
            close()
