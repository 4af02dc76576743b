"""The API's opensearch mode without a cluster: the user-store surface and the readiness watch."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from interest_stream.api import create_app
from interest_stream.api.opensearch_mode import ClusterWatch
from interest_stream.core.records import UserRecord
from interest_stream.core.settings import Settings
from interest_stream.index.errors import StoreUnavailable, UnknownId
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
        self.on_loop: list[bool] = []  # per get(): called on the event loop's thread?
        self.down = False
        self.counts = 0

    def ensure_index(self, dim: int | None) -> int | None:
        return self.dim

    def get(self, uid: str) -> UserRecord | None:
        try:
            asyncio.get_running_loop()
            self.on_loop.append(True)
        except RuntimeError:
            self.on_loop.append(False)
        if self.down:
            raise StoreUnavailable("no node answered")
        return None if uid in self.forgotten else self.recs.get(uid)

    def forget_now(self, uid: str) -> bool:
        held = self.get(uid) is not None
        self.forgotten.append(uid)
        return held

    def audience(self, q: Any, k: int, horizon: str) -> list[tuple[str, float]]:
        return [("a", 2.0), ("b", 1.0), ("c", 0.5)][:k]

    def count(self) -> int:
        self.counts += 1
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


def test_routes_call_the_cluster_off_the_event_loop_and_answer_503_when_it_is_down() -> None:
    store = FakeStore()
    users = OpenSearchUsers(store)  # type: ignore[arg-type]
    app = create_app(Settings(), user_index=users, start_consumer=False, forget_hooks=[])  # type: ignore[arg-type]
    with TestClient(app) as client:
        assert client.get("/v1/users/a/interest").json()["version"] == 3
        assert client.get("/v1/users/x/interest").status_code == 404
        assert store.on_loop and not any(store.on_loop), "a cluster call ran on the event loop"
        store.down = True
        r = client.get("/v1/users/a/interest")
        assert r.status_code == 503 and r.json()["error"] == "store_unavailable"


def test_count_is_refreshed_by_the_watch_not_by_the_routes() -> None:
    store = FakeStore()
    users = OpenSearchUsers(store)  # type: ignore[arg-type]
    watch = ClusterWatch(Settings(), users)
    assert watch.check() and store.counts == 1
    assert users.count() == 1 and store.counts == 1  # cached: no request


def test_the_api_keeps_a_connection_per_pool_thread_to_each_node() -> None:
    from interest_stream.api.opensearch_mode import READ_POOL, opensearch_users

    users = opensearch_users(Settings(opensearch_url="http://127.0.0.1:1,http://127.0.0.1:2"), None)
    conns = users.store.client.transport.connection_pool.connections
    assert len(conns) == 2 and all(c.pool.pool.maxsize == READ_POOL for c in conns)
    users.close()
