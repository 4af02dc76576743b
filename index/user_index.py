"""The user index: every user's short-, long-term and blended vectors, searchable.

It is also the API's user store: besides the vectors it keeps each user's record
metadata (:class:`~interest_stream.core.records.UserRecord` without the vectors).
``blend = w * short + (1 - w) * long`` (``w = blend_weight``, as ``models.blend``).
Upserts are versioned: one older than the held version is ignored (equal versions
are applied), so replaying the compacted topic is idempotent.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from interest_stream.core.records import HORIZONS, Horizon, UserRecord
from interest_stream.core.vectors import blend
from interest_stream.index._rebuild import Rebuilds
from interest_stream.index._sync import RWLock
from interest_stream.index.base import (
    VectorIndex,
    Vectors,
    as_matrix,
    create_index,
    library_versions,
)
from interest_stream.index.errors import IndexNotBuilt, SnapshotError, UnknownId
from interest_stream.index.faiss_backend import FaissConfig
from interest_stream.index.user_meta import Meta, Recent
from interest_stream.index.user_snapshot import (
    SNAPSHOT_FORMAT,
    UserSnapshot,
    read_snapshot,
    write_snapshot,
)

__all__ = ["HORIZONS", "Horizon", "UpsertResult", "UserIndex", "UserRecord"]

logger = logging.getLogger(__name__)


@dataclass
class UpsertResult:
    """What a batched upsert did.

    Attributes:
        applied: Users written.
        stale: Records ignored because a newer version is held (or came later in the batch).
    """

    applied: int = 0
    stale: int = 0
    applied_ids: list[str] = field(default_factory=list)


class UserIndex:
    """Short, long and blended user vectors plus record metadata, versioned per user.

    Thread safety: one writer at a time (the consumer thread, an admin delete);
    ``search`` runs concurrently with writes, ``get`` sees a consistent record.
    """

    def __init__(
        self,
        dim: int | None = None,
        *,
        metric: str = "ip",
        backend: str = "faiss",
        config: FaissConfig | None = None,
        blend_weight: float = 0.5,
        model_version: str | None = None,
        write_chunk: int = 2048,
        background_rebuild: bool = False,
    ) -> None:
        """Create an empty user index.

        Args:
            dim: Vector dimension; ``None`` adopts the dimension of the first upsert.
            metric: ``"ip"``.
            backend: ``"faiss"`` (default), ``"numpy"`` or a dotted path.
            config: FAISS knobs (ignored by other backends).
            blend_weight: Weight of the short-term vector in ``blend`` (0..1).
            model_version: The encoder version this index serves (informational,
                written into snapshots).
            write_chunk: Users written under one hold of the write lock; a
                larger batch is applied in chunks so that readers (``get``) wait
                at most one chunk.
            background_rebuild: Retrain a vector set's structure (flat -> IVF, IVF
                regrown) in a daemon thread instead of in the writer's call, so a
                consumer catching up on a topic never stalls on k-means; searches
                use the old structure (exact while flat) until the swap, and writes
                made meanwhile are journaled (see ``FaissIndex.maybe_rebuild``).
        """
        if not 0.0 <= blend_weight <= 1.0:
            raise ValueError(f"blend_weight must be within 0..1, got {blend_weight}")
        self._metric = metric
        self._backend = backend
        self._config = (config or FaissConfig()).replace(auto_rebuild=False)
        if write_chunk < 1:
            raise ValueError(f"write_chunk must be >= 1, got {write_chunk}")
        self.blend_weight = float(blend_weight)
        self.model_version = model_version
        self.write_chunk = write_chunk
        self._rebuilds = Rebuilds(lambda: self._sets.values(), background=background_rebuild)
        self._lock = RWLock()
        self._meta: dict[str, Meta] = {}
        self._sets: dict[str, VectorIndex] = {}
        self._dim: int | None = None
        if dim is not None:
            self._init_sets(dim)

    def _init_sets(self, dim: int) -> None:
        opts: dict[str, Any] = {"config": self._config} if self._backend == "faiss" else {}
        self._sets = {
            h: create_index(self._backend, dim=dim, metric=self._metric, **opts) for h in HORIZONS
        }
        self._dim = dim

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int | None:
        """Vector dimension (``None`` until the first upsert when created without one)."""
        return self._dim

    @property
    def metric(self) -> str:
        """Similarity metric."""
        return self._metric

    def count(self) -> int:
        """Number of users held."""
        return len(self._meta)

    def __len__(self) -> int:
        """Same as :meth:`count`."""
        return len(self._meta)

    def __contains__(self, user_id: object) -> bool:
        """Whether the user is held."""
        return isinstance(user_id, str) and user_id in self._meta

    def index(self, horizon: str) -> VectorIndex:
        """The vector set of a horizon (``short``, ``long`` or ``blend``).

        Raises:
            ValueError: Unknown horizon.
            IndexNotBuilt: No dimension yet (no user ever upserted).
        """
        if horizon not in HORIZONS:
            raise ValueError(f"horizon must be one of {HORIZONS}, got {horizon!r}")
        if not self._sets:
            raise IndexNotBuilt("the user index holds no vectors yet")
        return self._sets[horizon]

    # ------------------------------------------------------------------ writes
    def upsert(
        self,
        user_id: str,
        version: int,
        short: Any,
        long: Any,
        record: Mapping[str, Any] | None = None,
    ) -> bool:
        """Insert or replace one user; False when ``version`` is older than the held one.

        Args:
            user_id: The user.
            version: The record's version.
            short: Short-term vector ``[dim]``.
            long: Long-term vector ``[dim]``.
            record: The rest of the output record: ``event_time``, ``updated_at``,
                ``model_version``, and optionally ``recent_items`` / ``purchased`` /
                ``recent`` (``(item_id, event_type, ts)`` events, oldest first).

        Raises:
            DimensionMismatch: Vectors of another dimension than the index.
        """
        rec = record or {}
        res = self.upsert_many(
            [
                UserRecord(
                    user_id,
                    int(version),
                    np.asarray(short, dtype=np.float32),
                    np.asarray(long, dtype=np.float32),
                    rec.get("event_time"),
                    rec.get("updated_at"),
                    rec.get("model_version"),
                    tuple(rec.get("recent_items") or ()),
                    tuple(rec.get("purchased") or ()),
                    recent=tuple(
                        (str(e[0]), str(e[1]), int(e[2])) for e in rec.get("recent") or ()
                    ),
                )
            ]
        )
        return res.applied == 1

    def upsert_many(self, records: Sequence[UserRecord]) -> UpsertResult:
        """Apply a batch of records: one FAISS write per vector set and chunk.

        Within the batch the highest version of a user wins (the later one on
        ties); records older than the held version are counted as ``stale``.

        Raises:
            DimensionMismatch: A record's vectors do not have the index's
                dimension (nothing of the batch is applied then).
        """
        if not records:
            return UpsertResult()
        dim = self._dim if self._dim is not None else int(np.asarray(records[0].short).size)
        short = as_matrix([r.short for r in records], dim, what="short vectors")
        long = as_matrix([r.long for r in records], dim, what="long vectors")
        result = UpsertResult()
        best: dict[str, int] = {}
        for j, rec in enumerate(records):
            prev = best.get(rec.user_id)
            if prev is not None:
                result.stale += 1
                if rec.version < records[prev].version:
                    continue
            best[rec.user_id] = j
        order = list(best.values())
        # one write lock per chunk, so that get() never waits for a whole big batch
        for start in range(0, len(order), self.write_chunk):
            with self._lock.write():
                if self._dim is None:
                    self._init_sets(dim)
                rows: list[int] = []
                for j in order[start : start + self.write_chunk]:
                    rec = records[j]
                    held = self._meta.get(rec.user_id)
                    if held is not None and rec.version < held.version:
                        result.stale += 1
                        continue
                    self._meta[rec.user_id] = Meta(
                        rec.version, rec.event_time, rec.updated_at, rec.model_version,
                        tuple(rec.recent_items), tuple(rec.purchased), Recent.pack(rec.recent),
                    )  # fmt: skip
                    rows.append(j)
                if rows:
                    ids = [records[j].user_id for j in rows]
                    s, lg = short[rows], long[rows]
                    self._sets["short"].upsert(ids, s)
                    self._sets["long"].upsert(ids, lg)
                    self._sets["blend"].upsert(ids, blend(s, lg, self.blend_weight))
                    result.applied += len(rows)
                    result.applied_ids.extend(ids)
        if result.applied:
            self._rebuild()
        return result

    def remove(self, user_id: str) -> bool:
        """Forget a user; False if it was not held."""
        return self.remove_many([user_id]) == 1

    def remove_many(self, user_ids: Collection[str]) -> int:
        """Forget several users; returns how many were held."""
        with self._lock.write():
            gone = [u for u in set(user_ids) if self._meta.pop(u, None) is not None]
            if gone:
                for vi in self._sets.values():
                    vi.remove(gone)
        if gone:
            self._rebuild()
        return len(gone)

    # ------------------------------------------------------------------ rebuilds
    @property
    def background_rebuild(self) -> bool:
        """Whether structure rebuilds run in a daemon thread (see :meth:`__init__`)."""
        return self._rebuilds.background

    def _rebuild(self) -> None:
        self._rebuilds.request()

    def hold_rebuilds(self, hold: bool) -> None:
        """Hold structure rebuilds (e.g. while a consumer catches up); release runs them.

        While held, the vector sets keep their current structure (exact search
        while flat) and writes stay cheap; releasing starts the rebuilds the
        writes called for (in the background with ``background_rebuild``).
        """
        self._rebuilds.hold(hold)

    def wait_rebuilds(self, timeout: float | None = None) -> bool:
        """Wait for a background rebuild in progress; True when none is running."""
        return self._rebuilds.wait(timeout)

    # ------------------------------------------------------------------ reads
    def version(self, user_id: str) -> int | None:
        """The held version of a user (``None`` if unknown)."""
        meta = self._meta.get(user_id)
        return None if meta is None else meta.version

    def get(self, user_id: str) -> UserRecord:
        """The user's record with its vectors.

        Raises:
            UnknownId: The user is not held.
        """
        with self._lock.read():
            meta = self._meta.get(user_id)
            if meta is None:
                raise UnknownId(user_id, "user")
            return UserRecord(
                user_id, meta.version,
                self._sets["short"].get(user_id), self._sets["long"].get(user_id),
                meta.event_time, meta.updated_at, meta.model_version,
                meta.recent_items, meta.purchased,
                recent=() if meta.recent is None else meta.recent.unpack(),
            )  # fmt: skip

    def vector(self, user_id: str, horizon: str = "blend") -> npt.NDArray[np.float32]:
        """One vector ``[dim]`` of the user for ``horizon``.

        Raises:
            UnknownId: The user is not held.
            ValueError: Unknown horizon.
        """
        if user_id not in self._meta:
            raise UnknownId(user_id, "user")
        try:
            return self.index(horizon).get(user_id)
        except UnknownId as exc:  # removed meanwhile
            raise UnknownId(user_id, "user") from exc

    def search(
        self,
        queries: Any,
        k: int,
        horizon: str = "blend",
        *,
        exclude: Collection[str] | None = None,
    ) -> tuple[list[list[str]], Vectors]:
        """The users whose ``horizon`` vector has the highest inner product with each query.

        Args:
            queries: ``[Q, dim]`` or one ``[dim]`` vector (an item or ad vector).
            k: Users per query.
            horizon: ``short``, ``long`` or ``blend``.
            exclude: User ids never to return.

        Returns:
            ``(ids, scores)`` as :meth:`VectorIndex.search`; empty when no user is held.

        Raises:
            DimensionMismatch: Query of another dimension.
            ValueError: Unknown horizon, ``k < 1``, NaN/inf.
        """
        if horizon not in HORIZONS:
            raise ValueError(f"horizon must be one of {HORIZONS}, got {horizon!r}")
        if not self._sets:
            q = as_matrix(queries, None, what="queries")
            return [[] for _ in range(q.shape[0])], np.zeros((q.shape[0], 0), np.float32)
        return self._sets[horizon].search(queries, k, exclude=exclude)

    def stats(self) -> dict[str, Any]:
        """Size, dimension and the structure of each vector set."""
        return {
            "users": self.count(),
            "dim": self._dim,
            "metric": self._metric,
            "blend_weight": self.blend_weight,
            "model_version": self.model_version,
            "sets": {h: vi.stats() for h, vi in self._sets.items()},
        }

    def close(self) -> None:
        """Release the vector sets' resources."""
        for vi in self._sets.values():
            vi.close()

    # ------------------------------------------------------------------ persistence
    def save(self, folder: Path | str) -> Path:
        """Snapshot to a self-describing folder (replaced atomically; :mod:`.user_snapshot`).

        Returns:
            The folder.
        """
        path = Path(folder)
        with self._lock.read():
            ids = list(self._meta)
            metas = [self._meta[u] for u in ids]
            if self._sets and ids:
                short = self._sets["short"].get_many(ids)
                long = self._sets["long"].get_many(ids)
            else:
                short = long = np.empty((0, self._dim or 0), dtype=np.float32)
        doc = {
            "format": SNAPSHOT_FORMAT,
            "format_version": 1,
            "dim": self._dim,
            "metric": self._metric,
            "model_version": self.model_version,
            "record_model_versions": dict(Counter(m.model_version for m in metas)),
            "blend_weight": self.blend_weight,
            "count": len(ids),
            "backend": self._backend,
            "created_at": int(time.time() * 1000),
            "libraries": library_versions(),
        }
        versions = np.array([m.version for m in metas], dtype=np.int64)
        rows = [m.to_json() for m in metas]
        write_snapshot(path, UserSnapshot(doc, ids, versions, short, long, rows))
        logger.info("user index snapshot: %d users -> %s", len(ids), path)
        return path

    @classmethod
    def load(
        cls,
        folder: Path | str,
        *,
        expect_dim: int | None = None,
        expect_metric: str | None = "ip",
        backend: str = "faiss",
        config: FaissConfig | None = None,
    ) -> UserIndex:
        """Rebuild a user index from a :meth:`save` snapshot.

        Args:
            folder: The snapshot folder.
            expect_dim: Refuse a snapshot of another dimension (e.g. the model's).
            expect_metric: Refuse a snapshot of another metric.
            backend: Backend of the new index.
            config: FAISS knobs of the new index.

        Raises:
            SnapshotError: Not a user-index snapshot, or inconsistent files.
            DimensionMismatch: Dimension or metric differ from the expected ones.
        """
        path = Path(folder)
        snap = read_snapshot(path, expect_dim=expect_dim, expect_metric=expect_metric)
        try:
            metas = [Meta.from_json(r) for r in snap.rows]
        except (ValueError, TypeError, IndexError) as exc:
            raise SnapshotError(f"cannot read user-index snapshot {path}: {exc}") from exc
        ids, doc, n = snap.ids, snap.doc, len(snap.ids)
        dim = doc.get("dim")
        out = cls(
            dim if isinstance(dim, int) else None,
            metric=str(doc.get("metric", "ip")),
            backend=backend,
            config=config,
            blend_weight=float(doc.get("blend_weight", 0.5)),
            model_version=doc.get("model_version"),
        )
        if n:
            if out._dim is None:
                out._init_sets(int(snap.short.shape[1]))
            short32 = as_matrix(snap.short, out._dim, what="snapshot short vectors")
            long32 = as_matrix(snap.long, out._dim, what="snapshot long vectors")
            out._sets["short"].build(ids, short32)
            out._sets["long"].build(ids, long32)
            out._sets["blend"].build(ids, blend(short32, long32, out.blend_weight))
            out._meta = dict(zip(ids, metas, strict=True))
            for m, v in zip(metas, snap.versions.tolist(), strict=True):
                m.version = int(v)
        logger.info("user index loaded: %d users from %s", n, path)
        return out
