"""The item index: the catalogue's item vectors from a model checkpoint, searchable.

A checkpoint folder (written by ``interest-stream train``) holds ``items.json``
(the item ids in row order), ``item_vectors.npy`` (float32 ``[n_items, dim]``),
``config.json`` (``model_version``, ``dim``, ``metric``) and optionally
``item_meta.json`` (item -> ``{"category": ..., "cold": ...}``, or item -> category).

Reading goes through :mod:`interest_stream.core.checkpoint` (numpy + json only,
no torch), so ``index`` never needs torch or the models package.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from interest_stream.core.checkpoint import load_item_meta, load_item_vectors
from interest_stream.core.new_items import ItemVectorRecord
from interest_stream.core.rerank import Reranker, RerankItems, load_reranker
from interest_stream.index.base import VectorIndex, Vectors, as_matrix, create_index
from interest_stream.index.errors import DimensionMismatch, UnknownId
from interest_stream.index.faiss_backend import FaissConfig
from interest_stream.index.item_scan import ItemScan, ScanKind, wanted_scan

__all__ = ["ItemIndex", "read_checkpoint", "write_item_vectors"]

logger = logging.getLogger(__name__)


def read_checkpoint(
    folder: Path | str,
) -> tuple[list[str], Vectors, dict[str, Any], dict[str, Any]]:
    """Item ids, vectors ``[n, dim]``, config and per-item metadata of a checkpoint.

    Raises:
        CheckpointError: Missing or inconsistent files (``interest_stream.core.checkpoint``).
    """
    path = Path(folder)
    ids, vecs, cfg = load_item_vectors(path)
    meta = load_item_meta(path)
    return ids, np.ascontiguousarray(vecs, dtype=np.float32), dict(cfg), meta


def write_item_vectors(
    folder: Path | str,
    ids: Sequence[str],
    vectors: Any,
    *,
    model_version: str = "synthetic",
    blend_alpha: float = 0.5,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write the serving half of a checkpoint: the files :meth:`ItemIndex.from_checkpoint` reads.

    ``config.json`` (format 1, ``model_version``, ``dim``, ``metric``,
    ``n_items``, ``train.blend_alpha``), ``items.json``, ``item_vectors.npy`` and,
    when given, ``item_meta.json``. There are no encoder weights, so the worker
    cannot encode with it: it is for API tests, benchmarks and demos.

    Returns:
        The folder.
    """
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    vecs = as_matrix(vectors, None, what="item vectors")
    ids = list(ids)
    if len(ids) != vecs.shape[0]:
        raise ValueError(f"got {len(ids)} ids for {vecs.shape[0]} vectors")
    config = {
        "format_version": 1,
        "model_version": model_version,
        "dim": int(vecs.shape[1]),
        "metric": "ip",
        "n_items": len(ids),
        "train": {"blend_alpha": float(blend_alpha)},
        "note": "item vectors only (no encoder weights): written by index.write_item_vectors",
    }
    np.save(path / "item_vectors.npy", vecs)
    (path / "items.json").write_text(json.dumps(ids, ensure_ascii=False), "utf-8")
    if meta is not None:
        (path / "item_meta.json").write_text(json.dumps(dict(meta), ensure_ascii=False), "utf-8")
    (path / "config.json").write_text(json.dumps(config, indent=2), "utf-8")
    return path


