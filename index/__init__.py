"""Vector indexes: the FAISS item index and the live user index.

Public surface: :class:`VectorIndex` / :func:`create_index`, :class:`FaissIndex` +
:class:`FaissConfig`, :class:`NumpyIndex`, :class:`UserIndex` (versioned short/long/blend user
vectors), :class:`ItemIndex` (the catalogue of a checkpoint) and the :class:`VectorIndexError`
family. faiss is imported lazily.
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
