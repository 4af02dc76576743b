"""Errors raised by the :mod:`index` package.

Every error derives from :class:`VectorIndexError`, itself a subclass of the
project root :class:`~interest_stream.core.errors.InterestStreamError`.
"""

from __future__ import annotations

from interest_stream.core.errors import InterestStreamError

__all__ = [
    "DimensionMismatch",
    "IndexNotBuilt",
    "MissingIndexDependency",
    "SnapshotError",
    "StoreUnavailable",
    "UnknownId",
    "VectorIndexError",
]


class VectorIndexError(InterestStreamError):
    """Root of the errors of the :mod:`index` package."""


class DimensionMismatch(VectorIndexError, ValueError):
    """Vectors, queries or a snapshot do not have the index's dimension (or metric).

    The message gives both values; rebuild the index with the model that
    produced the vectors, or point ``INTEREST_MODEL_DIR`` at the right checkpoint.
    """

    def __init__(self, message: str, *, expected: object = None, got: object = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


class IndexNotBuilt(VectorIndexError):
    """The index was asked for something it cannot answer before it holds data.

    Call ``build()`` / ``upsert()`` (or ``load()`` a snapshot) first.
    """


class UnknownId(VectorIndexError, KeyError):
    """An id (user or item) that the index does not hold."""

    def __init__(self, id_: str, what: str = "id") -> None:
        super().__init__(id_)
        self.id = id_
        self.what = what

    def __str__(self) -> str:
        return f"unknown {self.what} {self.id!r}"


class SnapshotError(VectorIndexError):
    """A snapshot or checkpoint folder is missing, incomplete or not readable."""


class MissingIndexDependency(VectorIndexError, ImportError):
    """A library needed by a backend is not installed; the message names the extra."""


class StoreUnavailable(VectorIndexError):
    """A remote user store (OpenSearch) did not answer, or answered only in part."""
