"""Vector indexes: the FAISS item index and the live user index.

Public surface:

* :class:`VectorIndex` - the backend interface; :func:`create_index` - the
  factory (``"faiss"``, ``"numpy"`` or a dotted path);
* :class:`FaissIndex` + :class:`FaissConfig` - exact / IVF / GPU-replica backend;
  :class:`NumpyIndex` - brute-force reference;
* :class:`UserIndex` - short/long/blend user vectors (of
  :class:`~interest_stream.core.records.UserRecord`) with versioned upserts and
  snapshots; :class:`ItemIndex` - the catalogue from a model checkpoint;
* errors: :class:`VectorIndexError` and its subclasses.

Only numpy is imported eagerly; faiss is imported when a FAISS index is created.
"""

from __future__ import annotations

from interest_stream.core.records import HORIZONS, Horizon, UserRecord
from interest_stream.index.base import METRICS, VectorIndex, create_index
from interest_stream.index.errors import (
    DimensionMismatch,
    IndexNotBuilt,
    MissingIndexDependency,
    SnapshotError,
    UnknownId,
    VectorIndexError,
)
from interest_stream.index.faiss_backend import (
    FaissConfig,
    FaissIndex,
    get_threads,
    gpu_count,
    set_threads,
)
from interest_stream.index.item_index import ItemIndex, write_item_vectors
from interest_stream.index.numpy_backend import NumpyIndex
from interest_stream.index.user_index import UpsertResult, UserIndex

__all__ = [
    "HORIZONS",
    "METRICS",
    "DimensionMismatch",
    "FaissConfig",
    "FaissIndex",
    "Horizon",
    "IndexNotBuilt",
    "ItemIndex",
    "MissingIndexDependency",
    "NumpyIndex",
    "SnapshotError",
    "UnknownId",
    "UpsertResult",
    "UserIndex",
    "UserRecord",
    "VectorIndex",
    "VectorIndexError",
    "create_index",
    "get_threads",
    "gpu_count",
    "set_threads",
    "write_item_vectors",
]
