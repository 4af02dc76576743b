"""The user index surface of the API over the OpenSearch user store (no users in memory).

:class:`OpenSearchUsers` answers what the API asks of
:class:`~interest_stream.index.user_index.UserIndex` (``get``, ``vector``, ``search``,
``count``, ``remove``, ``in``, ``dim``, ``blend_weight``, ``stats``) with real-time GETs
and k-NN queries on the cluster; the sink fills the index, the API only reads it (and
forgets: a DELETE publishes the tombstone, which the sink turns into a marker).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import numpy as np
import numpy.typing as npt

from interest_stream.core.records import HORIZONS, UserRecord
from interest_stream.core.vectors import blend
from interest_stream.index.base import Vectors, as_matrix
from interest_stream.index.errors import UnknownId
from interest_stream.index.opensearch_async import AsyncGetter
from interest_stream.index.opensearch_mapping import record_from_source
from interest_stream.index.opensearch_store import OpenSearchStore

__all__ = ["OpenSearchUsers"]


class OpenSearchUsers:
    """Users read from OpenSearch, with the methods the API calls on a ``UserIndex``."""

    #: Every call is a request to the cluster: the API runs them off its event loop.
    remote = True

    def __init__(
        self,
        store: OpenSearchStore,
        *,
        count_ttl_s: float = 5.0,
        getter: AsyncGetter | None = None,
    ) -> None:
        """Wrap ``store``; the dimension is the index's (read when first needed).

        ``getter``: reads by id on the event loop (:meth:`async_method`); ``None``
        leaves every call to the thread pool.
        """
        self.store = store
        self.model_version: str | None = None
        self.count_ttl_s = count_ttl_s
        self.getter = getter
        self._count: tuple[float, int] = (0.0, 0)

    def async_method(self, fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]] | None:
        """The coroutine version of the bound method ``fn`` of this store, if it has one.

        ``get`` and ``vector`` read on the event loop through :attr:`getter`
        (``ApiState.users_call`` awaits them instead of a thread-pool call).
        """
        if self.getter is None or getattr(fn, "__self__", None) is not self:
            return None
        return {"get": self.aget, "vector": self.avector}.get(getattr(fn, "__name__", ""))

    async def aget(self, user_id: str) -> UserRecord:
        """:meth:`get` on the event loop.

        Raises:
            UnknownId: The user is not held (or was forgotten).
            StoreUnavailable: No node answered.
        """
        if self.getter is None:  # not handed out by async_method: the blocking read
            return self.get(user_id)
        src = await self.getter.source(user_id)
        if src is None or src.get("deleted"):
            raise UnknownId(user_id, "user")
        return record_from_source(src)

    async def avector(self, user_id: str, horizon: str = "blend") -> npt.NDArray[np.float32]:
        """:meth:`vector` on the event loop."""
        if horizon not in HORIZONS:
            raise ValueError(f"horizon must be one of {HORIZONS}, got {horizon!r}")
        return self._horizon(await self.aget(user_id), horizon)

    @property
    def dim(self) -> int | None:
        """The index's vector dimension (``None`` while the index does not exist)."""
        if self.store.dim is None:
            self.store.ensure_index(None)
        return self.store.dim

    @property
    def blend_weight(self) -> float:
        """Weight of ``short`` in ``blend`` (the sink's; used for ``vector('blend')``)."""
        return self.store.blend_weight

    @blend_weight.setter
    def blend_weight(self, value: float) -> None:
        self.store.blend_weight = value

    def refresh_count(self) -> int:
        """Ask the cluster how many users it holds (a request; the API's watch thread calls it)."""
        n = self.store.count()
        self._count = (time.monotonic(), n)
        return n

    def count(self) -> int:
        """Users held as of the last :meth:`refresh_count` (asked here only if too old).

        In the API the cluster watch refreshes it every second from its thread, so a
        route reading it does not wait for the cluster.
        """
        at, n = self._count
        if time.monotonic() - at >= self.count_ttl_s:
            n = self.refresh_count()
        return n

    def __len__(self) -> int:
        """Same as :meth:`count`."""
        return self.count()

    def __contains__(self, user_id: object) -> bool:
        """Whether the user is held (a real-time GET)."""
        return isinstance(user_id, str) and self.store.get(user_id) is not None

    def version(self, user_id: str) -> int | None:
        """The held version of a user (``None`` if unknown)."""
        rec = self.store.get(user_id)
        return None if rec is None else rec.version

    def get(self, user_id: str) -> UserRecord:
        """The user's record (real-time GET).

        Raises:
            UnknownId: The user is not held (or was forgotten).
        """
        rec = self.store.get(user_id)
        if rec is None:
            raise UnknownId(user_id, "user")
        return rec

    def vector(self, user_id: str, horizon: str = "blend") -> npt.NDArray[np.float32]:
        """One vector ``[dim]`` of the user for ``horizon``.

        Raises:
            UnknownId: The user is not held.
            ValueError: Unknown horizon.
        """
        if horizon not in HORIZONS:
            raise ValueError(f"horizon must be one of {HORIZONS}, got {horizon!r}")
        return self._horizon(self.get(user_id), horizon)

    def _horizon(self, rec: UserRecord, horizon: str) -> npt.NDArray[np.float32]:
        if horizon == "short":
            return rec.short
        if horizon == "long":
            return rec.long
        return blend(rec.short, rec.long, self.blend_weight)

    def search(
        self,
        queries: Any,
        k: int,
        horizon: str = "blend",
        *,
        exclude: Collection[str] | None = None,
    ) -> tuple[list[list[str]], Vectors]:
        """k-NN audience on the cluster, as ``UserIndex.search`` answers it.

        Raises:
            DimensionMismatch: Query of another dimension.
            ValueError: Unknown horizon, ``k < 1``, NaN/inf.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = as_matrix(queries, self.dim, what="queries")
        skip = set(exclude or ())
        ids: list[list[str]] = []
        scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        if self.dim is None:
            return [[] for _ in range(q.shape[0])], np.zeros((q.shape[0], 0), np.float32)
        for row in range(q.shape[0]):
            hits = [
                h for h in self.store.audience(q[row], k + len(skip), horizon) if h[0] not in skip
            ][:k]
            ids.append([u for u, _ in hits])
            scores[row, : len(hits)] = [s for _, s in hits]
        width = max((len(r) for r in ids), default=0)
        return ids, scores[:, :width]

    def remove(self, user_id: str) -> bool:
        """Hide the user at once (a marker); the sink's marker for the tombstone follows."""
        return self.store.forget_now(user_id)

    def remove_many(self, user_ids: Collection[str]) -> int:
        """Hide several users; returns how many were held (see :meth:`remove`)."""
        return sum(1 for u in set(user_ids) if self.remove(u))

    def stats(self) -> dict[str, Any]:
        """Size, dimension and where the users are."""
        return {
            "users": self.count(),
            "dim": self.store.dim,
            "store": "opensearch",
            "index": self.store.index,
            "blend_weight": self.blend_weight,
            "model_version": self.model_version,
        }

    def hold_rebuilds(self, hold: bool) -> None:
        """Nothing to hold: the cluster builds its HNSW graphs itself."""

    def close(self) -> None:
        """Close the store's connections."""
        if self.getter is not None:
            self.getter.close()
        self.store.close()
