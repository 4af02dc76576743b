"""FAISS backend: exact search for small sets, IVF for large ones, GPU when present.

Structure by size (see :class:`FaissConfig`):

* fewer than ``ivf_min_rows`` vectors: ``IndexIDMap2(IndexFlatIP)`` - exact;
* from ``ivf_min_rows`` on: ``IndexIVFFlat`` (inner product) with
  ``nlist ~ nlist_factor * sqrt(n)`` lists and a hash-table direct map, so that
  removal and reconstruction by id are O(1). ``nprobe`` is tuned at build time
  on a sample of the data to reach ``target_recall`` (recall@``tune_k`` against
  exact search; 0.95 at 100 by default), unless ``nprobe`` is fixed.

HNSW is never used: it cannot remove vectors, and the user index must forget users.

The index grows from exact to IVF by itself (and retrains IVF when it has grown
``rebuild_growth`` times since training): :meth:`FaissIndex.maybe_rebuild`
trains the new structure from a copy *outside* the write lock while journaling
the writes made meanwhile, then replays them and swaps - searches never wait
for a training run.

GPU: when ``faiss.get_num_gpus() > 0`` (the ``gpu`` extra, ``faiss-gpu``) and
``device`` is ``auto`` or ``gpu``, searches run on a GPU *replica* of the CPU
index. The CPU index stays the source of truth (GPU indexes cannot remove ids).
Ids written since the replica was copied are "dirty": the replica's hits for
them are dropped and their current vectors are scored exactly on the CPU and
merged in, so answers are always current; past ``gpu_max_dirty`` dirty ids the
replica is copied again.

Thread safety: a readers-writer lock; FAISS releases the GIL while it searches.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt

from interest_stream.index._sync import RWLock
from interest_stream.index.base import (
    INDEX_META_FILE,
    VectorIndex,
    Vectors,
    as_matrix,
    atomic_folder,
    check_ids,
    dedupe_batch,
    nlist_for,
    versions_array,
    versions_dict,
    write_json,
)
from interest_stream.index.errors import MissingIndexDependency, SnapshotError, UnknownId

__all__ = [
    "FaissConfig",
    "FaissIndex",
    "faiss_available",
    "get_threads",
    "gpu_count",
    "set_threads",
]

logger = logging.getLogger(__name__)

GPU_MAX_K = 2048
"""Largest k FAISS GPU indexes answer; larger queries run on the CPU index."""

Kind = Literal["flat", "ivf"]


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss is a core dependency
        raise MissingIndexDependency(
            "the FAISS backend needs faiss: pip install 'interest-stream' (faiss-cpu) "
            "or 'interest-stream[gpu]' (faiss-gpu)"
        ) from exc
    return faiss


def faiss_available() -> bool:
    """Whether faiss can be imported."""
    try:
        _faiss()
    except MissingIndexDependency:
        return False
    return True


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    try:
        return int(_faiss().get_num_gpus())
    except (MissingIndexDependency, AttributeError):
        return 0


_threads: int | None = None
_local = threading.local()


def set_threads(n: int | None) -> None:
    """Set the OpenMP threads FAISS uses in this process (``None``: FAISS' default).

    Online serving wants 1: one query or a small upsert batch is too small to
    split, and on a busy machine (2 cores shared with Kafka, the worker and the
    event loop) OpenMP's spinning barriers turn a 0.1 ms search into several ms
    of CPU. Bulk builds (k-means) are faster with more threads on an idle machine.

    OpenMP keeps this number per thread, so every :class:`FaissIndex` call
    applies it to its calling thread (the API's thread pool, the consumer
    thread) before it enters FAISS.
    """
    global _threads
    if n is not None and n < 1:
        raise ValueError(f"FAISS threads must be >= 1, got {n}")
    _threads = None if n is None else int(n)
    _apply_threads()


def _apply_threads() -> None:
    """Give the calling thread the process-wide FAISS thread count (cheap when set)."""
    want = _threads
    if want is not None and getattr(_local, "threads", None) != want:
        _faiss().omp_set_num_threads(want)
        _local.threads = want


def get_threads() -> int:
    """The OpenMP threads FAISS uses in the calling thread."""
    _apply_threads()
    return int(_faiss().omp_get_max_threads())


@dataclass(frozen=True)
class FaissConfig:
    """Knobs of the FAISS backend.

    Attributes:
        ivf_min_rows: From this many vectors on, IVF replaces exact search.
            At 100,000 x 64 floats one exact query scans 25 MB (~3 ms on one core).
        nlist_factor: IVF lists ``= nlist_factor * sqrt(n)`` (4 by default).
        nlist: Fixed list count (overrides ``nlist_factor``).
        nprobe: Fixed lists probed per query; ``None`` tunes it at build time.
        target_recall: Recall@``tune_k`` that tuning must reach on the sample.
        tune_k: The k of the tuning recall (100: the audience query's k).
        tune_queries: Sampled vectors used as tuning queries.
        tune_margin: Added to ``target_recall`` while tuning (sampling noise).
        train_points_per_list: k-means sample size per list (>= 39, FAISS' minimum).
        kmeans_iters: k-means iterations.
        rebuild_growth: IVF retrains when the index has grown this many times
            since training (``nlist`` then follows ``sqrt(n)``); it falls back
            to exact search below a quarter of ``ivf_min_rows``.
        auto_rebuild: Call :meth:`FaissIndex.maybe_rebuild` after each upsert.
        device: ``auto`` (GPU replica when faiss sees a GPU), ``cpu``, ``gpu``
            (fail without one), or ``cpu-replica`` (the replica bookkeeping on
            a CPU copy; used by tests to cover the GPU code path).
        gpu_id: GPU device number.
        gpu_max_dirty: Ids written since the replica copy before it is re-copied.
        seed: Seed of sampling and k-means.
    """

    ivf_min_rows: int = 100_000
    nlist_factor: float = 4.0
    nlist: int | None = None
    nprobe: int | None = None
    target_recall: float = 0.95
    tune_k: int = 100
    tune_queries: int = 256
    tune_margin: float = 0.01
    train_points_per_list: int = 64
    kmeans_iters: int = 10
    rebuild_growth: float = 4.0
    auto_rebuild: bool = True
    device: Literal["auto", "cpu", "gpu", "cpu-replica"] = "auto"
    gpu_id: int = 0
    gpu_max_dirty: int = 1024
    seed: int = 1234

    def __post_init__(self) -> None:
        """Check the knobs at once, naming the one that is wrong."""
        if self.ivf_min_rows < 1:
            raise ValueError(f"FaissConfig.ivf_min_rows must be >= 1, got {self.ivf_min_rows}")
        if self.nlist_factor <= 0:
            raise ValueError(f"FaissConfig.nlist_factor must be > 0, got {self.nlist_factor}")
        if self.nlist is not None and self.nlist < 1:
            raise ValueError(f"FaissConfig.nlist must be >= 1, got {self.nlist}")
        if self.nprobe is not None and self.nprobe < 1:
            raise ValueError(f"FaissConfig.nprobe must be >= 1, got {self.nprobe}")
        if not 0 < self.target_recall <= 1:
            raise ValueError(
                f"FaissConfig.target_recall must be in (0, 1], got {self.target_recall}"
            )
        if self.train_points_per_list < 39:
            raise ValueError("FaissConfig.train_points_per_list must be >= 39 (FAISS k-means)")
        if self.rebuild_growth <= 1:
            raise ValueError(f"FaissConfig.rebuild_growth must be > 1, got {self.rebuild_growth}")
        if self.device not in ("auto", "cpu", "gpu", "cpu-replica"):
            raise ValueError(
                f"FaissConfig.device must be auto|cpu|gpu|cpu-replica, got {self.device!r}"
            )

    def replace(self, **changes: Any) -> FaissConfig:
        """A copy with some knobs changed."""
        return dataclasses.replace(self, **changes)


@dataclass
class _Structure:
    index: Any
    kind: Kind
    nlist: int = 0
    nprobe: int = 0
    trained_rows: int = 0
    recall: float | None = None
    rows: dict[int, int] = field(default_factory=dict)
    """Exact structure only: label -> row of the flat storage (for in-place updates)."""


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
        self._faiss = _faiss()
        self.config = config or FaissConfig()
        self._lock = RWLock()
        self._rebuild_mutex = threading.Lock()
        self._label: dict[str, int] = {}
        self._ids: dict[int, str] = {}
        self._versions: dict[str, int] = {}
        self._next_label = 0
        self._s = _Structure(self._new_flat(), "flat")
        self._journal: list[tuple[str, npt.NDArray[np.int64], Vectors | None]] | None = None
        # GPU (or test) replica
        self._replica_mode = self._pick_replica_mode()
        self._gpu_res: Any = None
        self._replica: Any = None
        self._dirty: dict[int, Vectors | None] = {}
        self._refresh_replica()

    # ------------------------------------------------------------------ structure
    def _pick_replica_mode(self) -> Literal["none", "gpu", "cpu"]:
        dev = self.config.device
        if dev == "cpu":
            return "none"
        if dev == "cpu-replica":
            return "cpu"
        n_gpu = gpu_count()
        if dev == "gpu" and n_gpu == 0:
            raise ValueError(
                "FaissConfig.device='gpu' but faiss sees no GPU "
                "(install the 'gpu' extra, faiss-gpu, on a CUDA machine)"
            )
        return "gpu" if n_gpu > 0 else "none"

    def _new_flat(self) -> Any:
        f = self._faiss
        return f.IndexIDMap2(f.IndexFlatIP(self._dim))

    def _wanted_kind(self, n: int) -> Kind:
        return "ivf" if n >= self.config.ivf_min_rows else "flat"

    def _needs_rebuild(self, n: int) -> bool:
        s = self._s
        if s.kind == "flat":
            return n >= self.config.ivf_min_rows
        if n < self.config.ivf_min_rows // 4:
            return True
        return n >= self.config.rebuild_growth * max(s.trained_rows, 1)

    def _make_structure(self, vecs: Vectors, labels: npt.NDArray[np.int64]) -> _Structure:
        """Build (and train, and tune) the structure wanted for these vectors."""
        f = self._faiss
        _apply_threads()
        n = vecs.shape[0]
        if self._wanted_kind(n) == "flat":
            idx = self._new_flat()
            if n:
                idx.add_with_ids(vecs, labels)
            return _Structure(
                idx, "flat", rows={int(lab): j for j, lab in enumerate(labels.tolist())}
            )
        cfg = self.config
        nlist = cfg.nlist or nlist_for(n, cfg.nlist_factor)
        nlist = max(1, min(nlist, n // 39))
        t0 = time.perf_counter()
        quantizer = f.IndexFlatIP(self._dim)
        ivf = f.IndexIVFFlat(quantizer, self._dim, nlist, f.METRIC_INNER_PRODUCT)
        ivf.cp.niter = cfg.kmeans_iters
        ivf.cp.seed = cfg.seed
        rng = np.random.default_rng(cfg.seed)
        n_train = min(n, nlist * cfg.train_points_per_list)
        sample = vecs if n_train == n else vecs[np.sort(rng.choice(n, n_train, replace=False))]
        ivf.train(np.ascontiguousarray(sample))
        ivf.set_direct_map_type(f.DirectMap.Hashtable)
        ivf.add_with_ids(vecs, labels)
        t_train = time.perf_counter() - t0
        if cfg.nprobe is not None:
            nprobe, recall = min(cfg.nprobe, nlist), None
        else:
            nprobe, recall = self._tune_nprobe(ivf, vecs, labels, nlist, rng)
        ivf.nprobe = nprobe
        logger.info(
            "IVF index: %d vectors, nlist=%d, nprobe=%d (sample recall@%d %s), built in %.1fs",
            n, nlist, nprobe, cfg.tune_k, "n/a" if recall is None else f"{recall:.3f}",
            time.perf_counter() - t0,
        )  # fmt: skip
        logger.debug("IVF training took %.2fs", t_train)
        return _Structure(ivf, "ivf", nlist, nprobe, n, recall)

    def _tune_nprobe(
        self,
        ivf: Any,
        vecs: Vectors,
        labels: npt.NDArray[np.int64],
        nlist: int,
        rng: np.random.Generator,
    ) -> tuple[int, float]:
        """Smallest nprobe whose recall@tune_k on sampled vectors reaches the target."""
        cfg = self.config
        n = vecs.shape[0]
        k = min(cfg.tune_k, n)
        rows = rng.choice(n, min(cfg.tune_queries, n), replace=False)
        queries = np.ascontiguousarray(vecs[rows])
        _, gt_rows = self._faiss.knn(queries, vecs, k, metric=self._faiss.METRIC_INNER_PRODUCT)
        truth = labels[gt_rows]
        target = min(1.0, cfg.target_recall + cfg.tune_margin)
        cache: dict[int, float] = {}

        def recall(p: int) -> float:
            if p not in cache:
                ivf.nprobe = p
                _, found = ivf.search(queries, k)
                hits = sum(
                    len(np.intersect1d(a, b, assume_unique=False))
                    for a, b in zip(found, truth, strict=True)
                )
                cache[p] = hits / truth.size
            return cache[p]

        lo, hi = 0, 1
        while hi < nlist and recall(hi) < target:
            lo, hi = hi, min(nlist, hi * 2)
        while hi - lo > 1:  # recall(lo) < target <= recall(hi) (or hi == nlist)
            mid = (lo + hi) // 2
            if recall(mid) >= target:
                hi = mid
            else:
                lo = mid
        return hi, recall(hi)

    def maybe_rebuild(self) -> bool:
        """Move to the structure the current size calls for; True if it rebuilt.

        The new structure is trained from a copy outside the write lock; writes
        made meanwhile are journaled and replayed before the swap.
        """
        if not self._needs_rebuild(self.count()):
            return False
        if not self._rebuild_mutex.acquire(blocking=False):
            return False  # another thread is rebuilding
        _apply_threads()
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
                self._dirty.clear()
                self._refresh_replica()
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

    def _flat_views(self, st: _Structure) -> tuple[Vectors, npt.NDArray[np.int64]]:
        """Writable views of the exact structure's vectors ``[n, dim]`` and id map ``[n]``.

        Taken afresh for every write: FAISS may reallocate its storage on add.
        """
        f = self._faiss
        n = int(st.index.ntotal)
        flat = f.downcast_index(st.index.index)
        xb = f.rev_swig_ptr(flat.get_xb(), n * self._dim).reshape(n, self._dim)
        id_map = f.rev_swig_ptr(st.index.id_map.data(), n)
        return xb, id_map

    def _write(self, st: _Structure, labels: npt.NDArray[np.int64], vecs: Vectors) -> None:
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

    def _delete(self, st: _Structure, labels: npt.NDArray[np.int64]) -> None:
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

    # ------------------------------------------------------------------ replica
    def _refresh_replica(self) -> None:
        """Copy the CPU index to the replica (caller holds the write lock or owns self)."""
        if self._replica_mode == "none":
            return
        if self._s.index.ntotal == 0:
            self._replica = None
            return
        if self._replica_mode == "cpu":
            self._replica = self._faiss.clone_index(self._s.index)
        else:  # pragma: no cover - needs a GPU
            f = self._faiss
            if self._gpu_res is None:
                self._gpu_res = f.StandardGpuResources()
            self._replica = f.index_cpu_to_gpu(self._gpu_res, self.config.gpu_id, self._s.index)
        if self._s.kind == "ivf":
            self._replica.nprobe = self._s.nprobe
        self._dirty.clear()

    def _mark_dirty(self, labels: npt.NDArray[np.int64], vecs: Vectors | None) -> None:
        if self._replica_mode == "none":
            return
        for j, lab in enumerate(labels.tolist()):
            self._dirty[lab] = None if vecs is None else vecs[j].copy()
        if self._replica is None or len(self._dirty) > self.config.gpu_max_dirty:
            self._refresh_replica()

    def _search_replica(self, q: Vectors, k: int) -> tuple[Vectors, npt.NDArray[np.int64]]:
        """Search the replica, dropping dirty hits and merging exact scores of dirty vectors."""
        dirty = self._dirty
        fetch = min(k + len(dirty), self._replica.ntotal)
        d_rep, l_rep = self._replica.search(q, fetch)
        live = [(lab, v) for lab, v in dirty.items() if v is not None]
        if live:
            live_labels = np.array([lab for lab, _ in live], dtype=np.int64)
            live_scores = q @ np.stack([v for _, v in live]).T  # [Q, n_live]
        out_d = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        out_l = np.full((q.shape[0], k), -1, dtype=np.int64)
        for r in range(q.shape[0]):
            keep = (l_rep[r] >= 0) & ~np.isin(l_rep[r], list(dirty.keys()))
            labs, scores = l_rep[r][keep], d_rep[r][keep]
            if live:
                labs = np.concatenate([labs, live_labels])
                scores = np.concatenate([scores, live_scores[r]])
            order = np.argsort(-scores, kind="stable")[:k]
            out_d[r, : order.size] = scores[order]
            out_l[r, : order.size] = labs[order]
        return out_d, out_l

    # ------------------------------------------------------------------ writes
    def build(
        self, ids: Sequence[str], vectors: Any, versions: Sequence[int] | None = None
    ) -> None:
        """See :meth:`VectorIndex.build`; trains IVF when ``len(ids) >= ivf_min_rows``.

        Writes made by other threads while ``build`` runs are discarded.
        """
        vecs = as_matrix(vectors, self._dim)
        id_list = check_ids(ids, vecs.shape[0])
        if len(set(id_list)) != len(id_list):
            raise ValueError("build() got duplicate ids")
        if versions is not None and len(versions) != len(id_list):
            raise ValueError(f"got {len(versions)} versions for {len(id_list)} ids")
        labels = np.arange(len(id_list), dtype=np.int64)
        with self._rebuild_mutex:
            new = self._make_structure(vecs, labels)
            with self._lock.write():
                self._s = new
                self._label = {i: j for j, i in enumerate(id_list)}
                self._ids = dict(enumerate(id_list))
                self._next_label = len(id_list)
                self._versions = (
                    {}
                    if versions is None
                    else {i: int(v) for i, v in zip(id_list, versions, strict=True)}
                )
                self._dirty.clear()
                self._refresh_replica()

    def upsert(
        self, ids: Sequence[str], vectors: Any, versions: Sequence[int] | None = None
    ) -> int:
        """See :meth:`VectorIndex.upsert`."""
        vecs = as_matrix(vectors, self._dim)
        id_list = check_ids(ids, vecs.shape[0])
        if versions is not None and len(versions) != len(id_list):
            raise ValueError(f"got {len(versions)} versions for {len(id_list)} ids")
        id_list, vecs, vers = dedupe_batch(id_list, vecs, versions)
        _apply_threads()
        with self._lock.write():
            rows: list[int] = []
            labels: list[int] = []
            for j, id_ in enumerate(id_list):
                if vers is not None:
                    held = self._versions.get(id_)
                    if held is not None and vers[j] < held:
                        continue
                    self._versions[id_] = vers[j]
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
                self._mark_dirty(lab_arr, sub)
        if rows and self.config.auto_rebuild:
            self.maybe_rebuild()
        return len(rows)

    def remove(self, ids: Collection[str]) -> int:
        """See :meth:`VectorIndex.remove`."""
        _apply_threads()
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
                self._mark_dirty(lab_arr, None)
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
        _apply_threads()
        with self._lock.read():
            k = min(k, self._s.index.ntotal)
            if k == 0:
                return [[] for _ in range(queries.shape[0])], np.zeros(
                    (queries.shape[0], 0), np.float32
                )
            if self._replica is not None and k <= GPU_MAX_K - len(self._dirty):
                scores, labels = self._search_replica(queries, k)
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
            replica=self._replica_mode,
            dirty=len(self._dirty),
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
                if self._replica is not None:
                    self._replica.nprobe = self._s.nprobe

    def close(self) -> None:
        """Drop the replica and its GPU resources."""
        with self._lock.write():
            self._replica = None
            self._gpu_res = None

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
            self._s = _Structure(
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
            self._dirty.clear()
            self._refresh_replica()
        logger.info("loaded %s index of %d vectors from %s", kind, len(ids), path)
