"""Repeat-aware re-ranking: candidate features and the linear scorer (numpy only, no torch).

The one feature-and-scoring module of the two-stage ranking (issue #13): training and
evaluation (``interest_stream.models.rerank_fit``) and the API's ``/recommendations`` call
the same functions, so the numbers cannot drift apart. A user's candidates are the top
items of the blended vector plus the user's own items among their latest
:data:`RECENT_EVENTS` events (the output record's ``recent``); :func:`candidate_features`
describes each (vector scores per horizon, own touches per event type, recency,
popularity, trend); :class:`Reranker` is a linear model over them (softmax over the
candidate list when fit), so every score is a sum of per-feature terms
(:meth:`Reranker.contributions`). On disk: ``rerank.json`` + ``rerank_items.npy`` beside
the checkpoint's item vectors (:func:`load_reranker`). Design: docs/DESIGN.md.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from interest_stream.core.checkpoint import (
    CheckpointError,
    load_item_vectors,
    read_json,
    write_json,
)
from interest_stream.core.events import EVENT_TYPES
from interest_stream.core.records import RECENT_IN_RECORD

__all__ = [
    "FEATURES",
    "FEATURE_SETS",
    "ITEM_STATS",
    "RECENT_EVENTS",
    "RERANK_FILE",
    "RERANK_FORMAT",
    "RERANK_ITEMS_FILE",
    "RankedItems",
    "RecentEvent",
    "RerankItems",
    "Reranker",
    "candidate_features",
    "candidate_ids",
    "item_stats",
    "load_reranker",
    "recent_events",
    "write_reranker",
]

RERANK_FORMAT: Final = 1
"""Version of ``rerank.json``; a file of another version is refused."""
RERANK_FILE: Final = "rerank.json"
RERANK_ITEMS_FILE: Final = "rerank_items.npy"
RECENT_EVENTS: Final = RECENT_IN_RECORD
"""Events the features read: the latest ones, as many as an output record's ``recent``."""

RecentEvent = tuple[str, str, int]
"""``(item_id, event_type, ts_ms)``, as in an output record's ``recent``."""

ITEM_STATS: Final[tuple[str, ...]] = ("log_pop", "log_trend_1d", "log_trend_7d")
"""Per-item columns of ``rerank_items.npy``: ``log1p`` of the item's events in the whole
training period, in its last day and in its last 7 days."""
_TREND_DAYS = (1.0, 7.0)

_TYPE_FEATURES = tuple(f"n_{t}" for t in EVENT_TYPES)
FEATURES: Final[tuple[str, ...]] = (
    "s_short", "s_long", "s_blend", "z_blend", "unknown",
    "in_recent", "is_last", *_TYPE_FEATURES, "log_touches",
    "pos_decay", "age_decay_1h", "age_decay_1d",
    *ITEM_STATS,
    "recent_x_long", "recent_x_pop",
)  # fmt: skip
"""Every feature :func:`candidate_features` computes, in column order:

* ``s_short`` / ``s_long`` / ``s_blend``: inner product of the user's vector with the item's
  (0 when the checkpoint has no vector for the item); ``z_blend``: ``s_blend`` standardised
  over the user's candidate list; ``unknown``: 1 when the item has no vector;
* ``in_recent``: the item is among the latest events; ``is_last``: it is the newest event's
  item; ``n_<type>``: ``log1p`` of its events of that type; ``log_touches``: ``log1p`` of all;
* ``pos_decay``: ``1 / (1 + p)`` with ``p`` the position of its newest event from the end
  (0 = the newest event), 0 when absent; ``age_decay_1h`` / ``age_decay_1d``:
  ``exp(-age / 1 h)`` / ``exp(-age / 1 day)``, age = newest event's time - item's newest
  event's time, 0 when absent;
* :data:`ITEM_STATS` (0 for items without stats);
* crosses: ``in_recent * s_long``, ``in_recent * log_pop``.
"""
FEATURE_SETS: Final[dict[str, tuple[str, ...]]] = {
    "vector": ("s_short", "s_long", "s_blend", "unknown"),
    "repeat": (
        "s_short", "s_long", "s_blend", "unknown", "in_recent", "is_last", *_TYPE_FEATURES,
        "log_touches", "pos_decay", "age_decay_1h", "age_decay_1d",
    ),
    "full": FEATURES,
}  # fmt: skip
"""Feature sets tried on validation (``full`` = every feature)."""

