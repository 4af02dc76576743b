"""The search replica of a FAISS index: a GPU copy (or a CPU copy in tests) kept current.

GPU indexes cannot remove ids, so the CPU index stays the source of truth. Ids written
since the copy are "dirty": the replica's hits for them are dropped and their current
vectors are scored exactly and merged in, so answers are always current; past
``gpu_max_dirty`` dirty ids the replica is copied again.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from interest_stream.index.base import Vectors
from interest_stream.index.faiss_runtime import gpu_count
from interest_stream.index.faiss_structure import FaissConfig, Structure

__all__ = ["GPU_MAX_K", "SearchReplica"]

GPU_MAX_K = 2048
"""Largest k FAISS GPU indexes answer; larger queries run on the CPU index."""


def _pick_mode(config: FaissConfig) -> Literal["none", "gpu", "cpu"]:
    dev = config.device
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


class SearchReplica:
    """The replica of one index; the caller holds the index's lock around every call."""

    def __init__(self, f: Any, config: FaissConfig) -> None:
        """No copy yet (see :meth:`refresh`); raises ValueError for ``gpu`` without a GPU."""
        self._faiss = f
        self.config = config
        self.mode = _pick_mode(config)
        self._gpu_res: Any = None
        self.index: Any = None
        self.dirty: dict[int, Vectors | None] = {}

    def reset(self, st: Structure) -> None:
        """Forget the dirty ids and copy ``st`` (after a rebuild, a build or a load)."""
        self.dirty.clear()
        self.refresh(st)

    def refresh(self, st: Structure) -> None:
        """Copy the CPU index ``st`` to the replica (caller holds the write lock)."""
        if self.mode == "none":
            return
        if st.index.ntotal == 0:
            self.index = None
            return
        if self.mode == "cpu":
            self.index = self._faiss.clone_index(st.index)
        else:  # pragma: no cover - needs a GPU
            f = self._faiss
            if self._gpu_res is None:
                self._gpu_res = f.StandardGpuResources()
            self.index = f.index_cpu_to_gpu(self._gpu_res, self.config.gpu_id, st.index)
        if st.kind == "ivf":
            self.index.nprobe = st.nprobe
        self.dirty.clear()

    def mark_dirty(
        self, labels: npt.NDArray[np.int64], vecs: Vectors | None, st: Structure
    ) -> None:
        """Note writes (``vecs``) or removals (``None``) made to ``st`` since the copy."""
        if self.mode == "none":
            return
        for j, lab in enumerate(labels.tolist()):
            self.dirty[lab] = None if vecs is None else vecs[j].copy()
        if self.index is None or len(self.dirty) > self.config.gpu_max_dirty:
            self.refresh(st)

    def usable(self, k: int) -> bool:
        """Whether a top-``k`` search can run on the replica."""
        return self.index is not None and k <= GPU_MAX_K - len(self.dirty)

    def set_nprobe(self, nprobe: int) -> None:
        """Follow the CPU index's IVF ``nprobe``."""
        if self.index is not None:
            self.index.nprobe = nprobe

    def close(self) -> None:
        """Drop the copy and the GPU resources."""
        self.index = None
        self._gpu_res = None

    def search(self, q: Vectors, k: int) -> tuple[Vectors, npt.NDArray[np.int64]]:
        """Search the replica, dropping dirty hits and merging exact scores of dirty vectors."""
        dirty = self.dirty
        fetch = min(k + len(dirty), self.index.ntotal)
        d_rep, l_rep = self.index.search(q, fetch)
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
