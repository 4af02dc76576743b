"""FAISS backend: exact search for small sets, IVF for large ones, GPU when present.

The structures and their knobs are in :mod:`.faiss_structure` (:class:`FaissConfig`),
loading faiss and its thread/GPU settings in :mod:`.faiss_runtime`. This module is the
:class:`FaissIndex`: labels and versions per id, writes, search, persistence, the
rebuild that moves to the structure the size calls for (trained outside the write
lock, writes journaled and replayed) and the GPU search replica (the CPU index stays
the source of truth; ids written since the copy are scored exactly on the CPU).
Thread safety: a readers-writer lock; FAISS releases the GIL while it searches.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
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
from interest_stream.index.faiss_replica import SearchReplica
from interest_stream.index.faiss_runtime import (
    apply_threads,
    faiss_available,
    get_threads,
    gpu_count,
    load_faiss,
    set_threads,
)
from interest_stream.index.faiss_runtime import load_faiss as _faiss  # noqa: F401 (bench/)
from interest_stream.index.faiss_structure import (
    FaissConfig,
    Kind,
    Structure,
    make_structure,
    new_flat,
)

__all__ = [
    "FaissConfig",
    "FaissIndex",
    "faiss_available",
    "get_threads",
    "gpu_count",
    "set_threads",
]

logger = logging.getLogger(__name__)


class FaissIndex(VectorIndex):
    """Inner-product index on FAISS; see the module docstring for the structures."""

    backend: ClassVar[str] = "faiss"

    def __init__(self, dim: int, metric: str = "ip", config: FaissConfig | None = None) -> None:
        """Create an empty (exact) index.

        Args:
            dim: Vector dimension.
            metric: ``"ip"``.
            config: Knobs; defaults to :class:`FaissConfig()`.

        Raises:
            MissingIndexDependency: faiss is not installed.
            ConfigError-like ValueError: ``device="gpu"`` without a GPU.
        """
        super().__init__(dim, metric)
        self._faiss = load_faiss()
        self.config = config or FaissConfig()
        self._lock = RWLock()
        self._rebuild_mutex = threading.Lock()
        self._label: dict[str, int] = {}
        self._ids: dict[int, str] = {}
        self._versions: dict[str, int] = {}
        self._next_label = 0
        self._s = Structure(self._new_flat(), "flat")
        self._journal: list[tuple[str, npt.NDArray[np.int64], Vectors | None]] | None = None
        # GPU (or test) replica
        self._rep = SearchReplica(self._faiss, self.config)  # GPU (or test) search replica
        self._rep.refresh(self._s)

    # ------------------------------------------------------------------ structure
    def _new_flat(self) -> Any:
        return new_flat(self._faiss, self._dim)

    def _needs_rebuild(self, n: int) -> bool:
        s = self._s
        if s.kind == "flat":
            return n >= self.config.ivf_min_rows
        if n < self.config.ivf_min_rows // 4:
            return True
        return n >= self.config.rebuild_growth * max(s.trained_rows, 1)

    def _make_structure(self, vecs: Vectors, labels: npt.NDArray[np.int64]) -> Structure:
        """Build (and train, and tune) the structure wanted for these vectors."""
        return make_structure(self._faiss, self._dim, self.config, vecs, labels)

    def maybe_rebuild(self) -> bool:
        """Move to the structure the current size calls for; True if it rebuilt.

        The new structure is trained from a copy outside the write lock; writes
        made meanwhile are journaled and replayed before the swap.
        """
        if not self._needs_rebuild(self.count()):
            return False
        if not self._rebuild_mutex.acquire(blocking=False):
            return False  # another thread is rebuilding
        apply_threads()
        try:
            with self._lock.read():  # excludes writers while we copy and start the journal
                if not self._needs_rebuild(len(self._ids)):
                    return False
                labels = np.fromiter(self._ids.keys(), dtype=np.int64, count=len(self._ids))
                vecs = self._reconstruct(self._s.index, labels)
                self._journal = []
            try:
                new = self._make_structure(vecs, labels)
            except BaseException:
                with self._lock.write():
                    self._journal = None
                raise
            with self._lock.write():
                journal, self._journal = self._journal or [], None
                for op, lab, v in journal:
                    if op == "upsert" and v is not None:
                        self._write(new, lab, v)
                    else:
                        self._delete(new, lab)
                old_kind = self._s.kind
                self._s = new
                self._rep.reset(self._s)
            logger.info(
                "index rebuilt: %s -> %s (%d vectors, %d journaled writes)",
                old_kind, new.kind, len(labels), len(journal),
            )  # fmt: skip
            return True
        finally:
            self._rebuild_mutex.release()

    def _reconstruct(self, index: Any, labels: npt.NDArray[np.int64]) -> Vectors:
        if labels.size == 0:
            return np.empty((0, self._dim), dtype=np.float32)
        out = index.reconstruct_batch(np.ascontiguousarray(labels, dtype=np.int64))
        return np.ascontiguousarray(out, dtype=np.float32)

    def _flat_views(self, st: Structure) -> tuple[Vectors, npt.NDArray[np.int64]]:
        """Writable views of the exact structure's vectors ``[n, dim]`` and id map ``[n]``.

        Taken afresh for every write: FAISS may reallocate its storage on add.
        """
        f = self._faiss
        n = int(st.index.ntotal)
        flat = f.downcast_index(st.index.index)
        xb = f.rev_swig_ptr(flat.get_xb(), n * self._dim).reshape(n, self._dim)
        id_map = f.rev_swig_ptr(st.index.id_map.data(), n)
        return xb, id_map

    def _write(self, st: Structure, labels: npt.NDArray[np.int64], vecs: Vectors) -> None:
        """Insert or overwrite ``labels`` in a structure (caller holds the write lock).

        Exact structure: held labels are overwritten in place (O(dim); the
        IndexIDMap2 id map and reverse map do not change), new ones appended.
        IVF: remove then add (O(batch) with the hash-table direct map).
        """
        if labels.size == 0:
            return
        if st.kind == "ivf":
            self._delete(st, labels)
            st.index.add_with_ids(vecs, labels)
            return
        rows = st.rows
        held = [j for j, lab in enumerate(labels.tolist()) if lab in rows]
        if held:
            xb, _ = self._flat_views(st)
            xb[[rows[int(labels[j])] for j in held]] = vecs[held]
        if len(held) < labels.size:
            fresh = np.setdiff1d(np.arange(labels.size), held, assume_unique=True)
            start = int(st.index.ntotal)
            st.index.add_with_ids(np.ascontiguousarray(vecs[fresh]), labels[fresh])
            for off, lab in enumerate(labels[fresh].tolist()):
                rows[lab] = start + off

    def _delete(self, st: Structure, labels: npt.NDArray[np.int64]) -> None:
        """Remove ``labels`` from a structure (unknown labels are skipped).

        Exact structure: the rows to remove are first swapped to the end of the
        storage, so that FAISS' removal moves no vector (it still rebuilds the
        IndexIDMap2 reverse map, O(n) per call: batch removals).
        """
        if labels.size == 0:
            return
        f = self._faiss
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        if st.kind == "ivf":  # the hash-table direct map only accepts an IDSelectorArray
            st.index.remove_ids(f.IDSelectorArray(labels.size, f.swig_ptr(labels)))
            return
        rows = st.rows
        gone = sorted({int(lab) for lab in labels.tolist() if int(lab) in rows})
        if not gone:
            return
        n = int(st.index.ntotal)
        tail_start = n - len(gone)
        gone_set = set(gone)
        xb, id_map = self._flat_views(st)
        holes = [rows[lab] for lab in gone if rows[lab] < tail_start]
        movers = [r for r in range(tail_start, n) if int(id_map[r]) not in gone_set]
        for hole, mover in zip(holes, movers, strict=True):
            moved, dropped = int(id_map[mover]), int(id_map[hole])
            xb[hole] = xb[mover]
            id_map[hole], id_map[mover] = moved, dropped
            rows[moved] = hole
        arr = np.asarray(gone, dtype=np.int64)
        st.index.remove_ids(f.IDSelectorBatch(arr.size, f.swig_ptr(arr)))
        for lab in gone:
            del rows[lab]

    # ------------------------------------------------------------------ writes
    def build(
        self, ids: Sequence[str], vectors: Any, versions: Sequence[int] | None = None
    ) -> None:
        """See :meth:`VectorIndex.build`; trains IVF when ``len(ids) >= ivf_min_rows``.

        Writes made by other threads while ``build`` runs are discarded.
        """
        id_list, vecs = check_batch(ids, vectors, versions, self._dim, unique=True)
        labels = np.arange(len(id_list), dtype=np.int64)
        with self._rebuild_mutex:
            new = self._make_structure(vecs, labels)
            with self._lock.write():
                self._s = new
                self._label = {i: j for j, i in enumerate(id_list)}
                self._ids = dict(enumerate(id_list))
                self._next_label = len(id_list)
                self._versions = build_versions(id_list, versions)
                self._rep.reset(self._s)

    def upsert(
        self, ids: Sequence[str], vectors: Any, versions: Sequence[int] | None = None
    ) -> int:
        """See :meth:`VectorIndex.upsert`."""
        id_list, vecs = check_batch(ids, vectors, versions, self._dim, unique=False)
        id_list, vecs, vers = dedupe_batch(id_list, vecs, versions)
        apply_threads()
        with self._lock.write():
            rows: list[int] = []
            labels: list[int] = []
            for j in accept_newer(self._versions, id_list, vers):
                id_ = id_list[j]
                lab = self._label.get(id_)
                if lab is None:
                    lab = self._next_label
                    self._next_label += 1
                    self._label[id_] = lab
                    self._ids[lab] = id_
                rows.append(j)
                labels.append(lab)
            if rows:
                lab_arr = np.asarray(labels, dtype=np.int64)
                sub = vecs if len(rows) == vecs.shape[0] else np.ascontiguousarray(vecs[rows])
                self._write(self._s, lab_arr, sub)
                if self._journal is not None:
                    self._journal.append(("upsert", lab_arr, sub.copy()))
                self._rep.mark_dirty(lab_arr, sub, self._s)
        if rows and self.config.auto_rebuild:
            self.maybe_rebuild()
        return len(rows)

    def remove(self, ids: Collection[str]) -> int:
        """See :meth:`VectorIndex.remove`."""
        apply_threads()
        with self._lock.write():
            labels: list[int] = []
            for id_ in set(ids):
                self._versions.pop(id_, None)
                lab = self._label.pop(id_, None)
                if lab is not None:
                    del self._ids[lab]
                    labels.append(lab)
            if labels:
                lab_arr = np.asarray(labels, dtype=np.int64)
                self._delete(self._s, lab_arr)
                if self._journal is not None:
                    self._journal.append(("remove", lab_arr, None))
                self._rep.mark_dirty(lab_arr, None, self._s)
        if labels and self.config.auto_rebuild:
            self.maybe_rebuild()
        return len(labels)

    # ------------------------------------------------------------------ reads
    def count(self) -> int:
        """See :meth:`VectorIndex.count`."""
        return len(self._ids)

    def contains(self, id_: str) -> bool:
        """See :meth:`VectorIndex.contains`."""
        return id_ in self._label

    def get(self, id_: str) -> npt.NDArray[np.float32]:
        """See :meth:`VectorIndex.get`."""
        with self._lock.read():
            lab = self._label.get(id_)
            if lab is None:
                raise UnknownId(id_)
            return np.asarray(self._s.index.reconstruct(lab), dtype=np.float32)

    def get_many(self, ids: Sequence[str]) -> Vectors:
        """Vectors ``[n, dim]`` of several ids (raises :class:`UnknownId` on the first unknown)."""
        with self._lock.read():
            labels = []
            for id_ in ids:
                lab = self._label.get(id_)
                if lab is None:
                    raise UnknownId(id_)
                labels.append(lab)
            return self._reconstruct(self._s.index, np.asarray(labels, dtype=np.int64))

    def version(self, id_: str) -> int | None:
        """See :meth:`VectorIndex.version`."""
        return self._versions.get(id_)

    def ids(self) -> list[str]:
        """See :meth:`VectorIndex.ids`."""
        with self._lock.read():
            return list(self._label)

    def _search(self, queries: Vectors, k: int) -> tuple[list[list[str]], Vectors]:
        apply_threads()
        with self._lock.read():
            k = min(k, self._s.index.ntotal)
            if k == 0:
                return [[] for _ in range(queries.shape[0])], np.zeros(
                    (queries.shape[0], 0), np.float32
                )
            if self._rep.usable(k):
                scores, labels = self._rep.search(queries, k)
            else:
                scores, labels = self._s.index.search(queries, k)
            names = self._ids
            out = [[names[lab] for lab in row if lab >= 0] for row in labels.tolist()]
        return out, np.asarray(scores, dtype=np.float32)

    def stats(self) -> dict[str, Any]:
        """Backend, structure (``flat``/``ivf``), size and IVF knobs."""
        s = self._s
        out = super().stats()
        out.update(
            kind=s.kind,
            nlist=s.nlist,
            nprobe=s.nprobe,
            trained_rows=s.trained_rows,
            tuned_recall=s.recall,
            replica=self._rep.mode,
            dirty=len(self._rep.dirty),
        )
        return out

    @property
    def kind(self) -> Kind:
        """The current structure: ``"flat"`` (exact) or ``"ivf"``."""
        return self._s.kind

    def set_nprobe(self, nprobe: int) -> None:
        """Override the IVF lists probed per query (no effect on exact search)."""
        if nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        with self._lock.write():
            if self._s.kind == "ivf":
                self._s.nprobe = min(nprobe, self._s.nlist)
                self._s.index.nprobe = self._s.nprobe
                self._rep.set_nprobe(self._s.nprobe)

    def close(self) -> None:
        """Drop the replica and its GPU resources."""
        with self._lock.write():
            self._rep.close()

    # ------------------------------------------------------------------ persistence
    def save(self, folder: Path | str) -> None:
        """Write ``index.faiss``, ``labels.npy``, ``ids.json``, ``versions.npy``, ``index.json``."""
        with self._lock.read():
            labels = np.fromiter(self._ids.keys(), dtype=np.int64, count=len(self._ids))
            ids = [self._ids[int(lab)] for lab in labels]
            vers = versions_array(ids, self._versions)
            meta = self._base_meta()
            meta.update(
                kind=self._s.kind,
                nlist=self._s.nlist,
                nprobe=self._s.nprobe,
                trained_rows=self._s.trained_rows,
                next_label=self._next_label,
                config=dataclasses.asdict(self.config),
            )
            with atomic_folder(Path(folder)) as tmp:
                self._faiss.write_index(self._s.index, str(tmp / "index.faiss"))
                np.save(tmp / "labels.npy", labels)
                np.save(tmp / "versions.npy", vers)
                (tmp / "ids.json").write_text(json.dumps(ids, ensure_ascii=False), "utf-8")
                write_json(tmp / INDEX_META_FILE, meta)

    def load(self, folder: Path | str) -> None:
        """See :meth:`VectorIndex.load`; the FAISS structure is read back, not retrained."""
        path = Path(folder)
        meta = self._check_snapshot(path)
        try:
            index = self._faiss.read_index(str(path / "index.faiss"))
            labels = np.load(path / "labels.npy", allow_pickle=False)
            vers = np.load(path / "versions.npy", allow_pickle=False)
            ids = json.loads((path / "ids.json").read_text("utf-8"))
        except (OSError, ValueError, RuntimeError) as exc:
            raise SnapshotError(f"cannot read snapshot {path}: {exc}") from exc
        kind = meta.get("kind")
        if kind not in ("flat", "ivf") or len(ids) != labels.size or vers.size != labels.size:
            raise SnapshotError(f"snapshot {path} is inconsistent (kind/ids/labels/versions)")
        if index.ntotal != labels.size or index.d != self._dim:
            raise SnapshotError(f"snapshot {path}: index.faiss does not match ids.json")
        with self._rebuild_mutex, self._lock.write():
            self._s = Structure(
                index, kind, int(meta.get("nlist", 0)), int(meta.get("nprobe", 0)),
                int(meta.get("trained_rows", 0)),
            )  # fmt: skip
            if kind == "flat":
                id_map = self._faiss.vector_to_array(index.id_map)
                self._s.rows = {int(lab): j for j, lab in enumerate(id_map.tolist())}
            self._ids = {int(lab): i for lab, i in zip(labels.tolist(), ids, strict=True)}
            self._label = {i: lab for lab, i in self._ids.items()}
            self._versions = versions_dict(ids, vers)
            self._next_label = int(meta.get("next_label", int(labels.max(initial=-1)) + 1))
            self._rep.reset(self._s)
        logger.info("loaded %s index of %d vectors from %s", kind, len(ids), path)