_COL = {name: k for k, name in enumerate(FEATURES)}
_TYPE_COL = {t: _COL[f"n_{t}"] for t in EVENT_TYPES}


def recent_events(history: Iterable[Sequence[Any]], n: int = RECENT_EVENTS) -> list[RecentEvent]:
    """The latest ``n`` events of a time-ordered history as ``(item, type, ts)`` tuples.

    Args:
        history: Events oldest first: ``Interaction`` tuples or ``[item, type, ts]`` lists.
        n: How many of the newest to keep (the record's ``recent`` holds 20).
    """
    tail = list(history)[-n:] if n > 0 else []
    return [(str(e[0]), str(e[1]), int(e[2])) for e in tail]


def candidate_ids(top_ids: Sequence[str], recent: Sequence[RecentEvent], n_top: int) -> list[str]:
    """The candidate list: the first ``n_top`` of ``top_ids`` (vector ranking, best first),
    then the user's own recent items not among them (distinct, newest first)."""
    out = list(dict.fromkeys(top_ids[:n_top]))
    seen = set(out)
    for item, _t, _ts in reversed(recent):
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


class RerankItems:
    """What the features need about the catalogue: item vectors and item statistics.

    Args:
        ids: Item ids in row order (the checkpoint's ``items.json``).
        vectors: float32 ``[n, dim]`` item vectors (``item_vectors.npy``).
        stats: float32 ``[n, len(ITEM_STATS)]`` (``rerank_items.npy``).
    """

    def __init__(self, ids: Sequence[str], vectors: np.ndarray, stats: np.ndarray) -> None:
        if vectors.shape[0] != len(ids) or stats.shape != (len(ids), len(ITEM_STATS)):
            raise CheckpointError(
                f"re-ranker items: {len(ids)} ids, vectors {vectors.shape}, stats {stats.shape}"
            )
        self.ids = list(ids)
        self.row: dict[str, int] = {item: r for r, item in enumerate(self.ids)}
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.stats = np.ascontiguousarray(stats, dtype=np.float32)

    def rows(self, ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Row of each id, -1 for ids without a vector."""
        get = self.row.get
        return np.fromiter((get(i, -1) for i in ids), dtype=np.int64, count=len(ids))


def candidate_features(
    items: RerankItems,
    short: np.ndarray,
    long: np.ndarray,
    blend: np.ndarray,
    cand: Sequence[str],
    recent: Sequence[RecentEvent],
    hidden: Collection[str] = (),
    rows: npt.NDArray[np.int64] | None = None,
) -> npt.NDArray[np.float64]:
    """The feature matrix ``[len(cand), len(FEATURES)]`` of one user's candidates.

    Args:
        items: The catalogue's vectors and statistics.
        short: The user's short vector ``[dim]``.
        long: The user's long vector ``[dim]``.
        blend: The user's blended vector ``[dim]`` (the checkpoint's alpha).
        cand: Candidate item ids (:func:`candidate_ids`).
        recent: The user's latest events, oldest first (:func:`recent_events`).
        hidden: Items treated as having no vector (training's stand-in for items born
            after the checkpoint; serving passes none).
        rows: Each candidate's row in ``items`` (-1: none) when the caller knows them
            (``items.rows(cand)``, which is computed otherwise); not modified.

    Returns:
        float64 features in :data:`FEATURES` order (see there).
    """
    n = len(cand)
    x = np.zeros((n, len(FEATURES)), dtype=np.float64)
    if n == 0:
        return x
    rows = items.rows(cand) if rows is None else rows.copy() if hidden else rows
    if hidden:
        rows[[k for k, c in enumerate(cand) if c in hidden]] = -1
    known = rows >= 0
    every = bool(known.all())  # the usual case: plain slices instead of masks (same values)
    kr = rows if every else rows[known]
    if len(kr):
        vecs = items.vectors[kr]
        user = np.stack([short, long, blend]).astype(np.float32)
        pop = slice(_COL["log_pop"], _COL["log_pop"] + len(ITEM_STATS))
        if every:
            x[:, 0:3] = vecs @ user.T
            x[:, pop] = items.stats[kr]
        else:
            x[known, 0:3] = (vecs @ user.T).astype(np.float64)
            x[known, pop] = items.stats[kr]
            x[~known, _COL["unknown"]] = 1.0
    else:
        x[:, _COL["unknown"]] = 1.0
    # z_blend: ndarray.std's arithmetic written out (the same bits, a fraction of its cost)
    sb = x[:, _COL["s_blend"]]
    dev = sb - np.add.reduce(sb) / n
    sd = float(np.sqrt(np.add.reduce(dev * dev) / n))
    x[:, _COL["z_blend"]] = dev / sd if sd > 0 else 0.0
    if recent:
        _touch_features(x, cand, recent)
    return x


def _touch_features(
    x: npt.NDArray[np.float64], cand: Sequence[str], recent: Sequence[RecentEvent]
) -> None:
    """Fill the own-touch columns of ``x`` (in place) from the user's recent events.

    Only the candidates among the recent items have non-zero touch features: they are
    computed for those rows alone (the same element-wise arithmetic as over every row).
    """
    pos = {item: k for k, item in enumerate(cand)}
    newest_ts = max(ts for _i, _t, ts in recent)
    first_type = _TYPE_COL[EVENT_TYPES[0]]
    n_types = len(EVENT_TYPES)
    # candidate row -> [count per event type..., events back from the newest, its time]
    touch: dict[int, list[int]] = {}
    m = len(recent)
    for j, (item, etype, ts) in enumerate(recent):
        k = pos.get(item)
        if k is None:
            continue
        acc = touch.get(k)
        if acc is None:
            acc = touch[k] = [0] * (n_types + 2)
        t = _TYPE_COL.get(etype)
        if t is not None:
            acc[t - first_type] += 1
        acc[n_types] = m - 1 - j  # the latest occurrence is the newest (smallest back)
        acc[n_types + 1] = ts
    last_item = pos.get(recent[-1][0])
    if last_item is not None:
        x[last_item, _COL["is_last"]] = 1.0
    if touch:
        at = np.fromiter(touch, dtype=np.int64, count=len(touch))
        acc_arr = np.array(list(touch.values()), dtype=np.int64)
        counts = acc_arr[:, :n_types].astype(np.float64)
        last_pos = acc_arr[:, n_types]
        last_ts = acc_arr[:, n_types + 1]
        x[at, _COL["in_recent"]] = 1.0
        x[at, first_type : first_type + n_types] = np.log1p(counts)
        x[at, _COL["log_touches"]] = np.log1p(counts.sum(axis=1))
        age_h = np.maximum(newest_ts - last_ts, 0) / 3_600_000.0
        x[at, _COL["pos_decay"]] = 1.0 / (1.0 + last_pos)
        x[at, _COL["age_decay_1h"]] = np.exp(-age_h)
        x[at, _COL["age_decay_1d"]] = np.exp(-age_h / 24.0)
    x[:, _COL["recent_x_long"]] = x[:, _COL["in_recent"]] * x[:, _COL["s_long"]]
    x[:, _COL["recent_x_pop"]] = x[:, _COL["in_recent"]] * x[:, _COL["log_pop"]]


def item_stats(
    item_rows: npt.NDArray[Any], ts: npt.NDArray[Any], n_items: int, end_ts: int
) -> npt.NDArray[np.float32]:
    """:data:`ITEM_STATS` of a catalogue from its training events.

    Args:
        item_rows: Row of each event's item (-1: not in the catalogue, ignored).
        ts: Each event's time (ms).
        n_items: Catalogue size.
        end_ts: End of the training period (exclusive); the trend windows end there.

    Returns:
        float32 ``[n_items, len(ITEM_STATS)]``.
    """
    item_rows = np.asarray(item_rows, dtype=np.int64)
    ok = item_rows >= 0
    rows, times = item_rows[ok], np.asarray(ts, dtype=np.int64)[ok]
    cols = [np.bincount(rows, minlength=n_items)]
    for days in _TREND_DAYS:
        recent = times >= end_ts - int(days * 86_400_000)
        cols.append(np.bincount(rows[recent], minlength=n_items))
    out: npt.NDArray[np.float32] = np.log1p(np.stack(cols, axis=1).astype(np.float64)).astype(
        np.float32
    )
    return out


@dataclass
class RankedItems:
    """One user's re-ranked candidates, best first.

    Attributes:
        items: Item ids.
        scores: The re-ranker's scores (sum of ``contributions`` per row).
        features: ``[len(items), len(FEATURES)]`` the features they were scored on.
        candidates: The whole candidate list scored (:func:`candidate_ids`), when known.
    """

    items: list[str]
    scores: npt.NDArray[np.float64]
    features: npt.NDArray[np.float64]
    candidates: list[str] = field(default_factory=list)


@dataclass
class Reranker:
    """A linear scorer over standardised features: ``score = sum_j w_j (x_j - mean_j) / std_j``.

    Attributes:
        feature_names: The features it reads (a subset of :data:`FEATURES`).
        mean: float64 ``[F]`` feature means on the fitting data.
        std: float64 ``[F]`` feature standard deviations (1 for constant features).
        weights: float64 ``[F]`` weights of the standardised features.
        n_candidates: Items taken from the vector ranking (plus the recent items).
        info: How it was fit and selected (JSON-able).
    """

    feature_names: tuple[str, ...]
    mean: npt.NDArray[np.float64]
    std: npt.NDArray[np.float64]
    weights: npt.NDArray[np.float64]
    n_candidates: int
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [f for f in self.feature_names if f not in _COL]
        if unknown:
            raise CheckpointError(f"re-ranker: unknown feature(s) {unknown}")
        f = len(self.feature_names)
        if not (self.mean.shape == self.std.shape == self.weights.shape == (f,)):
            raise CheckpointError("re-ranker: mean/std/weights do not match the feature names")
        self._cols = np.array([_COL[name] for name in self.feature_names], dtype=np.int64)

    def contributions(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Per-feature terms of the scores: ``[n, len(feature_names)]``, rows sum to the score.

        Args:
            features: ``[n, len(FEATURES)]`` from :func:`candidate_features` (every
                feature; the model's columns are picked here).

        Returns:
            ``w_j * (x_j - mean_j) / std_j`` per row and model feature, in
            :attr:`feature_names` order.
        """
        z = (features[:, self._cols] - self.mean) / self.std
        out: npt.NDArray[np.float64] = z * self.weights
        return out

    def score(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Scores ``[n]`` of candidate rows (``contributions(features).sum(axis=1)``)."""
        out: npt.NDArray[np.float64] = self.contributions(features).sum(axis=1)
        return out

    def rank(
        self,
        items: RerankItems,
        short: np.ndarray,
        long: np.ndarray,
        blend: np.ndarray,
        top_ids: Sequence[str],
        recent: Sequence[RecentEvent],
        k: int,
        exclude: Collection[str] = (),
        top_rows: npt.NDArray[np.int64] | None = None,
    ) -> RankedItems:
        """The ``k`` best candidates of one user (the serving path).

        Args:
            items: The catalogue's vectors and statistics.
            short: Short vector ``[dim]``.
            long: Long vector ``[dim]``.
            blend: Blended vector ``[dim]``.
            top_ids: The vector ranking of ``blend``, best first (at least
                :attr:`n_candidates` items when the catalogue has them), not filtered.
            recent: The user's latest events, oldest first.
            k: Items to return.
            exclude: Item ids never returned (features are computed before removing them,
                as in training).
            top_rows: The rows of ``top_ids`` in ``items`` when the caller has them (the
                item scan's), which saves looking them up.
        """
        n_top = max(self.n_candidates, len(top_ids))
        cand = candidate_ids(top_ids, recent, n_top)
        rows = None
        n_first = len(top_ids)  # <= n_top; the list starts with them unless one repeats
        if top_rows is not None and len(top_rows) == n_first and cand[:n_first] == top_ids:
            rows = np.concatenate([top_rows, items.rows(cand[n_first:])])
        x = candidate_features(items, short, long, blend, cand, recent, rows=rows)
        s = self.score(x)
        if exclude:
            keep = np.fromiter((c not in exclude for c in cand), dtype=bool, count=len(cand))
            idx = np.flatnonzero(keep)
        else:
            idx = np.arange(len(cand))
        # best first; ties: the candidate order (vector ranking, then newest recent item)
        order = idx[np.lexsort((idx, -s[idx]))][:k]
        return RankedItems([cand[i] for i in order], s[order], x[order], cand)

    def explain(self, features_row: npt.NDArray[np.float64]) -> dict[str, float]:
        """One candidate's per-feature terms as ``{feature: term}``."""
        terms = self.contributions(features_row.reshape(1, -1))[0]
        return {name: float(t) for name, t in zip(self.feature_names, terms, strict=True)}

    def to_json(self) -> dict[str, Any]:
        """The ``rerank.json`` content."""
        return {
            "format_version": RERANK_FORMAT,
            "model": "linear, softmax over the candidate list",
            "features": list(self.feature_names),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "weights": self.weights.tolist(),
            "n_candidates": self.n_candidates,
            "recent_events": RECENT_EVENTS,
            "item_stats": list(ITEM_STATS),
            "info": self.info,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], where: str = RERANK_FILE) -> Reranker:
        """Parse ``rerank.json``.

        Raises:
            CheckpointError: Another format version, or inconsistent content.
        """
        if doc.get("format_version") != RERANK_FORMAT:
            raise CheckpointError(
                f"{where}: re-ranker format {doc.get('format_version')!r}, this code reads "
                f"{RERANK_FORMAT}; retrain with `interest-stream train`"
            )
        try:
            names = tuple(str(f) for f in doc["features"])
            arrays = [np.asarray(doc[k], dtype=np.float64) for k in ("mean", "std", "weights")]
            n_cand = int(doc["n_candidates"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: malformed re-ranker: {exc}") from exc
        if not all(np.isfinite(a).all() for a in arrays) or (arrays[1] <= 0).any() or n_cand < 1:
            raise CheckpointError(f"{where}: non-finite weights or non-positive std/candidates")
        if list(doc.get("item_stats", ITEM_STATS)) != list(ITEM_STATS):
            raise CheckpointError(f"{where}: item statistics {doc.get('item_stats')} unknown")
        return cls(names, arrays[0], arrays[1], arrays[2], n_cand, dict(doc.get("info") or {}))


def write_reranker(folder: str | os.PathLike[str], reranker: Reranker, stats: np.ndarray) -> None:
    """Write ``rerank.json`` and ``rerank_items.npy`` (rows = the checkpoint's items)."""
    path = Path(folder)
    np.save(path / RERANK_ITEMS_FILE, np.ascontiguousarray(stats, dtype=np.float32))
    write_json(path / RERANK_FILE, reranker.to_json())


def load_reranker(
    folder: str | os.PathLike[str], catalogue: tuple[Sequence[str], np.ndarray] | None = None
) -> tuple[Reranker, RerankItems] | None:
    """A checkpoint's re-ranker and its catalogue data; ``None`` when it has none.

    Args:
        folder: The checkpoint folder.
        catalogue: The checkpoint's item ids and vectors if already loaded (else read).

    Raises:
        CheckpointError: The files are damaged, of another version or do not match the
            checkpoint's items.
    """
    path = Path(folder)
    if not (path / RERANK_FILE).exists():
        return None
    doc = read_json(path / RERANK_FILE)
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path / RERANK_FILE}: not a JSON object")
    reranker = Reranker.from_json(doc, str(path / RERANK_FILE))
    ids, vectors = catalogue if catalogue is not None else load_item_vectors(path)[:2]
    try:
        stats = np.load(path / RERANK_ITEMS_FILE, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path / RERANK_ITEMS_FILE}: unreadable: {exc}") from exc
    return reranker, RerankItems(ids, vectors, stats)
