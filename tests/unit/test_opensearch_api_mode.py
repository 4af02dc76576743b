"""The API's opensearch mode without a cluster: the user-store surface and the readiness watch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from interest_stream.api.opensearch_mode import ClusterWatch
from interest_stream.core.records import UserRecord
from interest_stream.core.settings import Settings
from interest_stream.index.errors import UnknownId
from interest_stream.index.opensearch_users import OpenSearchUsers


class FakeStore:
    index = "users"

    def __init__(self) -> None:
        self.dim: int | None = 2
        self.blend_weight = 0.25
        self.recs = {
            "a": UserRecord("a", 3, np.array([1, 0], np.float32), np.array([0, 1], np.float32))
        }
        self.status: str | None = "green"
        self.forgotten: list[str] = []

    def ensure_index(self, dim: int | None) -> int | None:
        return self.dim

    def get(self, uid: str) -> UserRecord | None:
        return None if uid in self.forgotten else self.recs.get(uid)

    def forget_now(self, uid: str) -> bool:
        held = self.get(uid) is not None
        self.forgotten.append(uid)
        return held

    def audience(self, q: Any, k: int, horizon: str) -> list[tuple[str, float]]:
        return [("a", 2.0), ("b", 1.0), ("c", 0.5)][:k]

    def count(self) -> int:
        return 1

    def health(self) -> str | None:
        return self.status

    def close(self) -> None:
        pass


def test_users_surface_reads_the_store() -> None:
    store = FakeStore()
    users = OpenSearchUsers(store)  # type: ignore[arg-type]
    assert users.dim == 2 and users.count() == 1 and "a" in users and "x" not in users
    assert users.get("a").version == 3
    assert users.vector("a", "blend").tolist() == pytest.approx([0.25, 0.75])
    with pytest.raises(UnknownId):
        users.get("x")
    ids, scores = users.search(np.ones(2, np.float32), 2, "short", exclude={"a"})
    assert ids == [["b", "c"]] and scores.tolist() == [[1.0, 0.5]]
    assert users.remove("a") is True and "a" not in users and users.remove("a") is False


def test_watch_is_ready_while_the_cluster_is_healthy_and_the_index_exists() -> None:
    store = FakeStore()
    watch = ClusterWatch(Settings(), OpenSearchUsers(store))  # type: ignore[arg-type]
    assert watch.check() and watch.ready and watch.describe()["health"] == "green"
    store.status = "red"
    assert not watch.check() and not watch.ready and watch.status == "error"
    store.status, store.dim = "yellow", None
    assert not watch.check() and watch.status == "waiting_for_index"
