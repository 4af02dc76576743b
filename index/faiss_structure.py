"""The FAISS structures and their knobs: exact (flat) or IVF, built, trained and tuned.

Fewer than ``ivf_min_rows`` vectors: ``IndexIDMap2(IndexFlatIP)`` - exact; from there on
``IndexIVFFlat`` (inner product) with ``nlist ~ nlist_factor * sqrt(n)`` lists and a
hash-table direct map (O(1) removal and reconstruction by id), ``nprobe`` tuned to reach
``target_recall`` (recall@``tune_k`` against exact search) unless fixed, on two query sets
that must both reach it: sampled stored vectors and random directions. An audience query
is an ad's or an item's vector, not a stored user: stored vectors alone overstate recall
(docs/DESIGN.md, "User index").
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from interest_stream.index.base import Vectors, nlist_for
from interest_stream.index.faiss_runtime import apply_threads

__all__ = ["FaissConfig", "Kind", "Structure", "make_structure", "new_flat", "tune_nprobe",
           "wanted_kind"]  # fmt: skip

logger = logging.getLogger(__name__)

Kind = Literal["flat", "ivf"]


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
        tune_queries: Tuning queries per set (sampled stored vectors; random directions).
        tune_margin: Added to ``target_recall`` while tuning (sampling noise).
        train_points_per_list: k-means sample size per list (>= 39, FAISS' minimum).
        kmeans_iters: k-means iterations.
        rebuild_growth: IVF retrains when the index has grown this many times
            since training (``nlist`` then follows ``sqrt(n)``); it falls back
            to exact search below a quarter of ``ivf_min_rows``.
        auto_rebuild: Call ``FaissIndex.maybe_rebuild`` after each upsert.
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
class Structure:
    index: Any
    kind: Kind
    nlist: int = 0
    nprobe: int = 0
    trained_rows: int = 0
    recall: float | None = None
    rows: dict[int, int] = field(default_factory=dict)
    """Exact structure only: label -> row of the flat storage (for in-place updates)."""


def new_flat(f: Any, dim: int) -> Any:
    """An empty exact index with 64-bit labels."""
    return f.IndexIDMap2(f.IndexFlatIP(dim))


def wanted_kind(cfg: FaissConfig, n: int) -> Kind:
    """The structure ``n`` vectors call for."""
    return "ivf" if n >= cfg.ivf_min_rows else "flat"


def make_structure(
    f: Any, dim: int, cfg: FaissConfig, vecs: Vectors, labels: npt.NDArray[np.int64]
) -> Structure:
    """Build (and train, and tune) the structure wanted for these vectors."""
    apply_threads()
    n = vecs.shape[0]
    if wanted_kind(cfg, n) == "flat":
        idx = new_flat(f, dim)
        if n:
            idx.add_with_ids(vecs, labels)
        return Structure(idx, "flat", rows={int(lab): j for j, lab in enumerate(labels.tolist())})
    nlist = cfg.nlist or nlist_for(n, cfg.nlist_factor)
    nlist = max(1, min(nlist, n // 39))
    t0 = time.perf_counter()
    quantizer = f.IndexFlatIP(dim)
    ivf = f.IndexIVFFlat(quantizer, dim, nlist, f.METRIC_INNER_PRODUCT)
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
        nprobe, recall = tune_nprobe(f, cfg, ivf, vecs, labels, nlist, rng)
    ivf.nprobe = nprobe
    logger.info(
        "IVF index: %d vectors, nlist=%d, nprobe=%d (sample recall@%d %s), built in %.1fs",
        n, nlist, nprobe, cfg.tune_k, "n/a" if recall is None else f"{recall:.3f}",
        time.perf_counter() - t0,
    )  # fmt: skip
    logger.debug("IVF training took %.2fs", t_train)
    return Structure(ivf, "ivf", nlist, nprobe, n, recall)


def tune_nprobe(
    f: Any,
    cfg: FaissConfig,
    ivf: Any,
    vecs: Vectors,
    labels: npt.NDArray[np.int64],
    nlist: int,
    rng: np.random.Generator,
) -> tuple[int, float]:
    """Smallest nprobe whose recall@tune_k reaches the target on sampled stored vectors
    and on as many random directions (the ranking of an inner-product query does not
    depend on its norm)."""
    n = vecs.shape[0]
    k = min(cfg.tune_k, n)
    m = min(cfg.tune_queries, n)
    stored = vecs[rng.choice(n, m, replace=False)]
    directions = rng.standard_normal((m, vecs.shape[1])).astype(np.float32)
    queries = np.ascontiguousarray(np.concatenate([stored, directions]))
    _, gt_rows = f.knn(queries, vecs, k, metric=f.METRIC_INNER_PRODUCT)
    truth = labels[gt_rows]
    target = min(1.0, cfg.target_recall + cfg.tune_margin)
    cache: dict[int, float] = {}

    def recall(p: int) -> float:
        """The lower recall of the two query sets at ``nprobe = p``."""
        if p not in cache:
            ivf.nprobe = p
            _, found = ivf.search(queries, k)
            hits = np.array([len(np.intersect1d(a, b)) for a, b in zip(found, truth, strict=True)])
            cache[p] = float(min(hits[:m].sum(), hits[m:].sum()) / (m * k))
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
