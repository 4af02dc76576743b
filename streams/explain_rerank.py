"""Explaining the learned re-ranker's score by occlusion (numpy only).

The re-ranker (:mod:`interest_stream.core.rerank`) scores an item as a sum of per-feature
terms. :class:`RerankScorer` recomputes every feature for every occlusion variant of the
window: the vector scores from the variant's short/long vectors (``z_blend`` over the same
candidate list), the own-touch and recency features from the variant's latest
:data:`~interest_stream.core.rerank.RECENT_EVENTS` events (removing an event lets the
next older one into them), the item's statistics unchanged. So an event's ``delta`` is
the re-ranker's score change without it, split by feature kind. The API sends the
re-ranker and the candidate list it ranked (:func:`rerank_scorer` reads them), so the
worker explains the function the API served. Design: docs/DESIGN.md ("Explanations").
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from interest_stream.core.rerank import (
    FEATURES,
    ITEM_STATS,
    RECENT_EVENTS,
    RecentEvent,
    Reranker,
    RerankItems,
    candidate_features,
    recent_events,
)
from interest_stream.core.vectors import blend
from interest_stream.streams.attribution import FeatureTerms, Variants

__all__ = ["FEATURE_KINDS", "RerankScorer", "rerank_scorer", "rerank_spec"]

_VECTOR = ("s_short", "s_long", "s_blend", "z_blend")
_ITEM = ("unknown", *ITEM_STATS)
_CROSS = ("recent_x_long", "recent_x_pop")
FEATURE_KINDS: dict[str, str] = {
    f: "vector" if f in _VECTOR else "item" if f in _ITEM else "cross" if f in _CROSS else "touch"
    for f in FEATURES
}
"""Kind of each re-ranker feature: ``vector`` (the user's vectors), ``touch`` (the user's
own recent events of the item), ``cross`` (both), ``item`` (not the user's events)."""
_COL = {name: k for k, name in enumerate(FEATURES)}


@dataclass
class RerankScorer:
    """The re-ranker's score of some of its candidates, for every variant of a window.

    Args:
        reranker: The re-ranker the API ranked with.
        items: The candidates' vectors and statistics (those with a vector).
        candidates: The candidate list the API ranked (vector ranking, then recent items).
        rows: Index into ``candidates`` of each explained item (the targets' order).
        weight: The short vector's weight in the blend.
    """

    reranker: Reranker
    items: RerankItems
    candidates: list[str]
    rows: list[int]
    weight: float

    def __post_init__(self) -> None:
        self._cat_rows = self.items.rows(self.candidates)

    def features(self, variants: Variants, targets: np.ndarray) -> FeatureTerms:
        """Per variant, explained item and re-ranker feature: its term (``[V, T, F]``).

        The touch, cross and item features come from :func:`candidate_features` of the
        explained items, once per distinct latest-events list; the vector features of every
        variant from one matrix product over the whole candidate list (``z_blend`` is
        standardised over it), as :func:`candidate_features` computes them.
        """
        v = len(variants.units) + 2
        explained = [self.candidates[r] for r in self.rows]
        x = np.empty((v, len(self.rows), len(FEATURES)), dtype=np.float64)
        blends = blend(variants.short, variants.long, self.weight)
        base: dict[int, np.ndarray] = {}  # features with each distinct latest-events list
        for r, rec in enumerate(_variant_recents(variants)):
            if id(rec) not in base:
                base[id(rec)] = candidate_features(
                    self.items, variants.short[0], variants.long[0], blends[0], explained, rec
                )
            x[r] = base[id(rec)]
        # vector features of every variant: [V, 3, C] inner products with every candidate
        known = self._cat_rows >= 0
        users = np.stack([variants.short, variants.long, blends], axis=1).astype(np.float32)
        scores = np.zeros((v, 3, len(self.candidates)), dtype=np.float64)
        scores[:, :, known] = users @ self.items.vectors[self._cat_rows[known]].T
        x[:, :, 0:3] = scores[:, :, self.rows].transpose(0, 2, 1)
        sb = scores[:, 2, :]
        sd = sb.std(axis=1, keepdims=True)
        z = np.divide(sb - sb.mean(axis=1, keepdims=True), sd, out=np.zeros_like(sb), where=sd > 0)
        x[:, :, _COL["z_blend"]] = z[:, self.rows]
        x[:, :, _COL["recent_x_long"]] = x[:, :, _COL["in_recent"]] * x[:, :, _COL["s_long"]]
        flat = self.reranker.contributions(x.reshape(-1, len(FEATURES)))
        names = self.reranker.feature_names
        return FeatureTerms(
            names,
            tuple(FEATURE_KINDS[n] for n in names),
            flat.reshape(v, len(self.rows), len(names)),
        )

    def score(self, variants: Variants, targets: np.ndarray) -> np.ndarray:
        """The event-dependent part of the score (every feature but the item's own)."""
        f = self.features(variants, targets)
        event = np.asarray(f.kinds) != "item"
        out: np.ndarray = f.values[:, :, event].sum(-1)
        return out

    def terms(self, targets: np.ndarray) -> dict[str, np.ndarray]:
        """The item features' terms (the same for every variant), ``name -> [T]``."""
        x = np.zeros((len(self.rows), len(FEATURES)), dtype=np.float64)
        rows = self.items.rows([self.candidates[r] for r in self.rows])
        known = rows >= 0
        x[~known, _COL["unknown"]] = 1.0
        first = _COL[ITEM_STATS[0]]
        x[known, first : first + len(ITEM_STATS)] = self.items.stats[rows[known]]
        c = self.reranker.contributions(x)
        names = self.reranker.feature_names
        return {n: c[:, j] for j, n in enumerate(names) if FEATURE_KINDS[n] == "item"}


def _variant_recents(variants: Variants) -> list[list[RecentEvent]]:
    """Each variant's latest events (the same list object where they do not change)."""
    hist = variants.history
    n = len(hist)
    full = recent_events(hist)
    out = [full]
    for unit in variants.units:
        if unit.indices and max(unit.indices) >= n - RECENT_EVENTS:
            gone = set(unit.indices)
            out.append(recent_events(e for i, e in enumerate(hist) if i not in gone))
        else:
            out.append(full)
    out.append([])
    return out


def rerank_scorer(spec: Mapping[str, Any], weight: float, dim: int) -> tuple[RerankScorer, Any]:
    """A :class:`RerankScorer` and the explained items' vectors from a request's
    ``rerank`` object (docs/CONTRACTS.md, ``POST /explain/``).

    Raises:
        ValueError: A malformed object (the view answers 400).
    """
    try:
        reranker = Reranker.from_json(spec["model"], "rerank.model")
        cand = [str(c) for c in spec["candidates"]]
        vecs = _f32(spec["vectors_f32"]).reshape(len(cand), dim)
        stats = _f32(spec["stats_f32"]).reshape(len(cand), len(ITEM_STATS))
        known = np.asarray(spec["known"], dtype=bool).reshape(len(cand))
        rows = [int(r) for r in spec["rows"]]
    except Exception as exc:  # any malformed part is a bad request
        raise ValueError(f"rerank: {exc}") from exc
    if not rows or not all(0 <= r < len(cand) for r in rows) or len(set(cand)) != len(cand):
        raise ValueError("rerank: rows must index the candidates (distinct ids)")
    if not (np.isfinite(vecs).all() and np.isfinite(stats).all()):
        raise ValueError("rerank: vectors and statistics must be finite")
    ids = [c for c, k in zip(cand, known, strict=True) if k]
    items = RerankItems(ids, vecs[known], stats[known])
    return RerankScorer(reranker, items, cand, rows, float(weight)), vecs[rows]


def rerank_spec(
    reranker: Reranker, catalogue: RerankItems, candidates: Sequence[str], explained: Sequence[str]
) -> dict[str, Any]:
    """The ``rerank`` object of a ``POST /explain/`` (the API's side of
    :func:`rerank_scorer`): the re-ranker, the candidates' vectors and statistics."""
    rows_in_cat = catalogue.rows(list(candidates))
    known = rows_in_cat >= 0
    dim = catalogue.vectors.shape[1]
    vecs = np.zeros((len(candidates), dim), dtype="<f4")
    stats = np.zeros((len(candidates), len(ITEM_STATS)), dtype="<f4")
    vecs[known] = catalogue.vectors[rows_in_cat[known]]
    stats[known] = catalogue.stats[rows_in_cat[known]]
    pos = {c: k for k, c in enumerate(candidates)}
    model = reranker.to_json()
    model.pop("info", None)
    return {
        "model": model,
        "candidates": list(candidates),
        "known": [bool(k) for k in known],
        "vectors_f32": base64.b64encode(vecs.tobytes()).decode("ascii"),
        "stats_f32": base64.b64encode(stats.tobytes()).decode("ascii"),
        "rows": [pos[i] for i in explained],
    }


def _f32(b64: Any) -> np.ndarray:
    return np.frombuffer(base64.b64decode(str(b64), validate=True), dtype="<f4").astype(np.float32)
