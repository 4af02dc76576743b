"""The user index's shape in OpenSearch: mapping, documents to records, scores, bulk outcomes.

Used by :mod:`interest_stream.index.opensearch_store`; the decisions (engine, HNSW
parameters, versioning fields) are in docs/DESIGN.md, "OpenSearch user store".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from interest_stream.core.records import HORIZONS, UserRecord
from interest_stream.index.errors import VectorIndexError

__all__ = [
    "READ_EXCLUDES",
    "RECENT_MAPPING",
    "VECTOR_FIELDS",
    "Engine",
    "HnswParams",
    "WriteOutcome",
    "index_body",
    "ip_from_score",
    "missing_mapping",
    "outcome",
    "record_from_source",
    "vector_json",
    "vector_list",
]

Engine = Literal["faiss", "lucene"]
VECTOR_FIELDS: Final[tuple[str, ...]] = HORIZONS
#: What a read of a user leaves out of ``_source`` (the record needs none of it).
READ_EXCLUDES: Final = "blend,life,kp,tomb,blend_weight"
#: The record's ``recent`` events (``[[item_id, event_type, ts], ...]``, the re-ranker's
#: own-touch input): kept in ``_source`` only, never parsed into the index (``enabled``
#: false: no field, no doc values, no mapping of its mixed-type arrays). An index created
#: before the field existed gets it added by :func:`missing_mapping` (a writer's
#: ``ensure_index``); its older documents have no ``recent`` and are served with the
#: vector ranking, as the in-process store serves records without it.
RECENT_MAPPING: Final[dict[str, Any]] = {"recent": {"type": "object", "enabled": False}}


@dataclass(frozen=True, slots=True)
class HnswParams:
    """The user index's HNSW graphs (built by the cluster) and the queries' candidate list.

    ``m``, ``ef_construction`` and ``encoder`` (``sq``: Lucene's 7-bit scalar
    quantization) are fixed when the index is created; ``ef_search`` is a query
    parameter. Defaults and the sweep behind them: docs/DESIGN.md, "OpenSearch user store".
    """

    m: int = 32
    ef_construction: int = 256
    ef_search: int = 800
    encoder: Literal["none", "sq"] = "none"

    @classmethod
    def parse(cls, text: str) -> HnswParams:
        """``"m=16,ef_construction=128,ef_search=800,encoder=sq"`` (any subset; defaults else).

        Raises:
            ValueError: An unknown key or a bad value.
        """
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = part.partition("=")
            key = key.strip()
            if key == "encoder":
                if value not in ("none", "sq"):
                    raise ValueError(f"encoder must be none or sq, got {value!r}")
                values[key] = value
            elif key in ("m", "ef_construction", "ef_search"):
                values[key] = int(value)
                if values[key] < 2:
                    raise ValueError(f"{key} must be >= 2, got {value}")
            else:
                raise ValueError(f"unknown HNSW parameter {key!r}")
        return replace(cls(), **values)

    def method(self, engine: Engine) -> dict[str, Any]:
        """The ``knn_vector`` field's ``method`` (inner product)."""
        params: dict[str, Any] = {"m": self.m, "ef_construction": self.ef_construction}
        if self.encoder == "sq":
            params["encoder"] = {"name": "sq"}
        return {
            "name": "hnsw",
            "space_type": "innerproduct",
            "engine": engine,
            "parameters": params,
        }


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """What a bulk write did with one user: ``applied``, ``stale`` (409) or ``failed``."""

    user_id: str
    result: Literal["applied", "stale", "failed"]
    reason: str = ""


def ip_from_score(score: float) -> float:
    """The inner product behind a k-NN ``innerproduct`` score.

    OpenSearch scores ``ip + 1`` for ``ip >= 0`` and ``1 / (1 - ip)`` below 0.
    """
    return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score


