"""Brute-force NumPy backend: the exact reference the FAISS backend is tested against.

Vectors live in one growing float32 matrix; a removal moves the last row into
the hole, so the matrix stays dense. Search is one matrix product plus
``argpartition``. Good for tests and small catalogues, O(n) per query.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from interest_stream.index._sync import RWLock
from interest_stream.index.base import (
    INDEX_META_FILE,
    VectorIndex,
    Vectors,
    accept_newer,
    atomic_folder,
    build_versions,
    check_batch,
    dedupe_batch,
    versions_array,
    versions_dict,
    write_json,
)
from interest_stream.index.errors import SnapshotError, UnknownId

__all__ = ["NumpyIndex"]

logger = logging.getLogger(__name__)


class NumpyIndex(VectorIndex):
    """Exact inner-product search with NumPy (reference implementation)."""

    backend: ClassVar[str] = "numpy"

    def __init__(self, dim: int, metric: str = "ip") -> None:
        """Create an empty index of dimension ``dim``."""
        super().__init__(dim, metric)
        self._lock = RWLock()
        self._vecs: Vectors = np.empty((0, dim), dtype=np.float32)
        self._n = 0
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._versions: dict[str, int] = {}

    # ------------------------------------------------------------------ writes
    def build(
        self, ids: Sequence[str], vectors: Any, versions: Sequence[int] | None = None
    ) -> None:
        """See :meth:`VectorIndex.build`."""
        id_list, vecs = check_batch(ids, vectors, versions, self._dim, unique=True)
        with self._lock.write():
            self._vecs = vecs.copy()
            self._n = len(id_list)
            self._ids = id_list
            self._row = {i: r for r, i in enumerate(id_list)}
            self._versions = build_versions(id_list, versions)

    def upsert(
        self, ids: Sequence[str], vectors: Any, versions: Sequence[int] | None = None
    ) -> int:
        """See :meth:`VectorIndex.upsert`."""
        id_list, vecs = check_batch(ids, vectors, versions, self._dim, unique=False)
        id_list, vecs, vers = dedupe_batch(id_list, vecs, versions)
        applied = 0
        with self._lock.write():
            new_rows: list[int] = []
            for j in accept_newer(self._versions, id_list, vers):
                id_ = id_list[j]
                row = self._row.get(id_)
                if row is None:
                    new_rows.append(j)
                else:
                    self._vecs[row] = vecs[j]
                applied += 1
            if new_rows:
                self._reserve(self._n + len(new_rows))
                self._vecs[self._n : self._n + len(new_rows)] = vecs[new_rows]
                for offset, j in enumerate(new_rows):
                    self._row[id_list[j]] = self._n + offset
                    self._ids.append(id_list[j])
                self._n += len(new_rows)
        return applied

    def _reserve(self, rows: int) -> None:
        if rows <= self._vecs.shape[0]:
            return
        cap = max(rows, 2 * self._vecs.shape[0], 1024)
        grown = np.empty((cap, self._dim), dtype=np.float32)
        grown[: self._n] = self._vecs[: self._n]
        self._vecs = grown

    def remove(self, ids: Collection[str]) -> int:
        """See :meth:`VectorIndex.remove`."""
        removed = 0
        with self._lock.write():
            for id_ in ids:
                row = self._row.pop(id_, None)
                self._versions.pop(id_, None)
                if row is None:
                    continue
                last = self._n - 1
                if row != last:
                    moved = self._ids[last]
                    self._vecs[row] = self._vecs[last]
                    self._ids[row] = moved
                    self._row[moved] = row
                self._ids.pop()
                self._n -= 1
                removed += 1
        return removed

    # ------------------------------------------------------------------ reads
    def count(self) -> int:
        """See :meth:`VectorIndex.count`."""
        return self._n

    def contains(self, id_: str) -> bool:
        """See :meth:`VectorIndex.contains`."""
        return id_ in self._row

    def get(self, id_: str) -> npt.NDArray[np.float32]:
        """See :meth:`VectorIndex.get`."""
        with self._lock.read():
            row = self._row.get(id_)
            if row is None:
                raise UnknownId(id_)
            out: npt.NDArray[np.float32] = self._vecs[row].copy()
            return out

    def get_many(self, ids: Sequence[str]) -> Vectors:
        """See :meth:`VectorIndex.get_many`."""
        with self._lock.read():
            rows = []
            for id_ in ids:
                row = self._row.get(id_)
                if row is None:
                    raise UnknownId(id_)
                rows.append(row)
            return self._vecs[rows].copy()

    def version(self, id_: str) -> int | None:
        """See :meth:`VectorIndex.version`."""
        return self._versions.get(id_)

    def ids(self) -> list[str]:
        """See :meth:`VectorIndex.ids`."""
        with self._lock.read():
            return list(self._ids)

    def _search(self, queries: Vectors, k: int) -> tuple[list[list[str]], Vectors]:
        with self._lock.read():
            n = self._n
            k = min(k, n)
            if k == 0:
                return [[] for _ in range(queries.shape[0])], np.zeros(
                    (queries.shape[0], 0), np.float32
                )
            scores = queries @ self._vecs[:n].T  # [Q, n]
            if k < n:
                part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            else:
                part = np.broadcast_to(np.arange(n), (queries.shape[0], n))
            top = np.take_along_axis(scores, part, axis=1)
            order = np.argsort(-top, axis=1, kind="stable")
            rows = np.take_along_axis(part, order, axis=1)
            best = np.take_along_axis(top, order, axis=1).astype(np.float32)
            ids = [[self._ids[r] for r in row] for row in rows.tolist()]
        return ids, best

    # ------------------------------------------------------------------ persistence
    def save(self, folder: Path | str) -> None:
        """Write ``vectors.npy``, ``ids.json``, ``versions.npy`` and ``index.json``."""
        with self._lock.read():
            ids = list(self._ids)
            vecs = self._vecs[: self._n].copy()
            vers = versions_array(ids, self._versions)
            meta = self._base_meta()
        with atomic_folder(Path(folder)) as tmp:
            np.save(tmp / "vectors.npy", vecs)
            np.save(tmp / "versions.npy", vers)
            (tmp / "ids.json").write_text(json.dumps(ids, ensure_ascii=False), "utf-8")
            write_json(tmp / INDEX_META_FILE, meta)

    def load(self, folder: Path | str) -> None:
        """See :meth:`VectorIndex.load`."""
        path = Path(folder)
        self._check_snapshot(path)
        try:
            vecs = np.load(path / "vectors.npy", allow_pickle=False)
            vers = np.load(path / "versions.npy", allow_pickle=False)
            ids = json.loads((path / "ids.json").read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"cannot read snapshot {path}: {exc}") from exc
        if len(ids) != vecs.shape[0] or len(vers) != len(ids):
            raise SnapshotError(f"snapshot {path} is inconsistent (ids/vectors/versions)")
        self.build(ids, vecs)
        with self._lock.write():
            self._versions = versions_dict(ids, vers)
        logger.info("loaded %d vectors from %s", len(ids), path)
