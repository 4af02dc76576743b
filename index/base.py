"""The vector-index interface every backend implements, and the helpers they share.

A :class:`VectorIndex` holds float32 vectors under string ids with optional versions (an older
upsert is ignored) and answers top-k inner-product queries. Backends: ``NumpyIndex`` (brute
force, the reference) and ``FaissIndex`` (exact / IVF / GPU replica); :func:`create_index` is
the factory.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final

import numpy as np
import numpy.typing as npt

from interest_stream.core.checkpoint import write_json
from interest_stream.index.errors import DimensionMismatch, SnapshotError

__all__ = [
    "INDEX_META_FILE",
    "METRICS",
    "VectorIndex",
    "Vectors",
    "as_matrix",
    "atomic_folder",
    "create_index",
    "library_versions",
    "read_meta",
    "write_json",
]

logger = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]
"""A float32 matrix ``[n, dim]`` (C-contiguous)."""

METRICS: Final = ("ip",)
"""Supported metrics: ``ip`` = inner product (cosine when vectors are unit length)."""

INDEX_META_FILE: Final = "index.json"
FORMAT_VERSION: Final = 1
NO_VERSION: Final = np.iinfo(np.int64).min
"""Sentinel stored in ``versions.npy`` for an id upserted without a version."""


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a snapshot (written next to it)."""
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("faiss", "interest_stream"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        out[name] = str(getattr(mod, "__version__", "unknown"))
    return out


def as_matrix(vectors: Any, dim: int | None, *, what: str = "vectors") -> Vectors:
    """Validate ``vectors`` and return them as a C-contiguous float32 ``[n, dim]`` matrix.

    Args:
        vectors: Array-like of shape ``[n, dim]`` or ``[dim]`` (one vector).
        dim: The expected dimension, or ``None`` to accept any.
        what: Name used in error messages.

    Raises:
        DimensionMismatch: The last axis is not ``dim``.
        ValueError: Not numeric, not 1-D/2-D, or holding NaN/inf.
    """
    try:
        arr = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be numeric arrays: {exc}") from exc
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a [n, dim] matrix, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise DimensionMismatch(
            f"{what} have dimension {arr.shape[1]}, the index has {dim}",
            expected=dim,
            got=arr.shape[1],
        )
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return np.ascontiguousarray(arr)


def check_ids(ids: Sequence[str], n: int, *, what: str = "ids") -> list[str]:
    """Validate a list of string ids against a row count ``n``."""
    out = list(ids)
    if len(out) != n:
        raise ValueError(f"got {len(out)} {what} for {n} vectors")
    for i in out:
        if not isinstance(i, str) or not i:
            raise ValueError(f"{what} must be non-empty strings, got {i!r}")
    return out


def check_batch(
    ids: Sequence[str],
    vectors: Any,
    versions: Sequence[int] | None,
    dim: int,
    *,
    unique: bool,
) -> tuple[list[str], Vectors]:
    """Validate a write batch: ``(ids, float32 [n, dim])``; ``unique`` refuses repeated ids."""
    vecs = as_matrix(vectors, dim)
    id_list = check_ids(ids, vecs.shape[0])
    if unique and len(set(id_list)) != len(id_list):
        raise ValueError("build() got duplicate ids")
    if versions is not None and len(versions) != len(id_list):
        raise ValueError(f"got {len(versions)} versions for {len(id_list)} ids")
    return id_list, vecs


def build_versions(ids: Sequence[str], versions: Sequence[int] | None) -> dict[str, int]:
    """The version map of a fresh build (empty without versions)."""
    if versions is None:
        return {}
    return {i: int(v) for i, v in zip(ids, versions, strict=True)}


def accept_newer(
    held: dict[str, int], ids: Sequence[str], versions: Sequence[int] | None
) -> list[int]:
    """Rows of a deduplicated batch to apply: all without versions, else those whose version
    is not below the held one (``held`` is updated for them)."""
    if versions is None:
        return list(range(len(ids)))
    rows: list[int] = []
    for j, id_ in enumerate(ids):
        prev = held.get(id_)
        if prev is not None and versions[j] < prev:
            continue
        held[id_] = versions[j]
        rows.append(j)
    return rows


def dedupe_batch(
    ids: list[str], vectors: Vectors, versions: Sequence[int] | None
) -> tuple[list[str], Vectors, list[int] | None]:
    """Keep one row per id: the highest version (the last one on ties or without versions)."""
    if len(set(ids)) == len(ids):
        return ids, vectors, (None if versions is None else [int(v) for v in versions])
    best: dict[str, int] = {}
    for row, id_ in enumerate(ids):
        prev = best.get(id_)
        if prev is None or versions is None or int(versions[row]) >= int(versions[prev]):
            best[id_] = row
    rows = sorted(best.values())
    return (
        [ids[r] for r in rows],
        np.ascontiguousarray(vectors[rows]),
        None if versions is None else [int(versions[r]) for r in rows],
    )


def read_meta(folder: Path, name: str = INDEX_META_FILE) -> dict[str, Any]:
    """Read the JSON description of a snapshot folder.

    Raises:
        SnapshotError: Missing or unreadable.
    """
    path = Path(folder) / name
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError as exc:
        raise SnapshotError(f"{folder} is not an index snapshot: {name} is missing") from exc
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SnapshotError(f"{path} must hold a JSON object")
    return data


def check_meta(meta: dict[str, Any], *, dim: int | None, metric: str | None, where: Path) -> None:
    """Refuse a snapshot whose dimension or metric differs from the expected ones."""
    if dim is not None and meta.get("dim") != dim:
        raise DimensionMismatch(
            f"snapshot {where} has dimension {meta.get('dim')}, expected {dim}",
            expected=dim,
            got=meta.get("dim"),
        )
    if metric is not None and meta.get("metric") != metric:
        raise DimensionMismatch(
            f"snapshot {where} uses metric {meta.get('metric')!r}, expected {metric!r}",
            expected=metric,
            got=meta.get("metric"),
        )


@contextlib.contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """Write a snapshot into a temporary sibling, then swap it in place of ``folder``.

    Readers of ``folder`` see either the old snapshot or the new one, never a
    half-written one (the swap is two renames on the same file system).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield tmp
        old: Path | None = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}-{time.monotonic_ns()}"
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class VectorIndex(ABC):
    """A mutable top-k inner-product index over string ids.

    Thread safety: implementations allow concurrent ``search``/``get`` calls
    while one thread writes (``upsert``/``remove``/``build``).

    Attributes:
        backend: Short name of the implementation (``"faiss"``, ``"numpy"``).
    """

    backend: ClassVar[str] = "abstract"

    def __init__(self, dim: int, metric: str = "ip") -> None:
        """Create an empty index.

        Args:
            dim: Vector dimension (> 0).
            metric: ``"ip"`` (inner product).

        Raises:
            ValueError: ``dim`` < 1 or an unknown metric.
        """
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self._dim = dim
        self._metric = metric

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def metric(self) -> str:
        """Similarity metric (``"ip"``)."""
        return self._metric

    # ------------------------------------------------------------------ writes
    @abstractmethod
    def build(
        self, ids: Sequence[str], vectors: Any, versions: Sequence[int] | None = None
    ) -> None:
        """Replace the whole content with ``vectors`` ``[n, dim]`` under ``ids``.

        Raises:
            DimensionMismatch: Wrong vector dimension.
            ValueError: Duplicate ids, NaN/inf, or ids/vectors of different lengths.
        """

    @abstractmethod
    def upsert(
        self, ids: Sequence[str], vectors: Any, versions: Sequence[int] | None = None
    ) -> int:
        """Insert or replace vectors ``[n, dim]``.

        Rows whose version is older than the version held for their id are
        ignored (equal versions are applied, so a re-encode with a new model
        under the same version still lands). Within one call, the row with the
        highest version of an id wins.

        Returns:
            The number of rows applied.
        """

    @abstractmethod
    def remove(self, ids: Collection[str]) -> int:
        """Remove ids (unknown ids are skipped); returns how many were removed."""

    def maybe_rebuild(self) -> bool:
        """Rebuild the structure if the size calls for another one; True if it did."""
        return False

    # ------------------------------------------------------------------ reads
    @abstractmethod
    def count(self) -> int:
        """Number of vectors held."""

    @abstractmethod
    def contains(self, id_: str) -> bool:
        """Whether ``id_`` is held."""

    @abstractmethod
    def get(self, id_: str) -> npt.NDArray[np.float32]:
        """The vector ``[dim]`` held for ``id_``.

        Raises:
            UnknownId: ``id_`` is not held.
        """

    def get_many(self, ids: Sequence[str]) -> Vectors:
        """Vectors ``[n, dim]`` of several ids.

        Raises:
            UnknownId: On the first id that is not held.
        """
        if not ids:
            return np.empty((0, self._dim), dtype=np.float32)
        return np.stack([self.get(i) for i in ids]).astype(np.float32, copy=False)

    @abstractmethod
    def version(self, id_: str) -> int | None:
        """The version held for ``id_`` (``None`` if unknown or unversioned)."""

    @abstractmethod
    def ids(self) -> list[str]:
        """Every id held (no particular order)."""

    @abstractmethod
    def _search(self, queries: Vectors, k: int) -> tuple[list[list[str]], Vectors]:
        """Top ``k`` per query, best first; rows may be shorter than ``k``."""

    def search(
        self, queries: Any, k: int, *, exclude: Collection[str] | None = None
    ) -> tuple[list[list[str]], Vectors]:
        """The ``k`` ids with the highest inner product for each query.

        Args:
            queries: ``[Q, dim]`` (or one ``[dim]`` vector, treated as ``Q = 1``).
            k: Results per query (>= 1); at most :meth:`count` are returned.
            exclude: Ids never to return (e.g. the query item itself, or items
                the user bought); the index over-fetches to still give ``k``.

        Returns:
            ``(ids, scores)``: ``ids[q]`` lists up to ``k`` ids best first;
            ``scores`` is ``[Q, k']`` with ``k' = min(k, count())`` and ``-inf``
            where a row holds fewer ids (IVF probes may find fewer than ``k``).

        Raises:
            DimensionMismatch: Queries of the wrong dimension.
            ValueError: ``k < 1`` or NaN/inf in the queries.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        q = as_matrix(queries, self._dim, what="queries")
        excl = {e for e in exclude if self.contains(e)} if exclude else set()
        n = self.count()
        width = min(k, max(n - len(excl), 0))
        if n == 0 or q.shape[0] == 0 or width == 0:
            return [[] for _ in range(q.shape[0])], np.full((q.shape[0], 0), -np.inf, np.float32)
        fetch = min(n, k + len(excl)) if excl else width
        ids, scores = self._search(q, fetch)
        out_ids: list[list[str]] = []
        out_scores = np.full((q.shape[0], width), -np.inf, dtype=np.float32)
        for row, row_ids in enumerate(ids):
            if excl:
                keep = [j for j, i in enumerate(row_ids) if i not in excl][:width]
                out_ids.append([row_ids[j] for j in keep])
                out_scores[row, : len(keep)] = scores[row, keep]
            else:
                m = min(len(row_ids), width)
                out_ids.append(row_ids[:m])
                out_scores[row, :m] = scores[row, :m]
        return out_ids, out_scores

    def __len__(self) -> int:
        """Same as :meth:`count`."""
        return self.count()

    def __contains__(self, id_: object) -> bool:
        """Same as :meth:`contains` for strings."""
        return isinstance(id_, str) and self.contains(id_)

    def stats(self) -> dict[str, Any]:
        """A JSON-able description (backend, structure, size, knobs)."""
        return {"backend": self.backend, "dim": self._dim, "metric": self._metric,
                "count": self.count()}  # fmt: skip

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release resources (GPU memory); the index must not be used afterwards."""

    # ------------------------------------------------------------------ persistence
    @abstractmethod
    def save(self, folder: Path | str) -> None:
        """Write a self-describing snapshot folder (replaced atomically)."""

    @abstractmethod
    def load(self, folder: Path | str) -> None:
        """Replace the content with a snapshot written by :meth:`save`.

        Raises:
            SnapshotError: Not a snapshot of this backend, or unreadable.
            DimensionMismatch: The snapshot's dimension or metric differs.
        """

    def _base_meta(self) -> dict[str, Any]:
        return {
            "format": "interest-stream-vector-index",
            "format_version": FORMAT_VERSION,
            "backend": self.backend,
            "dim": self._dim,
            "metric": self._metric,
            "count": self.count(),
            "created_at": int(time.time() * 1000),
            "libraries": library_versions(),
        }

    def _check_snapshot(self, folder: Path) -> dict[str, Any]:
        meta = read_meta(folder)
        if meta.get("format") != "interest-stream-vector-index":
            raise SnapshotError(f"{folder} is not a vector-index snapshot")
        if meta.get("backend") != self.backend:
            raise SnapshotError(
                f"{folder} was written by the {meta.get('backend')!r} backend, not {self.backend!r}"
            )
        check_meta(meta, dim=self._dim, metric=self._metric, where=folder)
        return meta


def versions_array(ids: Sequence[str], lookup: dict[str, int]) -> npt.NDArray[np.int64]:
    """Versions of ``ids`` as int64, :data:`NO_VERSION` where none is held."""
    return np.fromiter((lookup.get(i, NO_VERSION) for i in ids), dtype=np.int64, count=len(ids))


def versions_dict(ids: Sequence[str], arr: npt.NDArray[np.int64]) -> dict[str, int]:
    """Inverse of :func:`versions_array`."""
    return {i: int(v) for i, v in zip(ids, arr.tolist(), strict=True) if v != NO_VERSION}


def create_index(
    backend: str = "faiss", *, dim: int, metric: str = "ip", **options: Any
) -> VectorIndex:
    """Create an empty index by backend name.

    Args:
        backend: ``"faiss"``, ``"numpy"`` or a dotted path ``package.module.Class``
            to a :class:`VectorIndex` subclass.
        dim: Vector dimension.
        metric: ``"ip"``.
        **options: Backend options (``config=FaissConfig(...)`` for FAISS).

    Raises:
        ValueError: Unknown backend name or a class that is not a VectorIndex.
        MissingIndexDependency: The backend's library is not installed.
    """
    cls: type[VectorIndex]
    # lazy on purpose: the backends subclass VectorIndex (defined here), so importing
    # them at the top would be a cycle; it also keeps each backend's library unloaded
    # until an index of that backend is created
    if backend == "numpy":
        from interest_stream.index.numpy_backend import NumpyIndex

        cls = NumpyIndex
    elif backend == "faiss":
        from interest_stream.index.faiss_backend import FaissIndex

        cls = FaissIndex
    elif "." in backend:
        module, _, name = backend.rpartition(".")
        try:
            found = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"index backend {backend!r} cannot be imported: {exc}") from exc
        if not (isinstance(found, type) and issubclass(found, VectorIndex)):
            raise ValueError(f"index backend {backend!r} is not a VectorIndex subclass")
        cls = found
    else:
        raise ValueError(
            f"unknown index backend {backend!r}; use 'faiss', 'numpy' or a dotted path"
        )
    return cls(dim, metric, **options)


def nlist_for(n: int, factor: float) -> int:
    """IVF list count ``~ factor * sqrt(n)`` (at least 1)."""
    return max(1, round(factor * math.sqrt(max(n, 1))))
