"""Explanations by occlusion: which of a user's events drive a score (numpy only).

For one user's window and a set of target vectors (returned items, an audience query),
an event's contribution is ``score(window) - score(window without the event)``; every
variant is encoded in one batched call of the worker's encoder
(``encode_variants``: the model, or its child process). The empty window's score is
the non-event part (the prior). The score function is pluggable (:class:`Scorer`): the
vector score of a horizon today, a learned re-ranker's later. Definitions, shares and
measurements: docs/DESIGN.md ("Explanations"), docs/CONTRACTS.md (section 6).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from interest_stream.core.errors import InterestStreamError
from interest_stream.core.events import Interaction
from interest_stream.core.records import HORIZONS
from interest_stream.core.vectors import blend
from interest_stream.streams.window import BehaviorWindow

__all__ = [
    "DEFAULT_LONG_EVENTS",
    "ExplainError",
    "Explainer",
    "Scorer",
    "VariantEncoder",
    "Variants",
    "VectorScorer",
    "explain_window",
    "occlusion_units",
]

log = logging.getLogger(__name__)

DEFAULT_LONG_EVENTS = 50
"""Newest events of the long history occluded one by one; older ones form one group."""
MAX_TARGETS = 1000
CACHE_USERS = 2048


class ExplainError(InterestStreamError, ValueError):
    """A request the explainer cannot answer (bad targets, unknown horizon)."""


@runtime_checkable
class VariantEncoder(Protocol):
    """An encoder that encodes one window's occlusion variants in one call."""

    def encode_variants(
        self,
        short: Sequence[Interaction],
        short_drops: Sequence[Sequence[int]],
        long: Sequence[Interaction],
        long_drops: Sequence[Sequence[int]],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of ``short`` / ``long`` without each drop set's indices."""
        ...


class _PlainEncoder(Protocol):
    model_version: str
    dim: int

    def encode_short(self, histories: Sequence[Sequence[Interaction]]) -> np.ndarray: ...

    def encode_long(self, histories: Sequence[Sequence[Interaction]]) -> np.ndarray: ...


@dataclass(frozen=True)
class Unit:
    """What one occlusion removes: one event, or the group of older events.

    ``indices`` are positions in the long history (oldest first).
    """

    indices: tuple[int, ...]
    group: bool = False


@dataclass
class Variants:
    """The encoded variants of one window, aligned per unit.

    ``short[0]`` / ``long[0]``: the whole window; ``[1 + u]``: without unit ``u``;
    ``[-1]``: the empty window. A path the horizon does not use is all zeros.
    """

    units: list[Unit]
    short: np.ndarray
    long: np.ndarray
    history: list[Interaction]


class Scorer(Protocol):
    """Scores the variants of one window against targets (pluggable: vector score,
    a learned re-ranker)."""

    def score(self, variants: Variants, targets: np.ndarray) -> np.ndarray:
        """float ``[1 + U + 1, T]``: the event-dependent score of each variant and target."""
        ...

    def terms(self, targets: np.ndarray) -> dict[str, np.ndarray]:
        """Non-event terms of the score (the same for every variant), ``name -> [T]``."""
        ...


@dataclass(frozen=True)
class VectorScorer:
    """The inner product of the horizon's user vector with each target (the API's ranking).

    ``blend`` is ``weight * short + (1 - weight) * long`` (the API's ``blend_weight``).
    """

    horizon: str
    weight: float = 0.5

    def score(self, variants: Variants, targets: np.ndarray) -> np.ndarray:
        """Inner products ``[V, T]`` (float64)."""
        if self.horizon == "short":
            user = variants.short
        elif self.horizon == "long":
            user = variants.long
        else:
            user = blend(variants.short, variants.long, self.weight)
        return user.astype(np.float64) @ targets.astype(np.float64).T

    def terms(self, targets: np.ndarray) -> dict[str, np.ndarray]:
        """None: the vector score has no non-event term besides the prior."""
        return {}


def occlusion_units(
    n: int, short_start: int, horizon: str, long_events: int
) -> tuple[list[Unit], int]:
    """The units to occlude in a history of ``n`` events whose short window starts at
    ``short_start``: every short-window event; for ``long``/``blend`` also the newest
    ``long_events`` (at least the short window) one by one and the older ones as one group.

    Returns:
        ``(units newest first, first index occluded alone)``.
    """
    first = short_start
    if horizon != "short":
        first = min(short_start, max(0, n - max(long_events, 1)))
    units = [Unit((i,)) for i in range(n - 1, first - 1, -1)]
    if horizon != "short" and first > 0:
        units.append(Unit(tuple(range(first)), group=True))
    return units, first


def encode_units(
    model: Any, history: list[Interaction], short_start: int, units: Sequence[Unit], horizon: str
) -> Variants:
    """Encode the variants of ``units`` (one call to the encoder per path)."""
    n = len(history)
    short = history[short_start:]
    ns = n - short_start
    short_drops: list[list[int]] = [[]]
    short_row = []
    long_drops: list[list[int]] = [[]]
    use_short = horizon != "long"
    use_long = horizon != "short"
    for u in units:
        in_short = [i - short_start for i in u.indices if i >= short_start]
        if use_short and in_short:
            short_row.append(len(short_drops))
            short_drops.append(in_short)
        else:
            short_row.append(0)
        if use_long:
            long_drops.append(list(u.indices))
    short_drops.append(list(range(ns)))
    if use_long:
        long_drops.append(list(range(n)))
    if not use_short:
        short_drops = []
    lh = history if use_long else []
    if not use_long:
        long_drops = []
    s: np.ndarray | None = None
    lo: np.ndarray | None = None
    if isinstance(model, VariantEncoder):
        s, lo = model.encode_variants(short, short_drops, lh, long_drops)
    else:  # any Encoder: one copy of the window per variant
        plain: _PlainEncoder = model
        if short_drops:
            s = plain.encode_short(_without(short, short_drops))
        if long_drops:
            lo = plain.encode_long(_without(lh, long_drops))
    v = len(units) + 2
    zeros = np.zeros((v, int(model.dim)), dtype=np.float32)
    s_al = zeros
    if use_short and s is not None:
        s_al = np.asarray(s, dtype=np.float32)[[0, *short_row, len(short_drops) - 1]]
    lo_al = np.asarray(lo, dtype=np.float32) if use_long and lo is not None else zeros
    return Variants(list(units), s_al, lo_al, history)


def _without(history: Sequence[Interaction], drops: Sequence[Sequence[int]]) -> list[list[Any]]:
    out = []
    for d in drops:
        gone = set(d)
        out.append([e for i, e in enumerate(history) if i not in gone])
    return out


def explain_window(
    variants: Variants, scorer: Scorer, targets: np.ndarray, top: int
) -> list[dict[str, Any]]:
    """Per target: score, prior, non-event terms and the top ``top`` contributing units.

    ``delta`` of a unit = score(whole) - score(without it); shares divide by
    ``Z = sum |delta| + |prior| + sum |terms|`` over every unit (signed; their absolute
    values sum to 1). ``rest`` = score - prior - terms - sum of deltas (what removing
    single events does not show: interactions between events).
    """
    scores = scorer.score(variants, targets)  # [V, T]
    terms = scorer.terms(targets)
    full, prior = scores[0], scores[-1]
    deltas = full[None, :] - scores[1:-1]  # [U, T]
    out = []
    for t in range(targets.shape[0]):
        d = deltas[:, t]
        term_t = {k: float(v[t]) for k, v in terms.items()}
        z = float(np.abs(d).sum() + abs(prior[t]) + sum(abs(x) for x in term_t.values()))
        z = z if z > 0 else 1.0
        order = np.argsort(-d, kind="stable")[: max(0, top)]
        events = []
        for u in order:
            unit = variants.units[int(u)]
            item: dict[str, Any] = {"delta": float(d[u]), "share": float(d[u] / z)}
            if unit.group:
                item.update(group="older", events=len(unit.indices))
            else:
                e = variants.history[unit.indices[0]]
                item.update(item_id=e[0], event_type=e[1], ts=int(e[2]))
            events.append(item)
        total = float(full[t])
        out.append(
            {
                "score": total,
                "prior": float(prior[t]),
                "prior_share": float(prior[t] / z),
                "terms": {k: {"value": x, "share": x / z} for k, x in term_t.items()},
                "rest": total - float(prior[t]) - sum(term_t.values()) - float(d.sum()),
                "events": events,
            }
        )
    return out


@dataclass
class _Cached:
    key: tuple[Any, ...]
    variants: Variants


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
    """

    model: Any
    cache_users: int = CACHE_USERS
    metrics: Any = None
    loader: Any = None
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
    hits: int = 0
    misses: int = 0

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
        old, self._own = self._own, new
        if new.model_version != version:
            log.info("explanations' encoder %s loaded (shared: %s)", new.model_version, version)
        close = getattr(old, "close", None)
        if callable(close):
            close()

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
            self.misses += 1
            history = window.long()
            # the short window as the re-encoder cuts it: with the checkpoint's span
            start = len(history) - len(window.short(getattr(model, "short_window_spec", None)))
            units, _ = occlusion_units(len(history), start, horizon, long_events)
            loop = asyncio.get_running_loop()
            variants = await loop.run_in_executor(
                self._executor, encode_units, model, history, start, units, horizon
            )
            if self.cache_users > 0:
                self._cache[user] = _Cached(key, variants)
                self._cache.move_to_end(user)
                while len(self._cache) > self.cache_users:
                    self._cache.popitem(last=False)
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

    def close(self) -> None:
        """Stop the explain threads and the own encoder."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._loading.shutdown(wait=False, cancel_futures=True)
        close = getattr(self._own, "close", None)
        if callable(close):
            close()