class ItemIndex:
    """Item vectors of one model version with nearest-item queries.

    The checkpoint's catalogue is fixed for the life of the object (a new checkpoint
    means a new ItemIndex); items born after it are added, updated and withdrawn with
    :meth:`apply_new_items` (vectors of this checkpoint's ``model_version`` only; the
    checkpoint's own items are never overwritten). Searches are thread safe.

    Searches over the checkpoint's items go through :class:`~.item_scan.ItemScan` (a
    compressed scan with exact re-scoring: the exact answers, fewer bytes read) unless
    ``scan="flat"``; items born after it are searched exactly beside it and merged.
    """

    def __init__(
        self,
        ids: Sequence[str],
        vectors: Any,
        *,
        model_version: str | None = None,
        metric: str = "ip",
        meta: Mapping[str, Any] | None = None,
        backend: str = "faiss",
        config: FaissConfig | None = None,
        source: Path | None = None,
        scan: ScanKind | str = "auto",
    ) -> None:
        """Index ``vectors`` ``[n, dim]`` under item ``ids``.

        Args:
            ids: Item ids, row order of ``vectors``.
            vectors: Item vectors ``[n, dim]``.
            model_version: Version of the model the vectors come from.
            metric: ``"ip"``.
            meta: Item -> category string, or item -> ``{"category": ...}``.
            backend: Index backend (``"faiss"`` or ``"numpy"``).
            config: FAISS knobs.
            source: Checkpoint folder (informational).
            scan: ``auto`` (the compressed scan from 20,000 items on), ``sq8``, ``fp16``
                or ``flat`` (the float32 index alone); every choice answers the same.

        Raises:
            ValueError: No items, duplicate ids, NaN/inf or an unknown ``scan``.
        """
        vecs = as_matrix(vectors, None, what="item vectors")
        if vecs.shape[0] == 0:
            raise ValueError("the item catalogue is empty")
        opts: dict[str, Any] = {"config": config} if backend == "faiss" and config else {}
        self._index: VectorIndex = create_index(
            backend, dim=int(vecs.shape[1]), metric=metric, **opts
        )
        self._index.build(list(ids), vecs)
        self.model_version = model_version
        self.source = source
        self.config: dict[str, Any] = {}
        self._meta: dict[str, Any] = dict(meta or {})
        self._base: frozenset[str] = frozenset(str(i) for i in ids)
        self._new: set[str] = set()  # items born after the checkpoint, held
        self._versions: dict[str, int] = {}  # their newest record version (held or withdrawn)
        self._lock = threading.Lock()
        # the checkpoint's re-ranker and its item data (rerank.json), if it has one
        self.reranker: tuple[Reranker, RerankItems] | None = None
        kind = wanted_scan(str(scan), vecs.shape[0])
        self._scan: ItemScan | None = None
        self._new_index: VectorIndex | None = None  # the scan's companion: new items only
        if kind != "flat" and backend == "faiss" and metric == "ip":
            self._scan = ItemScan(vecs, kind)
            self._scan_ids = list(ids)
            self._scan_row = {str(i): r for r, i in enumerate(self._scan_ids)}
            self._new_index = create_index(backend, dim=int(vecs.shape[1]), metric=metric)

    @classmethod
    def from_checkpoint(
        cls,
        folder: Path | str,
        *,
        backend: str = "faiss",
        config: FaissConfig | None = None,
        scan: ScanKind | str = "auto",
    ) -> ItemIndex:
        """Build the item index of a model checkpoint folder.

        The checkpoint's re-ranker (``rerank.json``), when present, is loaded too
        (:attr:`reranker`).

        Raises:
            CheckpointError: Missing or inconsistent files.
            DimensionMismatch: ``config.json``'s metric is not ``ip``.
        """
        path = Path(folder)
        ids, vecs, cfg, meta = read_checkpoint(path)
        metric = str(cfg.get("metric", "ip"))
        if metric != "ip":
            raise DimensionMismatch(
                f"{path}: metric {metric!r}, the index serves 'ip'", expected="ip", got=metric
            )
        out = cls(
            ids, vecs, model_version=cfg.get("model_version"), metric=metric, meta=meta,
            backend=backend, config=config, source=path, scan=scan,
        )  # fmt: skip
        out.config = cfg
        out.reranker = load_reranker(path, (ids, vecs))
        if out.reranker is not None and out._scan is not None and out.reranker[1].ids == ids:
            out.reranker[1].ids = out._scan_ids  # one list: the scan's rows are its rows
        logger.info(
            "item index: %d items, dim %d, model %s from %s%s",
            out.count(), out.dim, out.model_version, path,
            " (with a re-ranker)" if out.reranker is not None else "",
        )  # fmt: skip
        return out

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._index.dim

    @property
    def metric(self) -> str:
        """Similarity metric."""
        return self._index.metric

    def count(self) -> int:
        """Number of items."""
        return self._index.count()

    def __len__(self) -> int:
        """Same as :meth:`count`."""
        return self._index.count()

    def __contains__(self, item_id: object) -> bool:
        """Whether the item is in the catalogue."""
        return isinstance(item_id, str) and self._index.contains(item_id)

    @property
    def blend_alpha(self) -> float:
        """Weight of the short vector in the blend the model was trained with (0.5 if unknown)."""
        train = self.config.get("train")
        alpha = train.get("blend_alpha", 0.5) if isinstance(train, Mapping) else 0.5
        try:
            return float(alpha)
        except (TypeError, ValueError):
            return 0.5

    @property
    def vectors(self) -> VectorIndex:
        """The underlying vector index."""
        return self._index

    # ------------------------------------------------------------------ new items
    def apply_new_items(self, records: Sequence[ItemVectorRecord]) -> int:
        """Add, update or withdraw items born after the checkpoint (item-vectors records).

        A record applies only if it is in this checkpoint's vector space (its
        ``model_version``), names an item the checkpoint does not have, and is not older
        than the one held for the item; a record without a vector withdraws the item.

        Returns:
            Records applied.
        """
        with self._lock:
            latest: dict[str, ItemVectorRecord] = {}
            for rec in records:
                if rec.model_version != self.model_version or rec.item_id in self._base:
                    continue
                if rec.version < self._versions.get(rec.item_id, -1):
                    continue
                if rec.vector is not None and rec.vector.shape != (self.dim,):
                    continue
                old = latest.get(rec.item_id)
                if old is None or rec.version >= old.version:
                    latest[rec.item_id] = rec
            gone = [i for i, r in latest.items() if r.vector is None]
            put = [r for r in latest.values() if r.vector is not None]
            self._index.remove([i for i in gone if i in self._new])
            if self._new_index is not None:
                self._new_index.remove([i for i in gone if i in self._new])
            self._new.difference_update(gone)
            self._versions.update({i: r.version for i, r in latest.items()})
            if put:
                ids = [r.item_id for r in put]
                vecs = np.stack([r.vector for r in put if r.vector is not None])
                self._index.upsert(ids, vecs)
                if self._new_index is not None:
                    self._new_index.upsert(ids, vecs)
                self._new.update(ids)
                for r in put:
                    if r.category is not None:
                        self._meta.setdefault(r.item_id, {"category": r.category})
            return len(latest)

    def new_items(self) -> list[str]:
        """The items held that the checkpoint does not have (born after it)."""
        with self._lock:
            return list(self._new)

    # ------------------------------------------------------------------ reads
    def vector(self, item_id: str) -> npt.NDArray[np.float32]:
        """The item's vector ``[dim]``.

        Raises:
            UnknownId: Not in the catalogue.
        """
        try:
            return self._index.get(item_id)
        except UnknownId as exc:
            raise UnknownId(item_id, "item") from exc

    def category(self, item_id: str) -> str | None:
        """The item's category from ``item_meta.json`` (``None`` when unknown)."""
        m = self._meta.get(item_id)
        if isinstance(m, Mapping):
            cat = m.get("category")
            return None if cat is None else str(cat)
        return None if m is None else str(m)

    def title(self, item_id: str) -> str | None:
        """The item's title from ``item_meta.json`` (``None`` when unknown)."""
        m = self._meta.get(item_id)
        title = m.get("title") if isinstance(m, Mapping) else None
        return None if title is None else str(title)

    def search(
        self, query: Any, k: int, *, exclude: Collection[str] | None = None
    ) -> list[tuple[str, float]]:
        """The ``k`` items nearest one query vector ``[dim]``, best first.

        Args:
            query: A user (or any) vector of the catalogue's dimension.
            k: Items to return.
            exclude: Item ids never to return.

        Raises:
            DimensionMismatch: The query has another dimension.
            ValueError: ``k < 1`` or NaN/inf.
        """
        if self._scan is not None:
            hits = self._scan_search(query, k, exclude)
            if hits is not None:
                return hits
        ids, scores = self._index.search(query, k, exclude=exclude)
        return [(i, float(s)) for i, s in zip(ids[0], scores[0].tolist(), strict=False)]

    @property
    def checkpoint_ids(self) -> Sequence[str] | None:
        """The checkpoint's item ids in row order (the rows :meth:`search_rows` gives),
        ``None`` without the compressed scan."""
        return self._scan_ids if self._scan is not None else None

    def search_rows(self, query: Any, k: int) -> tuple[list[str], npt.NDArray[np.int64] | None]:
        """The ids :meth:`search` finds (best first), and their rows in
        :attr:`checkpoint_ids` when the compressed scan found them all (``None`` otherwise:
        no scan, items born after the checkpoint held, or the float32 index answered).

        Raises:
            DimensionMismatch: The query has another dimension.
            ValueError: ``k < 1`` or NaN/inf.
        """
        if self._scan is not None and not self._new:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"k must be a positive integer, got {k!r}")
            found = self._scan.search(as_matrix(query, self.dim, what="queries")[0], k)
            if found is not None:
                names = self._scan_ids
                return [names[r] for r in found[0].tolist()], found[0]
        return [i for i, _s in self.search(query, k)], None

    def _scan_search(
        self, query: Any, k: int, exclude: Collection[str] | None
    ) -> list[tuple[str, float]] | None:
        """:meth:`search` through the compressed scan (``None``: the bound did not settle)."""
        assert self._scan is not None and self._new_index is not None
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        q = as_matrix(query, self.dim, what="queries")[0]
        row = self._scan_row
        skip = {r for r in (row.get(e) for e in exclude) if r is not None} if exclude else ()
        found = self._scan.search(q, k, skip)
        if found is None:
            return None
        names = self._scan_ids
        hits = [(names[r], s) for r, s in zip(found[0].tolist(), found[1].tolist(), strict=True)]
        if self._new:
            ids, scores = self._new_index.search(q, k, exclude=exclude)
            hits += list(zip(ids[0], scores[0].tolist(), strict=False))
            hits.sort(key=lambda h: -h[1])  # stable: the checkpoint's items first on ties
            del hits[k:]
        return hits

    def similar(
        self, item_id: str, k: int, *, exclude: Collection[str] | None = None
    ) -> list[tuple[str, float]]:
        """The ``k`` items nearest ``item_id`` (itself excluded).

        Raises:
            UnknownId: Not in the catalogue.
        """
        vec = self.vector(item_id)
        skip = {item_id, *(exclude or ())}
        return self.search(vec, k, exclude=skip)

    def stats(self) -> dict[str, Any]:
        """Size, dimension, model version and index structure."""
        return {
            "items": self.count(),
            "dim": self.dim,
            "model_version": self.model_version,
            "new_items": len(self._new),
            "source": None if self.source is None else str(self.source),
            "index": self._index.stats(),
            "scan": {"kind": "flat"} if self._scan is None else self._scan.stats(),
        }
