"""Vectors of items born after the checkpoint, from the known items they co-occur with.

:class:`NewItemEstimator` (numpy only; the worker, the evaluation and the tests share it)
keeps, per item the checkpoint does not know, a weighted sum of the vectors of the known
items next to it in users' event sequences: each pair (new item, known item) at distance
``d <= window`` in one user's sequence adds the known item's vectors with weight
``type_weight(known event) * decay ** (d - 1)``. A pair is counted once, when the later of
its two events is observed. An item's vectors are the weighted means, shrunk towards the
mean of the known items of its category (``prior`` pseudo-weight) when its category is
known; an item is published once its weight reaches ``min_support`` (or it has a
category). The evidence is kept as weights of known item ids, so a new checkpoint
(:meth:`NewItemEstimator.set_model`) re-averages it over its own vectors. Decisions and
measurements: docs/DESIGN.md ("Items born after the checkpoint").
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from interest_stream.core.errors import InterestStreamError

__all__ = [
    "PAIR_TYPE_WEIGHTS",
    "ExtraItemInputs",
    "ItemVectorRecord",
    "MalformedItemRecord",
    "NewItemEstimator",
    "NewItemParams",
    "NewItemVectors",
    "new_item_codes",
]

log = logging.getLogger(__name__)

PAIR_TYPE_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 1.0,
    "fav": 1.5,
    "cart": 2.0,
    "purchase": 2.5,
}
"""Weight of a pair by the known event's type (the training's default type weights)."""


def new_item_codes(ids: Sequence[str], dim: int) -> npt.NDArray[np.float32]:
    """Fixed random revisit codes of new items, ``N(0, 1/dim)``, seeded by each item id.

    The same id gives the same code in the worker, the API and the encoder.
    """
    out = np.zeros((len(ids), dim), np.float32)
    for k, item in enumerate(ids):
        seed = int.from_bytes(hashlib.sha256(str(item).encode()).digest()[:8], "little")
        out[k] = np.random.default_rng(seed).standard_normal(dim) / np.sqrt(dim)
    return out


@dataclass(frozen=True)
class NewItemParams:
    """Knobs of the estimator (chosen on validation: docs/RESULTS.md).

    Attributes:
        window: Largest distance (in events of one user's sequence) of a counted pair.
        decay: Weight factor per step of distance beyond the first.
        min_support: Pair weight an item needs before it is published (without category).
        prior: Pseudo-weight of the category mean (0: categories unused).
    """

    window: int = 5
    decay: float = 0.7
    min_support: float = 1.0
    prior: float = 1.0


@dataclass
class NewItemVectors:
    """Published vectors of new items.

    Attributes:
        ids: Item ids.
        out: float32 ``[n, out_dim]`` estimated published (output) vectors.
        inp: float32 ``[n, in_dim]`` estimated input embeddings (``in_dim`` 0 if none).
        weight: float64 ``[n]`` pair weight behind each item.
    """

    ids: list[str]
    out: npt.NDArray[np.float32]
    inp: npt.NDArray[np.float32]
    weight: npt.NDArray[np.float64]


class NewItemEstimator:
    """Co-occurrence vectors of items a checkpoint does not know.

    The evidence is kept per new item as weights of known item ids, so it outlives a
    checkpoint: :meth:`set_model` swaps the vectors it is averaged over.

    Args:
        known_ids: The checkpoint's items (row order of the matrices).
        out_vectors: float32 ``[n, out_dim]`` their published vectors.
        in_vectors: Optional float32 ``[n, in_dim]`` their input embeddings.
        params: The knobs.
        categories: Optional item -> category of known items (for the category prior).
        codes: ``(start, width)`` of the revisit channel in ``out_vectors``: a new item's
            published vector carries its own code there (:func:`new_item_codes`), as a
            known item carries its own.
    """

    def __init__(
        self,
        known_ids: Sequence[str],
        out_vectors: npt.NDArray[Any],
        in_vectors: npt.NDArray[Any] | None = None,
        params: NewItemParams | None = None,
        categories: Mapping[str, str] | None = None,
        codes: tuple[int, int] | None = None,
    ) -> None:
        self.params = params or NewItemParams()
        self.evidence: dict[str, dict[str, float]] = {}
        self.category: dict[str, str] = {}
        self._cache: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
        self.set_model(known_ids, out_vectors, in_vectors, categories, codes)

    def set_model(
        self,
        known_ids: Sequence[str],
        out_vectors: npt.NDArray[Any],
        in_vectors: npt.NDArray[Any] | None = None,
        categories: Mapping[str, str] | None = None,
        codes: tuple[int, int] | None = None,
    ) -> None:
        """Average over another checkpoint's vectors; items it knows leave the estimator."""
        self.codes = codes
        self.known: dict[str, int] = {item: r for r, item in enumerate(known_ids)}
        self.out_known = np.ascontiguousarray(out_vectors, dtype=np.float32)
        n = len(self.known)
        self.in_known = (
            np.zeros((n, 0), np.float32)
            if in_vectors is None
            else np.ascontiguousarray(in_vectors, dtype=np.float32)
        )
        for item in [i for i in self.evidence if i in self.known]:
            del self.evidence[item]
        for item in [i for i in self.category if i in self.known]:
            del self.category[item]
        self._cache.clear()
        self._cat_mean: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        groups: dict[str, list[int]] = {}
        for item, cat in (categories or {}).items():
            r = self.known.get(item)
            if r is not None and cat:
                groups.setdefault(str(cat), []).append(r)
        for cat, rows in groups.items():
            self._cat_mean[cat] = (self.out_known[rows].mean(0), self.in_known[rows].mean(0))

    def __len__(self) -> int:
        """Number of new items with evidence or a category."""
        return len(set(self.evidence) | set(self.category))

    def set_category(self, item: str, category: str | None) -> None:
        """Record a new item's category (from the event or an item feed)."""
        if item not in self.known and category and self.category.get(item) != category:
            self.category[item] = str(category)
            self._cache.pop(item, None)

    def observe(
        self, history: Sequence[Sequence[Any]], new: Iterable[int], later: bool = False
    ) -> set[str]:
        """Count the pairs of the events at positions ``new`` with the events before them.

        Args:
            history: One user's events ``(item_id, event_type, ts)``, oldest first
                (the window after the new events were applied).
            new: Positions in ``history`` of the events not observed before.
            later: Also pair each new event with the events up to ``window`` after it
                that are not new (an event that arrived after later-dated ones were
                observed sits in the middle of the history: the live worker's case).
                Each pair with at least one new event is then counted once.

        Returns:
            The new items whose evidence changed.
        """
        p = self.params
        touched: set[str] = set()
        positions = sorted(set(new))
        fresh = set(positions) if later else set()
        n = len(history)
        for pos in positions:
            for j in range(max(0, pos - p.window), pos):
                self._pair(history[j], history[pos], pos - j, touched)
            if later:
                for j in range(pos + 1, min(n, pos + p.window + 1)):
                    if j not in fresh:
                        self._pair(history[pos], history[j], j - pos, touched)
        return touched

    def _pair(
        self, first: Sequence[Any], second: Sequence[Any], dist: int, touched: set[str]
    ) -> None:
        """Count one pair of events ``dist`` apart (``first`` the earlier one)."""
        item_a, type_a = str(first[0]), str(first[1])
        item_b, type_b = str(second[0]), str(second[1])
        b_new = item_b not in self.known
        if item_a == item_b or (item_a not in self.known) == b_new:
            return  # the same item, both known or both new: nothing to learn
        decay = self.params.decay ** (dist - 1)
        if b_new:
            self._add(item_b, item_a, PAIR_TYPE_WEIGHTS.get(type_a, 1.0) * decay)
            touched.add(item_b)
        else:
            self._add(item_a, item_b, PAIR_TYPE_WEIGHTS.get(type_b, 1.0) * decay)
            touched.add(item_a)

    def _add(self, item: str, known_item: str, w: float) -> None:
        ev = self.evidence.setdefault(item, {})
        ev[known_item] = ev.get(known_item, 0.0) + w
        self._cache.pop(item, None)

    def weight(self, item: str) -> float:
        """Pair weight gathered for ``item`` (0 if never seen)."""
        return float(sum(self.evidence.get(item, {}).values()))

    def _vector(self, item: str) -> tuple[np.ndarray, np.ndarray, float] | None:
        """``(out, inp, weight)`` of one item, ``None`` while unpublished (cached)."""
        got = self._cache.get(item)
        if got is not None:
            return got
        p = self.params
        ev = {k: w for k, w in self.evidence.get(item, {}).items() if k in self.known}
        w = np.fromiter(ev.values(), np.float64, count=len(ev))
        rows = np.fromiter((self.known[k] for k in ev), np.int64, count=len(ev))
        total = float(w.sum())
        out = w @ self.out_known[rows].astype(np.float64)
        inp = w @ self.in_known[rows].astype(np.float64)
        cat = self.category.get(item)
        means = self._cat_mean.get(cat) if cat is not None and p.prior > 0 else None
        if means is None and (total < p.min_support or total <= 0):
            return None
        pw = 0.0 if means is None else p.prior
        if means is not None:
            out, inp = out + pw * means[0], inp + pw * means[1]
        got = (out / (total + pw), inp / (total + pw), total)
        self._cache[item] = got
        return got

    def vectors(self, items: Iterable[str] | None = None) -> NewItemVectors:
        """The published new items (all, or those of ``items`` that are published).

        Returns:
            :class:`NewItemVectors`, in the order of ``items`` (or of first sight).
        """
        names = list(dict.fromkeys([*self.evidence, *self.category])) if items is None else items
        ids, outs, inps, ws = [], [], [], []
        for item in names:
            got = self._vector(item)
            if got is not None:
                ids.append(item)
                outs.append(got[0])
                inps.append(got[1])
                ws.append(got[2])
        out = np.array(outs, np.float32).reshape(len(ids), self.out_known.shape[1])
        if self.codes is not None and self.codes[1] > 0:
            start, width = self.codes
            out[:, start : start + width] = new_item_codes(ids, width)
        return NewItemVectors(
            ids=ids,
            out=out,
            inp=np.array(inps, np.float32).reshape(len(ids), self.in_known.shape[1]),
            weight=np.array(ws, np.float64),
        )


@dataclass(frozen=True)
class ItemVectorRecord:
    """One record of the item-vectors topic (key = item id; docs/CONTRACTS.md §4b).

    Attributes:
        item_id: The new item.
        model_version: The checkpoint whose vector space ``vector`` is in.
        version: Publication time (epoch ms); the highest wins per item.
        vector: The published vector (``None``: the item is withdrawn).
        weight: Pair weight behind it (0: category only).
        category: The item's category, when known.
    """

    item_id: str
    model_version: str
    version: int
    vector: npt.NDArray[np.float32] | None
    weight: float = 0.0
    category: str | None = None

    def to_json(self) -> bytes:
        """The record's value (UTF-8 JSON)."""
        body = {
            "item_id": self.item_id,
            "model_version": self.model_version,
            "version": int(self.version),
            "vector": None if self.vector is None else [float(x) for x in self.vector],
            "weight": float(self.weight),
            "category": self.category,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, value: bytes) -> ItemVectorRecord:
        """Parse a record's value.

        Raises:
            MalformedItemRecord: Not a valid record.
        """
        try:
            d = json.loads(value)
            vec = d.get("vector")
            arr = None if vec is None else np.asarray(vec, dtype=np.float32)
            if arr is not None and (arr.ndim != 1 or not np.isfinite(arr).all()):
                raise ValueError("vector must be a finite 1-d list")
            cat = d.get("category")
            return cls(
                item_id=str(d["item_id"]),
                model_version=str(d["model_version"]),
                version=int(d["version"]),
                vector=arr,
                weight=float(d.get("weight", 0.0)),
                category=None if cat is None else str(cat),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MalformedItemRecord(f"malformed item-vectors record: {exc}") from exc


class MalformedItemRecord(InterestStreamError):
    """An item-vectors record that cannot be parsed (skipped and counted by readers)."""


class ExtraItemInputs:
    """Extra items' input embeddings merged across live updates (the latest row per item).

    The worker's encoder gets new items in increments (each publication of
    :class:`~interest_stream.streams.new_items.NewItemPublisher`); the model's table is
    always rebuilt from the whole set (:meth:`apply`).
    """

    def __init__(self) -> None:
        self._rows: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def merge(self, ids: Sequence[str], inputs: Any) -> None:
        """Add or replace the rows of ``ids`` (float ``[len(ids), dim]``)."""
        vecs = np.asarray(inputs, dtype=np.float32).reshape(len(ids), -1)
        for item, row in zip(ids, vecs, strict=True):
            self._rows[str(item)] = row

    def arrays(self, width: int) -> tuple[list[str], np.ndarray]:
        """Every item and its row (``[0, width]`` when empty)."""
        if not self._rows:
            return [], np.zeros((0, width), dtype=np.float32)
        return list(self._rows), np.stack(list(self._rows.values()))

    def apply(self, model: Any) -> None:
        """``model.set_extra_items`` with the whole set."""
        model.set_extra_items(*self.arrays(model.encoder.cfg.dim))