def index_body(
    dim: int, *, engine: Engine = "lucene", shards: int = 1, hnsw: HnswParams | None = None
) -> dict[str, Any]:
    """Settings and mapping of the user index (``dim``-dimensional vectors)."""
    vector = {
        "type": "knn_vector",
        "dimension": dim,
        "method": (hnsw or HnswParams()).method(engine),
    }
    stored = {"type": "keyword", "index": False, "doc_values": False}
    return {
        "settings": {
            "index": {
                "knn": True,
                "number_of_shards": shards,
                "auto_expand_replicas": "0-1",
                "refresh_interval": "1s",
            },
        },
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "user_id": {"type": "keyword"},
                "version": {"type": "long"},
                "event_time": {"type": "long"},
                "updated_at": {"type": "long"},
                "produced_at": {"type": "long"},
                "model_version": {"type": "keyword"},
                "recent_items": stored,
                "purchased": stored,
                **RECENT_MAPPING,
                "blend_weight": {"type": "float", "index": False},
                **{name: vector for name in VECTOR_FIELDS},
                "life": {"type": "long"},
                "kp": {"type": "integer"},
                "tomb": {"type": "long"},
                "deleted": {"type": "boolean"},
            },
        },
    }


def missing_mapping(props: Mapping[str, Any]) -> dict[str, Any]:
    """The stored-only fields an existing index's mapping ``props`` lacks (added by writers).

    A ``strict`` index created by an older version refuses documents with a field it
    does not map; adding a field to a mapping is allowed at any time.
    """
    return {name: spec for name, spec in RECENT_MAPPING.items() if name not in props}


def _recent(value: Any) -> tuple[tuple[str, str, int], ...]:
    """The stored ``recent`` events as the record's tuples (empty when absent)."""
    if not isinstance(value, list):
        return ()
    return tuple((str(e[0]), str(e[1]), int(e[2])) for e in value)


def vector_list(values: npt.NDArray[np.float32]) -> list[float]:
    out: list[float] = values.astype(np.float64).tolist()
    return out


def vector_json(values: npt.NDArray[np.float32]) -> str:
    """A float32 vector as a JSON array of 9-digit decimals (they read back exactly).

    About 60% of the text of float64 reprs (``0.300000012`` rather than
    ``0.30000001192092896``), so less for the node to parse, and a third of the sink's
    CPU of ``json.dumps``; finite values only.
    """
    vals = np.asarray(values, dtype=np.float32).tolist()
    return "[" + ",".join(["%.9g" % x for x in vals]) + "]"  # noqa: UP031 (fastest)


def outcome(user_id: str, item: Mapping[str, Any]) -> WriteOutcome:
    res = next(iter(item.values()))
    status = int(res.get("status", 500))
    if status in (200, 201):
        return WriteOutcome(user_id, "applied")
    if status == 409:
        return WriteOutcome(user_id, "stale")
    err = res.get("error", {})
    reason = f"{status} {err.get('type', '')}: {err.get('reason', '')}" if err else str(status)
    return WriteOutcome(user_id, "failed", reason[:300])


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def record_from_source(src: Mapping[str, Any]) -> UserRecord:
    short = np.asarray(src["short"], dtype=np.float32)
    long = np.asarray(src["long"], dtype=np.float32)
    if not (np.isfinite(short).all() and np.isfinite(long).all()):  # pragma: no cover
        raise VectorIndexError(f"stored vectors of {src.get('user_id')!r} are not finite")
    return UserRecord(
        user_id=str(src["user_id"]),
        version=int(src["version"]),
        short=short,
        long=long,
        event_time=_opt_int(src.get("event_time")),
        updated_at=_opt_int(src.get("updated_at")),
        model_version=src.get("model_version"),
        recent_items=tuple(src.get("recent_items", ())),
        purchased=tuple(src.get("purchased", ())),
        produced_at=_opt_int(src.get("produced_at")),
        recent=_recent(src.get("recent")),
    )
