"""The user store in OpenSearch: one document per user, versioned by the engine.

Document ``_id`` = ``user_id``; fields: the record's metadata (version, times, model
version, recent items, purchases, the ``recent`` events the re-ranker reads: stored in
``_source``, not indexed), ``short``/``long``/``blend`` as ``knn_vector``
(inner product, HNSW), and the versioning fields ``life``, ``kp``, ``tomb``,
``deleted``. Writes use external versions (``version_type=external_gte``): the
engine keeps the highest and drops stale or replayed writes. The external version
of a record is ``life + version``; ``life`` is 0 until the user is forgotten, and a
forget writes a *deleted marker* whose version exceeds every version the user had,
so a replayed old record never brings the user back (docs/DESIGN.md, "OpenSearch user
store": why, and why not real deletes).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from opensearchpy import OpenSearch, helpers
from opensearchpy.exceptions import ConflictError, NotFoundError, OpenSearchException

from interest_stream.core.records import UserRecord
from interest_stream.core.vectors import blend
from interest_stream.index.errors import DimensionMismatch, StoreUnavailable
from interest_stream.index.opensearch_mapping import (
    READ_EXCLUDES,
    VECTOR_FIELDS,
    Engine,
    HnswParams,
    WriteOutcome,
    index_body,
    ip_from_score,
    missing_mapping,
    outcome,
    record_from_source,
    vector_json,
    vector_list,
)

__all__ = [
    "HnswParams",
    "Life",
    "OpenSearchStore",
    "StoreUnavailable",
    "Tomb",
    "Upsert",
    "WriteOutcome",
    "index_body",
    "ip_from_score",
]

logger = logging.getLogger(__name__)

_META_FIELDS = ("life", "kp", "tomb", "deleted")


@dataclass(frozen=True, slots=True)
class Life:
    """A forgotten user's current life: external versions start above ``base``.

    Attributes:
        base: Added to record versions of this life (the marker's version).
        tomb: Offset of the tombstone that began it (in partition ``kp`` of the topic).
    """

    base: int
    tomb: int


@dataclass(frozen=True, slots=True)
class Upsert:
    """One record to write: the decoded record, where it came from and its life."""

    record: UserRecord
    partition: int
    offset: int
    life: Life | None = None

    @property
    def external_version(self) -> int:
        """``life.base + version`` (``version`` for a never-forgotten user)."""
        return (self.life.base if self.life else 0) + self.record.version


@dataclass(frozen=True, slots=True)
class Tomb:
    """A tombstone to apply: the user, its position in the topic, a version floor."""

    user_id: str
    partition: int
    offset: int
    floor: int = 0


class OpenSearchStore:
    """Users in an OpenSearch index: versioned bulk writes, forgets, GET by id, k-NN audience."""

    def __init__(
        self,
        urls: str | Sequence[str],
        index: str,
        *,
        blend_weight: float = 0.5,
        engine: Engine = "lucene",
        shards: int = 1,
        hnsw: HnswParams | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 0,
        pool_size: int = 1,
        client: OpenSearch | None = None,
    ) -> None:
        """Connect lazily to ``urls`` (comma-separated or a list); nothing is created yet.

        ``timeout_s`` bounds one HTTP request; ``max_retries`` re-sends a request that
        failed to connect or timed out to the next URL (readers: idempotent requests).
        ``pool_size``: connections kept open per node, one per thread that calls at once
        (urllib3 opens and drops a new connection for each call beyond it).
        ``hnsw``: the graphs of an index this store creates, and the queries' ``ef_search``.
        """
        if not 0.0 <= blend_weight <= 1.0:
            raise ValueError(f"blend_weight must be within 0..1, got {blend_weight}")
        hosts = [u.strip() for u in urls.split(",")] if isinstance(urls, str) else list(urls)
        self.index = index
        self.blend_weight = blend_weight
        self.engine: Engine = engine
        self.shards = shards
        self.hnsw = hnsw or HnswParams()
        self.ef_search = self.hnsw.ef_search
        self.hosts = hosts
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.pool_size = pool_size
        self.client = client or OpenSearch(
            hosts=hosts,
            timeout=timeout_s,
            max_retries=max_retries,
            retry_on_timeout=max_retries > 0,
            pool_maxsize=pool_size,
            http_compress=False,
        )
        self.dim: int | None = None

    def close(self) -> None:
        """Close the HTTP connections."""
        self.client.close()

    # ------------------------------------------------------------------ index
    def ensure_index(self, dim: int | None, *, upgrade: bool | None = None) -> int | None:
        """Create the index for ``dim`` if missing; return the index's dimension.

        With ``dim=None`` only an existing index's dimension is read (``None`` if none).
        ``upgrade`` (default: whether ``dim`` is given, i.e. a writer): an existing
        index of an older version gets the stored-only fields it lacks (``recent``;
        :func:`missing_mapping`), so that this version's documents are accepted.

        Raises:
            DimensionMismatch: The index exists with another dimension.
            StoreUnavailable: OpenSearch did not answer.
        """
        try:
            if not self.client.indices.exists(index=self.index):
                if dim is None:
                    return None
                body = index_body(dim, engine=self.engine, shards=self.shards, hnsw=self.hnsw)
                try:
                    self.client.indices.create(index=self.index, body=body)
                    logger.info(
                        "created OpenSearch index %s (dim %d, %s HNSW)",
                        self.index,
                        dim,
                        self.engine,
                    )
                except OpenSearchException as exc:
                    if "resource_already_exists" not in str(exc):
                        raise
            mapping = self.client.indices.get_mapping(index=self.index)
        except OpenSearchException as exc:
            raise StoreUnavailable(f"OpenSearch index {self.index}: {exc}") from exc
        props = next(iter(mapping.values()))["mappings"]["properties"]
        have = int(props["short"]["dimension"])
        if dim is not None and have != dim:
            raise DimensionMismatch(
                f"OpenSearch index {self.index} holds {have}-d vectors, the records are {dim}-d",
                expected=have,
                got=dim,
            )
        add = missing_mapping(props) if (dim is not None if upgrade is None else upgrade) else {}
        if add:  # an index of an older sink: the writer adds the stored-only fields
            try:
                self.client.indices.put_mapping(index=self.index, body={"properties": add})
            except OpenSearchException as exc:
                raise StoreUnavailable(f"OpenSearch index {self.index}: {exc}") from exc
            logger.info("OpenSearch index %s: added the field(s) %s", self.index, sorted(add))
        self.dim = have
        return have

    def refresh(self) -> None:
        """Make every write visible to searches (tests, catch-up)."""
        self.client.indices.refresh(index=self.index)

    # ------------------------------------------------------------------ writes
    def _doc(self, up: Upsert) -> str:
        """The document of ``up`` as JSON text (vectors as float32 decimals)."""
        rec = up.record
        meta = {
            "user_id": rec.user_id,
            "version": rec.version,
            "event_time": rec.event_time,
            "updated_at": rec.updated_at,
            "produced_at": rec.produced_at,
            "model_version": rec.model_version,
            "recent_items": list(rec.recent_items),
            "purchased": list(rec.purchased),
            "recent": rec.recent,
            "blend_weight": self.blend_weight,
            "life": up.life.base if up.life else 0,
            "kp": up.partition,
            "tomb": up.life.tomb if up.life else -1,
            "deleted": False,
        }
        vectors = (
            ("short", rec.short),
            ("long", rec.long),
            ("blend", blend(rec.short, rec.long, self.blend_weight)),
        )
        text = json.dumps(meta, separators=(",", ":"), ensure_ascii=False)[:-1]
        return text + "".join(f',"{name}":{vector_json(v)}' for name, v in vectors) + "}"

    def write(self, upserts: Iterable[Upsert]) -> list[WriteOutcome]:
        """Bulk-write records (one per user) with external versions; one outcome per user.

        A version conflict (409) is ``stale``: the index holds a newer version.

        Raises:
            StoreUnavailable: The bulk request itself failed (nothing is known).
        """
        ups = list(upserts)
        if not ups:
            return []
        lines: list[str] = []
        for up in ups:
            head = {
                "_index": self.index,
                "_id": up.record.user_id,
                "version": up.external_version,
                "version_type": "external_gte",
            }
            lines.append(json.dumps({"index": head}, separators=(",", ":"), ensure_ascii=False))
            lines.append(self._doc(up))
        try:  # NDJSON text: the client sends it as is
            resp = self.client.bulk(body="\n".join(lines) + "\n")
        except OpenSearchException as exc:
            raise StoreUnavailable(f"bulk write of {len(ups)} users failed: {exc}") from exc
        return [
            outcome(up.record.user_id, item) for up, item in zip(ups, resp["items"], strict=True)
        ]

    def forget_now(self, user_id: str) -> bool:
        """Hide a user at once (an admin DELETE, before the sink applies its tombstone).

        Writes a deleted marker above the stored version, with no topic position
        (``kp`` -1): the sink's own marker for the tombstone follows and supersedes it.

        Returns:
            Whether the user was held (not absent, not already forgotten).

        Raises:
            StoreUnavailable: OpenSearch did not answer.
        """
        held = self.get(user_id) is not None
        if held:
            self.forget(user_id, -1, -1)
        return held

    def forget(self, user_id: str, partition: int, offset: int, floor: int = 0) -> Life:
        """Apply a tombstone (partition ``partition``, offset ``offset``): the user is gone.

        Idempotent: a tombstone already applied (the stored marker or life has a
        ``tomb`` at or above ``offset`` in the same partition) changes nothing. The
        marker's version is above the stored one and above ``floor`` (the external
        version of a record of the user that was never written: the tombstone came first).

        Returns:
            The user's new (or current) life.

        Raises:
            StoreUnavailable: OpenSearch did not answer.
        """
        for _ in range(10):
            try:
                found = self.client.get(
                    index=self.index,
                    id=user_id,
                    params={"_source_includes": ",".join(_META_FIELDS)},
                )
            except NotFoundError:
                found = None
            except OpenSearchException as exc:
                raise StoreUnavailable(f"GET {user_id!r} failed: {exc}") from exc
            src = found.get("_source", {}) if found else {}
            if _applied(src, partition, offset):
                return Life(int(src.get("life", 0)), int(src["tomb"]))
            marker = max(int(found["_version"]) if found else 0, floor) + 1
            doc = {
                "user_id": user_id,
                "deleted": True,
                "life": marker,
                "kp": partition,
                "tomb": offset,
            }
            try:
                self.client.index(
                    index=self.index,
                    id=user_id,
                    body=doc,
                    params={"version": marker, "version_type": "external"},
                )
            except ConflictError:
                continue  # written meanwhile: read again
            except OpenSearchException as exc:
                raise StoreUnavailable(f"forgetting {user_id!r} failed: {exc}") from exc
            return Life(marker, offset)
        raise StoreUnavailable(f"forgetting {user_id!r}: 10 version conflicts in a row")

    def forget_many(self, tombs: Sequence[Tomb]) -> dict[str, Life]:
        """Apply many tombstones with one multi-GET and one bulk request (see :meth:`forget`).

        Returns:
            Each user's new (or current) life.

        Raises:
            StoreUnavailable: OpenSearch did not answer or refused a marker; applying
                the same tombstones again is safe.
        """
        if not tombs:
            return {}
        try:
            docs = self.client.mget(
                index=self.index,
                body={"ids": [t.user_id for t in tombs]},
                params={"_source_includes": ",".join(_META_FIELDS)},
            )["docs"]
        except OpenSearchException as exc:
            raise StoreUnavailable(f"multi-GET of {len(tombs)} forgotten users: {exc}") from exc
        lives: dict[str, Life] = {}
        todo: list[tuple[Tomb, int]] = []
        body: list[dict[str, Any]] = []
        for t, doc in zip(tombs, docs, strict=True):
            src = doc.get("_source", {}) if doc.get("found") else {}
            if (
                src
                and int(src.get("kp", -1)) == t.partition
                and int(src.get("tomb", -1)) >= t.offset
            ):
                lives[t.user_id] = Life(int(src.get("life", 0)), int(src["tomb"]))
                continue
            marker = max(int(doc["_version"]) if doc.get("found") else 0, t.floor) + 1
            body.append(
                {
                    "index": {
                        "_index": self.index,
                        "_id": t.user_id,
                        "version": marker,
                        "version_type": "external",
                    }
                }
            )
            body.append(
                {
                    "user_id": t.user_id,
                    "deleted": True,
                    "life": marker,
                    "kp": t.partition,
                    "tomb": t.offset,
                }
            )
            todo.append((t, marker))
        if todo:
            try:
                items = self.client.bulk(body=body)["items"]
            except OpenSearchException as exc:
                raise StoreUnavailable(f"bulk of {len(todo)} deleted markers: {exc}") from exc
            for (t, marker), item in zip(todo, items, strict=True):
                out = outcome(t.user_id, item)
                if out.result == "applied":
                    lives[t.user_id] = Life(marker, t.offset)
                elif out.result == "stale":  # written meanwhile: the one-by-one path re-reads
                    lives[t.user_id] = self.forget(t.user_id, t.partition, t.offset, t.floor)
                else:
                    raise StoreUnavailable(f"deleted marker of {t.user_id!r}: {out.reason}")
        return lives

    def lives(self, partition: int) -> dict[str, Life]:
        """Every forgotten user of ``partition`` (markers and later lives), after a refresh."""
        if self.dim is None and self.ensure_index(None) is None:
            return {}
        query = {
            "query": {
                "bool": {"filter": [{"term": {"kp": partition}}, {"range": {"tomb": {"gte": 0}}}]}
            },
            "_source": ["life", "tomb"],
        }
        try:
            self.refresh()
            hits = helpers.scan(self.client, query=query, index=self.index, size=5000)
            return {
                h["_id"]: Life(int(h["_source"]["life"]), int(h["_source"]["tomb"])) for h in hits
            }
        except OpenSearchException as exc:
            raise StoreUnavailable(
                f"reading the forgotten users of partition {partition}: {exc}"
            ) from exc

    # ------------------------------------------------------------------ reads
    def get(self, user_id: str) -> UserRecord | None:
        """The user's record (real-time GET, no refresh needed), or ``None`` if absent/forgotten.

        Raises:
            StoreUnavailable: OpenSearch did not answer.
        """
        try:
            found = self.client.get(
                index=self.index, id=user_id, params={"_source_excludes": READ_EXCLUDES}
            )
        except NotFoundError:
            return None
        except OpenSearchException as exc:
            raise StoreUnavailable(f"GET {user_id!r} failed: {exc}") from exc
        src = found["_source"]
        if src.get("deleted"):
            return None
        return record_from_source(src)

    def audience(
        self, vector: npt.NDArray[np.float32], k: int, horizon: str = "blend"
    ) -> list[tuple[str, float]]:
        """The ``k`` users whose ``horizon`` vector has the largest inner product with ``vector``.

        Raises:
            StoreUnavailable: OpenSearch did not answer, or a shard failed (no copy
                answered: the hits would be a partial audience).
        """
        if horizon not in VECTOR_FIELDS:
            raise ValueError(f"horizon must be one of {VECTOR_FIELDS}, got {horizon!r}")
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if self.dim is not None and q.size != self.dim:
            raise DimensionMismatch(
                f"query has dimension {q.size}, the index {self.dim}", expected=self.dim, got=q.size
            )
        knn = {
            "vector": vector_list(q),
            "k": k,
            "method_parameters": {"ef_search": max(self.ef_search, k)},
        }
        body = {"size": k, "_source": False, "query": {"knn": {horizon: knn}}}
        try:
            resp = self.client.search(index=self.index, body=body)
        except OpenSearchException as exc:
            raise StoreUnavailable(f"k-NN search failed: {exc}") from exc
        failed = int(resp.get("_shards", {}).get("failed", 0))
        if failed:
            raise StoreUnavailable(
                f"k-NN search: {failed} shard(s) failed, the audience is partial"
            )
        return [(h["_id"], ip_from_score(float(h["_score"]))) for h in resp["hits"]["hits"]]

    def count(self) -> int:
        """Users held (markers excluded; as of the last refresh)."""
        body = {"query": {"bool": {"must_not": [{"term": {"deleted": True}}]}}}
        try:
            return int(self.client.count(index=self.index, body=body)["count"])
        except NotFoundError:
            return 0
        except OpenSearchException as exc:
            raise StoreUnavailable(f"count failed: {exc}") from exc

    def health(self) -> str | None:
        """The cluster's status (``green``/``yellow``/``red``), or ``None`` if unreachable."""
        try:
            return str(self.client.cluster.health(params={"request_timeout": 2})["status"])
        except OpenSearchException:
            return None


def _applied(src: Mapping[str, Any], partition: int, offset: int) -> bool:
    """Whether a stored document already reflects the tombstone at ``partition``/``offset``."""
    return bool(src) and int(src.get("kp", -1)) == partition and int(src.get("tomb", -1)) >= offset
