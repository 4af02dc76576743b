"""Exact top-k over a compressed copy of the item vectors (fewer bytes read per query).

The exact search over a catalogue reads every item vector per query: at 45,421 x 192
float32 (35 MB) that memory traffic is the cost. :class:`ItemScan` ranks the items by
their inner product with a scalar-quantized copy (faiss ``IndexScalarQuantizer``: 8-bit
codes, a quarter of the bytes, or fp16, half), then scores the best candidates again on
the float32 vectors. The largest quantization error of every coordinate is measured when
the scan is built, which bounds every approximate score's error for a given query; the
candidate list grows until no item outside it can beat the k-th exact score, so the
answer is the exact search's (the same items; scores to float32 rounding). Design and
figures: docs/DESIGN.md and docs/RESULTS.md (issue #13, API latency).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from interest_stream.index.base import Vectors
from interest_stream.index.faiss_runtime import apply_threads, load_faiss

__all__ = ["SCAN_KINDS", "SCAN_MIN_ROWS", "ItemScan", "ScanKind", "wanted_scan"]

logger = logging.getLogger(__name__)

ScanKind = Literal["auto", "flat", "sq8", "fp16"]
SCAN_KINDS: Final[tuple[str, ...]] = ("auto", "flat", "sq8", "fp16")
"""``flat``: the exact float32 index alone; ``sq8`` / ``fp16``: a compressed scan with exact
re-scoring (the same answers); ``auto``: ``sq8`` from :data:`SCAN_MIN_ROWS` items on."""
SCAN_MIN_ROWS: Final = 20_000
"""Catalogue size from which ``auto`` uses the compressed scan (below, the float32 vectors
stay in the CPU caches and the exact index alone is as fast)."""
_GROW: Final = 4
"""Factor by which the candidate list grows when the bound does not settle the top k."""
_FETCH: Final = {"sq8": 2.0, "fp16": 1.25}
"""First candidate list per wanted row: on the Taobao checkpoint's real user vectors the
bound settled the top 60 within 123 (sq8) and 72 (fp16) candidates for every query."""


def wanted_scan(kind: str, n_items: int) -> Literal["flat", "sq8", "fp16"]:
    """The scan ``kind`` means for a catalogue of ``n_items``.

    Raises:
        ValueError: Not one of :data:`SCAN_KINDS`.
    """
    if kind not in SCAN_KINDS:
        raise ValueError(f"item scan must be one of {', '.join(SCAN_KINDS)}, got {kind!r}")
    if kind == "auto":
        return "sq8" if n_items >= SCAN_MIN_ROWS else "flat"
    return kind  # type: ignore[return-value]


class ItemScan:
    """Exact inner-product top-k over fixed item vectors, read through compressed codes.

    Thread safe (read only after construction; the counters are informational).
    """

    def __init__(self, vectors: Vectors, kind: Literal["sq8", "fp16"] = "sq8",
                 *, margin: int = 16) -> None:  # fmt: skip
        """Quantize ``vectors`` ``[n, dim]`` (kept by reference for the exact re-scoring).

        Args:
            vectors: float32 ``[n, dim]`` item vectors (rows = item rows).
            kind: ``sq8`` (8 bits per coordinate, per-coordinate range) or ``fp16``.
            margin: Candidates fetched beyond ``k`` (+ excluded) on the first try.

        Raises:
            ValueError: An unknown kind, no rows, or values fp16 cannot hold.
        """
        f = load_faiss()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"the scan needs a non-empty [n, dim] matrix, got {x.shape}")
        qt = {"sq8": "QT_8bit_uniform", "fp16": "QT_fp16"}.get(kind)
        if qt is None:
            raise ValueError(f"compressed scan kind must be sq8 or fp16, got {kind!r}")
        n, dim = x.shape
        self.kind = kind
        # sq8: every coordinate mapped to [0, 1] first (x = lo + span * u), so that one
        # uniform 8-bit range (faiss' fastest 8-bit kernel) gives each its own resolution.
        # (QT_8bit_direct's kernel is ~14% faster but faiss 1.15 answers wrong inner
        # products with it: not used.)
        lo = x.min(axis=0) if kind == "sq8" else np.zeros(dim, np.float32)
        span = np.maximum(x.max(axis=0) - lo, 1e-30) if kind == "sq8" else np.ones(dim, np.float32)
        self._lo, self._span = lo.astype(np.float32), span.astype(np.float32)
        apply_threads()
        index = f.IndexScalarQuantizer(dim, getattr(f.ScalarQuantizer, qt), f.METRIC_INNER_PRODUCT)
        index.train(self._mapped(x[: min(n, 65_536)]))
        delta = np.zeros(dim, dtype=np.float64)
        for s in range(0, n, 8192):  # mapped and decoded in chunks (memory)
            u = self._mapped(x[s : s + 8192])
            index.add(u)
            dec = index.sa_decode(index.sa_encode(u)).astype(np.float64) * span + lo
            if not np.isfinite(dec).all():
                raise ValueError(f"item vectors out of the {kind} range")
            np.maximum(delta, np.abs(dec - x[s : s + 8192]).max(axis=0), out=delta)
        codes = f.vector_to_array(index.codes)
        self.margin = int(margin)
        self._index = index
        self._x = x
        self._n = int(n)
        # |approx - exact| <= sum_d |q_d| delta_d + rounding of both float32 sums (and of
        # the decoding), each below (dim + 2) * 2^-24 * sum_d |q_d| max_i |x_id|
        self._delta = delta
        self._absmax = np.abs(x).max(axis=0).astype(np.float64) + delta + span
        self._rel = (2 * dim + 8) * 2.0**-24
        # sum_d |q_d| w_d is the bound: one float32 product per query, 0.1% added for its
        # own rounding (relative error below dim * 2^-24)
        self._bound_w = ((delta + self._rel * self._absmax) * 1.001).astype(np.float32)
        self._ptr = f.swig_ptr
        self._lock = threading.Lock()
        self.counts = {"searches": 0, "regrown": 0, "fallbacks": 0}
        logger.info(
            "item scan: %d x %d, %s codes (%.1f MB), largest coordinate error %.3g",
            n, dim, kind, codes.nbytes / 1e6, float(delta.max()),
        )  # fmt: skip

    def _mapped(self, x: Vectors) -> Vectors:
        if self.kind == "fp16":
            return x
        return np.ascontiguousarray((x - self._lo) / self._span, dtype=np.float32)

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self._x.shape[1])

    def __len__(self) -> int:
        """Number of items."""
        return self._n

    def error_bound(self, query: npt.NDArray[np.float32]) -> float:
        """Largest difference between an approximate and an exact score for ``query``."""
        return float(np.abs(query) @ self._bound_w) + 1e-30

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def search(
        self, query: npt.NDArray[np.float32], k: int, skip: Collection[int] = ()
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]] | None:
        """The exact top ``k`` rows for one query ``[dim]``, best first, with their scores.

        Args:
            query: float32 ``[dim]`` (validated by the caller).
            k: Rows to return (at most ``len(self) - len(skip)``).
            skip: Rows never returned.

        Returns:
            ``(rows, scores)``, or ``None`` when the bound needs more than an eighth of the
            catalogue as candidates (the caller then runs the float32 search).
        """
        self._count("searches")
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        skip_arr = np.fromiter(skip, dtype=np.int64, count=len(skip)) if skip else None
        want = min(k, self._n - (0 if skip_arr is None else skip_arr.size))
        if want <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        bound = float(np.abs(q) @ self._bound_w) + 1e-30  # error_bound(q)
        qm = q * self._span  # the mapped codes' query; + offset = the approximate score
        offset = float(q @ self._lo)
        wanted = k + (0 if skip_arr is None else skip_arr.size)
        fetch = min(self._n, int(_FETCH[self.kind] * wanted) + self.margin)
        apply_threads()
        while True:
            # faiss' search_c with our own buffers: the Python wrapper's checks and
            # allocations cost ~10% of the scan's Python part
            approx = np.empty(fetch, dtype=np.float32)
            rows = np.empty(fetch, dtype=np.int64)
            self._index.search_c(1, self._ptr(qm), fetch, self._ptr(approx), self._ptr(rows), None)
            if rows[-1] < 0:
                rows = rows[rows >= 0]
            if skip_arr is not None:
                rows = rows[~np.isin(rows, skip_arr)]
            exact = self._x[rows] @ q
            order = np.argsort(-exact, kind="stable")[:want]
            if fetch >= self._n:
                return rows[order], exact[order]
            # every row not fetched has an approximate score <= the lowest fetched one
            ceiling = float(approx.min()) + offset + bound
            if order.size == want and ceiling < float(exact[order[-1]]):
                return rows[order], exact[order]
            fetch *= _GROW
            if fetch > self._n // 8:
                self._count("fallbacks")
                return None
            self._count("regrown")

    def stats(self) -> dict[str, Any]:
        """Kind, size, code bytes, the largest coordinate error and the search counters."""
        with self._lock:
            counts = dict(self.counts)
        return {
            "kind": self.kind,
            "items": self._n,
            "code_bytes": int(self._index.code_size) * self._n,
            "max_coordinate_error": float(self._delta.max()),
            **counts,
        }
