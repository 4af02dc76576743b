"""The user index's snapshot folder: its files, written atomically and read back checked.

Layout: ``user_index.json`` (format, dim, metric, model version(s), blend weight,
count, library versions), ``ids.json``, ``versions.npy`` (int64), ``short.npy`` /
``long.npy`` (float32 ``[n, dim]``) and ``users.json`` (per-user metadata rows
aligned with ``ids.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from interest_stream.index.base import (
    Vectors,
    atomic_folder,
    check_meta,
    read_meta,
    write_json,
)
from interest_stream.index.errors import DimensionMismatch, SnapshotError

__all__ = ["SNAPSHOT_FORMAT", "SNAPSHOT_META", "UserSnapshot", "read_snapshot", "write_snapshot"]

SNAPSHOT_META: Final = "user_index.json"
SNAPSHOT_FORMAT: Final = "interest-stream-user-index"


@dataclass
class UserSnapshot:
    """The contents of a snapshot folder (``rows``: per-user metadata, JSON lists)."""

    doc: dict[str, Any]
    ids: list[str]
    versions: np.ndarray
    short: Vectors
    long: Vectors
    rows: list[list[Any]]


def write_snapshot(path: Path, snap: UserSnapshot) -> None:
    """Write ``snap`` to the folder ``path`` (replaced atomically)."""
    with atomic_folder(path) as tmp:
        (tmp / "ids.json").write_text(json.dumps(snap.ids, ensure_ascii=False), "utf-8")
        np.save(tmp / "versions.npy", snap.versions)
        np.save(tmp / "short.npy", snap.short)
        np.save(tmp / "long.npy", snap.long)
        (tmp / "users.json").write_text(json.dumps(snap.rows, ensure_ascii=False), "utf-8")
        write_json(tmp / SNAPSHOT_META, snap.doc)


def read_snapshot(path: Path, *, expect_dim: int | None, expect_metric: str | None) -> UserSnapshot:
    """Read and check a snapshot folder.

    Raises:
        SnapshotError: Not a user-index snapshot, or inconsistent files.
        DimensionMismatch: Dimension or metric differ from the expected ones.
    """
    doc = read_meta(path, SNAPSHOT_META)
    if doc.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError(f"{path} is not a user-index snapshot")
    check_meta(doc, dim=expect_dim, metric=expect_metric, where=path)
    try:
        ids = json.loads((path / "ids.json").read_text("utf-8"))
        versions = np.load(path / "versions.npy", allow_pickle=False)
        short = np.load(path / "short.npy", allow_pickle=False)
        long = np.load(path / "long.npy", allow_pickle=False)
        rows = json.loads((path / "users.json").read_text("utf-8"))
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise SnapshotError(f"cannot read user-index snapshot {path}: {exc}") from exc
    n = len(ids)
    dim = doc.get("dim")
    if not (versions.shape == (n,) and len(rows) == n and short.shape == long.shape):
        raise SnapshotError(f"user-index snapshot {path} is inconsistent")
    if n and short.shape != (n, dim):
        raise DimensionMismatch(
            f"snapshot {path}: vectors are {short.shape}, user_index.json says dim {dim}",
            expected=dim,
            got=short.shape,
        )
    return UserSnapshot(doc, ids, versions, short, long, rows)
