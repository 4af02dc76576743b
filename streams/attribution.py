"""Occlusion, the method of explanations: units, encoded variants, scores and shares (numpy only).

For one user's window and a set of targets, an event's contribution is
``score(window) - score(window without the event)``; the variants of a window are encoded
in one batched call of the worker's encoder (``encode_variants`` /
``encode_variants_many``). The empty window's score is the non-event part (the prior).
The score function is pluggable (:class:`Scorer`): :class:`VectorScorer` (a horizon's
vector), ``explain_rerank.RerankScorer`` (the learned re-ranker). Definitions and
measurements: docs/DESIGN.md ("Explanations"), the answer: docs/CONTRACTS.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from interest_stream.core.events import Interaction
from interest_stream.core.vectors import blend

__all__ = [
    "FeatureScorer",
    "FeatureTerms",
    "Plan",
    "Scorer",
    "Unit",
    "VariantEncoder",
    "Variants",
    "VectorScorer",
    "align",
    "encode_batch",
    "encode_units",
    "explain_window",
    "occlusion_units",
    "plan_units",
]


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


@runtime_checkable
class BatchVariantEncoder(Protocol):
    """An encoder that encodes several windows' variants in one call."""

    def encode_variants_many(
        self, jobs: Sequence[tuple[Any, Any, Any, Any]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per job ``(short, short_drops, long, long_drops)``: as ``encode_variants``."""
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


@dataclass
class FeatureTerms:
    """A score that is a sum of named per-feature terms, for every variant.

    Attributes:
        names: Feature names.
        kinds: Per feature ``vector`` / ``touch`` / ``cross`` (depend on the events) or
            ``item`` (the item's own statistics: the same for every variant).
        values: float64 ``[V, T, F]``: each variant's, target's and feature's term.
    """

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    values: np.ndarray


@runtime_checkable
class FeatureScorer(Protocol):
    """A :class:`Scorer` whose score is a sum of per-feature terms (a linear re-ranker)."""

    def features(self, variants: Variants, targets: np.ndarray) -> FeatureTerms:
        """The per-feature terms of every variant and target."""
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


@dataclass
class Plan:
    """What to encode for one window: the encoder's job and how to align its rows."""

    history: list[Interaction]
    units: list[Unit]
    horizon: str
    job: tuple[list[Interaction], list[list[int]], list[Interaction], list[list[int]]]
    short_row: list[int]


def plan_units(
    history: list[Interaction], short_start: int, units: Sequence[Unit], horizon: str
) -> Plan:
    """The drop lists of ``units`` for the short and the long path (only the paths the
    horizon uses; the last variant of each is the empty window)."""
    n = len(history)
    short = history[short_start:]
    use_short, use_long = horizon != "long", horizon != "short"
    short_drops: list[list[int]] = [[]]
    short_row = []
    long_drops: list[list[int]] = [[]]
    for u in units:
        in_short = [i - short_start for i in u.indices if i >= short_start]
        if use_short and in_short:
            short_row.append(len(short_drops))
            short_drops.append(in_short)
        else:
            short_row.append(0)
        long_drops.append(list(u.indices))
    short_drops.append(list(range(n - short_start)))
    long_drops.append(list(range(n)))
    job = (
        short if use_short else [],
        short_drops if use_short else [],
        history if use_long else [],
        long_drops if use_long else [],
    )
    return Plan(history, list(units), horizon, job, short_row)


def align(plan: Plan, s: np.ndarray | None, lo: np.ndarray | None, dim: int) -> Variants:
    """The encoder's rows as :class:`Variants` (one row per unit, whole first, empty last)."""
    v = len(plan.units) + 2
    zeros = np.zeros((v, dim), dtype=np.float32)
    s_al = zeros
    if plan.job[1] and s is not None:
        rows = [0, *plan.short_row, len(plan.job[1]) - 1]
        s_al = np.asarray(s, dtype=np.float32)[rows]
    lo_al = zeros
    if plan.job[3] and lo is not None:
        lo_al = np.asarray(lo, dtype=np.float32)
    return Variants(plan.units, s_al, lo_al, plan.history)


def encode_batch(model: Any, plans: Sequence[Plan]) -> list[Variants]:
    """Encode windows' variants: one call of a :class:`BatchVariantEncoder`, else one
    ``encode_variants`` (or plain ``encode_short``/``encode_long``) per window."""
    dim = int(model.dim)
    if plans and isinstance(model, BatchVariantEncoder):  # a lone window too (older group exact)
        got = model.encode_variants_many([p.job for p in plans])
        return [align(p, s, lo, dim) for p, (s, lo) in zip(plans, got, strict=True)]
    out = []
    for p in plans:
        short, short_drops, lh, long_drops = p.job
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
        out.append(align(p, s, lo, dim))
    return out


def encode_units(
    model: Any, history: list[Interaction], short_start: int, units: Sequence[Unit], horizon: str
) -> Variants:
    """Encode the variants of ``units`` of one window (one encoder call)."""
    return encode_batch(model, [plan_units(history, short_start, units, horizon)])[0]


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
    values sum to 1). ``score = prior + sum(terms) + sum of every unit's delta + rest``
    (``rest``: what removing single events does not show, interactions between events).
    A :class:`FeatureScorer` also gets ``features`` (each feature's term; they sum to the
    score) and per unit ``by_kind`` (its delta split by feature kind).
    """
    feat = scorer.features(variants, targets) if isinstance(scorer, FeatureScorer) else None
    if feat is not None:
        kinds = np.asarray(feat.kinds)
        scores = feat.values[:, :, kinds != "item"].sum(-1)  # [V, T]
        terms = {n: feat.values[0, :, j] for j, n in enumerate(feat.names) if kinds[j] == "item"}
    else:
        scores = scorer.score(variants, targets)
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
            if feat is not None:
                item["by_kind"] = _by_kind(feat, t, int(u))
            events.append(item)
        total = float(full[t]) + sum(term_t.values())
        res: dict[str, Any] = {
            "score": total,
            "prior": float(prior[t]),
            "prior_share": float(prior[t] / z),
            "terms": {k: {"value": x, "share": x / z} for k, x in term_t.items()},
            "rest": float(full[t]) - float(prior[t]) - float(d.sum()),
            "events": events,
        }
        if feat is not None:
            res["features"] = _features(feat, t)
        out.append(res)
    return out


def _by_kind(feat: FeatureTerms, t: int, u: int) -> dict[str, float]:
    """One unit's delta split by the kind of the features it moves (item terms: none)."""
    diff = feat.values[0, t] - feat.values[1 + u, t]
    out: dict[str, float] = {}
    for kind, x in zip(feat.kinds, diff, strict=True):
        if kind != "item":
            out[kind] = out.get(kind, 0.0) + float(x)
    return out


def _features(feat: FeatureTerms, t: int) -> list[dict[str, Any]]:
    """Every feature's term of the whole window (they sum to the score), largest first,
    with ``share = value / sum |value|`` and the empty window's term (``prior``)."""
    whole, empty = feat.values[0, t], feat.values[-1, t]
    z = float(np.abs(whole).sum()) or 1.0
    rows = []
    for j in np.argsort(-np.abs(whole), kind="stable"):
        rows.append(
            {
                "name": feat.names[j],
                "kind": feat.kinds[j],
                "value": float(whole[j]),
                "share": float(whole[j] / z),
                "prior": float(empty[j]),
            }
        )
    return rows
